"""What the advisor concludes about a running job, and when it must think again
(docs/insights.md#the-advisor). Pure: views and metric points in, a forecast out; the advisor
process (``worker/advisor.py``) does the reading and writing around it.

A job's forecast depends on its *basis*: its eval observations (counted by ``eval_count``),
its horizon, its GPU count and the best eval loss of the rest of its group. The advisor
recomputes a forecast when its basis moves, and only then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from monitor.forecast import STOP_BELOW, forecast
from monitor.limits import RUNNING

# The fields of a job view the advisor keeps (the rest of a view does not move a forecast).
KEPT = ("id", "model_name", "status", "archived", "best_eval_loss", "eval_count",
        "total_steps", "total_epochs", "gpu_count", "created_at", "updated_at", "step",
        "forecast", "stale", "stop_requested", "autostop")


def slim(view: dict[str, Any]) -> dict[str, Any]:
    """The part of a view (or stored job state) the advisor keeps."""
    return {name: view.get(name) for name in KEPT}


def wants_forecast(job: dict[str, Any]) -> bool:
    """Only a running job with an eval loss has a forecast (its horizon is known only once
    its history is read); a stale one keeps the forecast it has until it is heard again."""
    return job["status"] == RUNNING and job["best_eval_loss"] is not None and not job["stale"]


def autostop_reason(job: dict[str, Any], before: dict[str, Any] | None,
                    now: dict[str, Any] | None, stop_below: float = STOP_BELOW) -> str | None:
    """Why auto-stop asks ``job`` to stop, or None when it does not: its forecast said
    ``cannot_win`` at two eval points in a row (``before``, the forecast its view has, and
    ``now``), it runs, is not stale, was not started with ``autostop: false`` and was not
    asked already (docs/stopping.md, Auto-stop)."""
    if (now is None or before is None or now["verdict"] != "cannot_win"
            or before["verdict"] != "cannot_win" or before["at_step"] >= now["at_step"]
            or job["status"] != RUNNING or job["stale"] or job["autostop"] is False
            or job["stop_requested"] is not None):
        return None
    saving = now["gpu_hours_left"]
    saves = f"; a stop now saves {saving:.1f} GPU-h" if saving is not None else ""
    return (f"cannot win: p_beat_best {now['p_beat_best']:.3f} (below {stop_below:g}) at "
            f"steps {before['at_step']} and {now['at_step']}{saves}")


@dataclass(frozen=True, slots=True)
class Basis:
    """Everything a forecast depends on besides the eval history, whose growth ``eval_count``
    tells."""

    eval_count: int
    total_steps: int | None
    total_epochs: int | None
    gpu_count: int | None
    other_best: float | None


def basis(job: dict[str, Any], other_best: float | None) -> Basis:
    return Basis(job["eval_count"] or 0, job["total_steps"], job["total_epochs"],
                 job["gpu_count"], other_best)


@dataclass
class Rivals:
    """Each model group's candidates (not archived, with a best eval loss), ranked, so that
    each job can be told the best eval loss of the rest of its group in O(log n)."""

    ranked: dict[str | None, SortedList] = field(default_factory=dict)  # (loss, job id)
    placed: dict[str, tuple[str | None, float]] = field(default_factory=dict)

    def place(self, job: dict[str, Any]) -> bool:
        """Put ``job`` where its view says; True when its group's two best changed (which
        moves the other best of every member)."""
        job_id, model = job["id"], job["model_name"]
        loss = job["best_eval_loss"]
        now = None if job["archived"] or loss is None else (model, float(loss))
        before = self.placed.get(job_id)
        if now == before:
            return False
        touched = {place[0] for place in (before, now) if place is not None}
        tops = {m: self._top_two(m) for m in touched}
        if before is not None:
            group = self.ranked[before[0]]
            group.remove((before[1], job_id))
            if not group:
                del self.ranked[before[0]]
            del self.placed[job_id]
        if now is not None:
            self.ranked.setdefault(now[0], SortedList()).add((now[1], job_id))
            self.placed[job_id] = now
        return any(self._top_two(m) != top for m, top in tops.items())

    def _top_two(self, model: str | None) -> list[tuple[float, str]]:
        group = self.ranked.get(model)
        return list(group[:2]) if group else []

    def other_best(self, job_id: str, model: str | None) -> float | None:
        """The lowest best eval loss among the group's candidates other than ``job_id``."""
        for loss, other in self._top_two(model):
            if other != job_id:
                return float(loss)
        return None


def _epoch_steps(points: Sequence[dict[str, Any]]) -> float | None:
    """Steps per epoch, from the latest point that carries both a step and an epoch."""
    for point in reversed(points):
        if point.get("step") and point.get("epoch"):
            return float(point["step"]) / float(point["epoch"])
    return None


def horizon_step(job: dict[str, Any], points: Sequence[dict[str, Any]]) -> int | None:
    """The step the job should end at: ``total_steps``, else ``total_epochs`` times the steps
    per epoch its metrics show; None when neither is known (docs/insights.md#horizon)."""
    if job["total_steps"]:
        return int(job["total_steps"])
    per_epoch = _epoch_steps(points)
    if job["total_epochs"] and per_epoch:
        return max(1, round(float(job["total_epochs"]) * per_epoch))
    return None


def eval_series(points: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """The eval losses of a history as ``(step, eval_loss)`` in step order; a point without
    a step is placed by its epoch when the history tells the steps per epoch."""
    per_epoch = _epoch_steps(points)
    out = []
    for point in points:
        value = point.get("eval_loss")
        if value is None:
            continue
        step = point.get("step")
        if step is None and point.get("epoch") is not None and per_epoch:
            step = point["epoch"] * per_epoch
        if step is not None:
            out.append((float(step), float(value)))
    out.sort(key=lambda p: p[0])
    return out


def gpu_hours_left(job: dict[str, Any], horizon: int) -> float | None:
    """GPU-hours to the horizon at the job's pace so far (its time per step since it was
    created); None without a GPU count or a step to measure the pace by."""
    step, gpus = job["step"], job["gpu_count"]
    if gpus is None or not step:
        return None
    elapsed = max(0.0, job["updated_at"] - job["created_at"])
    return float(gpus * elapsed / step * max(0, horizon - step) / 3600)


def advise(job: dict[str, Any], points: Sequence[dict[str, Any]], other_best: float | None,
           stop_below: float = STOP_BELOW) -> dict[str, Any] | None:
    """The ``forecast`` view field of a running job (docs/insights.md#forecast), or None when
    it has none: no horizon, or no eval loss the forecast can use (finite and positive)."""
    if not wants_forecast(job):
        return None
    horizon = horizon_step(job, points)
    series = [(s, v) for s, v in eval_series(points) if math.isfinite(v) and v > 0]
    if horizon is None or not series:
        return None
    said = forecast(series, horizon, other_best, stop_below)
    return {
        "at_step": int(said["at_step"]),
        "horizon_step": int(horizon),
        "best_p10": float(said["best_p10"]),
        "best_p50": float(said["best_p50"]),
        "best_p90": float(said["best_p90"]),
        "p_beat_best": None if said["p_beat_best"] is None else float(said["p_beat_best"]),
        "verdict": said["verdict"],
        "gpu_hours_left": gpu_hours_left(job, horizon),
    }
