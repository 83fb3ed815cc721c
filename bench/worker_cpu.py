"""The worker's own CPU per event, without Redis: decode, fold, build the commit, pack it.

    python -m bench.worker_cpu [--jobs 1000,100000] [--events N] [--callgrind] [--quick]

``bench.worker_throughput`` times the whole worker against Redis; on a shared 2-core machine
its figures move by 10% from one run to the next, more than most changes to the hot path
are worth. This runs the same pure steps the worker runs on each batch (``worker.batch``
``decode``, ``fold``, ``build_commit``, then ``worker.writes.writes`` and the packing of the
transaction) over the same synthetic stream, and reports CPU time per event (best of
``--repeat``). Where the install compiled the pure core (monitor/compiled.py), each row runs
it compiled and from source (``MONITOR_COMPILED=0``), each in a new process, the two taking
turns, and gives their ratio. With ``--callgrind`` it also counts the instructions per event
under ``valgrind --tool=callgrind``: the same count for the same code on any run, whatever
else the machine does, so two revisions compare exactly (run it in a worktree of each).
What the worker does around these steps (reading the stream, loading cold jobs, asyncio)
is not counted here.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson

from bench.common import headline, table
from bench.workload import Workload, generate
from monitor import compiled
from monitor.keys import Keys
from monitor.rules import Board
from worker.batch import Entry, build_commit, decode, fold
from worker.resp import pack
from worker.writes import writes

BATCH = 1000  # the worker's default batch size
GC_THRESHOLD = (50_000, 20, 100)  # as the worker sets it (worker.consumer.run_worker)


def entries_of(workload: Workload) -> list[Entry]:
    """The stream as the worker reads it: ids ``<ms>-0`` and the JSON in field ``data``."""
    start = 1_700_000_000_000
    return [(f"{start + i}-0", {b"data": orjson.dumps(event)})
            for i, event in enumerate(generate(workload))]


def transactions(entries: list[Entry], board: Board, batch: int = BATCH) -> Iterator[bytes]:
    """What the worker computes for each batch of ``entries`` folded into ``board``: the
    packed transaction it would send to Redis."""
    keys = Keys("bench:cpu:")
    for start in range(0, len(entries), batch):
        folded = fold(board, decode(entries[start:start + batch]))
        commit = build_commit(board, folded, keys, {}, {})
        yield pack(writes(keys, commit, updates_keep=10_000, dead_keep=1_000))


def apply_all(entries: list[Entry]) -> None:
    """:func:`transactions` of ``entries``, on one board kept in memory."""
    for _ in transactions(entries, Board()):
        pass


def cpu_us_per_event(entries: list[Entry], repeat: int) -> float:
    """The best of ``repeat`` runs, in CPU µs per event."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        apply_all(entries)
        best = min(best, time.process_time() - started)
    return best / len(entries) * 1e6


def measured(jobs: int, events: int, repeat: int, source: bool) -> float:
    """:func:`cpu_us_per_event` for one row, in a new process: compiled, or from source."""
    env = {**os.environ, compiled.SWITCH: "0"} if source else dict(os.environ)
    done = subprocess.run([sys.executable, "-m", "bench.worker_cpu", "--phase", "measure",
                           "--jobs", str(jobs), "--events", str(events),
                           "--repeat", str(repeat)],
                          capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


def instructions(jobs: int, events: int, phase: str) -> int:
    """Instructions this module executes under callgrind, for ``phase`` ``setup`` (build
    the stream) or ``run`` (build it and apply it)."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           "-m", "bench.worker_cpu", "--phase", phase, "--jobs", str(jobs),
           "--events", str(events)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind said no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_cpu",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default=None,
                        help="comma-separated job counts, one row each (default 1000,100000; "
                             "1000,10000 with --quick)")
    parser.add_argument("--events", type=int, default=None,
                        help="events per row (default 200,000; 20,000 with --quick or "
                             "--callgrind)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best counts")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per event under valgrind (about 100 s "
                             "per row)")
    parser.add_argument("--quick", action="store_true", help="small rows, one run each")
    parser.add_argument("--phase", choices=("setup", "run", "measure"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLD)

    small = args.quick or args.callgrind
    events = args.events or (20_000 if small else 200_000)
    default_jobs = "1000,10000" if small else "1000,100000"
    job_counts = [int(j) for j in (args.jobs or default_jobs).split(",")]
    if args.phase is not None:  # one side of a callgrind count (see instructions()), or
        entries = entries_of(Workload(events=events, jobs=job_counts[0], models=50))
        if args.phase == "run":
            apply_all(entries)
        elif args.phase == "measure":  # one side of the compiled/source comparison
            print(cpu_us_per_event(entries, args.repeat))
        return 0
    if args.callgrind and shutil.which("valgrind") is None:
        parser.error("--callgrind needs valgrind (apt-get install valgrind)")

    repeat = 1 if args.quick else args.repeat
    both = compiled.in_use()
    print("## Worker CPU per event, without Redis\n")
    print(f"The pure steps of each batch of {BATCH:,} (decode, fold, build the commit, pack "
          f"the transaction) over `bench.workload`'s stream; CPU time is the best of {repeat} "
          f"run(s), "
          + ("the compiled pure core and its source (`MONITOR_COMPILED=0`) taking turns, each "
             "run in a new process.\n" if both else
             "from source: this install did not compile the pure core.\n"))
    rows = []
    for jobs in job_counts:
        workload = Workload(events=max(events, 2 * jobs), jobs=jobs, models=50)
        kinds = (False, True) if both else (True,)  # source?
        best = {kind: float("inf") for kind in kinds}
        for _ in range(repeat):
            for kind in kinds:
                best[kind] = min(best[kind], measured(jobs, workload.events, 1, kind))
        row = [f"{jobs:,}", f"{workload.events:,}"]
        row += [f"{best[False]:.1f}", f"{best[True]:.1f}",
                f"{best[False] / best[True]:.2f}"] if both else [f"{best[True]:.1f}"]
        if args.callgrind:
            counted = (instructions(jobs, workload.events, "run")
                       - instructions(jobs, workload.events, "setup"))
            row.append(f"{counted / workload.events:,.0f}")
        rows.append(row)
        us = best[False] if both else best[True]
        headline(f"worker CPU per event without Redis, {jobs:,} jobs"
                 + ("" if both else " (from source)"), f"{us:.1f} µs")
    headers = ["jobs", "events"]
    headers += (["compiled CPU µs/event", "source CPU µs/event", "compiled / source"] if both
                else ["CPU µs/event"])
    if args.callgrind:
        headers.append("instructions/event (callgrind)")
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
