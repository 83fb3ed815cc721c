"""Worker memory and restart: N jobs already stored, ``monitor worker`` started on them.

    .venv/bin/python -m bench.worker_memory [--quick] [--jobs 10000,100000,1000000]

For each row, the state of N jobs over 500 models is written straight into Redis in the
shapes the worker commits (``<prefix>jobs`` with each fold state, ``models``, the order
sets), not timed: each job is one of two jobs folded by the real rules (a
finished one and a running one, 100 events each, SDK event ids), given its own id, model,
times, best eval loss and archived flag (5%); 2% of the jobs are running. Metric histories
are left out (the worker never reads one it does not thin). Then the real worker process
starts, one new event is appended at once, and the report gives:

- the worker's RSS once it has applied that first event, and the time from process start;
- after a stream of metrics events over the running jobs (every model's group, every 10th
  with an eval loss, 1 in 200 archiving a finished job: a cold one), its RSS, peak RSS and
  how fast it applied them.

Every key is written under a fresh ``bench:<random>:`` prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import (
    clean_env,
    cpu_seconds,
    delete_prefix,
    headline,
    machine_line,
    monitor_command,
    peak_rss_mb,
    redis_url,
    rss_mb,
    stop_process,
    table,
    unique_prefix,
    verdict,
)
from bench.workload import Workload, _job_events, model_names
from monitor.decoded import parse_event
from monitor.keys import Keys, model_field
from monitor.records import record
from monitor.rules import Board, Group, JobState, model_display, stored_rank

MODELS = 500
RUNNING_SHARE = 0.02
ARCHIVED_SHARE = 0.05
FILL_CHUNK = 5_000  # jobs per pipelined round trip while filling
POLL = 0.02  # seconds between looks at the stats hash
GOAL_RSS_MB = 1000.0  # at 1,000,000 jobs
GOAL_FIRST_S = 10.0  # process start to the first new event applied
STREAM_EVENTS, QUICK_STREAM_EVENTS = 200_000, 20_000


# --- The stored state -------------------------------------------------------------------------


def templates() -> tuple[JobState, JobState]:
    """A finished job and a running one, each folded from 100 events of the workload."""
    board = Board()
    rng = random.Random(5)
    workload = Workload(events=200, jobs=2, models=1)
    for index, budget in ((0, 100), (1, 100)):
        for n, event in enumerate(_job_events(workload, index, budget, "m", rng)):
            if index == 1 and event["type"] == "job_finished":
                continue  # the running one
            pos = (1_700_000_000_000 + n, 0)
            board.apply(parse_event(orjson.dumps(event)), pos, 1_700_000_000 + n)
    finished, running = (board.jobs[f"job-{i:06d}"] for i in (0, 1))
    assert finished.finished and not running.finished
    return finished, running


@dataclass
class Stored:
    """What was written: the running jobs (for the stream) and the finished ones."""

    running: list[str]
    finished: list[str]
    seconds: float


def fill(client: redis.Redis, keys: Keys, jobs: int, seed: int = 11) -> Stored:
    """Write ``jobs`` jobs' state, as the worker would have committed it."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    finished_tpl, running_tpl = templates()
    tpl = {False: (finished_tpl.public(), finished_tpl.private()),
           True: (running_tpl.public(), running_tpl.private())}
    models = model_names(min(MODELS, jobs))
    groups: dict[str | None, Group] = {}
    stored = Stored([], [], 0.0)
    for start in range(0, jobs, FILL_CHUNK):
        pipe = client.pipeline(transaction=False)
        publics: dict[str, bytes] = {}
        order: dict[str, dict[str, float]] = {}
        for i in range(start, min(jobs, start + FILL_CHUNK)):
            job_id = f"job-{i:07d}"
            model = models[i * len(models) // jobs]
            running = rng.random() < RUNNING_SHARE
            archived = not running and rng.random() < ARCHIVED_SHARE
            base_public, base_private = tpl[running]
            created = 1_700_000_000.0 + i * 7.0
            best = round(rng.uniform(0.2, 1.2), 6)
            public = {**base_public, "id": job_id, "model_name": model,
                      "model_display": model_display(model), "archived": archived,
                      "best_eval_loss": best, "created_at": created,
                      "updated_at": created + 3600.0,
                      "finished_at": None if running else created + 3600.0}
            private = {**base_private, "points": 0,
                       "seen": {"runs": {f"{i:012x}": [100, [], 0]}}}
            publics[job_id] = record(orjson.dumps(public), orjson.dumps(private))
            for key in (keys.order(archived), keys.order(archived, model)):
                order.setdefault(key, {})[job_id] = -created
            groups.setdefault(model, Group(model)).enter(job_id, *stored_rank(job_id, public))
            if running:
                stored.running.append(job_id)
            else:
                stored.finished.append(job_id)
        pipe.hset(keys.jobs, mapping=publics)  # type: ignore[arg-type]
        for key, scored in order.items():
            pipe.zadd(key, scored)
        pipe.execute()
    client.hset(keys.models, mapping={model_field(m): orjson.dumps(g.summary())
                                      for m, g in groups.items()})
    client.set(keys.order_built, "1")
    stored.seconds = time.perf_counter() - t0
    return stored


# --- The worker -----------------------------------------------------------------------------------


def metrics_event(job_id: str, step: int, rng: random.Random) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "metrics", "job_id": job_id, "step": 10_000 + step,
                             "loss": round(rng.uniform(0.2, 1.5), 6)}
    if step % 10 == 0:
        event["eval_loss"] = round(rng.uniform(0.2, 1.3), 6)
    return event


