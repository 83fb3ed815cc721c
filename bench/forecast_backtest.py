"""Backtest of the forecast on real learning curves: ``python -m bench.forecast_backtest``.

Replays ``bench/data/curves.json`` offline. Per dataset (one model group), a few runs chosen at
random (seeded) finish first and set the best; the rest then run in step, one eval point at a
time, and after each point every running run is forecast against the best of the finished
runs and of the other running runs so far. Three methods are judged side by side: the
calibrated ensemble of ``monitor.forecast`` (also as auto-stop acts on it: cannot_win at two
eval points in a row), a fixed bootstrap power law, and the rule "more than 25% worse at
half-way". The ensemble is calibrated
leave-one-dataset-out: the quantile table used on a dataset is measured on the other three,
and so is its recalibration, on forecasts of each of those three made with the quantiles of
the remaining two. The calibration of p_beat_best is shown before and after recalibration,
per bin (with the runs behind each) and per dataset (expected calibration error, Brier score).

``--quick`` (a subset of runs, one draw, the shipped calibration) takes a few seconds;
``--calibrate`` prints the calibration measured on every curve, for ``monitor.forecast``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from bench.common import table
from bench.curves import Dataset, Run, load_curves
from monitor.forecast import (
    DEFAULT_CALIBRATION,
    STOP_BELOW,
    Calibration,
    CurveFit,
    Recalibration,
    calibrate,
    fit_curve,
    forecast,
    predict,
    recalibrate,
    verdict,
)

FINISHED_FIRST = 5  # runs per dataset that finish before the rest start
DRAWS = 5  # random choices of the runs that finish first (full mode)
QUICK_RUNS = 18  # runs per dataset in --quick mode
BOOTSTRAP = 100  # resamples of the baseline power law
HALF_WAY_WORSE = 1.25  # the rule: more than 25% worse than the best at half-way
P_BINS = ((0.0, 0.01), (0.01, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.35), (0.35, 0.5),
          (0.5, 0.75), (0.75, 1.0001))
COARSE_BINS = ((0.0, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 1.0001))  # for each dataset apart
AUTOSTOP = "auto-stop: ensemble cannot_win twice in a row"  # what MONITOR_AUTOSTOP acts on
METHODS = ("ensemble", AUTOSTOP, "bootstrap power law", "25% worse at half-way")


# --- What each method says at one point of one run -------------------------------------------

@dataclass
class RunTrack:
    """One run's precomputed forecasts, one per eval point but the last."""

    run: Run
    fits: list[CurveFit] = field(default_factory=list)
    boot: list[np.ndarray] = field(default_factory=list)  # sorted bootstrap future bests
    best_so_far: list[float] = field(default_factory=list)
    future_best: list[float] = field(default_factory=list)

    @property
    def points(self) -> int:
        return len(self.fits)


def track(run: Run, horizon: int, group_best: float, seed: int,
          cpu: dict[str, list[float]]) -> RunTrack:
    """Fit both model-based methods after every eval point of ``run`` but its last. The
    ensemble's CPU is that of whole forecasts against ``group_best`` (the best of all runs, so
    that most calls take the second fit a ``cannot_win`` needs)."""
    t = RunTrack(run)
    losses = run.eval_loss
    steps = [(i + 1) * run.steps_per_epoch for i in range(len(losses))]
    rng = np.random.default_rng(seed)
    for k in range(1, len(losses)):
        started = time.thread_time_ns()
        forecast(list(zip(steps[:k], losses[:k], strict=True)), horizon * run.steps_per_epoch,
                 group_best)
        cpu["ensemble"].append((time.thread_time_ns() - started) / 1e6)
        fit = fit_curve(steps[:k], losses[:k], horizon * run.steps_per_epoch)
        started = time.thread_time_ns()
        t.boot.append(bootstrap_power_law(steps[:k], losses[:k], horizon * run.steps_per_epoch,
                                          rng))
        cpu["bootstrap power law"].append((time.thread_time_ns() - started) / 1e6)
        t.fits.append(fit)
        t.best_so_far.append(min(losses[:k]))
        t.future_best.append(min(losses[k:]))
    return t


_C = np.geomspace(0.05, 4.0, 24)


