"""``POST /api/events``: validated as the worker validates, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from monitor.keys import Keys
from monitor.settings import GatewaySettings
from tests.gateway_helpers import RunningWorker
from web.app import create_app

pytestmark = pytest.mark.timeout(60)

GOOD = {"type": "metrics", "job_id": "a", "model_name": "org/m", "step": 1, "loss": 0.5}


@pytest.fixture
def client(redis_url: str, keys: Keys) -> Iterator[TestClient]:
    app = create_app(GatewaySettings(redis_url=redis_url, prefix=keys.prefix))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def test_one_event_or_a_list_is_appended_and_applied(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    assert client.post("/api/events", json=GOOD).json() == {"accepted": 1}
    answer = client.post("/api/events", json=[{**GOOD, "step": 2, "loss": 0.4},
                                              {"type": "metrics", "job_id": "a", "step": 3,
                                               "eval_loss": 0.3}])
    assert (answer.status_code, answer.json()) == (202, {"accepted": 2})
    assert r.xlen(keys.events) == 3
    worker.wait_applied()
    job = client.get("/api/jobs/a").json()
    assert (job["loss"], job["best_eval_loss"]) == (0.4, 0.3)


def test_other_metrics_go_to_the_metric_history_and_do_not_rank(
        client: TestClient, worker: RunningWorker) -> None:
    body = [{**GOOD, "eval_loss": 0.9, "extra": {"accuracy": 0.61, "learning_rate": 2e-5}},
            {"type": "metrics", "job_id": "a", "step": 2, "extra": {"accuracy": 0.64}}]
    assert client.post("/api/events", json=body).json() == {"accepted": 2}
    worker.wait_applied()
    points = client.get("/api/jobs/a/metrics").json()["points"]
    assert [{k: p[k] for k in ("step", "loss", "eval_loss")} | {"extra": p.get("extra")}
            for p in points] == [
        {"step": 1, "loss": 0.5, "eval_loss": 0.9,
         "extra": {"accuracy": 0.61, "learning_rate": 2e-5}},
        {"step": 2, "loss": None, "eval_loss": None, "extra": {"accuracy": 0.64}}]
    job = client.get("/api/jobs/a").json()
    assert (job["step"], job["loss"], job["best_eval_loss"]) == (2, 0.5, 0.9)


BAD: list[tuple[str, Any, str]] = [
    ("a string where a number goes", [GOOD, {**GOOD, "loss": "0.5"}],
     "body[1].loss: Input should be a valid number"),
    ("true is not a number", {**GOOD, "loss": True}, "body.loss: Input should be a valid number"),
    ("a float where an integer goes", [{**GOOD, "step": 1.5}],
     "body[0].step: Input should be a valid integer"),
    ("NaN", b'[{"type":"metrics","job_id":"a","loss":NaN}]',
     "body[0].loss: Input should be a finite number"),
    ("Infinity", b'{"type":"metrics","job_id":"a","eval_loss":-Infinity}',
     "body.eval_loss: Input should be a finite number"),
    ("an unknown type", [GOOD, GOOD, {"type": "telemetry", "job_id": "a"}],
     ("body[2]: Input tag 'telemetry' found using 'type' does not match any of the expected "
      "tags: 'job_started', 'metrics', 'checkpoint', 'job_finished', 'job_archived', "
      "'job_restored', 'job_forecast', 'job_stop_requested', 'job_heartbeat', 'job_stale'")),
    ("a forecast", [GOOD, {"type": "job_forecast", "job_id": "a", "forecast": {}}],
     "body[1].type: job_forecast is written by the monitor, not sent to it"),
    ("a stale finding", {"type": "job_stale", "job_id": "a", "last_seen": 1.0},
     "body.type: job_stale is written by the monitor, not sent to it"),
    ("a bad job id", {**GOOD, "job_id": "has space"},
     "body.job_id: String should match pattern '^[A-Za-z0-9._:-]+$'"),
    ("no loss at all", {"type": "metrics", "job_id": "a"},
     "body: Value error, a metrics event needs loss, eval_loss or extra"),
    ("an empty extra", {**GOOD, "extra": {}},
     "body.extra: Dictionary should have at least 1 item after validation, not 0"),
    ("a text among the other metrics", {**GOOD, "extra": {"lr": "1e-4"}},
     "body.extra.lr: Input should be a valid number"),
    ("too many other metrics", {**GOOD, "extra": {f"m{i}": 1 for i in range(101)}},
     "body.extra: Dictionary should have at most 100 items after validation, not more"),
    ("an oversized config", {"type": "job_started", "job_id": "a", "config": {"x": "y" * 70_000}},
     "body.config: Value error, config is 70008 bytes as JSON, at most 65536"),
    ("1,001 events", [GOOD] * 1001, "body: 1001 events; send 1 to 1000"),
    ("an empty list", [], "body: 0 events; send 1 to 1000"),
    ("not an event", "hello", "body: send one event object or a list of events"),
    ("not JSON", b"{nope", ("body: invalid JSON: Expecting property name enclosed in double "
                            "quotes: line 1 column 2 (char 1)")),
]


@pytest.mark.parametrize(("body", "detail"), [(b[1], b[2]) for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_input_is_a_422_naming_the_field_and_nothing_is_appended(
        client: TestClient, r: redis.Redis, keys: Keys, body: Any, detail: str) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    answer = client.post("/api/events", content=content,
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["detail"] == detail
    assert answer.json()["status"] == 422
    assert r.xlen(keys.events) == 0


def test_every_bad_field_is_listed(client: TestClient) -> None:
    answer = client.post("/api/events", json=[GOOD, {**GOOD, "loss": "x", "step": -1}])
    assert answer.json()["errors"] == [
        {"loc": ["body", 1, "step"], "msg": "Input should be greater than or equal to 0"},
        {"loc": ["body", 1, "loss"], "msg": "Input should be a valid number"},
    ]
    assert answer.json()["detail"] == \
        "body[1].step: Input should be greater than or equal to 0 (and 1 more)"


@pytest.mark.parametrize(("content", "detail"), [
    (orjson.dumps({"type": "job_started", "job_id": "a"})[:-1] + b',"config":{"seed":'
     + str(2**64).encode() + b"}}",
     "body: Integer exceeds 64-bit range"),
    (orjson.dumps({**GOOD, "note": "x" * 300_000}),
     "body: event is 300082 bytes, at most 262144"),
    (b"\xef\xbb\xbf" + orjson.dumps(GOOD),
     ("body: invalid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 "
      "(char 0)")),
    (b"[" * 100_000, "body: invalid JSON: nested too deeply"),
])
def test_what_the_worker_would_refuse_is_refused_here(
        client: TestClient, r: redis.Redis, keys: Keys, content: bytes, detail: str) -> None:
    answer = client.post("/api/events", content=content,
                         headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["detail"]) == (422, detail)
    assert r.xlen(keys.events) == 0


def test_only_json_from_this_site_may_write(client: TestClient, r: redis.Redis,
                                            keys: Keys) -> None:
    form = client.post("/api/events", content=orjson.dumps(GOOD),
                       headers={"Content-Type": "text/plain"})
    assert (form.status_code, form.json()["detail"]) == (
        415, "send the events as Content-Type: application/json")
    foreign = client.post("/api/events", json=GOOD, headers={"Origin": "https://evil.example"})
    assert (foreign.status_code, foreign.json()["detail"]) == (
        403, "cross-site request refused (Origin not allowed)")
    archive = client.post("/api/jobs/a/archive", headers={"Origin": "https://evil.example"})
    assert archive.status_code == 403
    assert r.xlen(keys.events) == 0
    same_site = client.post("/api/events", json=GOOD, headers={"Origin": "http://127.0.0.1"})
    assert same_site.status_code == 202


def test_a_huge_body_is_refused_before_it_is_read(client: TestClient) -> None:
    answer = client.post("/api/events", content=b" " * (17 * 1024 * 1024),
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["detail"] == "body is 17825792 bytes, at most 16777216"


def test_requests_for_another_host_name_are_refused(client: TestClient) -> None:
    answer = client.get("/api/jobs", headers={"Host": "rebound.evil.example"})
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("unknown host 'rebound.evil.example'")
    assert client.get("/api/jobs", headers={"Host": "localhost:8000"}).status_code == 200