def stream(stored: Stored, count: int, seed: int = 12) -> list[dict[str, Any]]:
    """Metrics over the running jobs, in turn (so every group is touched early); 1 in 200
    archives a finished job."""
    rng = random.Random(seed)
    out = []
    running = stored.running
    for n in range(count):
        if n % 200 == 199 and stored.finished:
            out.append({"type": "job_archived", "job_id": rng.choice(stored.finished)})
        else:
            out.append(metrics_event(running[n % len(running)], n // len(running), rng))
    return out


def append(client: redis.Redis, keys: Keys, events: list[dict[str, Any]]) -> None:
    """XADD ``events`` to the events stream, 5,000 per round trip."""
    for start in range(0, len(events), 5000):
        pipe = client.pipeline(transaction=False)
        for event in events[start : start + 5000]:
            pipe.xadd(keys.events, {"data": orjson.dumps(event)})
        pipe.execute()


def state_mb(client: redis.Redis, prefix: str) -> float:
    """What the keys under ``prefix`` take in Redis (``MEMORY USAGE``, sampled for the big
    ones), in MB: the server's own total moves with everyone else's keys."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key)
    return sum(int(n or 0) for n in pipe.execute()) / 1e6


def applied(client: redis.Redis, keys: Keys) -> int:
    values = client.hmget(keys.stats, ["applied", "duplicates", "dead"])
    return sum(int(v or 0) for v in values)


def wait_applied(client: redis.Redis, keys: Keys, count: int, proc: subprocess.Popen[bytes],
                 timeout: float, log_path: Path) -> float:
    """Poll until ``count`` entries are dealt with; the time then (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if applied(client, keys) >= count:
            return now
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}; see {log_path}")
        if now > deadline:
            raise RuntimeError(f"the worker did not apply {count} entries in {timeout:.0f}s; "
                               f"see {log_path}")
        time.sleep(POLL)


@dataclass
class Row:
    jobs: int
    running: int
    fill_s: float
    redis_mb: float
    first_s: float
    rss_first_mb: float
    events: int
    pass_s: float
    stream_s: float
    cpu_s: float
    rss_after_mb: float
    peak_mb: float
    log_path: Path


def run_row(client: redis.Redis, url: str, jobs: int, events: int, log_dir: Path,
            timeout: float, worker_args: list[str], worker_path: str | None) -> Row:
    prefix = unique_prefix(f"mem{jobs}")
    keys = Keys(prefix)
    try:
        stored = fill(client, keys, jobs)
        redis_mb = state_mb(client, prefix)
        first = metrics_event(stored.running[0], 0, random.Random(1))
        work = stream(stored, events)
        log_path = log_dir / f"worker-{jobs}.log"
        cmd = monitor_command() + ["worker", "--redis-url", url, "--prefix", prefix,
                                   *worker_args]
        with open(log_path, "wb") as log_file:
            start = time.perf_counter()
            env = clean_env()
            if worker_path is not None:
                env["PYTHONPATH"] = worker_path
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            try:
                client.xadd(keys.events, {"data": orjson.dumps(first)})
                first_at = wait_applied(client, keys, 1, proc, timeout, log_path)
                rss_first = rss_mb(proc.pid)
                # First one event per running job (every group touched: what the worker
                # keeps is read by the time they are applied), then the rest.
                first_pass = min(len(stored.running), len(work))
                sent_at = time.perf_counter()
                cpu_before = cpu_seconds(proc.pid)
                append(client, keys, work[:first_pass])
                pass_at = wait_applied(client, keys, 1 + first_pass, proc, timeout, log_path)
                append(client, keys, work[first_pass:])  # applied as they arrive
                done_at = wait_applied(client, keys, 1 + len(work), proc, timeout, log_path)
                cpu = cpu_seconds(proc.pid) - cpu_before
                rss_after, peak = rss_mb(proc.pid), peak_rss_mb(proc.pid)
            finally:
                stop_process(proc, "worker")
        return Row(jobs, len(stored.running), stored.seconds, redis_mb, first_at - start,
                   rss_first, len(work), pass_at - sent_at, done_at - sent_at, cpu, rss_after,
                   peak, log_path)
    finally:
        delete_prefix(client, prefix)


def report(rows: list[Row]) -> list[str]:
    headers = ["jobs", "models", "running", "fill s (not timed)", "Redis MB of state",
               "start → 1st event applied s", "RSS after 1st event MB", "stream events",
               "1st pass over the running jobs s", "whole stream s", "events/s",
               "worker CPU µs/event", "RSS after stream MB", "peak RSS MB"]
    body = [[f"{r.jobs:,}", f"{min(MODELS, r.jobs):,}", f"{r.running:,}", f"{r.fill_s:.1f}",
             f"{r.redis_mb:,.0f}", f"{r.first_s:.2f}", f"{r.rss_first_mb:,.0f}",
             f"{r.events:,}", f"{r.pass_s:.2f}", f"{r.stream_s:.2f}",
             f"{r.events / r.stream_s:,.0f}", f"{r.cpu_s / r.events * 1e6:.1f}", f"{r.rss_after_mb:,.0f}", f"{r.peak_mb:,.0f}"]
            for r in rows]
    lines = [table(headers, body) + "\n"]
    big = rows[-1]
    headline(f"worker peak RSS, {big.jobs:,} jobs stored and a stream applied",
             f"{big.peak_mb:,.0f} MB", f"goal < {GOAL_RSS_MB:,.0f} MB at 1,000,000",
             verdict(None, big.peak_mb < GOAL_RSS_MB))
    headline(f"worker start to its first new event applied, {big.jobs:,} jobs stored",
             f"{big.first_s:.2f} s", f"goal < {GOAL_FIRST_S:.0f} s",
             verdict(None, big.first_s < GOAL_FIRST_S))
    lines.append(f"- Peak RSS at {big.jobs:,} jobs: {big.peak_mb:,.0f} MB (goal < "
                 f"{GOAL_RSS_MB:,.0f} MB at 1,000,000: "
                 f"{'met' if big.peak_mb < GOAL_RSS_MB else 'not met'}); start to the first "
                 f"event applied {big.first_s:.2f} s (goal < {GOAL_FIRST_S:.0f} s: "
                 f"{'met' if big.first_s < GOAL_FIRST_S else 'not met'}).")
    lines.append("- The stream's first pass over the running jobs (one event each, every "
                 "model group touched) reads what each group ranks (its jobs' stored states, "
                 "once) and the running jobs' states: the time until the worker has all it "
                 "keeps. The events/s of the whole stream include it.")
    for r in rows:
        lines.append(f"- {r.jobs:,} jobs: worker log {r.log_path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"one row of 20,000 jobs and a stream of "
                             f"{QUICK_STREAM_EVENTS:,} events")
    parser.add_argument("--jobs", default=None,
                        help="comma-separated job counts, one row each (default "
                             "10000,100000,1000000; 20000 with --quick)")
    parser.add_argument("--events", type=int, default=None,
                        help=f"events in the stream (default {STREAM_EVENTS:,})")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds the worker may take for a step before the row is "
                             "abandoned")
    parser.add_argument("--worker-arg", action="append", default=[],
                        help="passed on to `monitor worker` (repeat for several)")
    parser.add_argument("--worker-path", default=None,
                        help="PYTHONPATH of the worker process only: another checkout's "
                             "worker, on the same stored state (for a before/after)")
    args = parser.parse_args(argv)
    default_jobs = "20000" if args.quick else "10000,100000,1000000"
    job_counts = [int(j) for j in (args.jobs or default_jobs).split(",")]
    events = args.events or (QUICK_STREAM_EVENTS if args.quick else STREAM_EVENTS)
    url = redis_url()
    client = redis.Redis.from_url(url)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-worker-memory-"))
    try:
        print("## Worker memory and restart\n")
        print(machine_line(client) + "\n")
        print(f"N jobs over {MODELS} models already stored ({RUNNING_SHARE:.0%} running, "
              f"{ARCHIVED_SHARE:.0%} archived), then `monitor worker` started"
              + (f" with `{' '.join(args.worker_arg)}`" if args.worker_arg else "")
              + (f" from `{args.worker_path}`" if args.worker_path else "")
              + f": one new event at once, then a stream of {events:,} events over the "
              "running jobs. RSS is the worker process's (VmRSS; peak: VmHWM).\n")
        rows = [run_row(client, url, jobs, events, log_dir, args.timeout, args.worker_arg,
                        args.worker_path) for jobs in job_counts]
        for line in report(rows):
            print(line)
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