def bootstrap_power_law(steps: Sequence[float], losses: Sequence[float], horizon: float,
                        rng: np.random.Generator) -> np.ndarray:
    """The baseline: a + b x^-c fitted by least squares (relative errors), then refitted to
    ``BOOTSTRAP`` residual resamples; the sorted predicted bests still to come."""
    x = np.asarray(steps, dtype=float) / horizon
    y = np.asarray(losses, dtype=float)
    if y.size < 3:
        return np.full(BOOTSTRAP, y[-1])
    g = x[None, :] ** -_C[:, None]  # (c, n)

    def fit(ys: np.ndarray) -> np.ndarray:  # ys (m, n) -> future best per row (m,)
        w = 1.0 / ys**2  # (m, n)
        sw, sy = w.sum(1)[:, None], (w * ys).sum(1)[:, None]
        sg, sgg = w @ g.T, w @ (g * g).T  # (m, c)
        sgy = (w * ys) @ g.T
        det = np.where(np.abs(sw * sgg - sg**2) > 1e-300, sw * sgg - sg**2, 1e-300)
        b = (sw * sgy - sg * sy) / det
        a = (sy - b * sg) / sw
        fitted = a[:, :, None] + b[:, :, None] * g[None]  # (m, c, n)
        rss = (w[:, None, :] * (ys[:, None, :] - fitted) ** 2).sum(2)
        best = rss.argmin(1)
        rows = np.arange(ys.shape[0])
        a, b = a[rows, best], b[rows, best]
        return np.asarray(np.minimum(a + b * g[best, -1], a + b), dtype=float)

    base_w = 1.0 / y**2
    sw, sy, sg = base_w.sum(), base_w @ y, g @ base_w
    sgg, sgy = (g * g) @ base_w, g @ (base_w * y)
    det = np.where(np.abs(sw * sgg - sg**2) > 1e-300, sw * sgg - sg**2, 1e-300)
    b = (sw * sgy - sg * sy) / det
    a = (sy - b * sg) / sw
    fitted_all = a[:, None] + b[:, None] * g
    c = int(((base_w * (y - fitted_all) ** 2).sum(1)).argmin())
    fitted = fitted_all[c]
    rel = (y - fitted) / fitted
    draws = fitted[None, :] * (1 + rng.choice(rel, size=(BOOTSTRAP, y.size)))
    return np.sort(fit(np.maximum(draws, 1e-12)))


# --- One replay --------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one method said about one running run during one replay."""

    final_best: float
    is_winner: bool
    epochs: int
    first_stop: int | None = None  # eval points seen at its first cannot_win
    stop_bests: list[float] = field(default_factory=list)  # the bests it was told it can't beat


@dataclass(frozen=True)
class Call:
    """One forecast of p_beat_best, and whether the run went on to beat that best."""

    p: float
    beat: bool
    run: str  # "dataset/run_id": a run's forecasts are one outcome seen many times


@dataclass
class Replay:
    outcomes: dict[str, list[Outcome]]
    calls: list[Call]  # the ensemble's
    boot_calls: list[Call]


def replay(d: Dataset, tracks: dict[str, RunTrack], finished: Sequence[str],
           calibration: Calibration) -> Replay:
    """Run the others in step against the runs in ``finished``, and collect what was said."""
    base = min(tracks[r].run.best_eval_loss for r in finished)
    running = [t for r, t in tracks.items() if r not in finished]
    final_best = min(min(t.run.best_eval_loss for t in running), base)
    outcomes = {m: [Outcome(t.run.best_eval_loss, t.run.best_eval_loss == final_best
                            and t.run.best_eval_loss < base, d.epochs) for t in running]
                for m in METHODS}
    calls: list[Call] = []
    boot_calls: list[Call] = []
    told_before = [False] * len(running)  # the ensemble said cannot_win at the point before
    for k in range(running[0].points):
        now = [t.best_so_far[k] for t in running]
        for j, t in enumerate(running):
            others = min([base, *now[:j], *now[j + 1:]])
            beat = t.run.best_eval_loss < others
            run = f"{d.name}/{t.run.run_id}"
            fit = t.fits[k]
            f = predict(fit, now[j], d.epochs, k + 1, k + 1, others, calibration=calibration,
                        previous=t.fits[k - 1] if k + 1 > 3 else None)
            if f["verdict"] in ("cannot_win", "may_win"):
                calls.append(Call(f["p_beat_best"], beat, run))
            said = {"ensemble": f["verdict"] == "cannot_win",
                    AUTOSTOP: f["verdict"] == "cannot_win" and told_before[j]}
            told_before[j] = f["verdict"] == "cannot_win"
            p_boot = 1.0 if now[j] < others else float(
                np.searchsorted(t.boot[k], others) / t.boot[k].size)
            v_boot = verdict(now[j], others, p_boot, k + 1, fit.progress)
            if v_boot in ("cannot_win", "may_win"):
                boot_calls.append(Call(p_boot, beat, run))
            said["bootstrap power law"] = v_boot == "cannot_win"
            half = (k + 1) / d.epochs >= 0.5 > k / d.epochs
            said["25% worse at half-way"] = half and now[j] > HALF_WAY_WORSE * others
            for m, stop in said.items():
                o = outcomes[m][j]
                if stop:
                    o.first_stop = k + 1 if o.first_stop is None else o.first_stop
                    o.stop_bests.append(others)
    return Replay(outcomes, calls, boot_calls)


