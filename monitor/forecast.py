"""The forecast of a running job (docs/insights.md#forecast): where its best eval loss will be
when it reaches its horizon, and how likely that is to beat the best of the rest of its group.

An ensemble of learning-curve families (power law, exponential, inverse log), each fitted by
separable weighted least squares over a grid of its rate parameter, averaged by profile
likelihood. Its predictive scale adds the ensemble's spread, the fit's noise, a term growing
with the distance still to extrapolate, and how wrong the same fit from the first half of the
run was about its second half; the standardized errors are then calibrated by an empirical
table measured on real curves, and the probability of beating the best by a monotone map fitted
on the backtest's forecasts (``bench.forecast_backtest --calibrate``), so that it can be taken
literally. Pure: numbers in, a dict out; no clock, no randomness.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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
P_MIN = 0.001  # a forecast p_beat_best is held within [P_MIN, 1 - P_MIN]
FLOOR_SCALE = 0.01  # the smallest predictive scale, in log-loss units (1%)
EARLY_SCALE = 1.0  # the scale with too few points to fit: a factor e either way
# Fits alone are far too sure of themselves (docs/insights.md#forecast). Per unit of log-time
# still to extrapolate (ln(horizon / at_step)), the predictive scale grows by this share of
# the curve's local log-log slope (plus a floor, so a flat curve is not certain either).
EXTRAPOLATION_SCALE = 0.5
TREND_FLOOR = 0.05

# The rate grids, in horizon units (x = step / horizon, so the horizon is x = 1).
_POWER_C = np.geomspace(0.05, 4.0, 16)  # a + b x^-c
_EXP_C = np.geomspace(0.5, 60.0, 16)  # a + b exp(-c x)
_LOG_C = np.geomspace(2.0, 2000.0, 16)  # a + b / ln(1 + c x), Domhan et al.'s ilog2


def _bases(x: Array) -> Array:
    """Every family's basis at every rate of its grid: shape (candidates, len(x))."""
    return np.concatenate([
        x[None, :] ** -_POWER_C[:, None],
        np.exp(-_EXP_C[:, None] * x[None, :]),
        1.0 / np.log1p(_LOG_C[:, None] * x[None, :]),
    ])


# --- Calibration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recalibration:
    """The second step of the calibration, on the probability itself. The quantile table
    alone leaves p_beat_best too hopeful near a rival's best (on the real curves, runs told
    0.2 to 0.5 beat it one or two times in a hundred), so p is mapped by
    ``logit p' = intercept + slope * logit p`` (Platt scaling) and held within
    [P_MIN, 1 - P_MIN]. A positive slope keeps the order of the forecasts (the map is
    monotone). The default is the identity."""

    intercept: float = 0.0
    slope: float = 1.0

    def __call__(self, p: float) -> float:
        held = min(max(p, P_MIN), 1 - P_MIN)
        t = self.intercept + self.slope * math.log(held / (1 - held))
        return min(max(_sigmoid(t), P_MIN), 1 - P_MIN)


def _sigmoid(t: float) -> float:
    return 0.5 * (1 + math.tanh(0.5 * t))  # 1 / (1 + e^-t), without overflow


def recalibrate(p: Sequence[float], beat: Sequence[bool], weight: Sequence[float]
                ) -> Recalibration:
    """The recalibration that best explains which forecasts ``p`` went on to beat their best:
    weighted logistic regression of ``beat`` on ``logit p`` (Newton's method; each forecast
    counts ``weight``). Refuses data that cannot fix an increasing map."""
    held = np.clip(np.asarray(p, dtype=float), P_MIN, 1 - P_MIN)
    x = np.stack([np.ones_like(held), np.log(held / (1 - held))], axis=1)
    y = np.asarray(beat, dtype=float)
    w = np.asarray(weight, dtype=float)
    if not (y @ w > 0 and (1 - y) @ w > 0):
        raise ValueError("a recalibration needs forecasts that beat their best and some that "
                         "did not")
    theta = np.zeros(2)
    for _ in range(100):
        fitted = 0.5 * (1 + np.tanh(0.5 * (x @ theta)))  # the sigmoid, without overflow
        hessian = (x * (w * fitted * (1 - fitted))[:, None]).T @ x
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), x.T @ (w * (y - fitted)))
        theta = theta + step
        if float(np.abs(step).max()) < 1e-10:
            break
    else:
        raise ValueError("the recalibration did not converge")
    if not theta[1] > 0:
        raise ValueError(f"the recalibration came out decreasing (slope {theta[1]:.3g})")
    return Recalibration(round(float(theta[0]), 3), round(float(theta[1]), 3))


