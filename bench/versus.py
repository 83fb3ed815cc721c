"""This tree's worker against another revision's, on one host and one Redis, taking turns.

    .venv/bin/python -m bench.versus [REV] [--jobs 1000,100000] [--events N] [--repeat 3]

A worker's events per second move with the host: the same code ran 2.8 to 3.3 times slower on
one day's 2-core host than on the day before's (docs/scale-out.md). The ratio of two versions
measured in one run, on one host, moves far less; so a goal set on one host is checked on
another as a ratio to the code it was set against. This extracts REV's files from git (``git
archive``) into a temporary directory and runs ``bench.worker_throughput``'s row for each
version in turn: the same pre-filled stream, the worker as its own process, this tree's as
installed (compiled where the install compiled it) and REV's from its source (its files first
on ``PYTHONPATH``; this install's compiled core is not used). The tables give each version's
medians of ``--repeat`` runs, their ratios, and each turn's ratio (its two runs ran one after
the other, so the host's drift moves it least).

REV defaults to :data:`BASELINE`, the code on main when the scale-out goals were set (one
worker process at least 50,000 events/s at 100,000 jobs, Redis at most 5 µs of CPU per event,
on a host where that code ran about 24,000 events/s and Redis 12.9 µs per event). Against it,
the 100,000-job row says what the goals become as ratios, whether they are met, and what this
tree would run on that host (a projection by the ratio, not a measurement).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.common import (
    delete_prefix,
    headline,
    machine_line,
    median,
    redis_url,
    table,
    unique_prefix,
    verdict,
)
from bench.worker_throughput import RowResult, run_row
from bench.workload import Workload

BASELINE = "6fd5817"  # main on 2026-12-05 when the scale-out goals were set, before partitions
BASELINE_EVENTS_PER_S = 24_000  # what it ran there, per worker process
BASELINE_REDIS_US = 12.9  # Redis CPU per event there
GOAL_EVENTS_PER_S = 50_000
GOAL_REDIS_US = 5.0
GOAL_JOBS = 100_000  # the goals are for this many jobs
ROOT = Path(__file__).resolve().parent.parent  # the checkout this module is in


@dataclass
class Side:
    """One version's runs of one row."""
    name: str
    runs: list[RowResult]

    @property
    def events_per_s(self) -> float:
        return median([r.events_per_s for r in self.runs])

    @property
    def worker_us(self) -> float:
        return median([r.worker_us_per_event for r in self.runs])

    @property
    def redis_us(self) -> float:
        return median([r.redis_us_per_event for r in self.runs])


def resolve(rev: str, tool: str = "bench.versus") -> str:
    """The commit ``rev`` names in this checkout, or exit saying why not (as ``tool``)."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet",
                           f"{rev}^{{commit}}"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tool}: {rev!r} is not a commit of the git checkout at {ROOT} "
                         f"(a shallow clone may lack it: git fetch --unshallow)")
    return done.stdout.strip()


def extract(commit: str, into: Path, tool: str = "bench.versus") -> None:
    """``commit``'s files into ``into`` (``git archive`` piped to ``tar``)."""
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                               stdout=subprocess.PIPE)
    assert archive.stdout is not None
    untar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=False)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"{tool}: could not extract {commit} into {into}")


def checked(result: RowResult, who: str) -> RowResult:
    """``result``, if that worker applied every event and stored every job."""
    if not result.applied_cleanly:
        raise SystemExit(f"bench.versus: {who}'s worker did not apply the stream cleanly: "
                         f"{result.counts}, {result.jobs_stored:,} jobs stored of "
                         f"{result.workload.jobs:,}; see {result.log_path}")
    return result


