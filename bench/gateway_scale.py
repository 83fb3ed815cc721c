"""Gateway scale: what a client waits for, and what the gateway holds, at up to 1,000,000 jobs.

    .venv/bin/python -m bench.gateway_scale [--quick] [--jobs 10000,100000,1000000]
                                            [--clients 100] [--seconds 10] [--rate 200]

Per row the state is written straight into Redis in the shapes the worker commits
(``bench.page_scale`` builds and writes it: jobs over 500 models), and a real
``monitor gateway`` process serves it. Measured:

- the first ``/ws`` message: the snapshot of every job (``/ws``; up to 100,000 jobs, past
  that it is hundreds of megabytes) and the summary of ``/ws?windows=1``, its size and the time
  from connecting until it has arrived; then the first window of 100 jobs;
- the gateway's RSS with ``--clients`` windowed clients, each watching a different model's
  window and the newest jobs, before and after ``--seconds`` of updates at ``--rate`` per
  second (appended to ``<prefix>updates`` as the worker appends them), and how many updates
  reached the clients;
- then REST: ``GET /api/jobs?limit=100``, the page after the first 1,000 jobs, a filter that
  matches few jobs (``q``, read up to the 20,000-job budget) and the whole list (a 413 past
  10,000), and last the old snapshot, which the gateway keeps once built.

Every key is written under a fresh ``bench:<random>:`` prefix and deleted at the end; the
gateway is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis
import websockets

from bench.common import (
    delete_prefix,
    free_port,
    headline,
    machine_line,
    redis_url,
    rss_mb,
    start_monitor,
    stop_process,
    table,
    unique_prefix,
    verdict,
    wait_http_ok,
)
from bench.page_scale import Updates, build_fleet, send_updates, write_state
from monitor.keys import Keys

ROWS = [10_000, 100_000, 1_000_000]
QUICK_ROWS = [2_000, 10_000]
SNAPSHOT_UP_TO = 100_000  # past this the old snapshot is not measured (hundreds of MB)
GOAL_FIRST_KB = 200.0
GOAL_RSS_MB = 300.0
MAX_MESSAGE = 2**30


@dataclass
class Row:
    jobs: int
    fill_s: float
    snapshot: tuple[float, float] | None  # (KB, ms) of the old first message
    summary: tuple[float, float]  # (KB, ms)
    window: tuple[float, float]  # first window of 100: (KB, ms)
    rest: dict[str, float]  # ms per request kind
    whole_status: int
    rss_idle: float
    rss_clients: float
    rss_after: float
    updates_sent: int
    updates_received: int
    resyncs: int


async def first_message(url: str) -> tuple[float, float]:
    """(KB, ms) of the first message of ``url``."""
    started = time.perf_counter()
    async with websockets.connect(url, max_size=MAX_MESSAGE) as ws:
        raw = await ws.recv()
        return len(raw) / 1024, (time.perf_counter() - started) * 1000


async def window_first(url: str) -> tuple[float, float]:
    """(KB, ms) of the first window of 100 jobs, after the summary."""
    async with websockets.connect(url + "?windows=1", max_size=MAX_MESSAGE) as ws:
        await ws.recv()
        started = time.perf_counter()
        await ws.send(orjson.dumps({"type": "window", "id": "flat", "limit": 100}).decode())
        raw = await ws.recv()
        return len(raw) / 1024, (time.perf_counter() - started) * 1000


def timed_get(url: str, repeat: int = 5) -> tuple[float, int]:
    """The median time of GET ``url`` in ms, and its status."""
    times, status = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            e.read()
            status = e.code
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), status


def rest_times(base: str) -> tuple[dict[str, float], int]:
    out = {}
    out["page"], _ = timed_get(f"{base}/api/jobs?limit=100")
    with urllib.request.urlopen(f"{base}/api/jobs?limit=1000", timeout=60) as response:
        cursor = orjson.loads(response.read())["next"]
    out["next page"], _ = timed_get(f"{base}/api/jobs?limit=100&cursor={cursor}")
    out["filter (q)"], _ = timed_get(f"{base}/api/jobs?limit=100&q=r64-lr2e", repeat=3)
    out["whole list"], status = timed_get(f"{base}/api/jobs", repeat=1)
    return out, status


class Clients:
    """``count`` windowed clients in a thread of their own, each watching one model's window
    and the newest jobs, counting the updates they get."""

    def __init__(self, url: str, models: list[str], count: int) -> None:
        self.url = url
        self.models = models
        self.count = count
        self.received = 0
        self.resyncs = 0
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _client(self, n: int, started: list[int]) -> None:
        model = self.models[n % len(self.models)]
        asks = [orjson.dumps({"type": "window", "id": "model", "limit": 50, "model": model}),
                orjson.dumps({"type": "window", "id": "flat", "limit": 50})]
        async with websockets.connect(self.url + "?windows=1", max_size=MAX_MESSAGE) as ws:
            await ws.recv()
            for ask in asks:
                await ws.send(ask.decode())
            replies = 0
            while replies < 2:
                if orjson.loads(await ws.recv())["type"] == "window":
                    replies += 1
            started[0] += 1
            if started[0] == self.count:
                self.ready.set()
            while not self.stop.is_set():
                try:
                    message = orjson.loads(await asyncio.wait_for(ws.recv(), 0.2))
                except TimeoutError:
                    continue
                if message["type"] == "update":
                    self.received += 1
                elif message["type"] == "summary":  # fell behind: ask again, as the page does
                    self.resyncs += 1
                    for ask in asks:
                        await ws.send(ask.decode())

    async def _run(self) -> None:
        started = [0]
        await asyncio.gather(*(self._client(n, started) for n in range(self.count)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def measure(jobs: int, args: argparse.Namespace, client: redis.Redis, work: Path) -> Row:
    prefix = unique_prefix("gwscale")
    keys = Keys(prefix)
    try:
        started = time.monotonic()
        fleet, bases = build_fleet(jobs)
        write_state(client, keys, fleet)
        fill_s = time.monotonic() - started
        print(f"  {jobs:,} jobs written in {fill_s:.0f}s", file=sys.stderr)
        port = free_port()
        gateway = start_monitor("gateway", ["--redis-url", redis_url(), "--prefix", prefix,
                                            "--port", str(port)], work / f"gateway-{jobs}.log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{base}/healthz", gateway)
            ws_url = f"ws://127.0.0.1:{port}/ws"
            summary = asyncio.run(first_message(ws_url + "?windows=1"))
            window = asyncio.run(window_first(ws_url))
            rss_idle = rss_mb(gateway.pid)
            clients = Clients(ws_url, list(fleet.groups), args.clients)
            if not clients.ready.wait(120):
                raise RuntimeError("the clients did not all get their windows within 120 s")
            rss_clients = rss_mb(gateway.pid)
            sent = send_updates(client, keys, Updates(fleet, bases), args.rate, args.seconds)
            time.sleep(1.0)
            rss_after = rss_mb(gateway.pid)
            clients.close()
            # last: the whole list and the old snapshot, which the gateway then keeps
            rest, whole_status = rest_times(base)
            snapshot = (asyncio.run(first_message(ws_url)) if jobs <= SNAPSHOT_UP_TO else None)
        finally:
            stop_process(gateway, "gateway")
        return Row(jobs, fill_s, snapshot, summary, window, rest, whole_status, rss_idle,
                   rss_clients, rss_after, sent, clients.received, clients.resyncs)
    finally:
        delete_prefix(client, prefix)


def report(rows: list[Row], args: argparse.Namespace) -> str:
    def kb_ms(value: tuple[float, float] | None) -> str:
        return "not measured" if value is None else f"{value[0]:,.1f} KB, {value[1]:,.0f} ms"

    figures = [
        ("first /ws message, snapshot (before)", [kb_ms(r.snapshot) for r in rows]),
        ("first /ws message, summary (windows=1)", [kb_ms(r.summary) for r in rows]),
        ("first window of 100 jobs", [kb_ms(r.window) for r in rows]),
        *[(f"GET /api/jobs {kind} (ms)", [f"{r.rest[kind]:,.1f}" for r in rows])
          for kind in rows[0].rest],
        ("GET /api/jobs whole list: status", [str(r.whole_status) for r in rows]),
        ("gateway RSS idle (MB)", [f"{r.rss_idle:,.0f}" for r in rows]),
        (f"gateway RSS, {args.clients} clients watching (MB)",
         [f"{r.rss_clients:,.0f}" for r in rows]),
        (f"gateway RSS after {args.seconds:.0f} s of {args.rate:.0f} updates/s (MB)",
         [f"{r.rss_after:,.0f}" for r in rows]),
        ("updates appended / messages the clients got",
         [f"{r.updates_sent:,} / {r.updates_received:,}" for r in rows]),
        ("clients that fell behind (a fresh summary)", [f"{r.resyncs:,}" for r in rows]),
    ]
    return table(["figure", *[f"{r.jobs:,} jobs" for r in rows]],
                 [[name, *values] for name, values in figures],
                 align=["l"] + ["r"] * len(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small rows, 20 clients, 3 s")
    parser.add_argument("--jobs", help="comma-separated job counts, one row each")
    parser.add_argument("--clients", type=int, default=None, help="windowed clients (100)")
    parser.add_argument("--seconds", type=float, default=None, help="of updates (10)")
    parser.add_argument("--rate", type=float, default=200.0, help="updates per second")
    args = parser.parse_args(argv)
    rows = ([int(n) for n in args.jobs.split(",")] if args.jobs
            else QUICK_ROWS if args.quick else ROWS)
    args.clients = args.clients or (20 if args.quick else 100)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    client = redis.Redis.from_url(redis_url())
    print("# Gateway scale: summary first, windows on demand\n")
    print(machine_line(client) + "\n")
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        results = [measure(jobs, args, client, Path(tmp)) for jobs in rows]
    print(report(results, args))
    last = results[-1]
    print()
    headline(f"first /ws message at {last.jobs:,} jobs (windows=1)",
             f"{last.summary[0]:,.1f} KB", f"< {GOAL_FIRST_KB:.0f} KB",
             verdict(last.summary[0] < GOAL_FIRST_KB))
    headline(f"gateway RSS, {args.clients} clients, {last.jobs:,} jobs",
             f"{max(last.rss_clients, last.rss_after):,.0f} MB", f"< {GOAL_RSS_MB:.0f} MB",
             verdict(max(last.rss_clients, last.rss_after) < GOAL_RSS_MB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
