"""Gateway fan-out: many WebSocket clients each receiving every update, with the gateway's cost.

    .venv/bin/python -m bench.fanout [--quick] [--clients N] [--rate R] [--seconds S]

``monitor gateway`` runs as its own process; the clients are spread over several processes
(each an asyncio loop holding its share of the connections). This process publishes the
updates itself, paced, by ``XADD`` to ``<prefix>updates`` exactly as the worker's commit does
(one realistic job view per update, the same ``MAXLEN ~``), so the gateway is measured alone:
no worker and no trainer compete for the CPU and every update is one message. Each update
carries its sequence number (in ``best_step``) and the wall-clock time of its ``XADD`` (in
``updated_at``); a client's latency for an update is its ``time.time()`` on receipt minus that.

The gateway's CPU is read from ``/proc/<pid>/stat`` (user + system) over the publishing and the
drain after it; its memory from ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``). Every key is
written under a fresh ``bench:<random>:`` prefix and deleted at the end; every process started
is stopped by its pid.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from subprocess import Popen
from typing import Any

import orjson
import redis

from bench.common import (
    CONNECT_AT_ONCE,
    ClientResult,
    ClientSpec,
    Histogram,
    client_process,
    cpu_seconds,
    delete_prefix,
    free_port,
    headline,
    machine_busy_line,
    machine_cpu,
    machine_line,
    peak_rss_mb,
    raise_open_files,
    receive,
    redis_cpu_seconds,
    redis_url,
    rss_mb,
    split_evenly,
    start_monitor,
    stop_process,
    table,
    unique_prefix,
    wait_for_quiet,
    wait_http_ok,
)
from monitor.keys import Keys
from monitor.rules import JobState, job_view

CLIENTS, QUICK_CLIENTS = 1000, 200
PROCS, QUICK_PROCS = 4, 2
RATE = 200.0  # updates per second
SECONDS, QUICK_SECONDS = 30.0, 5.0
UPDATES_KEEP = 10_000  # the worker's default MAXLEN ~ for <prefix>updates
JOB_ID = "fanout-job"
FINISH_TIMEOUT = 20.0  # seconds the clients get, after the last update, to receive it
ANSWER_TIMEOUT = 180.0  # seconds a client process gets to connect its clients and answer


def sample_view() -> dict[str, Any]:
    """A job view as the worker writes it: a running job partway through, second best."""
    job = JobState(id=JOB_ID, created_at=time.time(), updated_at=time.time(),
                   model_name="Qwen/Qwen2.5-7B-Instruct", name="lr-3e-5-warmup-200",
                   loss=0.6123, eval_loss=0.7234, best_eval_loss=0.7011, best_epoch=3,
                   best_step=0, best_checkpoint_path="/ckpt/qwen-7b/lr-3e-5/checkpoint-3000",
                   total_epochs=12, gpu_count=8)
    return job_view(job.public(), ("fanout-best", 0.6789))


def publish(client: redis.Redis, stream: str, count: int, rate: float) -> tuple[float, float]:
    """XADD ``count`` updates at ``rate`` per second; (seconds taken, worst lateness in ms)."""
    view = sample_view()
    start = time.perf_counter()
    worst = 0.0
    for seq in range(1, count + 1):
        due = start + (seq - 1) / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            worst = max(worst, -delay * 1e3)
        view["best_step"] = seq
        view["updated_at"] = time.time()
        client.xadd(stream, {"data": orjson.dumps({"jobs": [view]})}, maxlen=UPDATES_KEEP,
                    approximate=True)
    return time.perf_counter() - start, worst


def ws_clients_metric(port: int) -> int:
    """The gateway's own count of WebSocket clients (``/metrics``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("monitor_websocket_clients "):
                return int(float(line.split()[1]))
    return -1


