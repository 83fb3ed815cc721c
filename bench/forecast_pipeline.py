"""The forecast through the real pipeline: ``python -m bench.forecast_pipeline [--quick]``.

Replays the real learning curves of ``bench/data/curves.json`` as raw XADDs into a running
``monitor worker`` and ``monitor gateway`` (processes) with the advisor (``worker.advisor``,
in this process, on a thread of its own, so its CPU per forecast can be read), and reads the
forecasts back from ``/ws``, as a page would. Per dataset (one model group), a few runs
(seeded) finish first; the rest then run in step, one eval point each per round. After each
round, once every running run's forecast has caught up with its new point, what each run was
told is recorded against the best of the rest of its group at that moment.

Reported: per dataset and overall, the precision of ``cannot_win`` (of the runs told so, the
share that ended no better than every best they were told they could not beat), eventual
winners told ``cannot_win``, the share of the losing runs' epochs those calls would save; a
calibration table of ``p_beat_best``; the advisor's CPU per forecast and forecasts per second
on one core; and the delay from an eval point's XADD to its forecast on ``/ws`` (p50/p95), with
the default debounce (``MONITOR_ADVISOR_DEBOUNCE``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
import websockets

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
from bench.curves import Dataset, Run, load_curves
from monitor.settings import AdvisorSettings
from worker.advisor import Advisor

FINISHED_FIRST = 5  # runs per dataset that finish before the rest start
QUICK_RUNS, QUICK_EPOCHS = 12, 20  # --quick: runs per dataset and eval points, two datasets
ROUND_TIMEOUT = 60.0  # seconds a round may take to be forecast (a safety net)
SETTLE = 0.4  # seconds without a new forecast after which a round counts as settled
P_BINS = ((0.0, 0.01), (0.01, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 1.0001))


@dataclass
class Track:
    """One running run: what it was told, round by round."""

    job_id: str
    run: Run
    final_best: float
    is_winner: bool = False
    first_stop: int | None = None  # the round of its first cannot_win
    stop_bests: list[float] = field(default_factory=list)  # bests it was told it can't beat
    calls: list[tuple[float, bool]] = field(default_factory=list)  # (p_beat_best, beat it)


@dataclass
class Group:
    dataset: Dataset
    model: str
    finished: list[Run]
    running: list[Track]

    @property
    def base(self) -> float:
        return min(r.best_eval_loss for r in self.finished)

    def other_best(self, track: Track, k: int) -> float:
        """The best of the rest of the group after ``k`` rounds."""
        rest = [min(t.run.eval_loss[:k]) for t in self.running if t is not track]
        return min([self.base, *rest])


def plan(datasets: Sequence[Dataset], quick: bool, seed: int) -> list[Group]:
    groups = []
    for d in datasets[:2] if quick else datasets:
        rng = random.Random(f"{seed}:{d.name}")
        runs = rng.sample(list(d.runs), QUICK_RUNS) if quick else list(d.runs)
        if quick:
            runs = [_cut(r, QUICK_EPOCHS) for r in runs]
        finished = runs[:FINISHED_FIRST]
        model = f"bench/{d.name}"
        tracks = [Track(f"{d.name}-{r.run_id}", r, r.best_eval_loss) for r in runs[FINISHED_FIRST:]]
        group = Group(d, model, finished, tracks)
        final_best = min(t.final_best for t in tracks)
        for t in tracks:
            t.is_winner = t.final_best == final_best and t.final_best < group.base
        groups.append(group)
    return groups


def _cut(run: Run, epochs: int) -> Run:
    return Run(run.run_id, run.config, run.eval_loss[:epochs], run.loss[:epochs],
               run.steps_per_epoch)


def started(job_id: str, model: str, run: Run) -> dict[str, Any]:
    return {"type": "job_started", "job_id": job_id, "model_name": model,
            "total_steps": len(run.eval_loss) * run.steps_per_epoch, "config": run.config}


def point(job_id: str, run: Run, k: int) -> dict[str, Any]:
    """The run's k-th eval point (1-based)."""
    return {"type": "metrics", "job_id": job_id, "step": k * run.steps_per_epoch,
            "epoch": k, "loss": run.loss[k - 1], "eval_loss": run.eval_loss[k - 1]}


