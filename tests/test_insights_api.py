"""``GET /api/insights`` and the comparison's significance, on state the real worker built."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from monitor.keys import Keys
from monitor.settings import GatewaySettings
from tests.gateway_helpers import RunningWorker, publish
from web.app import create_app
from web.schemas import Comparison, Insights

pytestmark = pytest.mark.timeout(60)

Q = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture
def client(redis_url: str, keys: Keys) -> Iterator[TestClient]:
    with TestClient(create_app(GatewaySettings(redis_url=redis_url, prefix=keys.prefix)),
                    base_url="http://127.0.0.1") as c:
        yield c


def runs(r: redis.Redis, keys: Keys, worker: RunningWorker,
         specs: list[tuple[str, float, dict[str, Any] | None, int | None, float]]) -> None:
    """One finished run per (job id, best eval loss, config, GPUs, hours)."""
    events: list[dict[str, Any] | bytes] = []
    for i, (job_id, loss, config, gpus, hours) in enumerate(specs):
        start = 1000.0 + i
        started: dict[str, Any] = {"type": "job_started", "job_id": job_id, "model_name": Q,
                                   "ts": start}
        if config is not None:
            started["config"] = config
        if gpus is not None:
            started["gpu_count"] = gpus
        events += [started,
                   {"type": "metrics", "job_id": job_id, "step": 10, "eval_loss": loss,
                    "ts": start + 1},
                   {"type": "job_finished", "job_id": job_id, "status": "completed",
                    "ts": start + hours * 3600}]
    publish(r, keys, events)
    worker.wait_applied()


SWEEP = [  # two seeds each of three learning rates, on one GPU for an hour or a quarter
    ("a0", 0.500, {"learning_rate": 1e-4, "seed": 0}, 1, 1.0),
    ("a1", 0.502, {"learning_rate": 1e-4, "seed": 1}, 1, 1.0),
    ("b0", 0.600, {"learning_rate": 3e-4, "seed": 0}, 1, 1.0),
    ("b1", 0.603, {"learning_rate": 3e-4, "seed": 1}, 1, 1.0),
    ("c0", 0.800, {"learning_rate": 1e-3, "seed": 0}, 1, 0.25),
    ("c1", 0.799, {"learning_rate": 1e-3, "seed": 1}, 1, 0.25),
    ("lone", 0.55, {"learning_rate": 2e-4, "seed": 0}, None, 1.0),
]


def test_insights_of_a_sweep(client: TestClient, r: redis.Redis, keys: Keys,
                             worker: RunningWorker) -> None:
    runs(r, keys, worker, SWEEP)
    answer = client.get("/api/insights", params={"model": Q})
    assert answer.status_code == 200
    body = Insights.model_validate(answer.json()).model_dump()
    assert (body["model_name"], body["model_display"]) == (Q, Q)
    assert body["gpu_hours"] == pytest.approx(4.5)  # 4 runs x 1 h + 2 x 0.25 h ("lone": none)
    assert body["pareto"] == ["c1", "a0"]  # the cheapest good run, then the best
    # every placed candidate, cheapest first ("lone" has no GPU count: not placed)
    assert [(p["job_id"], p["best_eval_loss"]) for p in body["points"]] == [
        ("c1", 0.799), ("c0", 0.8), ("a0", 0.5), ("a1", 0.502), ("b0", 0.6), ("b1", 0.603)]
    assert body["points"][0]["gpu_hours"] == pytest.approx(0.25)
    assert [(g["config"], g["job_ids"]) for g in body["replicates"]] == [
        ({"learning_rate": 1e-4}, ["a0", "a1"]), ({"learning_rate": 3e-4}, ["b0", "b1"]),
        ({"learning_rate": 1e-3}, ["c0", "c1"])]
    assert 0 < body["noise_pct"] < 1
    [lr] = body["hyperparameters"]  # the seed is no hyperparameter
    assert (lr["name"], lr["kind"], lr["runs"]) == ("learning_rate", "numeric", 7)
    assert lr["effect"] > 0.9 and lr["p_value"] < 0.01


def test_insights_of_an_unknown_model_and_of_the_unnamed_group(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, [{"type": "metrics", "job_id": "x", "eval_loss": 1.0}])
    worker.wait_applied()
    missing = client.get("/api/insights", params={"model": "no/such-model"})
    assert (missing.status_code, missing.json()["detail"]) == (404,
                                                              "unknown model 'no/such-model'")
    unnamed = client.get("/api/insights").json()  # no model: the jobs that never named one
    assert (unnamed["model_name"], unnamed["model_display"]) == (None, "Unknown Model")
    assert unnamed["replicates"] == [] and unnamed["hyperparameters"] == []


def test_the_comparison_says_whether_each_difference_is_real(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    runs(r, keys, worker, SWEEP)
    body = client.get("/api/compare", params={"ids": "a0,a1,b0,lone"}).json()
    Comparison.model_validate(body)
    verdicts = {s["job_id"]: (s["verdict"], s["method"]) for s in body["significance"]}
    assert verdicts == {
        "a1": ("within_noise", "replicates of one configuration"),
        "b0": ("real", "Welch's t-test over replicates"),
        "lone": ("real", "the model's pooled seed noise"),
    }
    assert [(o["job_id"], o["verdict"]) for o in body["recommendation"]["others"]] == [
        ("a1", "within_noise"), ("b0", "real"), ("lone", "real")]


def test_without_replicates_every_difference_is_unknown(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    runs(r, keys, worker, [("p", 0.5, {"learning_rate": 1e-4}, None, 1.0),
                           ("q", 0.9, {"learning_rate": 1e-3}, None, 1.0)])
    body = client.get("/api/compare", params={"ids": "p,q"}).json()
    assert body["significance"] == [{"job_id": "q", "verdict": "unknown", "p_value": None,
                                     "method": None}]
