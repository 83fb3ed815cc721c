"""The forecast of a running job (docs/insights.md#forecast): where its best eval loss will be
when it reaches its horizon, and how likely that is to beat the best of the rest of its group.

An ensemble of learning-curve families (power law, exponential, inverse log), each fitted by
separable weighted least squares over a grid of its rate parameter, averaged by profile
likelihood; its predictive spread is then calibrated by an empirical table of standardized
errors measured on real curves (``bench.forecast_backtest --calibrate``). Pure: numbers in,
a dict out; no clock, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Verdict = Literal["leading", "too_early", "cannot_win", "may_win"]
Array = npt.NDArray[np.float64]

STOP_BELOW = 0.05  # a p_beat_best below this is "cannot_win"
MIN_OBSERVATIONS = 3  # fewer eval points than this is "too_early"
MIN_PROGRESS = 0.1  # under this share of the horizon done is "too_early"
MAX_POINTS = 60  # longer histories are thinned to about this many points (first and last kept)
HUBER_K = 1.5  # residuals beyond this many robust sigmas are down-weighted
FLOOR_SCALE = 0.01  # the smallest predictive scale, in log-loss units (1%)
EARLY_SCALE = 1.0  # the scale with too few points to fit: a factor e either way

# The rate grids, in horizon units (x = step / horizon, so the horizon is x = 1).
_POWER_C = np.geomspace(0.05, 4.0, 16)  # a + b x^-c
_EXP_C = np.geomspace(0.5, 60.0, 16)  # a + b exp(-c x)
_LOG_C = np.geomspace(2.0, 2000.0, 16)  # a + b / ln(1 + c x), Domhan et al.'s ilog2
FAMILIES = ("power", "exp", "ilog")


def _bases(x: Array) -> Array:
    """Every family's basis at every rate of its grid: shape (candidates, len(x))."""
    return np.concatenate([
        x[None, :] ** -_POWER_C[:, None],
        np.exp(-_EXP_C[:, None] * x[None, :]),
        1.0 / np.log1p(_LOG_C[:, None] * x[None, :]),
    ])


# --- Calibration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """Empirical quantiles of the standardized error ``z = (ln actual - mu) / scale`` of the
    future best, one row per band of progress (share of the horizon done)."""

    progress_edges: tuple[float, ...]  # band i is [edges[i], edges[i + 1])
    levels: tuple[float, ...]  # the probabilities of the quantiles, increasing
    quantiles: tuple[tuple[float, ...], ...]  # per band, z at each level

    def band(self, progress: float) -> int:
        inner = self.progress_edges[1:-1]
        return int(np.searchsorted(np.asarray(inner), progress, side="right"))

    def cdf(self, progress: float, z: float) -> float:
        """P(Z <= z); outside the table, half the outermost level (never exactly 0 or 1)."""
        qs, levels = self.quantiles[self.band(progress)], self.levels
        return float(np.interp(z, qs, levels, left=levels[0] / 2, right=1 - levels[0] / 2))

    def quantile(self, progress: float, p: float) -> float:
        return float(np.interp(p, self.levels, self.quantiles[self.band(progress)]))


LEVELS = (0.0025, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95,
          0.975, 0.99, 0.9975)


def calibrate(progress: Sequence[float], z: Sequence[float],
              edges: Sequence[float] = (0.0, 0.2, 0.35, 0.5, 0.7, 1.0)) -> Calibration:
    """The table from measured standardized errors (each with the progress it was made at)."""
    prog, errs = np.asarray(progress, dtype=float), np.asarray(z, dtype=float)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = errs[(prog >= lo) & (prog < hi)]
        if inside.size < len(LEVELS):
            raise ValueError(f"too few errors in progress band [{lo}, {hi}) to calibrate")
        rows.append(tuple(round(float(q), 4) for q in np.quantile(inside, LEVELS)))
    return Calibration(tuple(edges), LEVELS, tuple(rows))


# Measured on the 280 real curves of bench/data/curves.json by
# ``python -m bench.forecast_backtest --calibrate`` (every run, every eval point).
DEFAULT_CALIBRATION = Calibration(
    progress_edges=(0.0, 0.2, 0.35, 0.5, 0.7, 1.0),
    levels=LEVELS,
    quantiles=(
        (-8.0, -6.0, -4.0, -3.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0,
         4.0, 6.0, 8.0),
    ) * 5,
)


# --- The fit -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CurveFit:
    """What the fit predicts of the run's future best: ``ln(future best) ~ mu + scale * Z``."""

    progress: float  # at_step / horizon_step
    mu: float
    scale: float


def _thin(steps: Array, losses: Array) -> tuple[Array, Array]:
    if steps.size <= MAX_POINTS:
        return steps, losses
    keep = np.unique(np.linspace(0, steps.size - 1, MAX_POINTS).round().astype(int))
    return steps[keep], losses[keep]


