"""What the monitor concludes about a model's runs (docs/insights.md): what each cost, which
are on the cost front, which differ only by seed and how noisy that makes a result, which
hyperparameters matter, and whether a difference between two runs is real. Pure: job views
(with their configs) in, plain dicts out."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
from scipy import stats

from monitor.rules import gpu_hours, is_candidate

SIGNIFICANT = 0.05  # a p-value below this makes a difference "real"
MIN_RUNS_PER_KEY = 5  # a hyperparameter is judged only across at least this many candidates


# --- Cost -----------------------------------------------------------------------------------


def candidates(views: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs that compete for their model's best run: not archived, with a best eval loss."""
    return [v for v in views if is_candidate(v["archived"], v["best_eval_loss"])]


def points(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates that can be placed on the cost chart (their GPU-hours are known), as
    ``{job_id, name, gpu_hours, best_eval_loss}``, cheapest first: what the page draws
    without holding the model's jobs."""
    placed = [{"job_id": v["id"], "name": v.get("name"), "gpu_hours": h,
               "best_eval_loss": v["best_eval_loss"]}
              for v in candidates(views) if (h := gpu_hours(v)) is not None]
    return sorted(placed, key=lambda p: (p["gpu_hours"], p["best_eval_loss"], p["job_id"]))


def pareto(views: list[dict[str, Any]]) -> list[str]:
    """Ids of the candidates that no other candidate beats on both GPU-hours (as few or
    fewer) and best eval loss (strictly lower), cheapest first. Candidates without GPU-hours
    cannot be placed and are left out."""
    costed = [(gpu_hours(v), v["best_eval_loss"], v["id"]) for v in candidates(views)]
    placed = [(h, loss, job_id) for h, loss, job_id in costed if h is not None]
    front = [(h, loss, job_id) for h, loss, job_id in placed
             if not any(h2 <= h and loss2 < loss for h2, loss2, _ in placed)]
    return [job_id for _, _, job_id in sorted(front)]


# --- Seeds and replicates -------------------------------------------------------------------


def is_seed_key(name: str) -> bool:
    """``seed``, ``data_seed``, ``SEED``: a key that only picks random numbers."""
    lowered = name.lower()
    return lowered == "seed" or lowered.endswith("_seed")


def without_seeds(value: Any) -> Any:
    """``value`` with every seed key removed, at any depth (inside lists too)."""
    if isinstance(value, dict):
        return {k: without_seeds(v) for k, v in value.items() if not is_seed_key(str(k))}
    if isinstance(value, list):
        return [without_seeds(v) for v in value]
    return value


def _canonical(config: dict[str, Any]) -> bytes:
    return orjson.dumps(without_seeds(config), option=orjson.OPT_SORT_KEYS)


def _interval(values: list[float]) -> tuple[float, float, list[float]]:
    """Mean, sample standard deviation and a 95% t-interval for the mean."""
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, [mean - half, mean + half]


def replicate_groups(views: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Candidates whose configs are equal once seed keys are removed, two or more to a group,
    each group in ``created_at`` order. A job without a config is nobody's replicate."""
    groups: dict[bytes, list[dict[str, Any]]] = {}
    for view in candidates(views):
        if view.get("config") is not None:
            groups.setdefault(_canonical(view["config"]), []).append(view)
    return [sorted(g, key=lambda v: (v["created_at"], v["id"])) for g in groups.values()
            if len(g) >= 2]


def replicates(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each replicate group: its config without seeds, its jobs, and their best eval loss's
    mean, standard deviation and 95% interval for the mean."""
    out = []
    for group in replicate_groups(views):
        mean, std, ci95 = _interval([v["best_eval_loss"] for v in group])
        out.append({"config": without_seeds(group[0]["config"]),
                    "job_ids": [v["id"] for v in group], "n": len(group),
                    "best_eval_loss_mean": mean, "best_eval_loss_std": std, "ci95": ci95})
    out.sort(key=lambda r: (r["best_eval_loss_mean"], r["job_ids"]))
    return out


def pooled_noise(views: list[dict[str, Any]]) -> float | None:
    """The pooled within-replicate standard deviation of best eval loss (absolute); None
    without replicates."""
    return _pooled(replicate_groups(views))


def _pooled(groups: list[list[dict[str, Any]]]) -> float | None:
    dof = sum(len(g) - 1 for g in groups)
    if dof == 0:
        return None
    ss = sum(float(np.var([v["best_eval_loss"] for v in g], ddof=0)) * len(g) for g in groups)
    return math.sqrt(ss / dof)


def noise_pct(views: list[dict[str, Any]]) -> float | None:
    """:func:`pooled_noise` in % of the mean best eval loss of the replicates."""
    groups = replicate_groups(views)
    sigma = _pooled(groups)
    if sigma is None:
        return None
    mean = float(np.mean([v["best_eval_loss"] for g in groups for v in g]))
    return None if mean == 0 else sigma / abs(mean) * 100


# --- Hyperparameters ------------------------------------------------------------------------


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys joined with dots (``optim.lr``), seed keys left out; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if is_seed_key(str(key)):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _effect(name: str, runs: list[tuple[Any, float]]) -> dict[str, Any] | None:
    values = [v for v, _ in runs]
    losses = np.array([loss for _, loss in runs])
    distinct = {orjson.dumps(v) for v in values}
    if len(runs) < MIN_RUNS_PER_KEY or len(distinct) < 2 or float(np.ptp(losses)) == 0:
        return None
    if all(_is_number(v) for v in values):
        rho, p = stats.spearmanr(np.array(values, dtype=float), losses)
        return {"name": name, "kind": "numeric", "runs": len(runs), "effect": float(rho),
                "p_value": float(p), "importance": float(rho) ** 2}
    groups: dict[bytes, list[float]] = {}
    for value, loss in runs:
        groups.setdefault(orjson.dumps(value), []).append(loss)
    samples = list(groups.values())
    p = float(stats.kruskal(*samples).pvalue) if len(samples) >= 2 else 1.0
    return {"name": name, "kind": "categorical", "runs": len(runs), "effect": None,
            "p_value": p, "importance": _epsilon_squared(samples)}


def _epsilon_squared(samples: list[list[float]]) -> float:
    """The share of variance the groups explain, corrected for their number (ε², at least 0):
    plain η² would credit a key with many small groups for noise."""
    everything = np.concatenate([np.array(s) for s in samples])
    total = float(np.sum((everything - everything.mean()) ** 2))
    between = sum(len(s) * (float(np.mean(s)) - float(everything.mean())) ** 2 for s in samples)
    within_dof = len(everything) - len(samples)
    if total == 0 or within_dof <= 0:
        return 0.0
    ms_within = (total - between) / within_dof
    return float(max(0.0, (between - (len(samples) - 1) * ms_within) / (total + ms_within)))


def hyperparameters(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each config key (flattened, seeds left out) that takes two or more values among at
    least five candidates: its kind, how many runs carry it, the rank correlation with best
    eval loss (numeric keys; negative: larger values give lower loss), the p-value of it
    having any effect (Spearman, or Kruskal-Wallis for categorical keys), and its importance
    in 0..1 (ρ² for numeric keys, ε² for categorical ones). Most important first."""
    by_key: dict[str, list[tuple[Any, float]]] = {}
    for view in candidates(views):
        for name, value in flatten(view.get("config") or {}).items():
            by_key.setdefault(name, []).append((value, view["best_eval_loss"]))
    found = [e for name, runs in by_key.items() if (e := _effect(name, runs)) is not None]
    found.sort(key=lambda e: (-e["importance"], e["p_value"], e["name"]))
    return found


# --- Is a difference real? ------------------------------------------------------------------


def significance(run: dict[str, Any], best: dict[str, Any],
                 model_views: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether ``run``'s best eval loss is worse than ``best``'s by more than seed noise
    explains: ``real``, ``within_noise`` or ``unknown``, with the p-value and the method.

    With replicates of both runs' configurations, Welch's t-test between them; two runs of one
    configuration differ by seed alone; otherwise the difference against the model's pooled
    seed noise (a normal test of a difference of two draws); without replicates, unknown."""
    groups = replicate_groups(model_views)
    group_of = {v["id"]: i for i, g in enumerate(groups) for v in g}
    mine, theirs = group_of.get(run["id"]), group_of.get(best["id"])
    if mine is not None and mine == theirs:  # the same configuration: they differ by seed alone
        return {"job_id": run["id"], "verdict": "within_noise", "p_value": None,
                "method": "replicates of one configuration"}
    if mine is not None and theirs is not None:
        ours = [v["best_eval_loss"] for v in groups[mine]]
        other = [v["best_eval_loss"] for v in groups[theirs]]
        p = float(stats.ttest_ind(ours, other, equal_var=False).pvalue)
        return _verdict(run, p, "Welch's t-test over replicates")
    sigma = _pooled(groups)
    if sigma is None:
        return {"job_id": run["id"], "verdict": "unknown", "p_value": None, "method": None}
    difference = abs(run["best_eval_loss"] - best["best_eval_loss"])
    p = 1.0 if difference == 0 else (
        0.0 if sigma == 0 else float(2 * stats.norm.sf(difference / (sigma * math.sqrt(2)))))
    return _verdict(run, p, "the model's pooled seed noise")


def _verdict(run: dict[str, Any], p: float, method: str) -> dict[str, Any]:
    return {"job_id": run["id"], "verdict": "real" if p < SIGNIFICANT else "within_noise",
            "p_value": p, "method": method}


# --- Everything about one model -------------------------------------------------------------


def model_insights(model_name: str | None, model_display: str,
                   views: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /api/insights`` for one model's jobs (views with ``config``)."""
    hours = [h for v in views if not v["archived"] and (h := gpu_hours(v)) is not None]
    return {
        "model_name": model_name,
        "model_display": model_display,
        "gpu_hours": sum(hours) if hours else None,
        "pareto": pareto(views),
        "points": points(views),
        "replicates": replicates(views),
        "noise_pct": noise_pct(views),
        "hyperparameters": hyperparameters(views),
    }
