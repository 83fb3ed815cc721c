"""Redis's work per event: the instructions a private ``redis-server`` executes while one worker
applies a pre-filled stream, counted by valgrind's callgrind.

    .venv/bin/python -m bench.redis_work [--jobs 10000,100000] [--events-per-job 2] [--worker]
                                         [--rev REV]

Redis CPU time per event moves with the host (two 2-core hosts a day apart ran 7.3 and 2.6
Redis instructions per ns: docs/scale-out.md); the instructions Redis executes for the same
commands do not. So this counts them: ``redis-server`` runs under ``valgrind --tool=callgrind`` with
instrumentation off while the stream fills, on while ``monitor worker`` applies it
(``bench.worker_throughput``'s row, the same workload), and the table gives the count per
event and the commands it went to. Compare two versions of the worker by this count; the
timings under valgrind mean nothing. ``--worker`` counts the worker process's side too: it
runs under callgrind as well, counting what its asyncio tasks run (reading, folding,
committing; not the imports before, nor the event loop's own callbacks). Needs valgrind and redis-server (``apt-get install
valgrind redis-server``); a row of 200,000 events takes about a minute, 6 with ``--worker``.
``--rev REV`` counts the same for another revision's worker (extracted from git and run from
its source, as ``bench.versus`` does): Redis's side of two versions, compared exactly.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import versus
from bench.common import free_port, stop_process, table, unique_prefix
from bench.worker_throughput import run_row
from bench.workload import Workload
from monitor import compiled

# The commands a commit and a read send, by the function that runs each in Redis 7.
COMMANDS = {"zaddCommand": "ZADD", "hsetCommand": "HSET", "rpushCommand": "RPUSH",
            "saddCommand": "SADD", "xreadCommand": "XREADGROUP", "xaddCommand": "XADD",
            "hmgetCommand": "HMGET",
            "processMultibulkBuffer": "reading requests"}
# The stream's entry ids say the events arrived at this rate (the worker's goal), whatever
# the rate they were written at under valgrind: what depends on arrival times (the liveness
# commit says a job's second in <prefix>heard when it changes) is then the same on every run.
ARRIVALS_PER_S = 50_000
_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(\w+) \[")


@dataclass
class Row:
    workload: Workload
    instructions: int
    by_function: dict[str, int]
    worker_instructions: int | None = None

    @property
    def per_event(self) -> float:
        return self.instructions / self.workload.events


def dump_total(path: Path) -> int:
    """The instructions a callgrind dump counted."""
    if not path.exists():
        raise RuntimeError(f"callgrind wrote no {path.name} (was the process killed?); "
                           f"see {path.parent}")
    total = 0
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
    return total


class CountedRedis:
    """A private ``redis-server`` under callgrind, instrumented only when told."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir
        self.port = free_port()
        self.out = work_dir / "redis.cg"
        self.log = work_dir / "redis-valgrind.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={self.out}", "redis-server", "--port", str(self.port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(work_dir)],
                stdout=log, stderr=subprocess.STDOUT)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dumps = 0

    def wait_ready(self, timeout: float = 60.0) -> None:
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server under valgrind did not answer; see "
                                           f"{self.log}") from None
                    time.sleep(0.2)
        finally:
            client.close()

    def _control(self, *args: str) -> None:
        done = subprocess.run(["callgrind_control", *args, str(self.proc.pid)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"callgrind_control {' '.join(args)} failed: {done.stderr}")

    def start(self) -> None:
        self._control("-i", "on")

    def stop(self) -> None:
        """Count no more; write what was counted since the last dump to a new dump file."""
        self._control("-i", "off")
        self._control("-d")
        self.dumps += 1

    def last_dump(self) -> tuple[int, dict[str, int]]:
        """The last dump's total and the inclusive count of each function in ``COMMANDS``."""
        path = Path(f"{self.out}.{self.dumps}")
        total = dump_total(path)
        # --threshold=100: every function, not only those the first 99% of the count reach
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                                    str(path)],
                                   check=True, capture_output=True, text=True).stdout
        by_function: dict[str, int] = {}
        for line in annotated.splitlines():
            m = _LINE.match(line)
            if m and m.group(2) in COMMANDS and m.group(2) not in by_function:
                by_function[m.group(2)] = int(m.group(1).replace(",", ""))
        return total, by_function

    def close(self) -> None:
        stop_process(self.proc, "redis-server under valgrind")


