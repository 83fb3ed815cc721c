"""MLflow's tracking protocol (docs/mlflow.md): the pure mapping, then the real ``mlflow``
client against a real gateway and worker, and a real Hugging Face Trainer with
``report_to=["mlflow"]``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests as http

from monitor.keys import Keys
from monitor.limits import MAX_EXTRA
from monitor.records import public_state
from tests.browser import LiveGateway
from tests.conftest import free_port
from tests.gateway_helpers import RunningWorker
from web.mlflow import mapping
from web.mlflow.mapping import MetricNames, MetricValue
from web.mlflow.records import is_later

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from the client
if os.environ.get("REQUIRE_MLFLOW"):  # .ci/run: these must run, not skip
    import mlflow
    from mlflow.exceptions import MlflowException
else:
    mlflow = pytest.importorskip("mlflow", reason="pip install '.[test]' (mlflow-skinny)")
    from mlflow.exceptions import MlflowException

pytestmark = pytest.mark.timeout(120)

# ---------------------------------------------------------------- the mapping, pure


@pytest.mark.parametrize(("params", "tags", "experiment", "model"), [
    ({"model_name": "a/b", "base_model": "c/d"}, {"model_name": "t"}, "exp", "a/b"),
    ({"model_name_or_path": "Qwen/Qwen2.5-7B", "_name_or_path": "x"}, {}, "exp",
     "Qwen/Qwen2.5-7B"),
    ({"_name_or_path": "/data/huggingface_models/Qwen-Qwen3-1.7B"}, {}, "exp",
     "/data/huggingface_models/Qwen-Qwen3-1.7B"),
    ({"base_model": "meta/llama"}, {}, "exp", "meta/llama"),
    ({"model_name": "None", "base_model": "meta/llama"}, {}, "exp", "meta/llama"),
    ({"model_name": "  "}, {"model_name": "from-tag"}, "exp", "from-tag"),
    ({"lr": "0.1"}, {}, "my-experiment", "my-experiment"),
    ({}, {}, "Default", "Default"),
    ({"model_name": "m" * 600}, {}, "exp", "m" * 512),
])
def test_the_model_is_the_first_model_param_else_the_tag_else_the_experiment(
        params: dict[str, str], tags: dict[str, str], experiment: str, model: str) -> None:
    assert mapping.choose_model(params, tags, experiment) == model


@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("-2", -2), ("0.0001", 0.0001), ("1e-05", 1e-05), ("True", True),
    ("false", False), ("None", None), ("adamw_torch", "adamw_torch"), ("nan", "nan"),
    ("inf", "inf"), ("[1, 2]", "[1, 2]"), ("", ""), (str(2**60), str(2**60)),
])
def test_a_param_is_read_as_a_number_or_boolean_where_it_is_one(text: str, value: Any) -> None:
    assert mapping.param_value(text) == value and type(mapping.param_value(text)) is type(value)


def test_params_over_the_config_limit_give_no_config() -> None:
    assert mapping.config_of({"lr": "0.1", "seed": "3"}) == {"lr": 0.1, "seed": 3}
    assert mapping.config_of({f"p{i}": "x" * 5000 for i in range(14)}) is None


def m(key: str, value: float | None, step: int = 10, ts: int = 1_700_000_000_000) -> MetricValue:
    return MetricValue(key, value, ts, step)


NAMES = MetricNames()


@pytest.mark.parametrize(("metrics", "expected"), [
    # one step with both losses, the epoch and another metric: one event
    ([m("loss", 0.5), m("eval_loss", 0.7), m("epoch", 1.0), m("accuracy", 0.9)],
     [{"step": 10, "epoch": 1.0, "loss": 0.5, "eval_loss": 0.7, "extra": {"accuracy": 0.9}}]),
    ([m("loss", 0.5, step=1), m("loss", 0.4, step=2)],
     [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]),
    ([m("train_loss", 0.5), m("val_loss", 0.6)], [{"step": 10, "loss": 0.5, "eval_loss": 0.6}]),
    ([m("training_loss", 0.5), m("validation_loss", 0.6)],
     [{"step": 10, "loss": 0.5, "eval_loss": 0.6}]),
    ([m("eval/loss", 0.6)], [{"step": 10, "eval_loss": 0.6}]),
    # loss comes first; the other loss name is another metric
    ([m("train_loss", 0.9), m("loss", 0.5)],
     [{"step": 10, "loss": 0.5, "extra": {"train_loss": 0.9}}]),
    # no loss: other metrics alone, in the history
    ([m("accuracy", 0.9), m("epoch", 1.0), m("lr", 1e-4)],
     [{"step": 10, "epoch": 1.0, "extra": {"accuracy": 0.9, "lr": 1e-4}}]),
    ([m("epoch", 1.0)], []),  # only where the run is: no metric, no event
    ([m(f"m{i:03d}", i) for i in range(150)],  # at most MAX_EXTRA, the first by name
     [{"step": 10, "extra": {f"m{i:03d}": i for i in range(MAX_EXTRA)}}]),
    ([m("loss", None)], []),  # NaN or an infinity: no event
    ([m("loss", 0.5, step=-1)], [{"loss": 0.5}]),  # a step the events cannot carry
    ([m("eval_loss", 0.5), m("epoch", -1.0)], [{"step": 10, "eval_loss": 0.5}]),
    # Hugging Face's end-of-training summary: its train_loss is the run's mean, not a loss
    ([m("train_loss", 0.9), m("train_runtime", 12.0), m("epoch", 2.0)],
     [{"step": 10, "epoch": 2.0, "extra": {"train_loss": 0.9, "train_runtime": 12.0}}]),
    ([m("loss", 0.4), m("train_loss", 0.9), m("train_runtime", 12.0)],
     [{"step": 10, "loss": 0.4, "extra": {"train_loss": 0.9, "train_runtime": 12.0}}]),
])
def test_the_metrics_of_one_call_become_one_metrics_event_per_step(
        metrics: list[MetricValue], expected: list[dict[str, Any]]) -> None:
    events = mapping.metrics_events("r1", metrics, NAMES)
    got = [{k: v for k, v in e.items() if k not in ("type", "job_id", "ts", "event_id")}
           for e in events]
    assert got == expected
    assert all(e["type"] == "metrics" and e["job_id"] == "r1" and e["ts"] == 1_700_000_000
               for e in events)


def test_a_setting_adds_loss_names() -> None:
    names = MetricNames.with_extra(["nll"], ["dev_nll", "eval_loss"])
    assert names.loss == ("loss", "train_loss", "training_loss", "nll")
    assert names.eval_loss == ("eval_loss", "val_loss", "validation_loss", "eval/loss",
                               "dev_nll")
    [event] = mapping.metrics_events("r1", [m("nll", 2.0), m("dev_nll", 3.0)], names)
    assert (event["loss"], event["eval_loss"]) == (2.0, 3.0)
    [plain] = mapping.metrics_events("r1", [m("nll", 2.0)], NAMES)  # without the setting
    assert "loss" not in plain and plain["extra"] == {"nll": 2.0}


def test_the_same_metrics_give_the_same_event_id_and_others_another() -> None:
    first = mapping.metrics_events("r1", [m("loss", 0.5)], NAMES)[0]["event_id"]
    assert first == mapping.metrics_events("r1", [m("loss", 0.5)], NAMES)[0]["event_id"]
    others = [mapping.metrics_events("r1", [m("loss", 0.5, ts=1)], NAMES),
              mapping.metrics_events("r1", [m("loss", 0.5, step=11)], NAMES),
              mapping.metrics_events("r1", [m("loss", 0.6)], NAMES),
              mapping.metrics_events("r2", [m("loss", 0.5)], NAMES)]
    ids = {first, *(events[0]["event_id"] for events in others)}
    assert len(ids) == 5 and all(i.startswith("mlflow:") and len(i) == 39 for i in ids)


@pytest.mark.parametrize(("status", "finished", "error"), [
    ("FINISHED", "completed", None), ("FAILED", "failed", "the MLflow run ended as FAILED"),
    ("KILLED", "cancelled", None),
])
def test_an_end_status_maps_to_a_job_status(status: str, finished: str,
                                            error: str | None) -> None:
    event = mapping.job_finished("r1", "m", status, 1_700_000_000_500)
    assert (event["status"], event.get("error"), event["ts"]) == (finished, error,
                                                                   1_700_000_000.5)


@pytest.mark.parametrize(("new", "old", "later"), [
    ({"step": 2, "timestamp": 1, "value": 0.1}, {"step": 1, "timestamp": 9, "value": 0.9}, True),
    ({"step": 1, "timestamp": 1, "value": 0.1}, {"step": 2, "timestamp": 0, "value": 0.9}, False),
    ({"step": 1, "timestamp": 2, "value": 0.1}, {"step": 1, "timestamp": 1, "value": 0.9}, True),
    ({"step": 1, "timestamp": 1, "value": "NaN"}, None, True),
])
def test_the_latest_metric_is_mlflows(new: dict[str, Any], old: dict[str, Any] | None,
                                      later: bool) -> None:
    assert is_later(new, old) is later


# ---------------------------------------------------------------- the real mlflow client


@pytest.fixture
def tracking(redis_url: str, keys: Keys, worker: RunningWorker,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveGateway]:
    """A real gateway and worker on this test's prefix, and the mlflow client pointed at it."""
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    gateway = live(redis_url, keys)
    yield from use(gateway, monkeypatch)


