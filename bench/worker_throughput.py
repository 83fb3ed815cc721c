"""Worker throughput: pre-fill the stream, run ``monitor worker`` alone, time it until done.

    .venv/bin/python -m bench.worker_throughput [--events N] [--quick] [--py-spy PREFIX [--idle]]

Two rows: the events over 1,000 jobs and over 100,000 jobs (10,000 with ``--quick``), 50
models each. The stream is filled with pipelined ``XADD`` before the worker starts (not
timed); then the real worker process runs and the stats hash is polled every 50 ms until
``applied + dead + duplicates`` reaches the number of events. A second table gives the cost
of ``Run.log`` in the trainer and of ``parse_event`` in the worker, for context, and a third
the ceiling: Redis's own pipelined ``XADD`` rate for the same entries, measured with
``redis-benchmark`` in the same run, against which the worker's rate is compared.

Every key is written under a fresh ``bench:<random>:`` prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis

from bench.common import (
    clean_env,
    cpu_seconds,
    delete_prefix,
    headline,
    machine_line,
    median,
    monitor_command,
    peak_rss_mb,
    redis_cpu_seconds,
    redis_url,
    stop_process,
    table,
    unique_prefix,
    used_memory_mb,
    verdict,
)
from bench.workload import Workload, generate
from monitor import compiled
from monitor.decoded import parse_event
from monitor.keys import Keys
from monitor.sdk import start_run

PREFILL_CHUNK = 5_000  # XADDs per pipeline round trip
POLL = 0.05  # seconds between looks at the stats hash
STOP_GRACE = 10.0  # seconds the worker gets to exit after SIGTERM
BAR_EVENTS_PER_S, GOAL_EVENTS_PER_S = 20_000, 50_000
BAR_RATIO = 1.5
GOAL_LOG_US = 20.0
GOAL_CEILING_RATIO = 3.0  # the worker within 3x of Redis's own pipelined XADD rate
# redis-benchmark settings for the ceiling: (clients, pipeline depth)
CEILING_RUNS = [(1, 64), (50, 16)]
CEILING_COLUMNS = ("rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms", "p95_latency_ms",
                   "p99_latency_ms", "max_latency_ms")  # redis-benchmark --csv, after "test"


@dataclass
class RowResult:
    workload: Workload
    mix: Counter[str]
    prefill_s: float
    seconds: float  # worker start to all applied
    steady_s: float  # first commit to all applied
    cpu_s: float  # worker user + system CPU until all applied
    redis_cpu_s: float  # Redis server CPU over the same time (the whole server)
    peak_rss_mb: float
    mem_before_mb: float
    mem_filled_mb: float
    mem_done_mb: float
    counts: dict[str, int]
    jobs_stored: int
    log_path: Path
    first_batch: int = 0  # entries applied at the first commit seen (not in the steady rate)

    @property
    def events(self) -> int:
        return self.workload.events

    @property
    def us_per_event(self) -> float:
        return self.seconds / self.events * 1e6

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def worker_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6

    @property
    def redis_us_per_event(self) -> float:
        return self.redis_cpu_s / self.events * 1e6

    @property
    def applied_cleanly(self) -> bool:
        """Every event applied (none dead or a duplicate) and every job stored."""
        return self.counts["applied"] == self.events and self.jobs_stored == self.workload.jobs

    @property
    def steady_us_per_event(self) -> float:
        return self.steady_s / max(1, self.events - self.first_batch) * 1e6


# --- Worker rows -------------------------------------------------------------------------------


def prefill(client: redis.Redis, stream: str | Callable[[dict[str, Any]], str],
            events: Iterable[dict[str, Any]], per_second: int | None = None) -> Counter[str]:
    """XADD every event (field ``data``, JSON) in pipelined chunks, to ``stream`` or the
    stream it gives for the event; returns the type mix. ``per_second``: entry ids as if the
    events arrived at that rate from the last whole second on (else Redis's clock decides)."""
    mix: Counter[str] = Counter()
    pipe = client.pipeline(transaction=False)
    queued = 0
    start_ms = int(time.time()) * 1000
    for i, event in enumerate(events):
        mix[event["type"]] += 1
        entry_id = "*" if per_second is None else f"{start_ms + i * 1000 // per_second}-{i}"
        pipe.xadd(stream if isinstance(stream, str) else stream(event),
                  {"data": orjson.dumps(event)}, id=entry_id)
        queued += 1
        if queued == PREFILL_CHUNK:
            pipe.execute()
            queued = 0
    if queued:
        pipe.execute()
    return mix


def _counts(client: redis.Redis, keys: Keys) -> dict[str, int]:
    values = client.hmget(keys.stats, ["applied", "dead", "duplicates"])
    return {name: int(v or 0) for name, v in zip(("applied", "dead", "duplicates"), values)}


def run_row(client: redis.Redis, url: str, workload: Workload, prefix: str, *,
            log_dir: Path, batch_size: int | None, timeout: float,
            py_spy: str | None, idle: bool = False, source: bool = False,
            around: tuple[Callable[[], None], Callable[[], None]] | None = None,
            per_second: int | None = None, wrap: Sequence[str] = (),
            tree: Path | None = None) -> RowResult:
    """Fill, run the worker until everything is applied, measure, stop it; keys stay for cleanup.
    ``around``: called just before the worker starts and just after it applied everything;
    ``per_second``: passed to :func:`prefill`; ``wrap``: a command the worker runs under;
    ``tree``: run the worker of that source tree (another revision's files, from source)."""
    keys = Keys(prefix)
    mem_before = used_memory_mb(client)
    t0 = time.perf_counter()
    mix = prefill(client, keys.events, generate(workload), per_second)
    prefill_s = time.perf_counter() - t0
    mem_filled = used_memory_mb(client)
    redis_cpu_start = redis_cpu_seconds(client)
    if around is not None:
        around[0]()

    run_name = f"{workload.jobs}-jobs-{prefix.split(':')[1]}"
    log_path = log_dir / f"worker-{run_name}.log"
    program = monitor_command() if tree is None else [sys.executable, "-m", "monitor.cli"]
    cmd = [*wrap, *program, "worker", "--redis-url", url, "--prefix", prefix]
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    spy: subprocess.Popen[bytes] | None = None
    with open(log_path, "wb") as log_file:
        start = time.perf_counter()
        env = clean_env() | ({compiled.SWITCH: "0"} if source else {})
        if tree is not None:  # its files first on the path, ahead of this install's (a tree
            env["PYTHONPATH"] = str(tree)  # from git has no compiled modules: it runs source)
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                cwd=tree)
        try:
            if py_spy is not None:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                     str(proc.pid), "--rate", "250", "--format", "raw", "--nonblocking",
                     *(["--idle"] if idle else []), "-o", f"{py_spy}-{run_name}.txt"],
                    stdout=subprocess.DEVNULL, stderr=log_file)
            first: float | None = None
            first_batch = 0
            while True:
                counts = _counts(client, keys)
                now = time.perf_counter()
                if first is None and counts["applied"] > 0:
                    first, first_batch = now, counts["applied"]
                if sum(counts.values()) >= workload.events:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode} after "
                                       f"{counts} of {workload.events}; see {log_path}")
                if now - start > timeout:
                    raise RuntimeError(f"worker did not finish in {timeout:.0f}s "
                                       f"({counts} of {workload.events}); see {log_path}")
                time.sleep(POLL)
            done = now
            rss = peak_rss_mb(proc.pid)
            cpu = cpu_seconds(proc.pid)
            redis_cpu = redis_cpu_seconds(client) - redis_cpu_start
            if around is not None:
                around[1]()
        finally:
            stop_process(proc, "worker")
            if spy is not None:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
    mem_done = used_memory_mb(client)
    assert first is not None
    result = RowResult(
        workload=workload, mix=mix, prefill_s=prefill_s, seconds=done - start,
        steady_s=done - first, cpu_s=cpu, redis_cpu_s=redis_cpu, peak_rss_mb=rss,
        mem_before_mb=mem_before, mem_filled_mb=mem_filled, mem_done_mb=mem_done, counts=counts,
        jobs_stored=int(client.hlen(keys.jobs)), log_path=log_path,
    )
    result.first_batch = first_batch
    return result


