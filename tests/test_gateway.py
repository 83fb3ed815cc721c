"""The gateway's REST API on a state built by the real worker from real events."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from monitor.keys import GROUP, Keys
from monitor.settings import GatewaySettings
from tests.gateway_helpers import RunningWorker, publish
from web.app import create_app
from web.schemas import Comparison, Error, JobDetail, JobList, JobMetrics, ModelRow

pytestmark = pytest.mark.timeout(60)

LOCAL = "http://127.0.0.1"  # the gateway answers only to loopback names by default

Q = "Qwen/Qwen2.5-7B-Instruct"
L = "meta-llama/Llama-3.2-3B"


@pytest.fixture
def client(redis_url: str, keys: Keys) -> Iterator[TestClient]:
    app = create_app(GatewaySettings(redis_url=redis_url, prefix=keys.prefix))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture
def populated(r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    """Three runs of Qwen (the original design's example), one of Llama, one archived."""
    publish(r, keys, [
        {"type": "job_started", "job_id": "q-best", "model_name": Q, "total_epochs": 12,
         "name": "lr=2e-4", "config": {"learning_rate": 2e-4}, "gpu_count": 2, "ts": 100.0},
        {"type": "metrics", "job_id": "q-best", "step": 40, "epoch": 4, "loss": 0.31,
         "eval_loss": 0.25, "ts": 101.0},
        {"type": "metrics", "job_id": "q-best", "step": 50, "epoch": 5, "loss": 0.21,
         "eval_loss": 0.2345, "ts": 102.0},
        {"type": "checkpoint", "job_id": "q-best", "path": "checkpoint-5", "step": 50,
         "epoch": 5, "ts": 102.5},
        {"type": "metrics", "job_id": "q-best", "step": 60, "epoch": 6, "loss": 0.1234,
         "eval_loss": 0.2401, "ts": 103.0},
        {"type": "job_finished", "job_id": "q-best", "status": "completed", "ts": 104.0},
        {"type": "job_started", "job_id": "q-red", "model_name": Q, "total_epochs": 12,
         "ts": 110.0},
        {"type": "metrics", "job_id": "q-red", "step": 30, "epoch": 3, "loss": 0.2345,
         "eval_loss": 0.3456, "ts": 111.0},
        {"type": "checkpoint", "job_id": "q-red", "path": "checkpoint-3", "step": 30,
         "epoch": 3, "ts": 111.5},
        {"type": "job_finished", "job_id": "q-red", "status": "completed", "ts": 112.0},
        {"type": "job_started", "job_id": "q-orange", "model_name": Q, "total_epochs": 12,
         "ts": 120.0},
        {"type": "metrics", "job_id": "q-orange", "step": 70, "epoch": 7, "loss": 0.2,
         "eval_loss": 0.2701, "ts": 121.0},
        {"type": "job_started", "job_id": "llama", "model_name": L, "ts": 130.0},
        {"type": "metrics", "job_id": "llama", "step": 1, "loss": 1.9, "ts": 131.0},
        {"type": "job_started", "job_id": "old", "model_name": Q, "ts": 90.0},
        {"type": "metrics", "job_id": "old", "step": 1, "eval_loss": 0.9, "ts": 91.0},
        {"type": "job_archived", "job_id": "old", "ts": 140.0},
    ])
    worker.wait_applied()


@pytest.mark.usefixtures("populated")
def test_list_is_newest_first_without_archived_by_default(client: TestClient) -> None:
    body = client.get("/api/jobs").json()
    JobList.model_validate(body)
    assert [j["id"] for j in body["jobs"]] == ["llama", "q-orange", "q-red", "q-best"]
    assert body["version"].count("-") == 1
    everything = client.get("/api/jobs", params={"include_archived": "true"}).json()
    assert [j["id"] for j in everything["jobs"]][-1] == "old"
    assert all("config" not in j for j in everything["jobs"])
    by_id = {j["id"]: j for j in body["jobs"]}
    assert (by_id["q-best"]["is_best"], by_id["q-red"]["tier"], by_id["q-orange"]["tier"],
            by_id["llama"]["is_best"]) == (True, "red", "orange", False)


@pytest.mark.usefixtures("populated")
def test_one_job_has_its_config_and_every_field(client: TestClient) -> None:
    body = client.get("/api/jobs/q-best").json()
    JobDetail.model_validate(body)
    assert body == {
        "id": "q-best", "model_name": Q, "model_display": Q, "name": "lr=2e-4",
        "status": "completed", "archived": False, "epoch": 6.0, "step": 60, "loss": 0.1234,
        "eval_loss": 0.2401,
        "best_eval_loss": 0.2345, "best_epoch": 5.0, "best_step": 50,
        "best_checkpoint_path": "checkpoint-5", "final_loss": 0.1234, "final_eval_loss": 0.2401,
        "total_epochs": 12, "total_steps": None, "created_at": 100.0, "updated_at": 104.0,
        "finished_at": 104.0,
        "gpu_count": 2, "error": None, "is_best": True, "delta_pct": None, "tier": None,
        "gpu_hours": 2 * (104.0 - 100.0) / 3600, "config": {"learning_rate": 2e-4},
        "eval_count": 3, "forecast": None, "autostop": None,
        "stop_requested": None, "stale": False, "last_seen": None,
    }


@pytest.mark.usefixtures("populated")
def test_metrics_history_in_training_order(client: TestClient) -> None:
    body = client.get("/api/jobs/q-best/metrics").json()
    JobMetrics.model_validate(body)
    assert body == {"job_id": "q-best", "points": [
        {"step": 40, "epoch": 4.0, "loss": 0.31, "eval_loss": 0.25, "ts": 101.0},
        {"step": 50, "epoch": 5.0, "loss": 0.21, "eval_loss": 0.2345, "ts": 102.0},
        {"step": 60, "epoch": 6.0, "loss": 0.1234, "eval_loss": 0.2401, "ts": 103.0},
    ]}


@pytest.mark.usefixtures("populated")
def test_models_with_their_best_run(client: TestClient) -> None:
    body = client.get("/api/models").json()
    for row in body:
        ModelRow.model_validate(row)
    assert body == [
        {"model_name": L, "model_display": L, "job_count": 1, "archived_count": 0,
         "best_job_id": None, "best_eval_loss": None},
        {"model_name": Q, "model_display": Q, "job_count": 3, "archived_count": 1,
         "best_job_id": "q-best", "best_eval_loss": 0.2345},
    ]


@pytest.mark.usefixtures("populated")
def test_compare_gives_the_table_and_the_recommendation(client: TestClient) -> None:
    body = client.get("/api/compare", params={"ids": "q-best,q-red,q-orange"}).json()
    Comparison.model_validate(body)
    assert [j["id"] for j in body["jobs"]] == ["q-best", "q-red", "q-orange"]
    assert body["best_job_id"] == "q-best"
    rows = {row["label"]: row for row in body["rows"]}
    assert list(rows) == ["Model", "Job ID", "Status", "Best Eval Loss", "Final Training Loss",
                          "Final Eval Loss", "Best Checkpoint Epoch", "Checkpoint Path",
                          "Progress"]
    assert [row["key"] for row in body["rows"]] == [
        "model", "job_id", "status", "best_eval_loss", "final_loss", "final_eval_loss",
        "best_checkpoint_epoch", "checkpoint_path", "progress"]
    loss_row = rows["Best Eval Loss"]
    assert loss_row["values"] == [0.2345, 0.3456, 0.2701]
    assert loss_row["best"] == 0.2345
    assert loss_row["deltas"][0] is None
    assert round(loss_row["deltas"][1], 2) == 47.38
    assert round(loss_row["deltas"][2], 2) == 15.18
    assert loss_row["tiers"] == [None, "red", "orange"]
    assert rows["Final Training Loss"]["values"] == [0.1234, 0.2345, 0.2]  # running: latest
    assert rows["Best Checkpoint Epoch"]["values"] == ["5/12", "3/12", "7/12"]
    assert rows["Best Checkpoint Epoch"]["best"] == "5/12"
    assert rows["Checkpoint Path"]["values"] == ["checkpoint-5", "checkpoint-3", None]
    assert rows["Progress"]["values"] == ["epoch 6/12, step 60", "epoch 3/12, step 30",
                                          "epoch 7/12, step 70"]  # where each is, not its best
    rec = body["recommendation"]
    assert {k: rec[k] for k in rec if k != "others"} == {
        "best_job_id": "q-best", "run_number": 1, "model_display": Q, "best_eval_loss": 0.2345,
        "best_epoch": 5.0, "total_epochs": 12, "checkpoint_path": "checkpoint-5"}
    assert [(o["job_id"], o["run_number"], o["tier"], o["consider_archiving"])
            for o in rec["others"]] == [("q-red", 2, "red", True), ("q-orange", 3, "orange", False)]


@pytest.mark.usefixtures("populated")
def test_compare_includes_archived_runs_the_user_picked(client: TestClient) -> None:
    body = client.get("/api/compare", params={"ids": "old,q-red"}).json()
    assert body["best_job_id"] == "q-red"  # 0.3456 < 0.9, archived or not
    assert body["recommendation"]["run_number"] == 2


@pytest.mark.usefixtures("populated")
def test_compare_exports_csv_and_json_downloads(client: TestClient) -> None:
    answer = client.get("/api/compare", params={"ids": "q-best,q-red,q-orange",
                                                "format": "csv"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"].startswith('attachment; filename="comparison-')
    table = list(csv.reader(io.StringIO(answer.text)))
    assert table[0] == ["Metric", "Run #1", "Run #2", "Run #3", "Best Value"]
    assert table[4] == ["Best Eval Loss", "0.2345", "0.3456", "0.2701", "0.2345"]
    assert table[5] == ["Delta vs Best (%)", "", "+47.4", "+15.2", ""]
    assert table[8] == ["Best Checkpoint Epoch", "5/12", "3/12", "7/12", "5/12"]
    assert ["Consider archiving", "Run #2", "q-red", "47.4% worse"] in table

    download = client.get("/api/compare", params={"ids": "q-best,q-red", "format": "json"})
    assert download.headers["content-disposition"].endswith('.json"')
    assert orjson.loads(download.content) == client.get(
        "/api/compare", params={"ids": "q-best,q-red"}).json()


@pytest.mark.usefixtures("populated")
@pytest.mark.parametrize(("ids", "status", "detail"), [
    ("q-best", 422, "query.ids: give 2 to 5 job ids, got 1"),
    ("a,b,c,d,e,f", 422, "query.ids: give 2 to 5 job ids, got 6"),
    ("q-best,q-best", 422, "query.ids: each job id at most once"),
    ("q-best,nope", 404, "unknown job 'nope'"),
])
def test_compare_refuses_bad_selections(client: TestClient, ids: str, status: int,
                                        detail: str) -> None:
    answer = client.get("/api/compare", params={"ids": ids})
    assert answer.status_code == status
    assert answer.json()["detail"] == detail


def test_every_error_has_the_one_shape(client: TestClient) -> None:
    answers = {
        "unknown job": client.get("/api/jobs/nope"),
        "unknown job metrics": client.get("/api/jobs/nope/metrics"),
        "bad query type": client.get("/api/jobs", params={"include_archived": "maybe"}),
        "missing query": client.get("/api/compare"),
        "bad format": client.get("/api/compare", params={"ids": "a,b", "format": "xml"}),
        "unknown route": client.get("/api/nothing-here"),
        "wrong method": client.delete("/api/jobs"),
        "bad body": client.post("/api/events", content=b"{"),
        "archive unknown": client.post("/api/jobs/nope/archive"),
    }
    for name, answer in answers.items():
        body = answer.json()
        Error.model_validate(body)
        assert set(body) == {"detail", "status", "errors"}, name
        assert body["status"] == answer.status_code >= 400, name
        assert isinstance(body["detail"], str) and "\n" not in body["detail"], name
    assert answers["bad query type"].json() == {
        "detail": "query.include_archived: Input should be a valid boolean, unable to interpret "
                  "input", "status": 422,
        "errors": [{"loc": ["query", "include_archived"],
                    "msg": "Input should be a valid boolean, unable to interpret input"}]}
    assert answers["unknown route"].status_code == 404
    assert answers["wrong method"].status_code == 405


def test_openapi_documents_real_schemas(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/api/jobs"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["anyOf"] == [{"$ref": "#/components/schemas/JobList"},
                                     {"$ref": "#/components/schemas/JobPage"}]
    body = schema["paths"]["/api/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["oneOf"][0] == {"$ref": "#/components/schemas/Event"}
    assert "Metrics" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_a_trainer_string_with_script_comes_back_as_plain_data(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    publish(r, keys, [{"type": "job_started", "job_id": "x", "model_name": evil, "name": evil}])
    worker.wait_applied()
    answer = client.get("/api/jobs/x")
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["name"] == evil and answer.json()["model_name"] == evil


def test_health_and_metrics(client: TestClient, r: redis.Redis, keys: Keys,
                            worker: RunningWorker) -> None:
    publish(r, keys, [{"type": "metrics", "job_id": "a", "loss": 1.0}, b"junk"])
    worker.wait_applied()
    assert client.get("/healthz").json() == {"status": "ok", "redis": "ok", "worker_lag": 0,
                                             "pending": 0}
    text = client.get("/metrics").text
    assert "monitor_events_applied_total 1.0" in text
    assert "monitor_events_dead_lettered_total 1.0" in text
    assert "monitor_worker_lag 0.0" in text
    assert "monitor_websocket_clients 0.0" in text


def test_health_counts_entries_read_and_not_committed_as_pending(
        client: TestClient, r: redis.Redis, keys: Keys) -> None:
    """A worker read 3 of 4 entries (as it does, without a pending list) and committed the
    first: 2 are pending, 1 is not read yet."""
    r.xgroup_create(keys.events, GROUP, id="0", mkstream=True)
    ids = [r.xadd(keys.events, {"data": orjson.dumps(
        {"type": "metrics", "job_id": "a", "loss": 1.0})}).decode() for _ in range(4)]
    r.xreadgroup(GROUP, "w", {keys.events: ">"}, count=3, noack=True)
    r.set(keys.applied, ids[0])
    assert client.get("/healthz").json() == {"status": "ok", "redis": "ok", "worker_lag": 1,
                                             "pending": 2}
    assert "monitor_worker_pending 2.0" in client.get("/metrics").text
    r.set(keys.applied, ids[2])
    assert client.get("/healthz").json()["pending"] == 0


def test_redis_away_gives_503_then_recovers(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    server.start()
    app = create_app(GatewaySettings(redis_url=server.url, prefix="t:"))
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/healthz").status_code == 200
        server.stop()
        for path in ("/healthz", "/api/jobs", "/api/models"):
            answer = c.get(path)
            assert answer.status_code == 503, path
            assert answer.json()["detail"] == "Redis is unreachable; try again shortly"
        server.start()
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/jobs").json()["jobs"] == []


def test_csv_export_quotes_formulas_from_trainers(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, [
        {"type": "checkpoint", "job_id": "x", "model_name": "=cmd|' /C calc'!A0",
         "path": "@SUM(1+1)", "step": 1, "eval_loss": 0.5},
        {"type": "metrics", "job_id": "y", "model_name": "=cmd|' /C calc'!A0",
         "eval_loss": -0.25},
    ])
    worker.wait_applied()
    text = client.get("/api/compare", params={"ids": "x,y", "format": "csv"}).text
    table = list(csv.reader(io.StringIO(text)))
    assert table[1] == ["Model", "'=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0", ""]
    assert table[4] == ["Best Eval Loss", "0.5000", "-0.2500", "-0.2500"]  # numbers stay
    assert table[9][1] == "'@SUM(1+1)"


def test_every_csv_cell_is_guarded_even_the_consider_archiving_row(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, [
        {"type": "metrics", "job_id": "-9-9", "eval_loss": 2.5},
        {"type": "metrics", "job_id": "-5", "eval_loss": 1.0},
    ])
    worker.wait_applied()
    text = client.get("/api/compare", params={"ids": "-9-9,-5", "format": "csv"}).text
    table = list(csv.reader(io.StringIO(text)))
    assert table[2] == ["Job ID", "'-9-9", "-5", ""]  # "-5" is a plain number
    assert table[5] == ["Delta vs Best (%)", "+150.0", "", ""]
    assert table[-1] == ["Consider archiving", "Run #1", "'-9-9", "150.0% worse"]
    for row in table:
        for cell in row:
            assert cell[:1] not in "=+-@\t\r" or cell in ("-5", "+150.0") or cell == ""


def test_whoami_says_whether_a_page_at_an_origin_may_connect(client: TestClient) -> None:
    def asked(origin: str | None) -> Any:
        return client.get("/api/whoami", params={} if origin is None else {"origin": origin}
                          ).json()
    assert asked("http://127.0.0.1") == {"origin": "http://127.0.0.1", "origin_allowed": True}
    assert asked("http://127.0.0.1:9999")["origin_allowed"] is False  # another port
    assert asked("https://127.0.0.1")["origin_allowed"] is False  # another scheme
    assert asked("https://evil.example")["origin_allowed"] is False
    assert asked(None) == {"origin": None, "origin_allowed": True}