@dataclass(frozen=True)
class Calibration:
    """Empirical quantiles of the standardized error ``z = (ln actual - mu) / scale`` of the
    future best, one row per cell of progress (share of the horizon done) times trend (the
    local slope of ln loss against ln step): the fits err differently on a steep curve than
    on a flat or rising one, so each kind is calibrated on its own."""

    progress_edges: tuple[float, ...]  # inner edges: band i is [edges[i - 1], edges[i])
    trend_edges: tuple[float, ...]  # inner edges, likewise
    levels: tuple[float, ...]  # the probabilities of the quantiles, increasing
    quantiles: tuple[tuple[float, ...], ...]  # per cell (band-major), z at each level
    recalibration: Recalibration = field(default_factory=Recalibration)

    def cell(self, progress: float, trend: float) -> tuple[float, ...]:
        band = bisect.bisect_right(self.progress_edges, progress)
        kind = bisect.bisect_right(self.trend_edges, trend)
        return self.quantiles[band * (len(self.trend_edges) + 1) + kind]

    def cdf(self, progress: float, trend: float, z: float) -> float:
        """P(Z <= z); outside the table, half the outermost level (never exactly 0 or 1)."""
        low = self.levels[0] / 2
        return float(np.interp(z, self.cell(progress, trend), self.levels,
                               left=low, right=1 - low))

    def quantile(self, progress: float, trend: float, p: float) -> float:
        return float(np.interp(p, self.levels, self.cell(progress, trend)))


LEVELS = (0.0025, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95,
          0.975, 0.99, 0.9975)
PROGRESS_EDGES = (0.3, 0.6)
TREND_EDGES = (-0.5, -0.1, 0.01)


def calibrate(progress: Sequence[float], trend: Sequence[float], z: Sequence[float],
              progress_edges: tuple[float, ...] = PROGRESS_EDGES,
              trend_edges: tuple[float, ...] = TREND_EDGES) -> Calibration:
    """The table from measured standardized errors, each with the progress and trend of the
    fit that made it."""
    bands = np.searchsorted(progress_edges, np.asarray(progress, dtype=float), side="right")
    kinds = np.searchsorted(trend_edges, np.asarray(trend, dtype=float), side="right")
    errs = np.asarray(z, dtype=float)
    rows = []
    for band in range(len(progress_edges) + 1):
        for kind in range(len(trend_edges) + 1):
            inside = errs[(bands == band) & (kinds == kind)]
            if inside.size < len(LEVELS):
                raise ValueError(f"too few errors to calibrate cell {band}, {kind}")
            rows.append(tuple(round(float(q), 3) for q in np.quantile(inside, LEVELS)))
    return Calibration(progress_edges, trend_edges, LEVELS, tuple(rows))