# --- The ceiling: Redis's own XADD rate ----------------------------------------------------------


@dataclass
class CeilingRow:
    clients: int
    pipeline: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float


def redis_benchmark_args(url: str) -> list[str]:
    """``-h/-p/-a/--dbnum`` for redis-benchmark from a ``redis://`` URL."""
    parts = urlsplit(url)
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.password:
        args += ["-a", parts.password]
    db = parts.path.lstrip("/")
    if db and db != "0":
        args += ["--dbnum", db]
    return args


def parse_benchmark_csv(stdout: str) -> dict[str, float] | None:
    """The numbers of the last result row of ``redis-benchmark --csv``, by column name.

    The first column, the test's name, is the command as typed and is not escaped (our entry
    holds quotes and commas), so the numbers are read from the right.
    """
    rows = [line for line in stdout.splitlines()
            if line.startswith('"') and not line.startswith('"test"')]
    if not rows:
        return None
    fields = rows[-1].rsplit(",", len(CEILING_COLUMNS))[1:]
    try:
        return dict(zip(CEILING_COLUMNS, (float(x.strip('"')) for x in fields), strict=True))
    except ValueError:
        return None


def xadd_ceiling(client: redis.Redis, url: str, stream: str, entry: bytes,
                 requests: int) -> list[CeilingRow] | str:
    """Redis's own ``XADD <stream> * data <entry>`` rate (redis-benchmark), or why not measured.

    The same entry the worker reads, so the comparison is like for like; the stream is deleted
    after each setting.
    """
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return "redis-benchmark not found (Debian: apt install redis-tools)"
    rows = []
    for clients, pipeline in CEILING_RUNS:
        cmd = [tool, *redis_benchmark_args(url), "-n", str(requests), "-c", str(clients),
               "-P", str(pipeline), "--csv", "XADD", stream, "*", "data", entry.decode()]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        finally:
            client.delete(stream)
        stats = parse_benchmark_csv(r.stdout)
        if r.returncode or stats is None:
            return f"redis-benchmark failed ({r.returncode}): {r.stderr.strip()[-200:]}"
        rows.append(CeilingRow(clients, pipeline, requests, stats["rps"], stats["p50_latency_ms"],
                               stats["p99_latency_ms"]))
    return rows


