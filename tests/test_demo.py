"""The simulated trainers: the pure loss curves, the run plans, and a quick demo on real Redis."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter, defaultdict
from statistics import mean
from typing import Any

import pytest
import redis

from monitor.cli.demo import MODELS, CurveSpec, DemoOptions, loss_curve, plan_runs, run_demo
from monitor.keys import Keys
from tests.helpers import read_events

PLAIN = CurveSpec(start=2.6, best_eval=0.55, decay=5.0, gap=0.06, overfit=0.0, noise=0.05)
OVERFIT = CurveSpec(start=2.6, best_eval=0.55, decay=5.0, gap=0.06, overfit=1.4, noise=0.05)


def test_training_loss_decays_from_about_2_to_3_with_noise() -> None:
    curve = loss_curve(PLAIN, epochs=5, steps_per_epoch=20, seed=3)
    assert len(curve.loss) == 100 and len(curve.eval_loss) == 5
    assert 2.0 <= curve.loss[0] <= 3.2
    assert curve.loss[-1] < curve.loss[0]
    assert mean(curve.loss[-10:]) < mean(curve.loss[:10]) / 3
    ups = sum(b > a for a, b in zip(curve.loss, curve.loss[1:]))
    assert ups >= 10  # noisy, not a smooth line
    assert min(curve.loss) > 0


def test_eval_loss_sits_above_training_loss_and_reaches_the_planned_best() -> None:
    curve = loss_curve(PLAIN, epochs=5, steps_per_epoch=20, seed=3)
    assert min(curve.eval_loss) == pytest.approx(PLAIN.best_eval, rel=0.03)
    assert all(e > 0.9 * PLAIN.best_eval for e in curve.eval_loss)
    for epoch, eval_loss in enumerate(curve.eval_loss, start=1):
        last_steps = curve.loss[epoch * 20 - 5 : epoch * 20]
        assert eval_loss > min(last_steps)
        if epoch >= 3:  # where the curve is flat, above the average too
            assert eval_loss > mean(last_steps)
    assert curve.eval_loss.index(min(curve.eval_loss)) == 4  # no overfitting: best is last


def test_an_overfitting_run_has_its_best_eval_before_the_end() -> None:
    curve = loss_curve(OVERFIT, epochs=5, steps_per_epoch=20, seed=3)
    best = curve.eval_loss.index(min(curve.eval_loss))
    assert best < 4
    assert curve.eval_loss[-1] > 1.05 * min(curve.eval_loss)
    assert mean(curve.loss[-10:]) < mean(curve.loss[50:60])  # training loss keeps falling
    assert min(curve.eval_loss) == pytest.approx(OVERFIT.best_eval, rel=0.03)


def test_curves_are_deterministic_per_seed() -> None:
    assert loss_curve(PLAIN, 3, 10, seed=1) == loss_curve(PLAIN, 3, 10, seed=1)
    assert loss_curve(PLAIN, 3, 10, seed=1) != loss_curve(PLAIN, 3, 10, seed=2)


def test_plans_are_deterministic_and_spread_over_the_tiers() -> None:
    options = DemoOptions(redis_url="redis://unused", seed=5)
    plans = plan_runs(options, random.Random(5))
    assert plans == plan_runs(options, random.Random(5))
    assert len(plans) == len(MODELS) * 3
    by_model: dict[str, list[float]] = defaultdict(list)
    for plan in plans:
        by_model[plan.model_name].append(plan.curve.best_eval)
        assert re.fullmatch(r"lr=\de-\d r=\d+", plan.name)
    deltas = [(b - min(bests)) / min(bests) * 100
              for bests in by_model.values() for b in bests if b != min(bests)]
    assert any(d < 5 for d in deltas)
    assert any(10 < d <= 25 for d in deltas)
    assert any(d > 25 for d in deltas)
    fates = Counter(plan.fate for plan in plans)
    assert fates["failed"] >= 1 and fates["cancelled"] == 1
    assert all(p.error.startswith("CUDA out of memory") for p in plans if p.fate == "failed")


def test_a_quick_demo_writes_realistic_valid_runs(
    r: redis.Redis, keys: Keys, redis_url: str
) -> None:
    options = DemoOptions(redis_url=redis_url, prefix=keys.prefix, epochs=2, steps_per_epoch=4,
                          step_seconds=0, seed=7)
    assert run_demo(options) == 12
    events = read_events(r, keys)
    jobs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        jobs[event["job_id"]].append(event)
    assert len(jobs) == 12
    assert len({e["model_name"] for e in events}) == len(MODELS) >= 4

    finished = {}
    for job_id, job_events in jobs.items():
        types = [e["type"] for e in job_events]
        assert types[0] == "job_started" and types[-1] == "job_finished"
        assert types.count("job_started") == types.count("job_finished") == 1
        assert job_events[0]["config"]["num_train_epochs"] == 2
        finished[job_id] = job_events[-1]
        for e in job_events:
            if e["type"] == "checkpoint":
                assert e["path"] == f"checkpoint-{e['step']}" and e["step"] % 4 == 0
                assert e["epoch"] == e["step"] // 4
        if job_events[-1]["status"] == "completed":
            assert [e["step"] for e in job_events if "loss" in e] == list(range(1, 9))
            assert len([e for e in job_events if "eval_loss" in e]) == 2
            assert len([e for e in job_events if e["type"] == "checkpoint"]) == 2

    statuses = Counter(e["status"] for e in finished.values())
    assert statuses["failed"] >= 1 and statuses["cancelled"] == 1
    assert statuses["completed"] == 12 - statuses["failed"] - 1
    for e in finished.values():
        if e["status"] == "failed":
            assert e["error"].startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate")


def test_stop_ends_a_looping_demo_promptly_with_running_jobs_cancelled(
    r: redis.Redis, keys: Keys, redis_url: str
) -> None:
    options = DemoOptions(redis_url=redis_url, prefix=keys.prefix, step_seconds=0.01,
                          seed=3, loop=True)
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    finished = run_demo(options, stop)
    assert time.monotonic() - started < 3
    timer.join()
    events = read_events(r, keys)
    assert finished == sum(e["type"] == "job_started" for e in events) >= 2
    ends = [e for e in events if e["type"] == "job_finished"]
    assert len(ends) == finished
    assert any(e["status"] == "cancelled" for e in ends)