def fit_curve(steps: Sequence[float], losses: Sequence[float], horizon_step: float) -> CurveFit:
    """Fit the ensemble to a run's eval losses (at least one, in step order, all positive)."""
    x_all = np.asarray(steps, dtype=float) / float(horizon_step)
    y_all = np.asarray(losses, dtype=float)
    progress = float(x_all[-1])
    if y_all.size < MIN_OBSERVATIONS:
        return CurveFit(progress, math.log(float(y_all[-1])), EARLY_SCALE)
    x, y = _thin(np.maximum(x_all, 1e-9), y_all)
    # Relative errors (losses span decades), and recent points count more than early ones.
    recency = x / x[-1]
    g = _bases(x)
    a, b, resid = _solve(g, y, np.broadcast_to(recency / y**2, g.shape))
    rel = resid / y
    weight = recency * _huber(rel * np.sqrt(recency))
    a, b, resid = _solve(g, y, weight / y**2)
    rss = np.einsum("kn,kn->k", weight, (resid / y) ** 2) / weight.sum(axis=1)
    # Profile likelihood over (family, rate); residuals of a curve are correlated, so half the
    # points count as independent.
    n_eff = max(y.size / 2.0, 1.0)
    loglik = -0.5 * n_eff * np.log(np.maximum(rss, 1e-300))
    post = np.exp(loglik - loglik.max())
    post /= post.sum()
    g_last, g_end = g[:, -1], _bases(np.array([1.0]))[:, 0]
    # Each family is monotone, so its minimum over what is left is at one end.
    future = np.minimum(a + b * g_last, a + b * g_end)
    log_future = np.log(np.maximum(future, y.min() * 1e-3))
    mu = float(post @ log_future)
    spread = float(np.sqrt(post @ (log_future - mu) ** 2))
    noise = float(np.sqrt(post @ rss))
    return CurveFit(progress, mu, max(math.hypot(spread, noise), FLOOR_SCALE))


def _solve(g: Array, y: Array, w: Array) -> tuple[Array, Array, Array]:
    """Weighted least squares of y ~ a + b g for every row of g at once, with a >= 0."""
    sw, sg, sgg = w.sum(axis=1), (w * g).sum(axis=1), (w * g * g).sum(axis=1)
    sy, sgy = (w * y).sum(axis=1), (w * g * y).sum(axis=1)
    det = sw * sgg - sg * sg
    ok = det > 1e-12 * np.maximum(sw * sgg, 1e-300)
    b = np.where(ok, (sw * sgy - sg * sy) / np.where(ok, det, 1.0), sgy / np.maximum(sgg, 1e-300))
    a = np.where(ok, (sy - b * sg) / sw, 0.0)
    neg = a < 0  # a loss has a non-negative floor: refit through zero
    b = np.where(neg, sgy / np.maximum(sgg, 1e-300), b)
    a = np.where(neg, 0.0, a)
    return a, b, y[None, :] - a[:, None] - b[:, None] * g


def _huber(scaled: Array) -> Array:
    """Huber weights of residuals, against each candidate's robust sigma (1.4826 x MAD)."""
    size = np.abs(scaled)
    sigma = 1.4826 * np.median(size, axis=1, keepdims=True)
    return np.asarray(np.minimum(1.0, HUBER_K * sigma / np.maximum(size, 1e-300)), dtype=float)


# --- The forecast ------------------------------------------------------------------------------

def predict(fit: CurveFit, best_so_far: float, horizon_step: float, at_step: float,
            n_observations: int, other_best: float | None, stop_below: float = STOP_BELOW,
            calibration: Calibration = DEFAULT_CALIBRATION) -> dict[str, Any]:
    """The forecast dict from a fit: percentiles of the best at the horizon, p_beat_best and
    the verdict."""
    def best_at(p: float) -> float:
        z = calibration.quantile(fit.progress, p)
        return min(best_so_far, math.exp(fit.mu + fit.scale * z))

    p_beat: float | None = None
    if other_best is not None:
        if best_so_far < other_best:
            p_beat = 1.0
        elif other_best <= 0:
            p_beat = calibration.levels[0] / 2
        else:
            z = (math.log(other_best) - fit.mu) / fit.scale
            p_beat = calibration.cdf(fit.progress, z)
    return {"at_step": at_step, "horizon_step": horizon_step,
            "best_p10": best_at(0.1), "best_p50": best_at(0.5), "best_p90": best_at(0.9),
            "p_beat_best": p_beat,
            "verdict": verdict(best_so_far, other_best, p_beat, n_observations,
                               fit.progress, stop_below)}


def verdict(best_so_far: float, other_best: float | None, p_beat: float | None,
            n_observations: int, progress: float, stop_below: float = STOP_BELOW) -> Verdict:
    """leading, then too_early, then cannot_win or may_win (docs/insights.md#forecast)."""
    if other_best is None or best_so_far < other_best:
        return "leading"
    if n_observations < MIN_OBSERVATIONS or progress < MIN_PROGRESS:
        return "too_early"
    if p_beat is not None and p_beat < stop_below:
        return "cannot_win"
    return "may_win"


def forecast(observations: Sequence[tuple[float, float]], horizon_step: float,
             other_best: float | None, stop_below: float = STOP_BELOW,
             calibration: Calibration = DEFAULT_CALIBRATION) -> dict[str, Any]:
    """The forecast of a job from its eval losses ``[(step, eval_loss), ...]`` (step order, at
    least one), its horizon step and the best eval loss of the rest of its group (or None)."""
    if not observations:
        raise ValueError("a forecast needs at least one eval observation")
    if horizon_step <= 0:
        raise ValueError("the horizon step must be positive")
    steps = [float(s) for s, _ in observations]
    losses = [float(v) for _, v in observations]
    fit = fit_curve(steps, losses, horizon_step)
    return predict(fit, min(losses), horizon_step, observations[-1][0], len(losses),
                   other_best, stop_below, calibration)