@dataclass
class Row:
    clients: int
    procs: int
    deflate: bool
    published: int
    publish_s: float
    late_ms: float
    results: list[ClientResult]
    gateway_cpu_publish: float  # CPU s during publishing
    gateway_cpu: float  # CPU s from the first update until the clients were done
    wall: float
    client_cpu: float
    redis_cpu: float
    rss_idle: float
    rss_connected: float
    rss_end: float
    rss_peak: float
    connect_s: float
    seen_by_gateway: int
    machine: str  # how busy the whole machine was before and while publishing

    @property
    def latency(self) -> Histogram:
        merged = Histogram()
        for r in self.results:
            merged.merge(r.fresh)
        return merged


def run_row(client: redis.Redis, url: str, *, clients: int, procs: int, rate: float,
            seconds: float, deflate: bool, connect_at_once: int, log_dir: Path) -> Row:
    """One gateway, ``clients`` clients over ``procs`` processes, ``rate`` updates/s."""
    prefix = unique_prefix("fanout")
    keys = Keys(prefix)
    ctx = multiprocessing.get_context("spawn")
    processes: list[tuple[str, Popen[bytes] | BaseProcess]] = []
    proc: Popen[bytes] | BaseProcess
    try:
        port = free_port()
        gateway = start_monitor("gateway", ["--redis-url", url, "--prefix", prefix,
                                            "--host", "127.0.0.1", "--port", str(port),
                                            "--log-level", "warning"],
                                log_dir / f"gateway-{clients}-{'deflate' if deflate else 'raw'}.log")
        processes.append(("gateway", gateway))
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
        rss_idle = rss_mb(gateway.pid)

        conns: list[Connection] = []
        client_pids: list[int] = []
        t0 = time.perf_counter()
        for i, n in enumerate(split_evenly(clients, procs)):
            spec = ClientSpec(url=f"ws://127.0.0.1:{port}/ws", clients=n, job_id=JOB_ID,
                              tag="best_step", record=False, consecutive=True, deflate=deflate,
                              connect_at_once=connect_at_once)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(spec, child), name=f"clients-{i}")
            proc.start()
            processes.append((f"clients-{i}", proc))
            conns.append(parent)
            assert proc.pid is not None
            client_pids.append(proc.pid)
        cpu_start = []
        for conn in conns:
            _, _, errors, cpu = receive(conn, "a client process", ANSWER_TIMEOUT)
            cpu_start.append(cpu)
            if errors:
                print(f"warning: client errors: {errors}", file=sys.stderr)
        connect_s = time.perf_counter() - t0
        seen_by_gateway = ws_clients_metric(port)
        rss_connected = rss_mb(gateway.pid)

        count = int(seconds * rate)
        quiet = wait_for_quiet()
        m0, p0 = machine_cpu(), time.process_time()
        g0, r0, w0 = cpu_seconds(gateway.pid), redis_cpu_seconds(client), time.perf_counter()
        c0 = [cpu_seconds(pid) for pid in client_pids]
        publish_s, late_ms = publish(client, keys.updates, count, rate)
        g_publish = cpu_seconds(gateway.pid) - g0
        ours = (g_publish + redis_cpu_seconds(client) - r0 + time.process_time() - p0
                + sum(cpu_seconds(pid) - c for pid, c in zip(client_pids, c0)))
        machine = f"{quiet}; then {machine_busy_line(m0, machine_cpu(), publish_s, ours)}"
        for conn in conns:
            conn.send(("finish", count, FINISH_TIMEOUT))
        results: list[ClientResult] = []
        client_cpu = 0.0
        for conn, start in zip(conns, cpu_start):
            _, part, cpu = receive(conn, "a client process", FINISH_TIMEOUT + 60)
            results += part
            client_cpu += cpu - start
        wall = time.perf_counter() - w0
        return Row(
            clients=clients, procs=procs, deflate=deflate, published=count, publish_s=publish_s,
            late_ms=late_ms, results=results, gateway_cpu_publish=g_publish,
            gateway_cpu=cpu_seconds(gateway.pid) - g0, wall=wall, client_cpu=client_cpu,
            redis_cpu=redis_cpu_seconds(client) - r0, rss_idle=rss_idle,
            rss_connected=rss_connected, rss_end=rss_mb(gateway.pid),
            rss_peak=peak_rss_mb(gateway.pid), connect_s=connect_s,
            seen_by_gateway=seen_by_gateway, machine=machine,
        )
    finally:
        for name, proc in reversed(processes):
            stop_process(proc, name)
        delete_prefix(client, prefix)


