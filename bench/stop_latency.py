"""How fast a trainer hears a stop request, and what the control channel costs ``log()``:
``python -m bench.stop_latency [--quick]``.

A real ``monitor worker`` and ``monitor gateway`` (processes); in this process, waves of 20
runs of the SDK (one control thread for all of them, docs/stopping.md). In each wave every run
is asked to stop with ``POST /api/jobs/{id}/stop``, one after another at random moments, and
the time from sending the request to the run's ``on_stop`` (called when ``run.should_stop``
turns true) is measured. Then ``run.log()``'s cost, with the control channel polling for 20
open runs and with it idle, alternated.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import redis

import monitor.sdk
from bench.common import (
    delete_prefix,
    free_port,
    headline,
    machine_line,
    redis_url,
    start_monitor,
    stop_process,
    table,
    unique_prefix,
    verdict,
    wait_http_ok,
)
from bench.worker_throughput import bench_log
from monitor.control import POLL_INTERVAL, Channel
from monitor.keys import Keys
from monitor.sdk import Run, start_run

RUNS = 20  # runs open at once in the process
WAVES, QUICK_WAVES = 10, 2
HEARD_TIMEOUT = 10.0
LOG_ROUNDS, LOG_CALLS = 6, 200_000
QUICK_LOG_ROUNDS, QUICK_LOG_CALLS = 2, 50_000


def wave(url: str, prefix: str, port: int, n: int, rng: random.Random) -> list[float]:
    """Start RUNS runs, ask each to stop at a random moment; seconds from request to heard."""
    heard: dict[str, float] = {}
    done = threading.Event()

    def on_stop(run: Run) -> None:
        heard[run.job_id] = time.perf_counter()
        if len(heard) == RUNS:
            done.set()

    runs = [start_run("bench/stop", job_id=f"stop-{n}-{i}", redis_url=url, prefix=prefix,
                      total_steps=1000, on_stop=on_stop) for i in range(RUNS)]
    client = redis.Redis.from_url(url)
    try:
        for step, run in enumerate(runs):
            run.log(step=1, loss=1.0 / (step + 1))
        for run in runs:
            run.flush()
        jobs = Keys(prefix).jobs
        deadline = time.monotonic() + 30
        while client.hlen(jobs) < RUNS * (n + 1):  # the worker has them: stop answers 202
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not apply the runs within 30 s")
            time.sleep(0.01)
        sent = {}
        for run in rng.sample(runs, len(runs)):
            time.sleep(rng.uniform(0, 2 * POLL_INTERVAL / RUNS))  # spread over the poll phase
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/jobs/{run.job_id}/stop", method="POST")
            sent[run.job_id] = time.perf_counter()
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 202
        if not done.wait(HEARD_TIMEOUT):
            raise RuntimeError(f"only {len(heard)} of {RUNS} runs heard within "
                               f"{HEARD_TIMEOUT:.0f}s")
        return [heard[job_id] - sent[job_id] for job_id in sent]
    finally:
        for run in runs:
            run.finish("stopped")
            run.close()
        client.close()


def log_costs(url: str, prefix: str, rounds: int, calls: int) -> dict[str, list[float]]:
    """µs per log() with the control channel polling for RUNS open runs, and with it idle."""
    out: dict[str, list[float]] = {"on": [], "off": []}
    for n in range(rounds):
        for state in ("off", "on") if n % 2 == 0 else ("on", "off"):  # neither always first
            channel = Channel(poll=3600.0 if state == "off" else POLL_INTERVAL)
            monitor.sdk.channel = channel  # the channel the SDK adds its runs to
            idle = [start_run("bench/stop", redis_url=url, prefix=prefix)
                    for _ in range(RUNS - 1)]
            try:
                us, _ = bench_log(url, prefix, 1, calls, with_eval=False)
                out[state] += us
            finally:
                for run in idle:
                    run.close()
    return out


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stop_latency",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_WAVES} waves of {RUNS} requests, fewer log() calls")
    args = parser.parse_args(argv)
    waves = QUICK_WAVES if args.quick else WAVES
    url, prefix, port = redis_url(), unique_prefix("stop"), free_port()
    client = redis.Redis.from_url(url)
    logs = Path(tempfile.mkdtemp(prefix="bench-stop-"))
    common = ["--redis-url", url, "--prefix", prefix]
    worker = start_monitor("worker", [*common, "--block", "0.05"], logs / "worker.log")
    gateway = start_monitor("gateway", [*common, "--port", str(port)], logs / "gateway.log")
    rng = random.Random(0)
    original = monitor.sdk.channel
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
        seconds = [s for n in range(waves) for s in wave(url, prefix, port, n, rng)]
        rounds, calls = ((QUICK_LOG_ROUNDS, QUICK_LOG_CALLS) if args.quick
                         else (LOG_ROUNDS, LOG_CALLS))
        costs = log_costs(url, prefix, rounds, calls)
    finally:
        monitor.sdk.channel = original
        stop_process(worker, "worker")
        stop_process(gateway, "gateway")
        delete_prefix(client, prefix)
    ms = [1000 * s for s in seconds]
    p50, p95 = quantile(ms, 0.5), quantile(ms, 0.95)
    on, off = statistics.median(costs["on"]), statistics.median(costs["off"])
    print(f"## Stop requests and the control channel{' (quick)' if args.quick else ''}\n\n"
          f"{machine_line(client)}. {len(ms)} requests (`POST /api/jobs/{{id}}/stop` to the "
          f"gateway) across {waves} waves of {RUNS} runs open in one process; the SDK polls "
          f"every {POLL_INTERVAL} s for all of them in one round trip.\n")
    print(table(["figure", "value", "goal"], [
        ["request sent → `run.should_stop` (on_stop called), p50", f"{p50:.0f} ms", ""],
        ["... p95", f"{p95:.0f} ms", "< 1,000 ms"],
        ["... max", f"{max(ms):.0f} ms", "< 2,000 ms"],
        [(f"`run.log()` with the channel polling for {RUNS} runs (median, min of "
          f"{len(costs['on'])} × {calls:,})"), f"{on:.2f}, {min(costs['on']):.2f} µs", ""],
        ["`run.log()` with the channel idle (median, min)",
         f"{off:.2f}, {min(costs['off']):.2f} µs", ""],
        ["on ÷ off", f"{on / off:.2f}", "≈ 1"],
    ], align=["l", "r", "r"]))
    client.close()
    headline("stop request → run.should_stop (p50 / p95)", f"{p50:.0f} / {p95:.0f} ms",
             "p95 < 1 s", verdict(p95 < 1000))
    headline("run.log() with / without the control channel", f"{on:.2f} / {off:.2f} µs", "≈ 1x",
             verdict(None, on / off < 1.2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
