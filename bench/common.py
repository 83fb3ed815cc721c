"""Helpers shared by the benchmarks: the machine line, Redis prefixes, /proc readings, tables,
headline figures, starting and stopping processes, latency histograms, and WebSocket client
processes."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import orjson
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HEADLINES_ENV = "BENCH_HEADLINES"  # a file run_all collects each benchmark's key figures in


def verdict(bar: bool | None, goal: bool | None = None) -> str:
    """'bar met, goal not met' and the like, for a headline."""
    parts = []
    if bar is not None:
        parts.append("bar met" if bar else "bar NOT met")
    if goal is not None:
        parts.append("goal met" if goal else "goal not met")
    return ", ".join(parts)


def headline(what: str, measured: str, target: str = "", verdict: str = "") -> None:
    """Record one key figure for run_all's summary table (a JSON line appended to the file
    named by ``$BENCH_HEADLINES``; nothing when a benchmark runs on its own)."""
    path = os.environ.get(HEADLINES_ENV)
    if not path:
        return
    line = {"benchmark": Path(sys.argv[0]).stem if sys.argv[0] else "", "what": what,
            "measured": measured, "target": target, "verdict": verdict}
    with open(path, "ab") as f:
        f.write(orjson.dumps(line) + b"\n")


def redis_url() -> str:
    """The Redis to benchmark against: ``MONITOR_REDIS_URL`` if set, else the local default."""
    return os.environ.get("MONITOR_REDIS_URL") or DEFAULT_REDIS_URL


def unique_prefix(label: str) -> str:
    """A key prefix no one else uses, e.g. ``bench:3f9a1c2b:1k:``."""
    return f"bench:{secrets.token_hex(4)}:{label}:"


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Remove every key under ``prefix`` (UNLINK, in batches); returns how many."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += int(client.unlink(*batch))
            batch = []
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def used_memory_mb(client: redis.Redis) -> float:
    """Redis ``used_memory`` in MB (the whole server, not only our prefix)."""
    return int(client.info("memory")["used_memory"]) / 1e6


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU time the Redis server has used so far (user + system, all its threads)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(client: redis.Redis) -> str:
    """CPU model, cores, Python and Redis versions, as one Markdown line."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    server = client.info("server")
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores ({usable} usable), "
            f"Python {platform.python_version()} ({platform.python_implementation()}), "
            f"Redis {server['redis_version']}, {platform.system()} {platform.release()}")


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a running process (``VmHWM``), in MB."""
    return _status_kb(pid, "VmHWM") * 1024 / 1e6


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        # The command name may contain spaces; the fields after it are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          align: Sequence[str] | None = None) -> str:
    """A Markdown table; ``align`` holds ``"l"`` or ``"r"`` per column (default: right)."""
    align = align or ["r"] * len(headers)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- Processes ---------------------------------------------------------------------------------

STOP_GRACE = 10.0  # seconds a process gets to exit after SIGTERM before it is killed


def monitor_command() -> list[str]:
    """The ``monitor`` console script next to this interpreter, else ``python -m monitor.cli``."""
    script = Path(sys.executable).with_name("monitor")
    return [str(script)] if script.exists() else [sys.executable, "-m", "monitor.cli"]


def clean_env() -> dict[str, str]:
    """Our environment without ``MONITOR_*`` settings: processes run with flags and defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}


def stop_process(proc: subprocess.Popen[bytes] | BaseProcess, name: str) -> None:
    """SIGTERM this one process (by its pid), then SIGKILL it after :data:`STOP_GRACE` seconds."""
    if isinstance(proc, subprocess.Popen):
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            pass
    else:
        if proc.pid is None or proc.exitcode is not None:
            return
        proc.terminate()
        proc.join(STOP_GRACE)
        if proc.exitcode is not None:
            return
    print(f"warning: {name} (pid {proc.pid}) ignored SIGTERM for {STOP_GRACE:.0f}s; killing it",
          file=sys.stderr)
    proc.kill()
    if isinstance(proc, subprocess.Popen):
        proc.wait()
    else:
        proc.join()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_monitor(role: str, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``monitor <role> <args>`` as its own process, output to ``log_path``, no MONITOR_* env."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(monitor_command() + [role] + args, stdout=log_file,
                                stderr=subprocess.STDOUT, env=clean_env())


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")
        time.sleep(0.1)