def ceiling_section(rows: list[CeilingRow] | str, worker_rows: list[RowResult],
                    entry: bytes) -> list[str]:
    lines = ["## The ceiling: Redis's own XADD rate\n"]
    if isinstance(rows, str):
        return lines + [f"Not measured: {rows}.\n"]
    lines.append(f"`redis-benchmark` against the same Redis, in the same run, appending the "
                 f"entry the worker reads most ({len(entry)} bytes, a `metrics` event as "
                 f"field `data`); nothing consumes it. This is what Redis alone can ingest: "
                 f"the physical limit for the whole pipeline.\n")
    lines.append(table(
        ["clients", "pipeline depth", "XADDs", "XADD/s", "p50 ms", "p99 ms"],
        [[str(r.clients), str(r.pipeline), _n(r.requests), _n(r.rps), _f(r.p50_ms, 3),
          _f(r.p99_ms, 3)] for r in rows],
        align=["r"] * 6) + "\n")
    best = max(r.rps for r in rows)
    worst_worker = min(w.events_per_s for w in worker_rows)
    best_worker = max(w.events_per_s for w in worker_rows)
    ratio = best / worst_worker
    headline("Redis's own pipelined XADD rate (redis-benchmark) ÷ the worker's slowest row",
             f"{_n(best)}/s ÷ {_n(worst_worker)}/s = {ratio:.1f}x",
             f"goal ≤ {GOAL_CEILING_RATIO:.0f}x", verdict(None, ratio <= GOAL_CEILING_RATIO))
    span = (_n(worst_worker) if best_worker == worst_worker
            else f"{_n(worst_worker)}–{_n(best_worker)}")
    lines.append(f"- Redis's pipelined XADD ceiling {_n(best)}/s vs the worker's {span} "
                 f"events/s above: the slowest row is "
                 f"**{ratio:.1f}x** below it (goal within {GOAL_CEILING_RATIO:.0f}x: "
                 f"{'met' if ratio <= GOAL_CEILING_RATIO else 'not met'}). The worker does far "
                 f"more per entry than an XADD: it reads the entry back, parses and checks it, "
                 f"folds it, and commits jobs, model rows, metric points and an update in one "
                 f"atomic transaction.")
    return lines


