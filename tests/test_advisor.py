"""The advisor end to end, as processes on a real Redis: raw events in, forecasts in the views
(docs/insights.md#the-advisor); SIGKILLed and restarted, it loses and doubles nothing."""

from __future__ import annotations

import math
import random
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from monitor.advice import advise, slim
from monitor.keys import Keys
from monitor.records import public_state
from monitor.rules import job_view
from tests.conftest import free_port
from tests.gateway_helpers import publish
from tests.helpers import env_for, spawn_monitor, stop_process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

M = "org/model"
Spawn = Callable[..., Any]


@pytest.fixture
def spawn(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[Spawn]:
    """Start ``monitor worker`` or ``monitor advisor`` on this test's prefix; all are stopped
    after the test."""
    procs = []

    def start(command: str, *args: str) -> Any:
        extra = {"worker": ["--block", "0.05", "--lease-ttl", "1"],
                 "advisor": ["--advisor-debounce", "0.05", "--advisor-cpu", "1"]}.get(command, [])
        extra = [*extra, *args]
        proc = spawn_monitor(env_for(redis_url, keys.prefix), tmp_path / f"{command}.log",
                             command, *extra)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def views(r: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    return {k.decode(): job_view(public_state(v), None) for k, v in r.hgetall(keys.jobs).items()}


def curve(step: int, floor: float, scale: float = 1.0) -> float:
    """A power-law eval loss heading to ``floor``."""
    return round(floor + scale * (step / 100) ** -0.7, 6)


def evals(job: str, steps: range, floor: float, scale: float = 1.0) -> list[dict[str, Any]]:
    return [{"type": "metrics", "job_id": job, "step": s, "loss": curve(s, floor, scale),
             "eval_loss": curve(s, floor, scale)} for s in steps]


def started(job: str, **fields: Any) -> dict[str, Any]:
    return {"type": "job_started", "job_id": job, "model_name": M, "total_steps": 2000,
            **fields}


def from_scratch(r: redis.Redis, keys: Keys) -> dict[str, dict[str, Any] | None]:
    """Each running job's forecast computed afresh from the committed state."""
    now = views(r, keys)
    out = {}
    for job_id, view in now.items():
        if view["status"] != "running":
            continue
        rivals = [v["best_eval_loss"] for other, v in now.items()
                  if other != job_id and v["model_name"] == view["model_name"]
                  and not v["archived"] and v["best_eval_loss"] is not None]
        points = [orjson.loads(p) for p in r.lrange(keys.metrics(job_id), 0, -1)]
        out[job_id] = advise(slim(view), points, min(rivals, default=None))
    return out


def stored_forecasts(r: redis.Redis, keys: Keys) -> dict[str, dict[str, Any] | None]:
    return {job_id: v["forecast"] for job_id, v in views(r, keys).items()
            if v["status"] == "running"}


def test_each_eval_point_and_each_move_of_the_best_reaches_the_views(
        r: redis.Redis, keys: Keys, spawn: Spawn) -> None:
    spawn("worker")
    spawn("advisor")
    port = free_port()
    spawn("gateway", "--port", str(port))

    def forecasts() -> dict[str, dict[str, Any] | None]:  # as GET /api/jobs answers
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=5) as answer:
                return {v["id"]: v["forecast"] for v in orjson.loads(answer.read())["jobs"]
                        if v["status"] == "running"}
        except OSError:  # not listening yet
            return {}

    publish(r, keys, [
        started("best"), *evals("best", range(200, 2001, 200), 0.3),
        {"type": "job_finished", "job_id": "best", "status": "completed"},
        started("flat", gpu_count=2, ts=1000.0),
        *[{**e, "ts": 1000.0 + e["step"]} for e in evals("flat", range(100, 801, 100), 0.9)],
        started("no-horizon", total_steps=None, model_name="other"),
        *evals("no-horizon", range(100, 501, 100), 0.2),
    ])
    said = wait_for(lambda: (f := forecasts().get("flat")) and f["at_step"] == 800 and f,
                    what="the forecast of flat at step 800")
    assert said["verdict"] == "cannot_win"
    assert said["horizon_step"] == 2000
    # 800 s for 800 steps on 2 GPUs; 1,200 steps left: 2 x 1,200 s = 0.667 GPU-hours.
    assert said["gpu_hours_left"] == pytest.approx(2 * 1200 / 3600)
    assert forecasts()["no-horizon"] is None

    publish(r, keys, evals("flat", range(900, 901), 0.9))
    wait_for(lambda: forecasts()["flat"]["at_step"] == 900, what="step 900's forecast")

    # Archiving the group's best moves the others' p_beat_best: flat now leads.
    publish(r, keys, [{"type": "job_archived", "job_id": "best"}])
    wait_for(lambda: forecasts()["flat"]["verdict"] == "leading", what="flat leading")
    wait_for(lambda: forecasts() == from_scratch(r, keys), what="settling")

    publish(r, keys, [{"type": "job_finished", "job_id": "flat", "status": "completed"}])
    wait_for(lambda: views(r, keys)["flat"]["status"] == "completed", what="the finish")
    assert views(r, keys)["flat"]["forecast"] is None


def test_an_advisor_killed_mid_stream_loses_and_doubles_no_forecast(
        r: redis.Redis, keys: Keys, spawn: Spawn) -> None:
    rng = random.Random(20261205)
    spawn("worker")
    advisor = spawn("advisor")
    jobs = {f"run-{i}": (rng.uniform(0.2, 0.6), rng.uniform(0.5, 1.5)) for i in range(8)}
    publish(r, keys, [started(job) for job in jobs])
    for step in range(100, 1601, 100):
        publish(r, keys, [e for job, (floor, scale) in jobs.items()
                          for e in evals(job, range(step, step + 1), floor, scale)])
        time.sleep(rng.uniform(0.05, 0.3))
        if step % 400 == 0:  # SIGKILL at a random moment, restart at once
            advisor.kill()
            advisor.wait(10)
            advisor = spawn("advisor")
    publish(r, keys, [{"type": "job_archived", "job_id": "run-0"}])

    wait_for(lambda: all(f is not None and f["at_step"] == 1600
                         for f in stored_forecasts(r, keys).values()), what="forecasts at 1600")
    settled = wait_for(lambda: (f := stored_forecasts(r, keys)) == from_scratch(r, keys) and f,
                       what="views equal to a from-scratch forecast")
    assert all(math.isfinite(f["best_p50"]) for f in settled.values() if f is not None)

    # No update was sent for a forecast a view already had.
    last: dict[str, dict[str, Any]] = {}
    for _, fields in r.xrange(keys.updates):
        for view in orjson.loads(fields[b"data"])["jobs"]:
            assert view != last.get(view["id"]), f"an update repeated {view['id']}"
            last[view["id"]] = view