# --- The report --------------------------------------------------------------------------------

@dataclass
class Tally:
    told: int = 0
    right: int = 0
    wrong: int = 0  # ended below a best it was told it could not beat
    winners: int = 0
    winners_told: int = 0
    loser_epochs: int = 0
    saved_epochs: int = 0

    def add(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.winners += o.is_winner
            told = o.first_stop is not None
            if o.is_winner:
                self.winners_told += told
            else:
                self.loser_epochs += o.epochs
                if o.first_stop is not None:
                    self.saved_epochs += o.epochs - o.first_stop
            if told:
                self.told += 1
                ok = all(o.final_best >= b for b in o.stop_bests)
                self.right += ok
                self.wrong += not ok

    def row(self, name: str, method: str) -> list[str]:
        precision = f"{self.right / self.told:.1%}" if self.told else "-"
        saved = f"{self.saved_epochs / self.loser_epochs:.0%}" if self.loser_epochs else "-"
        return [name, method, str(self.told), precision, str(self.wrong),
                f"{self.winners_told} / {self.winners}", saved]


def calibration_rows(calls: Sequence[Call], bins: Sequence[tuple[float, float]] = P_BINS
                     ) -> list[list[str]]:
    """Per bin of p_beat_best: how many forecasts, of how many runs (the independent evidence
    behind the bin), how many of those runs beat the best they were given, the mean p told
    and the share of forecasts that beat their best."""
    rows = []
    for lo, hi in bins:
        inside = [c for c in calls if lo <= c.p < hi]
        label = f"[{lo:g}, {min(hi, 1):g}{']' if hi > 1 else ')'}"
        if not inside:
            rows.append([label, "0", "0", "0", "-", "-"])
            continue
        runs = {c.run for c in inside}
        beaten = {c.run for c in inside if c.beat}
        rows.append([label, str(len(inside)), str(len(runs)), str(len(beaten)),
                     f"{statistics.fmean(c.p for c in inside):.3f}",
                     f"{sum(c.beat for c in inside) / len(inside):.3f}"])
    return rows


def expected_calibration_error(calls: Sequence[Call]) -> float:
    """The mean, over forecasts, of |mean p told - share that beat| in their bin of P_BINS."""
    gap = 0.0
    for lo, hi in P_BINS:
        inside = [c for c in calls if lo <= c.p < hi]
        if inside:
            gap += abs(sum(c.p - c.beat for c in inside))
    return gap / len(calls) if calls else math.nan


def brier(calls: Sequence[Call]) -> float:
    """The mean squared difference between p told and what happened (1 beat, 0 not)."""
    return statistics.fmean((c.p - c.beat) ** 2 for c in calls) if calls else math.nan


def summary_row(name: str, before: Sequence[Call], calls: Sequence[Call]) -> list[str]:
    runs = {c.run for c in calls}
    beaten = {c.run for c in calls if c.beat}
    return [name, str(len(calls)), str(len(runs)), str(len(beaten)),
            f"{expected_calibration_error(before):.4f}", f"{expected_calibration_error(calls):.4f}",
            f"{brier(before):.4f}", f"{brier(calls):.4f}"]


def measured_errors(tracks: Sequence[RunTrack]
                    ) -> tuple[list[float], list[float], list[float]]:
    """The standardized errors of the ensemble's future best, with each fit's progress and
    trend."""
    progress, trend, z = [], [], []
    for t in tracks:
        for k, fit in enumerate(t.fits):
            if k + 1 >= 3:
                progress.append(fit.progress)
                trend.append(fit.trend)
                z.append((float(np.log(t.future_best[k])) - fit.mu) / fit.scale)
    return progress, trend, z


def quantile_table(tracks: dict[str, dict[str, RunTrack]], names: Sequence[str]
                   ) -> Calibration:
    """The quantile table measured on the runs of the datasets ``names`` (no recalibration)."""
    return calibrate(*measured_errors([t for n in names for t in tracks[n].values()]))


def fit_recalibration(datasets: Sequence[Dataset], tracks: dict[str, dict[str, RunTrack]],
                      draws: dict[str, list[list[str]]]) -> Recalibration:
    """The recalibration measured on the replays of ``datasets``. Each is forecast with the
    quantile table of the others of them, so its probabilities are those the table gives on
    curves it has not seen; and each run of each replay counts once, however many forecasts
    it got (they are one outcome seen many times)."""
    p: list[float] = []
    beat: list[bool] = []
    weight: list[float] = []
    for d in datasets:
        table_ = quantile_table(tracks, [e.name for e in datasets if e.name != d.name])
        for finished in draws[d.name]:
            calls = replay(d, tracks[d.name], finished, table_).calls
            per_run = Counter(c.run for c in calls)
            p += [c.p for c in calls]
            beat += [c.beat for c in calls]
            weight += [1 / per_run[c.run] for c in calls]
    return recalibrate(p, beat, weight)


def held_out_calibration(d: Dataset, datasets: Sequence[Dataset],
                         tracks: dict[str, dict[str, RunTrack]],
                         draws: dict[str, list[list[str]]]) -> Calibration:
    """The calibration for ``d`` measured on the other datasets only: both its quantile table
    and its recalibration (whose own tables leave out, in turn, the dataset they are
    measured on as well)."""
    rest = [e for e in datasets if e.name != d.name]
    return replace(quantile_table(tracks, [e.name for e in rest]),
                   recalibration=fit_recalibration(rest, tracks, draws))


def source(c: Calibration) -> str:
    """The table as the Python literal ``monitor.forecast.DEFAULT_CALIBRATION`` holds."""
    def row(q: tuple[float, ...]) -> str:
        half = len(q) // 2
        return (f"        ({', '.join(map(repr, q[:half]))},\n"
                f"         {', '.join(map(repr, q[half:]))}),\n")

    return ("DEFAULT_CALIBRATION = Calibration(\n    progress_edges=PROGRESS_EDGES,\n"
            "    trend_edges=TREND_EDGES,\n    levels=LEVELS,\n    quantiles=(\n"
            f"{''.join(row(q) for q in c.quantiles)}    ),\n"
            f"    recalibration=Recalibration(intercept={c.recalibration.intercept!r}, "
            f"slope={c.recalibration.slope!r}),\n)")


def long_history_cpu(calls: int = 200) -> list[float]:
    """CPU of forecasts of a noisy 100-point power law against a best it cannot beat (so each
    takes the second fit a cannot_win needs)."""
    rng = np.random.default_rng(1)
    steps = np.arange(1, 101) * 10.0
    losses = (0.2 + np.asarray(steps / 2000.0) ** -0.5) * np.exp(rng.normal(0, 0.02, 100))
    history = list(zip(steps.tolist(), losses.tolist(), strict=True))
    spent = []
    for _ in range(calls):
        started = time.thread_time_ns()
        forecast(history, 2000.0, 0.1)
        spent.append((time.thread_time_ns() - started) / 1e6)
    return spent


def ms(values: Sequence[float]) -> str:
    return (f"{statistics.median(values):.2f} / "
            f"{float(np.quantile(np.asarray(values), 0.95)):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forecast_backtest",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_RUNS} runs per dataset, one draw, the shipped calibration")
    parser.add_argument("--calibrate", action="store_true",
                        help="print the calibration measured on every curve and exit")
    args = parser.parse_args(argv)
    datasets = load_curves()
    rng = np.random.default_rng(0)
    cpu: dict[str, list[float]] = {"ensemble": [], "bootstrap power law": []}
    tracks: dict[str, dict[str, RunTrack]] = {}
    for n, d in enumerate(datasets):
        runs = list(d.runs)
        if args.quick:
            runs = [runs[i] for i in sorted(rng.choice(len(runs), QUICK_RUNS, replace=False))]
        group_best = min(r.best_eval_loss for r in d.runs)
        tracks[d.name] = {r.run_id: track(r, d.epochs, group_best, 1000 * n + i, cpu)
                          for i, r in enumerate(runs)}
    # The runs that finish first, per dataset and draw: drawn once, so that the recalibration
    # is measured on the same replays the report makes of the other datasets.
    draws: dict[str, list[list[str]]] = {}
    for d in datasets:
        ids = list(tracks[d.name])
        draws[d.name] = [[ids[i] for i in rng.choice(len(ids), FINISHED_FIRST, replace=False)]
                         for _ in range(1 if args.quick else DRAWS)]
    if args.calibrate:
        every = quantile_table(tracks, [d.name for d in datasets])
        print(source(replace(every, recalibration=fit_recalibration(datasets, tracks, draws))))
        return 0
    return report(datasets, tracks, draws, cpu, args.quick)


def report(datasets: Sequence[Dataset], tracks: dict[str, dict[str, RunTrack]],
           draws: dict[str, list[list[str]]], cpu: dict[str, list[float]], quick: bool) -> int:
    rows, overall = [], {m: Tally() for m in METHODS}
    calls: dict[str, list[Call]] = {}
    before: dict[str, list[Call]] = {}  # the same forecasts without the recalibration
    boot_calls: list[Call] = []
    maps: list[list[str]] = []
    for d in datasets:
        calibration = (DEFAULT_CALIBRATION if quick
                       else held_out_calibration(d, datasets, tracks, draws))
        maps.append([d.name, f"{calibration.recalibration.intercept:g}",
                     f"{calibration.recalibration.slope:g}"])
        tallies = {m: Tally() for m in METHODS}
        calls[d.name], before[d.name] = [], []
        for finished in draws[d.name]:
            r = replay(d, tracks[d.name], finished, calibration)
            calls[d.name] += r.calls
            before[d.name] += replay(d, tracks[d.name], finished,
                                     replace(calibration, recalibration=Recalibration())).calls
            boot_calls += r.boot_calls
            for m in METHODS:
                tallies[m].add(r.outcomes[m])
                overall[m].add(r.outcomes[m])
        rows += [tallies[m].row(d.name, m) for m in METHODS]
    rows += [overall[m].row("**all**", m) for m in METHODS]
    heads = ["dataset", "method", "runs told cannot_win", "precision", "wrong calls",
             "winners told cannot_win", "losers' compute saved"]
    print(f"## Forecast backtest{' (quick)' if quick else ''}\n\n"
          f"{sum(len(ts) for ts in tracks.values())} real curves, {len(draws[datasets[0].name])}"
          f" draw(s) of {FINISHED_FIRST} runs finishing first per dataset; stop threshold "
          f"p_beat_best < {STOP_BELOW}. "
          f"{'Calibration: the shipped one.' if quick else 'Calibration: leave one dataset out.'}"
          f"\n\n{table(heads, rows, align=['l', 'l', 'r', 'r', 'r', 'r', 'r'])}\n")
    print("### Recalibration used (logit p' = intercept + slope logit p)\n\n" + table(
        ["dataset", "intercept", "slope"], maps, align=["l", "r", "r"]) + "\n")
    every = [c for cs in calls.values() for c in cs]
    every_before = [c for cs in before.values() for c in cs]
    cal_heads = ["p_beat_best", "forecasts", "runs", "runs that beat", "mean p",
                 "share that beat the best"]
    for name, c in (("ensemble", every), ("ensemble before recalibration", every_before),
                    ("bootstrap power law", boot_calls)):
        print(f"### Calibration: {name}\n\n{table(cal_heads, calibration_rows(c))}\n")
    by_bin = []
    for name, c in calls.items():
        for was, now in zip(calibration_rows(before[name], COARSE_BINS),
                            calibration_rows(c, COARSE_BINS), strict=True):
            by_bin.append([name, was[0], f"{was[1]} ({was[2]}, {was[3]})", *was[4:],
                           f"{now[1]} ({now[2]}, {now[3]})", *now[4:]])
    print("### Calibration per dataset, before and after recalibration\n\n" + table(
        ["dataset", "p_beat_best", "before: forecasts (runs, that beat)", "mean p", "share",
         "after: forecasts (runs, that beat)", "mean p", "share"], by_bin,
        align=["l", "r", "r", "r", "r", "r", "r", "r"]) + "\n")
    summary = [summary_row(name, before[name], c) for name, c in calls.items()]
    summary += [summary_row("**overall**", every_before, every),
                summary_row("**overall**, bootstrap power law", boot_calls, boot_calls)]
    print("### Calibration scores (ECE over the bins of the first tables, Brier score)\n\n" + table(
        ["dataset", "forecasts", "runs", "runs that beat", "ECE before", "ECE", "Brier before",
         "Brier"], summary, align=["l", "r", "r", "r", "r", "r", "r", "r"]) + "\n")
    cpu["ensemble, 100-point history"] = long_history_cpu()
    print("### CPU per forecast (ms, median / p95, one thread)\n\n" + table(
        ["method", "calls", "ms"], [[m, str(len(v)), ms(v)] for m, v in cpu.items()],
        align=["l", "r", "r"]))
    return 0 if overall["ensemble"].winners_told == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