# Measured on the 280 real curves of bench/data/curves.json by
# ``python -m bench.forecast_backtest --calibrate``: the quantiles on every run at every eval
# point; the recalibration on the backtest's forecasts of each dataset made with the quantiles
# of the other three, every run of every replay counting once.
DEFAULT_CALIBRATION = Calibration(
    progress_edges=PROGRESS_EDGES,
    trend_edges=TREND_EDGES,
    levels=LEVELS,
    quantiles=(
        (-1.56, -1.455, -1.331, -1.216, -1.057, -0.866, -0.684, -0.491,
         -0.359, -0.193, -0.063, 0.061, 0.294, 0.475, 0.614, 0.741, 0.944),
        (-3.117, -2.418, -2.056, -1.559, -1.122, -0.673, -0.388, -0.207,
         -0.038, 0.104, 0.216, 0.369, 0.53, 0.684, 0.833, 1.012, 1.263),
        (-7.776, -2.336, -2.2, -1.727, -0.977, -0.224, -0.046, 0.008,
         0.043, 0.112, 0.195, 0.291, 0.458, 0.553, 0.844, 0.991, 1.059),
        (-4.589, -1.047, -0.64, -0.271, -0.014, 0.047, 0.072, 0.099,
         0.127, 0.158, 0.187, 0.227, 0.292, 0.435, 0.551, 0.612, 0.809),
        (-1.691, -1.55, -1.435, -1.35, -1.181, -1.019, -0.919, -0.806,
         -0.623, -0.427, -0.279, -0.078, 0.034, 0.186, 0.304, 0.344, 0.383),
        (-1.61, -1.43, -1.305, -1.128, -0.854, -0.564, -0.357, -0.246,
         -0.119, 0.014, 0.15, 0.267, 0.421, 0.529, 0.648, 0.96, 1.147),
        (-1.294, -1.221, -0.902, -0.526, -0.253, -0.1, -0.027, 0.018,
         0.084, 0.233, 0.371, 0.559, 0.808, 0.925, 1.007, 1.068, 1.114),
        (-2.6, -1.666, -0.93, -0.611, -0.19, 0.01, 0.036, 0.06,
         0.086, 0.122, 0.17, 0.258, 0.373, 0.484, 0.602, 0.697, 0.785),
        (-2.167, -1.938, -1.558, -1.263, -1.029, -0.78, -0.599, -0.483,
         -0.372, -0.264, -0.133, -0.044, 0.097, 0.294, 0.433, 0.548, 0.798),
        (-4.191, -2.011, -1.423, -1.155, -0.881, -0.589, -0.385, -0.178,
         -0.053, 0.051, 0.13, 0.368, 0.631, 0.806, 1.026, 1.25, 1.493),
        (-8.182, -1.594, -1.433, -1.216, -0.7, -0.236, -0.137, -0.078,
         0.034, 0.118, 0.33, 0.64, 0.973, 1.296, 1.519, 1.699, 1.988),
        (-5.998, -2.997, -1.425, -0.847, -0.141, 0.067, 0.135, 0.209,
         0.296, 0.427, 0.55, 0.728, 1.022, 1.338, 1.583, 1.81, 2.015),
    ),
    recalibration=Recalibration(intercept=-2.122, slope=1.352),
)


# --- The fit -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CurveFit:
    """What the fit predicts of the run's future best: ``ln(future best) ~ mu + scale * Z``."""

    progress: float  # at_step / horizon_step
    trend: float  # d ln(loss) / d ln(step) over the last quarter of the steps so far
    mu: float
    scale: float


def _thin(steps: Array, losses: Array) -> tuple[Array, Array]:
    if steps.size <= MAX_POINTS:
        return steps, losses
    keep = np.unique(np.linspace(0, steps.size - 1, MAX_POINTS).round().astype(int))
    return steps[keep], losses[keep]


def fit_curve(steps: Sequence[float], losses: Sequence[float], horizon_step: float) -> CurveFit:
    """Fit the ensemble to a run's eval losses (at least one, in step order, all positive).
    Points at step 0 or below count for nothing but the trend: no curve family is defined
    there."""
    x_all = np.asarray(steps, dtype=float) / float(horizon_step)
    y_all = np.asarray(losses, dtype=float)
    progress = float(x_all[-1])
    x, y = x_all[x_all > 0], y_all[x_all > 0]
    trend = _trend(x, y)
    if y.size < MIN_OBSERVATIONS:
        return CurveFit(progress, trend, math.log(float(y_all[-1])), EARLY_SCALE)
    x, y = _thin(x, y)
    mu, spread, noise = _ensemble(x, y, max(1.0, float(x[-1])))
    reach = (EXTRAPOLATION_SCALE * math.log(1.0 / min(progress, 1.0))
             * (abs(trend) + TREND_FLOOR))
    scale = math.sqrt(spread**2 + noise**2 + reach**2)
    half = y.size // 2
    if half >= MIN_OBSERVATIONS and x[-1] > x[half - 1]:
        # How wrong the same fit was about the run's own recent past, from its first half,
        # widened to the distance still to extrapolate.
        past, _, _ = _ensemble(x[:half], y[:half], float(x[-1]))
        miss = math.log(float(y[half:].min())) - past
        ratio = math.log(1.0 / min(progress, 1.0)) / math.log(float(x[-1] / x[half - 1]))
        scale = math.hypot(scale, miss * ratio)
    return CurveFit(progress, trend, mu, max(scale, FLOOR_SCALE))