class Watcher:
    """A /ws client that notes when each (job, at_step) forecast first arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrived: dict[tuple[str, int], float] = {}
        self.forecasts: dict[str, dict[str, Any] | None] = {}
        self.last_change = time.perf_counter()

    async def run(self, ready: asyncio.Event) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            async for message in ws:
                now = time.perf_counter()
                body = orjson.loads(message)
                for view in body["jobs"]:
                    forecast = view["forecast"]
                    if self.forecasts.get(view["id"]) != forecast:
                        self.last_change = now
                    self.forecasts[view["id"]] = forecast
                    if forecast is not None:
                        self.arrived.setdefault((view["id"], forecast["at_step"]), now)
                ready.set()


async def replay(groups: list[Group], url: str, prefix: str, port: int,
                 advisor: Advisor) -> list[float]:
    """Publish every group's runs round by round; returns the eval-point-to-/ws delays (s)."""
    r = aioredis.Redis.from_url(url)
    watcher = Watcher(f"ws://127.0.0.1:{port}/ws")
    ready = asyncio.Event()
    watching = asyncio.create_task(watcher.run(ready))
    await asyncio.wait_for(ready.wait(), 30)

    async def publish(events: list[dict[str, Any]]) -> float:
        async with r.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(f"{prefix}events", {"data": orjson.dumps(event)})
            await pipe.execute()
        return time.perf_counter()

    first = []
    for g in groups:
        for i, run in enumerate(g.finished):
            job_id = f"{g.dataset.name}-first-{i}"
            first += [started(job_id, g.model, run),
                      *[point(job_id, run, k) for k in range(1, len(run.eval_loss) + 1)],
                      {"type": "job_finished", "job_id": job_id, "status": "completed"}]
        first += [started(t.job_id, g.model, t.run) for t in g.running]
    await publish(first)
    delays: list[float] = []
    rounds = max(len(t.run.eval_loss) for g in groups for t in g.running)
    for k in range(1, rounds + 1):
        live = [(g, t) for g in groups for t in g.running if k <= len(t.run.eval_loss)]
        sent = await publish([point(t.job_id, t.run, k) for _, t in live])
        waiting = {(t.job_id, k * t.run.steps_per_epoch) for _, t in live}
        deadline = sent + ROUND_TIMEOUT
        while True:
            now = time.perf_counter()
            caught_up = waiting <= watcher.arrived.keys()
            if caught_up and now - watcher.last_change > SETTLE:
                break
            if now > deadline:
                missing = sorted(waiting - watcher.arrived.keys())[:3]
                raise RuntimeError(f"round {k}: no forecast for {missing} within "
                                   f"{ROUND_TIMEOUT:.0f}s")
            await asyncio.sleep(0.02)
        delays += [watcher.arrived[key] - sent for key in waiting]
        for g, t in live:
            said = watcher.forecasts[t.job_id]
            assert said is not None
            others = g.other_best(t, k)
            if said["verdict"] in ("cannot_win", "may_win"):
                t.calls.append((said["p_beat_best"], t.final_best < others))
            if said["verdict"] == "cannot_win":
                t.first_stop = k if t.first_stop is None else t.first_stop
                t.stop_bests.append(others)
        print(f"round {k}/{rounds}: {len(live)} runs, {advisor.counters.forecasts} forecasts",
              file=sys.stderr, flush=True)
    watching.cancel()
    await r.aclose()
    return delays


@dataclass
class Tally:
    told: int = 0
    right: int = 0
    winners: int = 0
    winners_told: int = 0
    loser_epochs: int = 0
    saved_epochs: int = 0

    def add(self, tracks: Sequence[Track]) -> None:
        for t in tracks:
            epochs = len(t.run.eval_loss)
            self.winners += t.is_winner
            if t.is_winner:
                self.winners_told += t.first_stop is not None
            else:
                self.loser_epochs += epochs
                if t.first_stop is not None:
                    self.saved_epochs += epochs - t.first_stop
            if t.first_stop is not None:
                self.told += 1
                self.right += all(t.final_best >= b for b in t.stop_bests)

    def row(self, name: str) -> list[str]:
        precision = f"{self.right / self.told:.1%}" if self.told else "-"
        saved = f"{self.saved_epochs / self.loser_epochs:.0%}" if self.loser_epochs else "-"
        return [name, str(self.told), precision, str(self.told - self.right),
                f"{self.winners_told} / {self.winners}", saved]