def measure(server: CountedRedis, workload: Workload, log_dir: Path, worker: bool,
            tree: Path | None = None) -> Row:
    """One row; with ``worker``, the worker runs under callgrind too, counting only inside
    its asyncio tasks (``--toggle-collect``): its imports and start-up stay out. ``tree``:
    the worker of that source tree (another revision's files)."""
    client = redis.Redis.from_url(server.url)
    prefix = unique_prefix(f"{workload.jobs}j")
    worker_out = log_dir / f"worker-{workload.jobs}.cg"
    wrap = ["valgrind", "--tool=callgrind", "--toggle-collect=task_step_impl",
            f"--callgrind-out-file={worker_out}"] if worker else []
    try:
        run_row(client, server.url, workload, prefix, log_dir=log_dir, batch_size=None,
                timeout=3600.0, py_spy=None, around=(server.start, server.stop),
                per_second=ARRIVALS_PER_S, wrap=wrap, tree=tree)
    finally:
        client.flushdb()
        client.close()
    total, by_function = server.last_dump()
    row = Row(workload, total, by_function)
    if worker:
        row.worker_instructions = dump_total(worker_out)
        if not row.worker_instructions:
            raise RuntimeError(f"callgrind counted nothing in the worker's asyncio tasks "
                               f"(no task_step_impl in this Python?); see {log_dir}")
    return row


def rows_table(rows: list[Row]) -> str:
    workers = any(row.worker_instructions is not None for row in rows)
    headers = ["jobs", "events", *(["worker instructions/event"] if workers else []),
               "Redis instructions/event",
               *(f"{name} /event" for name in COMMANDS.values()), "the rest /event"]
    body = []
    for row in rows:
        events = row.workload.events
        parts = [row.by_function.get(function, 0) for function in COMMANDS]
        worker = ([f"{(row.worker_instructions or 0) / events:,.0f}"] if workers else [])
        body.append([f"{row.workload.jobs:,}", f"{events:,}", *worker, f"{row.per_event:,.0f}",
                     *(f"{n / events:,.0f}" for n in parts),
                     f"{(row.instructions - sum(parts)) / events:,.0f}"])
    return table(headers, body, align=["r"] * len(headers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_work",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default=None,
                        help="comma-separated job counts, one row each (default 10000,100000; "
                             "1000 with --quick)")
    parser.add_argument("--events-per-job", type=int, default=2,
                        help="events per job (default 2: a job_started and a metrics event "
                             "each, the most Redis work per event)")
    parser.add_argument("--worker", action="store_true",
                        help="also count the worker's instructions per event (it runs under "
                             "callgrind too: about 6 minutes per 200,000 events)")
    parser.add_argument("--rev", default=None,
                        help="count for this revision's worker instead of this tree's (from "
                             "git, run from its source)")
    parser.add_argument("--quick", action="store_true", help="one row of 1,000 jobs")
    args = parser.parse_args(argv)
    commit = versus.resolve(args.rev, "bench.redis_work") if args.rev is not None else None
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "redis-server"):
        if shutil.which(tool) is None:
            parser.error(f"needs {tool} (apt-get install valgrind redis-server)")
    if args.events_per_job < 2:
        parser.error("--events-per-job must be at least 2")
    job_counts = ([int(j) for j in args.jobs.split(",")] if args.jobs
                  else [1000] if args.quick else [10_000, 100_000])
    work_dir = Path(tempfile.mkdtemp(prefix="bench-redis-work-"))
    tree = None
    if commit is not None:
        tree = work_dir / "tree"
        tree.mkdir()
        versus.extract(commit, tree, "bench.redis_work")
    server = CountedRedis(work_dir)
    try:
        server.wait_ready()
        rows = []
        for jobs in job_counts:
            workload = Workload(events=jobs * args.events_per_job, jobs=jobs, models=50)
            print(f"counting {workload.events:,} events over {jobs:,} jobs...", file=sys.stderr)
            rows.append(measure(server, workload, work_dir, args.worker, tree))
    except BaseException:
        server.close()
        print(f"logs and counts kept in {work_dir}", file=sys.stderr)
        raise
    server.close()
    shutil.rmtree(work_dir, ignore_errors=True)
    print("## Redis's work per event\n")
    who = (f"`monitor worker` of {args.rev} ({commit[:10]}, from its source)"
           if commit is not None else "`monitor worker`")
    print(f"Instructions a private `redis-server` executed (valgrind's callgrind) while one "
          f"{who} applied a pre-filled stream of {args.events_per_job} events per "
          f"job over 50 models (`bench.workload`; entry ids as if {ARRIVALS_PER_S:,} events "
          f"arrived a second), from just before it started until it had applied them all "
          f"(the bench's polling included); for the same code, runs on any host differ by "
          f"3% at most. Per command: what Redis spent "
          f"running it (inclusive), and reading requests; the rest is the transaction's "
          f"bookkeeping, replies and the event loop."
          + (" The worker's count is what its asyncio tasks ran (not the event loop's own "
             "callbacks nor the imports), its pure core "
             f"{'compiled' if compiled.in_use() and commit is None else 'from source'}; "
             "with the worker slowed "
             "by valgrind, Redis counts a few % more (its idle work grows with the run's "
             "length)." if args.worker else "")
          + "\n")
    print(rows_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