def _ensemble(x: Array, y: Array, until: float) -> tuple[float, float, float]:
    """The ensemble's mean and spread of ln(its lowest loss over (x[-1], until]), and its
    relative noise."""
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
    g_last, g_end = g[:, -1], _bases(np.array([until]))[:, 0]
    # Each family is monotone, so its minimum over what is left is at one end.
    future = np.minimum(a + b * g_last, a + b * g_end)
    log_future = np.log(np.maximum(future, y.min() * 1e-3))
    mu = float(post @ log_future)
    spread = float(np.sqrt(post @ (log_future - mu) ** 2))
    return mu, spread, float(np.sqrt(post @ rss))


def _trend(x: Array, y: Array) -> float:
    """The local log-log slope: from the last point at or before 3/4 of the latest step."""
    if y.size < 2:
        return 0.0
    ref = min(int(np.searchsorted(x, 0.75 * x[-1], side="right")) - 1, y.size - 2)
    ref = max(ref, 0)
    span = math.log(max(x[-1], 1e-12) / max(x[ref], 1e-12))
    return float(math.log(y[-1] / y[ref]) / span) if span > 0 else 0.0


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
            calibration: Calibration = DEFAULT_CALIBRATION,
            previous: CurveFit | None = None) -> dict[str, Any]:
    """The forecast dict from a fit: percentiles of the best at the horizon, p_beat_best and
    the verdict, decided on p_beat_best (so the two always agree). A stop cannot be taken
    back: with ``previous`` (the fit without the latest point), a p_beat_best below
    ``stop_below`` must hold for both fits: it is the larger of the two."""
    def best_at(p: float) -> float:
        z = calibration.quantile(fit.progress, fit.trend, p)
        return min(best_so_far, math.exp(fit.mu + fit.scale * z))

    p_beat: float | None = None
    if other_best is not None and best_so_far < other_best:
        p_beat = 1.0
    elif other_best is not None:
        p_beat = calibration.recalibration(_p_beat(fit, other_best, calibration))
        if previous is not None and p_beat < stop_below:
            p_beat = max(p_beat, calibration.recalibration(_p_beat(previous, other_best,
                                                                   calibration)))
    return {"at_step": at_step, "horizon_step": horizon_step,
            "best_p10": best_at(0.1), "best_p50": best_at(0.5), "best_p90": best_at(0.9),
            "p_beat_best": p_beat,
            "verdict": verdict(best_so_far, other_best, p_beat, n_observations,
                               fit.progress, stop_below)}


def _p_beat(fit: CurveFit, other_best: float, calibration: Calibration) -> float:
    """P(the run's future best < other_best) under the calibrated predictive distribution."""
    if other_best <= 0:
        return calibration.levels[0] / 2
    z = (math.log(other_best) - fit.mu) / fit.scale
    return calibration.cdf(fit.progress, fit.trend, z)


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
    if not all(math.isfinite(v) and v > 0 for v in losses):
        raise ValueError("the forecast needs eval losses that are finite positive numbers")
    fit = fit_curve(steps, losses, horizon_step)
    args = (fit, min(losses), horizon_step, observations[-1][0], len(losses), other_best,
            stop_below, calibration)
    said = predict(*args)
    if said["verdict"] == "cannot_win" and len(losses) > MIN_OBSERVATIONS:
        # A stop cannot be taken back: the call must survive leaving out the latest point.
        said = predict(*args, previous=fit_curve(steps[:-1], losses[:-1], horizon_step))
    return said
