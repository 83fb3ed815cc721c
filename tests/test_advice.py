"""The advisor's pure part: horizon, eval series, GPU-hours left, rivals and the forecast field."""

from __future__ import annotations

from typing import Any

import pytest

from monitor.advice import Rivals, advise, eval_series, gpu_hours_left, horizon_step, slim


def job(**fields: Any) -> dict[str, Any]:
    base = {"id": "j", "model_name": "m", "status": "running", "archived": False,
            "best_eval_loss": 0.5, "eval_count": 1, "total_steps": None, "total_epochs": None,
            "gpu_count": None, "created_at": 0.0, "updated_at": 0.0, "step": None,
            "epoch": None, "forecast": None}
    return slim({**base, **fields})


def point(step: int | None, epoch: float | None, eval_loss: float | None = None,
          loss: float | None = 1.0) -> dict[str, Any]:
    return {"step": step, "epoch": epoch, "loss": loss, "eval_loss": eval_loss, "ts": 0.0}


@pytest.mark.parametrize(("fields", "points", "expected"), [
    ({"total_steps": 1000}, [], 1000),
    ({"total_steps": 1000, "total_epochs": 3}, [point(50, 1.0)], 1000),  # total_steps first
    ({"total_epochs": 3}, [point(50, 1.0), point(120, 2.0)], 180),  # the latest ratio: 60/epoch
    ({"total_epochs": 3}, [point(120, 2.0), point(130, None)], 180),  # latest with both
    ({"total_epochs": 3}, [point(None, 1.0)], None),  # no step: unknown
    ({"total_epochs": 3}, [point(0, 0.0)], None),  # epoch 0 tells no ratio
    ({}, [point(50, 1.0)], None),
])
def test_the_horizon_is_total_steps_else_epochs_times_steps_per_epoch(
        fields: dict[str, Any], points: list[dict[str, Any]], expected: int | None) -> None:
    assert horizon_step(job(**fields), points) == expected


def test_the_eval_series_is_in_step_order_and_places_epoch_only_points_by_the_ratio() -> None:
    points = [point(100, 1.0, 0.9), point(50, 0.5, 1.2), point(None, 1.5, 0.8),
              point(200, 2.0, None), point(None, None, 0.7)]
    assert eval_series(points) == [(50.0, 1.2), (100.0, 0.9), (150.0, 0.8)]


@pytest.mark.parametrize(("fields", "horizon", "expected"), [
    # 3,600 s for 100 steps on 2 GPUs: 72 GPU-seconds a step; 900 steps left -> 18 GPU-h.
    ({"gpu_count": 2, "created_at": 0.0, "updated_at": 3600.0, "step": 100}, 1000, 18.0),
    ({"gpu_count": 2, "created_at": 0.0, "updated_at": 3600.0, "step": 1000}, 1000, 0.0),
    ({"gpu_count": 2, "created_at": 0.0, "updated_at": 3600.0, "step": 1200}, 1000, 0.0),
    ({"gpu_count": None, "created_at": 0.0, "updated_at": 3600.0, "step": 100}, 1000, None),
    ({"gpu_count": 1, "created_at": 0.0, "updated_at": 3600.0, "step": 0}, 1000, None),
])
def test_gpu_hours_left_go_at_the_pace_so_far(fields: dict[str, Any], horizon: int,
                                              expected: float | None) -> None:
    assert gpu_hours_left(job(**fields), horizon) == expected


def test_rivals_tell_each_job_the_best_of_the_rest_and_when_that_moved() -> None:
    rivals = Rivals()
    assert rivals.place(job(id="a", best_eval_loss=0.5)) is True
    assert rivals.other_best("a", "m") is None
    assert rivals.place(job(id="b", best_eval_loss=0.4)) is True
    assert (rivals.other_best("a", "m"), rivals.other_best("b", "m")) == (0.4, 0.5)
    assert rivals.place(job(id="c", best_eval_loss=0.9)) is False  # third: moves nobody's
    assert rivals.place(job(id="c", best_eval_loss=0.9)) is False  # nothing changed
    assert rivals.place(job(id="b", best_eval_loss=0.4, archived=True)) is True
    assert (rivals.other_best("a", "m"), rivals.other_best("c", "m")) == (0.9, 0.5)
    assert rivals.place(job(id="c", model_name="other", best_eval_loss=0.9)) is True
    assert (rivals.other_best("a", "m"), rivals.other_best("c", "other")) == (None, None)


HISTORY = [point(s, None, 2.0 * (s / 100) ** -0.5) for s in range(100, 1100, 100)]


@pytest.mark.parametrize(("fields", "points", "other_best", "verdict"), [
    ({"total_steps": 10_000}, HISTORY, None, "leading"),  # no rival
    ({"total_steps": 10_000}, HISTORY, 0.02, "cannot_win"),  # 0.63 now, heading to 0.2
    ({"total_steps": 10_000}, HISTORY[:2], 0.1, "too_early"),
    ({"total_steps": 10_000}, HISTORY, 0.3, "may_win"),
])
def test_the_forecast_field_of_a_running_job(fields: dict[str, Any], points: list[dict[str, Any]],
                                             other_best: float | None, verdict: str) -> None:
    said = advise(job(**fields), points, other_best)
    assert said is not None
    assert said["verdict"] == verdict
    assert (said["at_step"], said["horizon_step"]) == (points[-1]["step"], 10_000)
    assert said["best_p10"] <= said["best_p50"] <= said["best_p90"] <= points[-1]["eval_loss"]
    assert set(said) == {"at_step", "horizon_step", "best_p10", "best_p50", "best_p90",
                         "p_beat_best", "verdict", "gpu_hours_left"}


@pytest.mark.parametrize(("fields", "points"), [
    ({"status": "completed", "total_steps": 10_000}, HISTORY),  # not running
    ({"total_steps": None}, HISTORY),  # no horizon
    ({"total_steps": 10_000}, [point(100, None, None)]),  # no eval loss in the history
    ({"total_steps": 10_000}, [point(100, None, 0.0), point(200, None, -1.0)]),  # none usable
])
def test_no_forecast_without_a_running_job_a_horizon_and_a_usable_eval_loss(
        fields: dict[str, Any], points: list[dict[str, Any]]) -> None:
    assert advise(job(**fields), points, 0.3) is None