def receive(conn: Connection, what: str, timeout: float) -> Any:
    """The next message from a child process's pipe; fails if none comes within ``timeout``."""
    if not conn.poll(timeout):
        raise RuntimeError(f"no answer from {what} within {timeout:.0f}s")
    return conn.recv()


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive counts (fewer parts if ``total`` is small)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def machine_cpu() -> dict[str, float]:
    """Seconds of CPU time, summed over all cores, by kind (``/proc/stat``): user, system,
    softirq, steal, idle and so on. Subtract two readings to get what a span used."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    with open("/proc/stat", encoding="utf-8") as f:
        fields = f.readline().split()[1:1 + len(names)]
    ticks = os.sysconf("SC_CLK_TCK")
    return {name: int(value) / ticks for name, value in zip(names, fields)}


def machine_busy_line(before: dict[str, float], after: dict[str, float], wall: float,
                      ours: float) -> str:
    """How busy the whole machine was between two :func:`machine_cpu` readings, and how much
    of that the ``ours`` CPU seconds (the processes measured one by one) do not explain."""
    used = {k: after[k] - before[k] for k in before}
    cores = os.cpu_count() or 1
    busy = sum(v for k, v in used.items() if k not in ("idle", "iowait"))
    parts = ", ".join(f"{k} {used[k] / wall * 100:.0f}%" for k in
                      ("user", "system", "softirq", "steal") if used[k] / wall >= 0.005)
    return (f"whole machine busy {busy / wall * 100:.0f}% of {cores * 100}% ({parts}), "
            f"{max(0.0, busy - ours) / wall * 100:.0f}% of it not in the processes measured "
            f"(other programs on the machine, kernel network work); all in % of one core")


def wait_for_quiet(limit: float = 0.25, timeout: float = 30.0, window: float = 2.0) -> str:
    """Wait (up to ``timeout`` s) until the machine was busy less than ``limit`` of one core
    over ``window`` s: others' work skews a latency benchmark. Says how it went."""
    deadline = time.monotonic() + timeout
    while True:
        before = machine_cpu()
        time.sleep(window)
        after = machine_cpu()
        busy = sum(after[k] - before[k] for k in before if k not in ("idle", "iowait")) / window
        if busy < limit:
            return f"the machine was quiet before the start ({busy * 100:.0f}% of one core busy)"
        if time.monotonic() > deadline:
            return (f"the machine never got quiet before the start ({busy * 100:.0f}% of one "
                    f"core busy after waiting {timeout:.0f}s)")


def rss_mb(pid: int) -> float:
    """The current resident set size of a running process (``VmRSS``), in MB."""
    return _status_kb(pid, "VmRSS") * 1024 / 1e6