def ratio_goals(this: Side, other: Side) -> list[str]:
    """The goals as ratios to :data:`BASELINE`, their verdicts, and the projection."""
    rate, redis_cpu = this.events_per_s / other.events_per_s, this.redis_us / other.redis_us
    need_rate = GOAL_EVENTS_PER_S / BASELINE_EVENTS_PER_S
    need_redis = GOAL_REDIS_US / BASELINE_REDIS_US
    headline(f"worker events/s at {GOAL_JOBS:,} jobs ÷ {BASELINE}'s, same host and run",
             f"{rate:.2f}x", f"goal ≥ {need_rate:.2f}x", verdict(None, rate >= need_rate))
    headline(f"Redis CPU per event at {GOAL_JOBS:,} jobs ÷ {BASELINE}'s, same host and run",
             f"{redis_cpu:.2f}x", f"goal ≤ {need_redis:.2f}x",
             verdict(None, redis_cpu <= need_redis))
    met = {True: "met", False: "not met"}
    return [
        (f"The goals, set where {BASELINE} ran {BASELINE_EVENTS_PER_S:,} events/s and Redis "
         f"{BASELINE_REDIS_US} µs per event: ≥ {GOAL_EVENTS_PER_S:,} events/s is "
         f"**≥ {need_rate:.2f}x** its rate, ≤ {GOAL_REDIS_US:g} µs is **≤ {need_redis:.2f}x** "
         f"its Redis CPU per event."),
        (f"Measured here: **{rate:.2f}x** its events/s ({met[rate >= need_rate]}), "
         f"**{redis_cpu:.2f}x** its Redis CPU per event ({met[redis_cpu <= need_redis]})."),
        (f"Projection to the host the goals were set on (the ratios times its figures; not a "
         f"measurement): about {rate * BASELINE_EVENTS_PER_S:,.0f} events/s and "
         f"{redis_cpu * BASELINE_REDIS_US:.1f} µs of Redis CPU per event."),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versus",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("rev", nargs="?", default=BASELINE,
                        help=f"the revision to run against (default {BASELINE}, the code the "
                             f"scale-out goals were set against)")
    parser.add_argument("--jobs", default=None,
                        help="comma-separated job counts, one row each (default 1000,100000; "
                             "1000,10000 with --quick)")
    parser.add_argument("--events", type=int, default=None,
                        help="events per row (default 200,000; 20,000 with --quick)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per version and row, taking turns; medians are shown "
                             "(default 3; 1 with --quick)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds a run may take before it is abandoned")
    parser.add_argument("--quick", action="store_true", help="small rows, one run each")
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.quick else 200_000)
    repeat = args.repeat or (1 if args.quick else 3)
    job_counts = [int(j) for j in (args.jobs or ("1000,10000" if args.quick
                                                 else f"1000,{GOAL_JOBS}")).split(",")]
    commit = resolve(args.rev)
    name = args.rev if args.rev != commit else commit[:7]

    url = redis_url()
    client = redis.Redis.from_url(url)
    machine = machine_line(client)
    work = Path(tempfile.mkdtemp(prefix="bench-versus-"))
    tree = work / "tree"
    tree.mkdir()
    extract(commit, tree)
    rows: list[tuple[int, Side, Side]] = []
    try:
        for jobs in job_counts:
            workload = Workload(events=max(events, 2 * jobs), jobs=jobs, models=50)
            this, other = Side("this tree", []), Side(name, [])
            for turn in range(repeat):  # taking turns, each first every other time
                order = [(this, None), (other, tree)]
                for side, source in order if turn % 2 == 0 else reversed(order):
                    prefix = unique_prefix(f"vs{jobs}")
                    print(f"{side.name}, {jobs:,} jobs, run {turn + 1} of {repeat}",
                          file=sys.stderr, flush=True)
                    try:
                        side.runs.append(checked(
                            run_row(client, url, workload, prefix, log_dir=work,
                                    batch_size=None, timeout=args.timeout, py_spy=None,
                                    tree=source), side.name))
                    finally:
                        delete_prefix(client, prefix)
            rows.append((jobs, this, other))
    finally:
        client.close()
        shutil.rmtree(tree)  # REV's files (git has them); the workers' logs stay

    print(f"## This worker against {name}\n")
    print(machine + "\n")
    print(f"`python -m bench.versus {args.rev}`: `bench.worker_throughput`'s row for this tree "
          f"({ROOT}) and for {name} ({commit}, from its source), taking turns, {repeat} run(s) "
          f"each; per row the same stream of {events:,} events (at least 2 per job) over 50 "
          f"models, pre-filled before each run. Medians.\n")
    body = []
    for jobs, this, other in rows:
        for side in (other, this):
            body.append([f"{jobs:,}", side.name, f"{side.events_per_s:,.0f}",
                         f"{side.worker_us:.1f}", f"{side.redis_us:.1f}",
                         ", ".join(f"{r.events_per_s:,.0f}" for r in side.runs)])
    print(table(["jobs", "version", "events/s", "worker CPU µs/event", "Redis CPU µs/event",
                 "each run's events/s"], body, align=["r", "l", "r", "r", "r", "l"]) + "\n")
    print(table(["jobs", "events/s ratio", "worker CPU ratio", "Redis CPU ratio",
                 "each turn's events/s ratio"],
                [[f"{jobs:,}", f"{this.events_per_s / other.events_per_s:.2f}x",
                  f"{this.worker_us / other.worker_us:.2f}x",
                  f"{this.redis_us / other.redis_us:.2f}x",
                  ", ".join(f"{a.events_per_s / b.events_per_s:.2f}x"
                            for a, b in zip(this.runs, other.runs, strict=True))]
                 for jobs, this, other in rows], align=["r"] * 4 + ["l"]) + "\n")
    print(f"Ratios are this tree ÷ {name} (of the medians; a turn's, of its two runs, which ran "
          f"one after the other): above 1 is more events/s, below 1 less CPU. The host's "
          f"speed drifts between runs, so a turn's ratio moves too. Logs: `{work}`.\n")
    for jobs, this, other in rows:
        if commit.startswith(BASELINE) and jobs == GOAL_JOBS:
            for line in ratio_goals(this, other):
                print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