# --- Trainer side and parsing ------------------------------------------------------------------


def bench_log(url: str, prefix: str, rounds: int, calls: int, *,
              with_eval: bool) -> tuple[list[float], int]:
    """µs per ``Run.log`` call for each round (sender thread running), and events dropped."""
    client = redis.Redis.from_url(url)
    stream = Keys(prefix).events
    run = start_run(model_name="bench/Model-7B", total_epochs=3, redis_url=url, prefix=prefix,
                    buffer_size=rounds * calls + 10, flush_timeout=120.0)
    losses = [2.0 - i / 1024 for i in range(1024)]
    per_call = []
    try:
        for _ in range(rounds):
            log = run.log
            if with_eval:
                t0 = time.perf_counter()
                for i in range(calls):
                    log(epoch=1.25, step=i, loss=losses[i & 1023], eval_loss=losses[i & 511])
                elapsed = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                for i in range(calls):
                    log(epoch=1.25, step=i, loss=losses[i & 1023])
                elapsed = time.perf_counter() - t0
            per_call.append(elapsed / calls * 1e6)
            if not run.flush(120.0):
                raise RuntimeError("the SDK could not send its events within 120 s")
            client.delete(stream)  # keep Redis small between rounds; not timed
    finally:
        run.close()
        client.close()
    return per_call, run.stats.dropped