def raise_open_files(wanted: int) -> int:
    """Raise this process's open-files soft limit towards ``wanted`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# --- Latencies ---------------------------------------------------------------------------------

BIN_S = 1e-5  # histogram resolution: 10 µs


class Histogram:
    """Latencies in 10 µs bins (exact count and maximum): cheap to fill, merge and ship."""

    def __init__(self) -> None:
        self.bins: Counter[int] = Counter()
        self.count = 0
        self.max = -math.inf

    def add(self, seconds: float) -> None:
        self.bins[int(seconds / BIN_S) if seconds > 0 else 0] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def merge(self, other: Histogram) -> None:
        self.bins.update(other.bins)
        self.count += other.count
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile in seconds (the upper edge of its bin; the max is exact)."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen >= rank:
                return min((key + 1) * BIN_S, self.max)
        return self.max

    def row_ms(self) -> list[str]:
        """p50, p95, p99 and max, in ms with two decimals."""
        return [f"{self.quantile(q) * 1e3:,.2f}" for q in (0.5, 0.95, 0.99)] + [
            f"{self.max * 1e3:,.2f}" if self.count else "–"]


# --- WebSocket client processes ------------------------------------------------------------------
#
# Clients run in processes of their own (multiprocessing, spawn), each an asyncio loop holding
# many connections, so that their CPU shows apart from the gateway's and the trainer's. The
# parent talks to each over a pipe: the child says ("ready", connected, errors, cpu) once every
# client has its snapshot; the parent answers ("finish", value, timeout): each client stops once
# the watched job's tag field equals ``value`` (or at the time-out); the child replies
# ("result", [ClientResult, ...], cpu). ``cpu`` is the child's own CPU time so far.

CONNECT_AT_ONCE = 20  # handshakes (and snapshots) in flight per client process
CONNECT_TRIES = 10  # attempts per client before it gives up


@dataclass
class ClientResult:
    """What one WebSocket client saw of the watched job."""

    snapshots: int = 0  # snapshot messages: 1 is the first one, more are resyncs
    updates: int = 0  # update messages holding the watched job
    other: int = 0  # update messages without it
    backwards: int = 0  # with ``consecutive``: messages whose tag went back (an error)
    merged: int = 0  # with ``consecutive``: updates folded into a later message by the hub
    finished: bool = False  # saw the tag reach the value asked for
    last: float | None = None  # the last tag value seen
    closed: str | None = None  # why the connection ended early, if it did
    retries: int = 0  # connection attempts that failed before the first snapshot
    fresh: Histogram = field(default_factory=Histogram)  # arrival - the job's ``updated_at``
    arrivals: array[float] = field(default_factory=lambda: array("d"))  # with ``record``
    versions_ms: array[int] = field(default_factory=lambda: array("q"))
    tags: array[float] = field(default_factory=lambda: array("d"))


@dataclass(frozen=True)
class ClientSpec:
    """What the clients of one process do: connect to ``url`` and watch ``job_id``."""

    url: str
    clients: int
    job_id: str
    tag: str  # the numeric field of the job view that identifies what an update carries
    record: bool  # keep arrival, version and tag of every update (else only counts)
    consecutive: bool = False  # the tag goes up by exactly 1 per update
    deflate: bool = True  # offer permessage-deflate, as browsers do
    connect_at_once: int = CONNECT_AT_ONCE


def client_process(spec: ClientSpec, conn: Connection) -> None:
    """Entry point of one client process (``multiprocessing`` target)."""
    raise_open_files(spec.clients + 256)
    asyncio.run(_client_main(spec, conn))


async def _client_main(spec: ClientSpec, conn: Connection) -> None:
    results = [ClientResult() for _ in range(spec.clients)]
    ready = [asyncio.Event() for _ in range(spec.clients)]
    target: list[float] = []  # filled with the value to stop at
    target_set = asyncio.Event()
    gate = asyncio.Semaphore(spec.connect_at_once)
    errors: list[str] = []
    tasks = [asyncio.create_task(_one_client(spec, results[i], ready[i], gate, target,
                                             target_set, errors))
             for i in range(spec.clients)]
    await asyncio.gather(*(event.wait() for event in ready))
    connected = sum(1 for r in results if r.snapshots and r.closed is None)
    conn.send(("ready", connected, errors[:5], time.process_time()))
    kind, value, timeout = await asyncio.to_thread(conn.recv)
    assert kind == "finish"
    target.append(value)
    target_set.set()
    for result, task in zip(results, tasks):
        if result.last == value:  # got there before we knew where "there" was
            result.finished = True
            task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("result", results, time.process_time()))


async def _one_client(spec: ClientSpec, result: ClientResult, ready: asyncio.Event,
                      gate: asyncio.Semaphore, target: list[float], target_set: asyncio.Event,
                      errors: list[str]) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed

    ws: ClientConnection | None = None
    first: str | bytes = b""
    for attempt in range(CONNECT_TRIES):
        try:
            async with gate:  # connect and take the snapshot, a few clients at a time
                ws = await connect(spec.url, proxy=None, ping_interval=None, max_size=None,
                                   open_timeout=60, close_timeout=2,
                                   compression="deflate" if spec.deflate else None)
                first = await ws.recv()
            break
        except (OSError, TimeoutError, ConnectionClosed) as e:
            # Closed before the snapshot (e.g. 1013 from the gateway): try again, as a page would.
            result.retries += 1
            result.closed = f"connect: {type(e).__name__}: {e}"
            if ws is not None:
                await ws.close()
                ws = None
            await asyncio.sleep(0.2 * (attempt + 1))
    if ws is None:
        errors.append(result.closed or "?")
        ready.set()
        return
    result.closed = None
    previous: float | None = None
    try:
        message = first
        while True:
            now = time.time()
            data = orjson.loads(message)
            job = next((j for j in data["jobs"] if j["id"] == spec.job_id), None)
            if data["type"] == "snapshot":
                result.snapshots += 1
                ready.set()
                if job is not None:
                    previous = result.last = job[spec.tag]
            elif job is None:
                result.other += 1
            else:
                result.updates += 1
                value = job[spec.tag]
                result.fresh.add(now - job["updated_at"])
                if spec.record:
                    result.arrivals.append(now)
                    result.versions_ms.append(int(data["version"].split("-", 1)[0]))
                    result.tags.append(value)
                if spec.consecutive and previous is not None:
                    # The hub sends the commits of one read as one message: the job arrives
                    # as the last of them left it, so tags may jump ahead, never back.
                    if value <= previous:
                        result.backwards += 1
                    else:
                        result.merged += int(value - previous - 1)
                previous = result.last = value
            if target_set.is_set() and result.last == target[0]:
                result.finished = True
                break
            message = await ws.recv()
    except ConnectionClosed as e:
        result.closed = f"closed: {e}"
    finally:
        ready.set()
        await ws.close()