# --- Report ---------------------------------------------------------------------------------------


def delivery_table(rows: list[Row]) -> str:
    body = []
    for r in rows:
        got = sorted(x.updates for x in r.results)
        every = sum(1 for x in r.results if x.last == r.published and x.snapshots == 1
                    and x.backwards == 0)
        resyncs = sum(max(0, x.snapshots - 1) for x in r.results)
        closed = sum(1 for x in r.results if x.closed is not None)
        backwards = sum(x.backwards for x in r.results)
        merged = sum(x.merged for x in r.results)
        body.append([
            f"{r.clients:,} in {r.procs}", "on" if r.deflate else "off",
            f"{r.published:,} in {r.publish_s:.1f}s ({r.published / r.publish_s:,.0f}/s)",
            f"{sum(got):,} ({sum(got) / r.wall:,.0f}/s)",
            f"{got[0]:,} / {statistics.median(got):,.0f} / {got[-1]:,}",
            f"{every:,}", f"{resyncs:,} / {backwards:,} / {merged:,} / {closed:,}",
            *r.latency.row_ms(),
        ])
    return table(["clients in processes", "deflate", "updates published",
                  "messages received", "updates per client min / median / max",
                  "clients up to date", "resyncs / out of order / merged / closed",
                  "latency p50 ms", "p95", "p99", "max"], body,
                 align=["r", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r"])


def cost_table(rows: list[Row]) -> str:
    body = []
    for r in rows:
        body.append([
            f"{r.clients:,}", "on" if r.deflate else "off",
            f"{r.gateway_cpu_publish / r.publish_s * 100:.0f}%",
            f"{r.gateway_cpu / r.wall * 100:.0f}% over {r.wall:.1f}s",
            f"{r.gateway_cpu / max(1, sum(x.updates for x in r.results)) * 1e6:.1f}",
            f"{r.rss_idle:.0f} → {r.rss_connected:.0f} → {r.rss_end:.0f} (peak {r.rss_peak:.0f})",
            f"{(r.rss_connected - r.rss_idle) * 1e3 / r.clients:.0f}",
            f"{r.client_cpu / r.wall * 100:.0f}%", f"{r.redis_cpu / r.wall * 100:.0f}%",
            (f"{r.connect_s:.1f}s ({r.seen_by_gateway:,} seen, "
             f"{sum(x.retries for x in r.results):,} retries)"),
        ])
    return table(["clients", "deflate", "gateway CPU while publishing (% of one core)",
                  "gateway CPU incl. drain", "gateway CPU µs per message",
                  "gateway RSS MB idle → connected → end", "RSS KB per client",
                  "client processes CPU", "Redis CPU", "connect all (gateway's count, retries)"], body,
                 align=["r", "l", "r", "r", "r", "r", "r", "r", "r", "r"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_CLIENTS} clients for {QUICK_SECONDS:.0f}s, deflate only")
    parser.add_argument("--clients", type=int, default=None,
                        help=f"WebSocket clients (default {CLIENTS:,}; {QUICK_CLIENTS} quick)")
    parser.add_argument("--procs", type=int, default=None,
                        help=f"client processes (default {PROCS}; {QUICK_PROCS} quick)")
    parser.add_argument("--rate", type=float, default=RATE, help="updates per second")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"seconds of publishing (default {SECONDS:.0f}; "
                             f"{QUICK_SECONDS:.0f} quick)")
    parser.add_argument("--connect-at-once", type=int, default=CONNECT_AT_ONCE,
                        help="WebSocket handshakes in flight per client process")
    parser.add_argument("--deflate", choices=("on", "off", "both"), default=None,
                        help="clients offer permessage-deflate (browsers do); default: both "
                             "rows, on only with --quick")
    args = parser.parse_args(argv)

    clients = args.clients or (QUICK_CLIENTS if args.quick else CLIENTS)
    procs = args.procs or (QUICK_PROCS if args.quick else PROCS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    modes = {"on": [True], "off": [False], "both": [True, False]}[
        args.deflate or ("on" if args.quick else "both")]
    raise_open_files(clients + 1024)  # the gateway inherits it
    url = redis_url()
    client = redis.Redis.from_url(url)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    try:
        rows = [run_row(client, url, clients=clients, procs=procs, rate=args.rate,
                        seconds=seconds, deflate=deflate, connect_at_once=args.connect_at_once,
                        log_dir=log_dir)
                for deflate in modes]
        print("## Gateway fan-out\n")
        print(machine_line(client) + "\n")
        print(f"`monitor gateway` alone (no worker, no trainer): this process XADDs "
              f"{args.rate:,.0f} updates/s for {seconds:.0f}s to `<prefix>updates` as the "
              f"worker's commits do (one job view each, ~{len(orjson.dumps(sample_view())):,} "
              f"bytes of JSON); {clients:,} WebSocket clients in {procs} processes (asyncio, "
              f"the `websockets` library). Nothing is pinned: the gateway, the client "
              f"processes, this publisher and Redis share the machine's "
              f"{len(os.sched_getaffinity(0))} usable cores. Latency = a client's `time.time()` "
              f"on receipt − the update's `updated_at` (`time.time()` just before its XADD), "
              f"over every update at every client.\n")
        print(delivery_table(rows) + "\n")
        print(cost_table(rows) + "\n")
        for r in rows:
            every = sum(1 for x in r.results if x.last == r.published and x.snapshots == 1
                        and x.backwards == 0)
            headline(f"fan-out: {r.clients:,} clients, {args.rate:,.0f} updates/s, deflate "
                     f"{'on' if r.deflate else 'off'}: p50 / p99 ms, clients up to date",
                     f"{r.latency.quantile(0.5) * 1e3:.1f} / {r.latency.quantile(0.99) * 1e3:.1f}"
                     f", {every:,} of {r.clients:,}")
            closed = [x.closed for x in r.results if x.closed]
            unfinished = sum(1 for x in r.results if not x.finished)
            print(f"- {r.clients:,} clients, deflate {'on' if r.deflate else 'off'}: publisher "
                  f"at most {r.late_ms:.1f} ms behind schedule; {unfinished} client(s) did not "
                  f"get the last update within {FINISH_TIMEOUT:.0f}s of it; {r.machine}"
                  + (f"; closes: {sorted(set(closed))[:3]}" if closed else ""))
        print("- 'resyncs': snapshots after the first (a client's queue in the gateway, "
              "--ws-queue, default 1,000 updates, overflowed); 'out of order': messages whose "
              "sequence number went back (must be 0); 'merged': updates that reached a client "
              "inside a later message, because the hub sends the commits of one read as one "
              "message carrying each job's latest view; 'clients up to date': clients that ended "
              "on the last update with one snapshot and nothing out of order; 'closed': "
              "connections the server ended. The latency percentiles cover "
              "the updates delivered; those still on their way when the clients stopped "
              "(see 'updates per client') are not in them, so they understate a backlog. "
              "'µs per message' is the gateway's CPU until the clients stopped over the "
              f"messages they received. Logs: {log_dir}")
        return 0
    finally:
        client.close()



if __name__ == "__main__":
    sys.exit(main())