def calibration_rows(calls: Sequence[tuple[float, bool]]) -> list[list[str]]:
    rows = []
    for lo, hi in P_BINS:
        inside = [(p, b) for p, b in calls if lo <= p < hi]
        label = f"[{lo:g}, {min(hi, 1):g}{']' if hi > 1 else ')'}"
        if not inside:
            rows.append([label, "0", "-", "-"])
            continue
        rows.append([label, str(len(inside)), f"{statistics.fmean(p for p, _ in inside):.3f}",
                     f"{sum(b for _, b in inside) / len(inside):.3f}"])
    return rows


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(groups: list[Group], delays: list[float], advisor: Advisor, quick: bool) -> bool:
    overall, rows = Tally(), []
    for g in groups:
        tally = Tally()
        tally.add(g.running)
        overall.add(g.running)
        rows.append(tally.row(g.dataset.name))
    rows.append(overall.row("**all**"))
    runs = sum(len(g.running) + len(g.finished) for g in groups)
    print(f"## Forecast through the pipeline{' (quick)' if quick else ''}\n\n"
          f"{runs} real curves as raw XADDs into `monitor worker` and `monitor gateway`, the "
          f"advisor following the updates; {FINISHED_FIRST} runs per dataset finish first, "
          "the rest run in step; forecasts read from `/ws`.\n")
    print(table(["dataset", "runs told cannot_win", "precision", "wrong calls",
                 "winners told cannot_win", "losers' compute saved"], rows,
                align=["l", "r", "r", "r", "r", "r"]) + "\n")
    calls = [c for g in groups for t in g.running for c in t.calls]
    print("### Calibration of p_beat_best\n\n" + table(
        ["p_beat_best", "forecasts", "mean p", "share that beat the best"],
        calibration_rows(calls)) + "\n")
    cpu_ms = [1000 * s for s in advisor.counters.recent_cpu]
    med = statistics.median(cpu_ms)
    delay_ms = [1000 * d for d in delays]
    p50, p95 = quantile(delay_ms, 0.5), quantile(delay_ms, 0.95)
    print("### The advisor\n\n" + table(
        ["figure", "value"],
        [["forecasts computed", str(advisor.counters.forecasts)],
         ["forecasts written (differed from the view's)", str(advisor.counters.written)],
         ["CPU per forecast, median / p95", f"{med:.2f} / {quantile(cpu_ms, 0.95):.2f} ms"],
         ["forecasts per second on one core (1 / median CPU)", f"{1000 / med:,.0f}"],
         ["eval point XADD to its forecast on /ws, p50 / p95",
          f"{p50:.0f} / {p95:.0f} ms (debounce {advisor.settings.advisor_debounce:.1f} s)"]],
        align=["l", "r"]))
    ok = overall.winners_told == 0
    headline("forecast: cannot_win precision / winners told / saved (pipeline)",
             overall.row("all")[2] + f" / {overall.winners_told} / " + overall.row("all")[5],
             ">= 99% / 0 / >= 70%", verdict(ok))
    headline("forecast: advisor CPU per forecast (median)", f"{med:.2f} ms", "< 5 ms",
             verdict(med < 5))
    headline("forecast: eval point to /ws (p50 / p95)", f"{p50:.0f} / {p95:.0f} ms",
             "a few seconds", verdict(p95 < 3000))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forecast_pipeline",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"two datasets, {QUICK_RUNS} runs each, {QUICK_EPOCHS} eval points")
    parser.add_argument("--seed", type=int, default=0, help="which runs finish first")
    args = parser.parse_args(argv)
    url, prefix, port = redis_url(), unique_prefix("forecast"), free_port()
    client = redis.Redis.from_url(url)
    groups = plan(load_curves(), args.quick, args.seed)
    logs = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    common = ["--redis-url", url, "--prefix", prefix]
    worker = start_monitor("worker", [*common, "--block", "0.05"], logs / "worker.log")
    gateway = start_monitor("gateway", [*common, "--port", str(port)], logs / "gateway.log")
    advisor = Advisor(AdvisorSettings(redis_url=url, prefix=prefix))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(advisor.run(stop),),
                              daemon=True)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
        thread.start()
        delays = asyncio.run(replay(groups, url, prefix, port, advisor))
        print(f"{machine_line(client)}\n", file=sys.stderr)
        ok = report(groups, delays, advisor, args.quick)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        stop_process(worker, "worker")
        stop_process(gateway, "gateway")
        delete_prefix(client, prefix)
        client.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