def bench_calls(func: Any, samples: list[bytes], rounds: int) -> list[float]:
    """µs per ``func(sample)`` call over all samples, for each round."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for data in samples:
            func(data)
        out.append((time.perf_counter() - t0) / len(samples) * 1e6)
    return out


def ceiling_entry() -> bytes:
    """A typical ``metrics`` entry of the workload, as the worker reads it."""
    for event in generate(Workload(events=100, jobs=10, models=2)):
        if event["type"] == "metrics" and "eval_loss" in event:
            return orjson.dumps(event)
    raise RuntimeError("the workload has no metrics event with eval_loss")


def parse_samples(count: int) -> dict[str, list[bytes]]:
    """Raw events of each type from the 1,000-job workload, as the worker reads them."""
    by_type: dict[str, list[bytes]] = {}
    mixed: list[bytes] = []
    for event in generate(Workload(events=max(count, 20_000), jobs=1000, models=50, seed=7)):
        data = orjson.dumps(event)
        by_type.setdefault(event["type"], []).append(data)
        if len(mixed) < count:
            mixed.append(data)
    out = {"workload mix": mixed, "metrics": by_type["metrics"][:count]}
    started = by_type["job_started"]
    out["job_started"] = (started * (count // len(started) + 1))[:count]
    return out


# --- Report ------------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def worker_table(rows: list[RowResult]) -> str:
    headers = ["jobs", "models", "events", "seconds", "events/s", "µs/event",
               "seconds from 1st commit", "events/s from 1st commit", "worker CPU µs/event",
               "Redis CPU µs/event", "worker peak RSS MB", "Redis MB before → filled → done"]
    body = []
    for r in rows:
        steady_rate = (r.events - r.first_batch) / r.steady_s if r.steady_s else float("nan")
        body.append([
            _n(r.workload.jobs), _n(r.workload.models), _n(r.events), _f(r.seconds, 2),
            _n(r.events_per_s), _f(r.us_per_event), _f(r.steady_s, 2), _n(steady_rate),
            _f(r.worker_us_per_event), _f(r.redis_us_per_event), _f(r.peak_rss_mb),
            f"{_f(r.mem_before_mb)} → {_f(r.mem_filled_mb)} → {_f(r.mem_done_mb)}",
        ])
    return table(headers, body)


def pick_median(runs: list[RowResult]) -> RowResult:
    """The run with the median time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def verdicts(rows: list[RowResult], runs: list[list[RowResult]]) -> list[str]:
    small, big = rows[0], rows[-1]
    ratio = big.us_per_event / small.us_per_event
    steady = big.steady_us_per_event / small.steady_us_per_event
    cpu = big.worker_us_per_event / small.worker_us_per_event
    worst = min(r.events_per_s for r in rows)
    headline(f"worker events/s, slowest of {len(rows)} rows (up to {_n(big.workload.jobs)} jobs)",
             _n(worst), f"≥ {_n(BAR_EVENTS_PER_S)} (goal {_n(GOAL_EVENTS_PER_S)})",
             verdict(worst >= BAR_EVENTS_PER_S, worst >= GOAL_EVENTS_PER_S))
    headline(f"worker µs/event, {_n(big.workload.jobs)} jobs ÷ {_n(small.workload.jobs)} jobs",
             f"{ratio:.2f}", f"≤ {BAR_RATIO}", verdict(ratio <= BAR_RATIO))
    lines = [
        (f"µs/event ratio ({_n(big.workload.jobs)} jobs / {_n(small.workload.jobs)} jobs): "
         f"**{ratio:.2f}** (bar ≤ {BAR_RATIO}: {'met' if ratio <= BAR_RATIO else 'NOT met'}); "
         f"from 1st commit {steady:.2f}; worker CPU per event {cpu:.2f}"),
        (f"Slowest row: {_n(worst)} events/s (bar ≥ {_n(BAR_EVENTS_PER_S)}: "
         f"{'met' if worst >= BAR_EVENTS_PER_S else 'NOT met'}; goal {_n(GOAL_EVENTS_PER_S)}: "
         f"{'met' if worst >= GOAL_EVENTS_PER_S else 'not met'})"),
    ]
    for r, all_runs in zip(rows, runs):
        if len(all_runs) > 1:
            rates = ", ".join(_n(x.events_per_s) for x in all_runs)
            lines.append(f"{_n(r.workload.jobs)} jobs: {len(all_runs)} runs, events/s {rates}; "
                         f"the table shows the median run")
    for r in rows:
        mix = ", ".join(f"{t} {_n(n)}" for t, n in sorted(r.mix.items(), key=lambda x: -x[1]))
        lines.append(f"{_n(r.workload.jobs)} jobs: mix {mix}; pre-fill {r.prefill_s:.1f}s "
                     f"(not timed); applied {_n(r.counts['applied'])}, dead "
                     f"{_n(r.counts['dead'])}, duplicates {_n(r.counts['duplicates'])}; "
                     f"{_n(r.jobs_stored)} jobs stored; log {r.log_path}")
    for r in rows:
        if not r.applied_cleanly:
            lines.append(f"WARNING: {_n(r.workload.jobs)}-job row did not apply everything "
                         f"cleanly: {r.counts}, {r.jobs_stored} jobs stored")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_throughput",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None,
                        help="events per row (default 200,000; 20,000 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="20,000 events, 10,000 jobs in the big row, fewer SDK rounds")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="passed to the worker (default: the worker's own)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds a row may take before it is abandoned")
    parser.add_argument("--py-spy", metavar="PREFIX", default=None,
                        help="also record the worker with py-spy (raw format) to "
                             "PREFIX-<jobs>-jobs-<run>.txt; the timings then include its overhead")
    parser.add_argument("--idle", action="store_true",
                        help="with --py-spy: also sample while the worker waits (py-spy "
                             "--idle), to see what it waits for")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per row, the median is shown (default 3; 1 with --quick)")
    parser.add_argument("--skip-sdk", action="store_true", help="only the worker table")
    parser.add_argument("--source", action="store_true",
                        help="run the worker's pure core from source (MONITOR_COMPILED=0), "
                             "to compare with the compiled one")
    parser.add_argument("--jobs", default=None,
                        help="comma-separated job counts, one row each (default 1000,100000; "
                             "1000,10000 with --quick)")
    args = parser.parse_args(argv)
    if args.idle and args.py_spy is None:
        parser.error("--idle needs --py-spy")

    events = args.events or (20_000 if args.quick else 200_000)
    big_jobs = 10_000 if args.quick else 100_000
    rounds, calls = (3, 20_000) if args.quick else (7, 100_000)
    repeat = args.repeat or (1 if args.quick else 3)
    url = redis_url()
    client = redis.Redis.from_url(url)
    prefixes: list[str] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    try:
        print("## Worker throughput\n")
        print(machine_line(client) + "\n")
        batch = args.batch_size if args.batch_size is not None else "default (1000)"
        print(f"`monitor worker` as its own process (batch size {batch}), on a stream pre-filled "
              f"before it starts; timed from process start until applied + dead + duplicates "
              f"= events (polled every {POLL * 1000:.0f} ms); its pure core "
              f"{'from source' if args.source or not compiled.in_use() else 'compiled'}.\n")
        runs: list[list[RowResult]] = []
        job_counts = [int(j) for j in args.jobs.split(",")] if args.jobs else [1000, big_jobs]
        for jobs in job_counts:
            workload = Workload(events=events, jobs=jobs, models=50)
            runs.append([])
            for _ in range(repeat):
                prefix = unique_prefix(f"{jobs}j")
                prefixes.append(prefix)
                try:
                    runs[-1].append(run_row(client, url, workload, prefix, log_dir=log_dir,
                                            batch_size=args.batch_size, timeout=args.timeout,
                                            py_spy=args.py_spy, idle=args.idle,
                                            source=args.source))
                finally:
                    delete_prefix(client, prefix)
        rows = [pick_median(row_runs) for row_runs in runs]
        print(worker_table(rows) + "\n")
        for line in verdicts(rows, runs):
            print(f"- {line}")
        print()

        entry = ceiling_entry()
        prefix = unique_prefix("ceiling")
        prefixes.append(prefix)
        ceiling = xadd_ceiling(client, url, f"{prefix}stream", entry,
                               requests=50_000 if args.quick else 500_000)
        for line in ceiling_section(ceiling, rows, entry):
            print(line)
        print()

        if not args.skip_sdk:
            print("## Trainer and parsing cost\n")
            body = []
            log_medians = []
            for with_eval in (False, True):
                prefix = unique_prefix("sdk")
                prefixes.append(prefix)
                try:
                    us, dropped = bench_log(url, prefix, rounds, calls, with_eval=with_eval)
                finally:
                    delete_prefix(client, prefix)
                log_medians.append(median(us))
                what = "run.log(epoch, step, loss" + (", eval_loss)" if with_eval else ")")
                body.append([what, _f(median(us), 2), _f(min(us), 2), _f(max(us), 2),
                             f"{rounds} × {_n(calls)}",
                             f"real Redis, sender thread running; {dropped} dropped"])
            samples = parse_samples(calls if not args.quick else 20_000)
            for name, data in samples.items():
                us = bench_calls(parse_event, data, rounds)
                body.append([f"parse_event ({name})", _f(median(us), 2), _f(min(us), 2),
                             _f(max(us), 2), f"{rounds} × {_n(len(data))}",
                             f"{sum(map(len, data)) / len(data):.0f} bytes on average"])
            us = bench_calls(orjson.loads, samples["metrics"], rounds)
            body.append(["orjson.loads (metrics), a floor", _f(median(us), 2), _f(min(us), 2),
                         _f(max(us), 2), f"{rounds} × {_n(len(samples['metrics']))}", ""])
            print(table(["call", "µs/call (median)", "min", "max", "rounds × calls", "notes"],
                        body, align=["l", "r", "r", "r", "r", "l"]) + "\n")
            log_us = max(log_medians)
            headline("run.log() µs per call (trainer side, median)", f"{log_us:.2f}",
                     f"goal < {GOAL_LOG_US:.0f}", verdict(None, log_us < GOAL_LOG_US))
            print(f"- run.log goal < {GOAL_LOG_US:.0f} µs/call: "
                  f"{'met' if log_us < GOAL_LOG_US else 'NOT met'} (slower variant {log_us:.2f})")
        return 0
    finally:
        for prefix in prefixes:
            delete_prefix(client, prefix)
        client.close()


if __name__ == "__main__":
    sys.exit(main())