def live(redis_url: str, keys: Keys, **settings: Any) -> LiveGateway:
    gateway = LiveGateway(redis_url, keys.prefix, free_port(), **settings)
    gateway.start()
    return gateway


def use(gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveGateway]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", gateway.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # errors at once, not in minutes
    mlflow.set_tracking_uri(gateway.url)
    try:
        yield gateway
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # unset: as before the test
        gateway.stop()


def job(gateway: LiveGateway, job_id: str, token: str | None = None) -> dict[str, Any]:
    """The job's view, as ``GET /api/jobs/{id}`` answers it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = http.get(f"{gateway.url}/api/jobs/{job_id}", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def points(r: redis.Redis, keys: Keys, job_id: str) -> list[tuple[Any, ...]]:
    """(step, epoch, loss, eval_loss), and the other metrics when there are some."""
    return [(p["step"], p["epoch"], p["loss"], p["eval_loss"], *([p["extra"]] if "extra" in p
                                                                 else []))
            for p in map(orjson.loads, r.lrange(keys.metrics(job_id), 0, -1))]


def test_a_script_that_logs_with_mlflow_shows_its_runs_as_jobs(
        tracking: LiveGateway, worker: RunningWorker, r: redis.Redis, keys: Keys) -> None:
    experiment_id = mlflow.set_experiment("qwen-sft").experiment_id
    with mlflow.start_run(run_name="lr-1e-4") as run:
        mlflow.log_params({"model_name_or_path": "/models/org/Qwen/Qwen2.5-7B",
                           "learning_rate": 1e-4, "seed": 3, "optim": "adamw_torch"})
        for step, loss in [(10, 1.2), (20, 0.9), (30, 0.8)]:
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metrics({"eval_loss": 0.95, "accuracy": 0.4}, step=20)
        mlflow.log_metrics({"eval_loss": 0.85, "accuracy": 0.5}, step=30)
        mlflow.log_metric("eval_loss", 0.9, step=40)
        mlflow.log_metric("accuracy", 0.1, step=5)  # older than the latest: not the latest
    with pytest.raises(RuntimeError), mlflow.start_run(run_name="crashes") as crashed:
        mlflow.log_metric("val_loss", 2.5, step=5)
        raise RuntimeError("out of memory")
    assert mlflow.set_experiment("qwen-sft").experiment_id == experiment_id  # found, not made
    worker.wait_applied()

    good = job(tracking, run.info.run_id)
    assert {k: good[k] for k in ("model_name", "model_display", "name", "status", "loss",
                                 "eval_loss", "best_eval_loss", "best_step", "step",
                                 "final_loss", "final_eval_loss", "error")} == {
        "model_name": "/models/org/Qwen/Qwen2.5-7B", "model_display": "Qwen/Qwen2.5-7B",
        "name": "lr-1e-4", "status": "completed", "loss": 0.8, "eval_loss": 0.9,
        "best_eval_loss": 0.85, "best_step": 30, "step": 40, "final_loss": 0.8,
        "final_eval_loss": 0.9, "error": None}
    assert good["created_at"] == run.info.start_time / 1000
    assert good["config"] == {
        "model_name_or_path": "/models/org/Qwen/Qwen2.5-7B", "learning_rate": 0.0001,
        "seed": 3, "optim": "adamw_torch"}
    assert points(r, keys, run.info.run_id) == [  # in arrival order
        (10, None, 1.2, None), (20, None, 0.9, None), (30, None, 0.8, None),
        (20, None, None, 0.95, {"accuracy": 0.4}), (30, None, None, 0.85, {"accuracy": 0.5}),
        (40, None, None, 0.9), (5, None, None, None, {"accuracy": 0.1})]

    bad = job(tracking, crashed.info.run_id)
    assert {k: bad[k] for k in ("model_name", "name", "status", "best_eval_loss", "best_step",
                                "error")} == {
        "model_name": "qwen-sft", "name": "crashes", "status": "failed",
        "best_eval_loss": 2.5, "best_step": 5, "error": "the MLflow run ended as FAILED"}
    assert (good["is_best"], bad["is_best"]) == (True, True)  # two models, two groups

    # The client's own reads answer what it logged.
    fetched = mlflow.get_run(run.info.run_id)
    assert fetched.info.status == "FINISHED" and fetched.info.run_name == "lr-1e-4"
    assert fetched.data.metrics == {"loss": 0.8, "eval_loss": 0.9, "accuracy": 0.5}
    assert fetched.data.params["learning_rate"] == "0.0001"
    assert fetched.data.tags["mlflow.runName"] == "lr-1e-4"
    found = mlflow.search_runs([experiment_id], output_format="list")
    assert [f.info.run_id for f in found] == [crashed.info.run_id, run.info.run_id]


def test_a_model_is_decided_by_the_first_loss_when_params_come_later(
        tracking: LiveGateway, worker: RunningWorker, r: redis.Redis, keys: Keys) -> None:
    mlflow.set_experiment("exp-a")
    with mlflow.start_run(tags={"model_name": "from-tag"}) as run:
        mlflow.log_param("lr", 0.1)
        assert r.hget(keys.jobs, run.info.run_id) is None  # no model yet: not shown yet
        mlflow.log_metric("loss", 1.0, step=1)  # decides: no model param, so the tag
        mlflow.log_param("model_name", "too/late")
        mlflow.log_metric("eval_loss", 0.5, step=1)
    worker.wait_applied()
    view = job(tracking, run.info.run_id)
    assert (view["model_name"], view["name"], view["best_eval_loss"]) == (
        "from-tag", f"run-{run.info.run_id[:8]}", 0.5)
    assert job(tracking, run.info.run_id)["config"] == {"lr": 0.1, "model_name": "too/late"}


def test_a_run_whose_start_could_not_be_sent_gets_it_with_its_next_call(
        tracking: LiveGateway, worker: RunningWorker, r: redis.Redis, keys: Keys) -> None:
    """As after a call that decided the model and then found Redis away: the model is
    decided, the job_started never went out. The next call sends it."""
    mlflow.set_experiment("lost-start")
    with mlflow.start_run(run_name="named") as run:
        mlflow.log_param("lr", 0.1)
        r.hset(keys.mlflow_run(run.info.run_id), "model", "org/Decided-1B")
        mlflow.log_metric("loss", 1.5, step=1)
        mlflow.log_metric("loss", 1.0, step=2)
    worker.wait_applied()
    view = job(tracking, run.info.run_id)
    assert (view["model_name"], view["name"], view["config"], view["loss"]) == (
        "org/Decided-1B", "named", {"lr": 0.1}, 1.0)
    assert int(r.hget(keys.stats, "applied") or 0) == 4  # one job_started, 2 metrics, the end


def test_a_retried_batch_is_applied_once(
        tracking: LiveGateway, worker: RunningWorker, r: redis.Redis, keys: Keys) -> None:
    mlflow.set_experiment("retries")
    run = mlflow.start_run(run_name="r")
    body = {"run_id": run.info.run_id, "params": [{"key": "model_name", "value": "m/x"}],
            "metrics": [{"key": "loss", "value": 0.5, "timestamp": 1_700_000_000_000,
                         "step": 1},
                        {"key": "eval_loss", "value": 0.7, "timestamp": 1_700_000_000_000,
                         "step": 1}]}
    for _ in range(3):  # as if the answer was lost twice
        answer = http.post(f"{tracking.url}/api/2.0/mlflow/runs/log-batch", json=body)
        assert (answer.status_code, answer.json()) == (200, {})
    mlflow.end_run()
    worker.wait_applied()
    assert points(r, keys, run.info.run_id) == [(1, None, 0.5, 0.7)]
    assert int(r.hget(keys.stats, "duplicates") or 0) >= 2


@pytest.mark.parametrize(("env", "ok"), [
    ({}, False),
    ({"MLFLOW_TRACKING_TOKEN": "s3cret"}, True),
    ({"MLFLOW_TRACKING_TOKEN": "wrong"}, False),
    ({"MLFLOW_TRACKING_USERNAME": "anyone", "MLFLOW_TRACKING_PASSWORD": "s3cret"}, True),
    ({"MLFLOW_TRACKING_USERNAME": "anyone", "MLFLOW_TRACKING_PASSWORD": "nope"}, False),
])
def test_the_token_works_as_mlflows_token_or_basic_password(
        env: dict[str, str], ok: bool, redis_url: str, keys: Keys, worker: RunningWorker,
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for gateway in use(live(redis_url, keys, token="s3cret"), monkeypatch):
        if not ok:
            with pytest.raises(MlflowException) as refused:
                mlflow.set_experiment("guarded")
            assert refused.value.error_code == "UNAUTHENTICATED"
            assert "MLFLOW_TRACKING_TOKEN" in refused.value.message
            continue
        mlflow.set_experiment("guarded")
        with mlflow.start_run() as run:
            mlflow.log_metric("eval_loss", 0.25, step=2)
        worker.wait_applied()
        assert job(gateway, run.info.run_id, "s3cret")["best_eval_loss"] == 0.25


def test_malformed_and_unsupported_requests_get_mlflows_error_shape(
        tracking: LiveGateway, r: redis.Redis, keys: Keys) -> None:
    api = f"{tracking.url}/api/2.0/mlflow"
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    cases = [
        ("POST", "/runs/log-metric", {"run_id": run_id, "key": "loss", "value": "abc",
                                      "timestamp": 1, "step": 0},
         400, "INVALID_PARAMETER_VALUE",
         "Invalid value 'abc' for parameter 'value': it is not a number"),
        ("POST", "/runs/log-metric", {"run_id": run_id, "key": "loss", "value": 1.0},
         400, "INVALID_PARAMETER_VALUE", "Missing value for required parameter 'timestamp'."),
        ("POST", "/runs/log-metric", {"key": "loss", "value": 1.0, "timestamp": 1},
         400, "INVALID_PARAMETER_VALUE", "Missing value for required parameter 'run_id'"),
        ("POST", "/runs/log-metric", {"run_id": "nope", "key": "loss", "value": 1.0,
                                      "timestamp": 1},
         404, "RESOURCE_DOES_NOT_EXIST", "Run with id=nope not found"),
        ("GET", "/experiments/get?experiment_id=42", None,
         404, "RESOURCE_DOES_NOT_EXIST", "No Experiment with id=42 exists"),
        ("POST", "/runs/update", {"run_id": run_id, "status": "DONE"},
         400, "INVALID_PARAMETER_VALUE", ("Invalid value 'DONE' for parameter 'status': one of "
         "RUNNING, SCHEDULED, FINISHED, FAILED, KILLED")),
        ("POST", "/runs/delete", {"run_id": run_id}, 404, "ENDPOINT_NOT_FOUND",
         ("POST /api/2.0/mlflow/runs/delete is not supported: this training monitor speaks only "
         "the logging part of MLflow's tracking API (experiments, runs, params, tags, "
         "metrics); artifacts, models, the model registry, traces and searches with filters "
         "are not kept here")),
    ]
    for method, path, body, status, code, message in cases:
        answer = http.request(method, api + path, json=body)
        assert (answer.status_code, answer.json()) == (status, {"error_code": code,
                                                                "message": message}), path
    answer = http.post(api + "/runs/log-batch", data=b"[" * (3 * 1024 * 1024))
    assert (answer.status_code, answer.json()) == (400, {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "body is 3145728 bytes, at most 2097152"})
    answer = http.post(api + "/runs/log-batch", data=b"{not json",
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as changed:
        mlflow.MlflowClient().log_param(run_id, "lr", "0.1")
        mlflow.MlflowClient().log_param(run_id, "lr", "0.2")
    assert changed.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Changing param values is not allowed" in changed.value.message
    assert http.get(f"{tracking.url}/health").text == "OK"


# ---------------------------------------------------------------- Hugging Face, report_to mlflow


def test_a_hugging_face_trainer_reporting_to_mlflow_shows_its_model_and_eval_losses(
        tracking: LiveGateway, worker: RunningWorker, r: redis.Redis, keys: Keys,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import test_integrations as hf  # skips without transformers, as that module does

    transformers = hf.transformers  # type: ignore[attr-defined]

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tiny-sft")
    model, path = hf.tiny_model(tmp_path)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, eval_strategy="epoch", save_strategy="no",
        logging_steps=2, learning_rate=5e-3, report_to=["mlflow"], use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, run_name="tiny-mlflow")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=hf.Text(64, 1),
                                   eval_dataset=hf.Text(16, 2))
    trainer.train()
    worker.wait_applied()

    [view] = [public_state(v) for v in r.hvals(keys.jobs)]
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    best = min(evals, key=lambda h: h["eval_loss"])
    assert (view["model_name"], view["model_display"], view["name"], view["status"]) == (
        path, "Tiny/gpt2-test", "tiny-mlflow", "completed")
    assert view["best_eval_loss"] == pytest.approx(best["eval_loss"])
    assert (view["best_step"], view["best_epoch"]) == (best["step"], best["epoch"])
    logged = [(p[0], p[3]) for p in points(r, keys, view["id"]) if p[3] is not None]
    assert logged == [(h["step"], pytest.approx(h["eval_loss"])) for h in evals]
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert (view["loss"], view["step"]) == (pytest.approx(last["loss"]), last["step"])
    assert "train_loss" in trainer.state.log_history[-1]  # the summary, which is not the loss
    config = job(tracking, view["id"])["config"]
    assert (config["learning_rate"], config["num_train_epochs"], config["seed"]) == (5e-3, 2, 0)


def test_every_answer_is_the_response_message_of_mlflows_protos(tracking: LiveGateway) -> None:
    """Each answer parses, with no unknown field, into the response message MLflow's own
    protos define for the call, and says what was asked."""
    from google.protobuf.json_format import Parse  # type: ignore[import-untyped]
    from mlflow.protos import service_pb2 as s

    api = f"{tracking.url}/api/2.0/mlflow"

    def call(method: str, path: str, message: Any, body: dict[str, Any] | None = None) -> Any:
        if method == "GET":
            answer = http.get(api + path, params=body, timeout=10)
        else:
            answer = http.post(api + path, json=body or {}, timeout=10)
        assert answer.status_code == 200, answer.text
        return Parse(answer.text, message.Response(), ignore_unknown_fields=False)

    created = call("POST", "/experiments/create", s.CreateExperiment,
                   {"name": "shapes", "tags": [{"key": "team", "value": "nlp"}]})
    got = call("GET", "/experiments/get", s.GetExperiment,
               {"experiment_id": created.experiment_id}).experiment
    by_name = call("GET", "/experiments/get-by-name", s.GetExperimentByName,
                   {"experiment_name": "shapes"}).experiment
    assert got == by_name and (got.name, got.lifecycle_stage, got.tags[0].value) == (
        "shapes", "active", "nlp")
    default = call("GET", "/experiments/get", s.GetExperiment, {"experiment_id": "0"})
    assert default.experiment.name == "Default"

    run = call("POST", "/runs/create", s.CreateRun,
               {"experiment_id": created.experiment_id, "run_name": "r1", "start_time": 1000,
                "tags": [{"key": "k", "value": "v"}]}).run
    run_id = run.info.run_id
    assert (run.info.run_uuid, run.info.run_name, run.info.status, run.info.start_time) == (
        run_id, "r1", s.RUNNING, 1000)
    assert {t.key: t.value for t in run.data.tags} == {"k": "v", "mlflow.runName": "r1"}
    calls: list[tuple[str, Any, dict[str, Any]]] = [
            ("/runs/log-metric", s.LogMetric,
             {"run_id": run_id, "key": "loss", "value": "NaN", "timestamp": 5, "step": 1}),
            ("/runs/log-parameter", s.LogParam, {"run_id": run_id, "key": "lr", "value": "1"}),
            ("/runs/set-tag", s.SetTag, {"run_id": run_id, "key": "a", "value": "b"}),
            ("/runs/log-batch", s.LogBatch, {"run_id": run_id, "metrics": [
                {"key": "acc", "value": 0.5, "timestamp": 6, "step": 2}]}),
            ("/runs/log-inputs", s.LogInputs, {"run_id": run_id, "datasets": []}),
            ("/runs/log-model", s.LogModel, {"run_id": run_id, "model_json": "{}"})]
    for path, message, body in calls:
        assert call("POST", path, message, body) == message.Response()
    info = call("POST", "/runs/update", s.UpdateRun,
                {"run_id": run_id, "status": "KILLED", "end_time": 2000}).run_info
    assert (info.status, info.end_time) == (s.KILLED, 2000)
    fetched = call("GET", "/runs/get", s.GetRun, {"run_id": run_id}).run
    assert fetched.info == info
    assert sorted((m.key, str(m.value), m.step) for m in fetched.data.metrics) == [
        ("acc", "0.5", 2), ("loss", "nan", 1)]
    assert {p.key: p.value for p in fetched.data.params} == {"lr": "1"}
    found = call("POST", "/runs/search", s.SearchRuns,
                 {"experiment_ids": [created.experiment_id]})
    assert [r.info.run_id for r in found.runs] == [run_id]


@pytest.mark.filterwarnings(  # Lightning's own code, on this torch (as in test_lightning)
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning",
    "ignore:The '.*dataloader' does not have many workers")
def test_a_lightning_run_with_mlflows_logger_shows_its_model_and_val_losses(
        tracking: LiveGateway, worker: RunningWorker) -> None:
    from tests import test_lightning  # skips without lightning, as that module does

    pl, torch = test_lightning.pl, test_lightning.torch  # type: ignore[attr-defined]
    from lightning.pytorch.loggers import MLFlowLogger

    class Regression(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"model_name": "lit/tiny-regression", "lr": 0.05})
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            loss = ((self.layer(x) - y) ** 2).mean()
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            self.log("val_loss", ((self.layer(x) - y) ** 2).mean())

        def on_validation_epoch_end(self) -> None:
            if not self.trainer.sanity_checking:
                val_losses.append((self.global_step - 1, self.current_epoch,
                                   float(self.trainer.callback_metrics["val_loss"])))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    val_losses: list[tuple[int, int, float]] = []
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, True)),
                                       batch_size=8)
    logger = MLFlowLogger(experiment_name="lit-exp", tracking_uri=tracking.url,
                          run_name="lit-run")
    trainer = pl.Trainer(max_epochs=3, logger=logger, log_every_n_steps=2,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(Regression(), data, data)
    worker.wait_applied()

    assert logger.run_id is not None
    view = job(tracking, logger.run_id)
    assert (view["model_name"], view["name"], view["status"]) == (
        "lit/tiny-regression", "lit-run", "completed")
    assert view["config"] == {"model_name": "lit/tiny-regression", "lr": 0.05}
    step, epoch, best = min(val_losses, key=lambda v: v[2])
    assert len(val_losses) == 3
    assert (view["best_eval_loss"], view["best_step"], view["best_epoch"]) == (
        pytest.approx(best), step, epoch)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_with_partitions_any_gateway_carries_on_a_run_another_created(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four partitions, two workers, two gateways as processes: a run created through one
    gateway logs through the other (the MLflow state is in Redis, outside the partitions),
    and each model's job lands in its partition and shows on both gateways."""
    from tests.helpers import wait_for
    from tests.test_partitions import Deployment, get

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    deployment = Deployment(redis_url, False, 4, tmp_path)
    try:
        first, second = (mlflow.MlflowClient(f"http://127.0.0.1:{port}")
                         for port in deployment.ports)
        experiment_id = first.create_experiment("parts")
        runs = {}
        for model, best in [("org/A-7B", 0.5), ("org/B-1B", 0.25)]:
            run_id = first.create_run(experiment_id, run_name=model).info.run_id
            second.log_param(run_id, "model_name", model)
            second.log_metric(run_id, "eval_loss", best * 2, step=1)
            first.log_metric(run_id, "eval_loss", best, step=2)
            second.set_terminated(run_id, "FINISHED")
            runs[run_id] = (model, best)
        want = {run_id: (model, model, "completed", best, 2)
                for run_id, (model, best) in runs.items()}
        for port in deployment.ports:
            def shown(port: int = port) -> bool:
                views = get(port, "/api/jobs")["jobs"]
                return {v["id"]: (v["model_name"], v["name"], v["status"], v["best_eval_loss"],
                                  v["best_step"]) for v in views} == want
            wait_for(shown, 30, f"both runs on the gateway on {port}")
        for run_id, (model, _) in runs.items():
            holder = deployment.part.keys(deployment.part.of_model(model))
            assert deployment.client.hexists(holder.jobs, run_id)
    finally:
        deployment.close()
