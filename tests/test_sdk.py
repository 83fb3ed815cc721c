"""The trainer SDK against a real Redis: what lands on the stream, failures, buffering, outages."""

from __future__ import annotations

import logging
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from monitor import sdk
from monitor.keys import Keys
from monitor.limits import MAX_NAME, MAX_TEXT
from monitor.partitions import Partitioning
from monitor.sdk import Run, RunStats, start_run
from tests.conftest import RedisServer
from tests.helpers import read_events, wait_for

MODEL = "Qwen/Qwen2.5-7B-Instruct"
COMMON = {"job_id": "job-1", "model_name": MODEL}
SDK_LOGGER = "monitor.sdk"


def bodies(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events without ``ts`` and ``event_id`` (checked separately)."""
    return [{k: v for k, v in e.items() if k not in ("ts", "event_id")} for e in events]


def assert_event_ids(events: list[dict[str, Any]]) -> str:
    """The event ids are ``<uid>:1`` .. ``<uid>:n`` in stream order; returns the uid."""
    uid = events[0]["event_id"].split(":")[0]
    assert re.fullmatch(r"[0-9a-f]{12}", uid)
    assert [e["event_id"] for e in events] == [f"{uid}:{i}" for i in range(1, len(events) + 1)]
    return uid


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [rec.getMessage() for rec in caplog.records
            if rec.name == SDK_LOGGER and rec.levelno == level]


@pytest.fixture(autouse=True)
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The events these tests expect do not depend on whether another test imported PyTorch
    (the SDK would then send its GPU count)."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)


@pytest.fixture
def open_run(redis_url: str, keys: Keys) -> Iterator[Callable[..., Run]]:
    """Start runs (job ``job-1`` on the test prefix by default); all are closed after the test."""
    runs: list[Run] = []

    def make(**kwargs: Any) -> Run:
        kwargs.setdefault("redis_url", redis_url)
        kwargs.setdefault("prefix", keys.prefix)
        kwargs.setdefault("model_name", MODEL)
        kwargs.setdefault("job_id", "job-1")
        run = start_run(**kwargs)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def test_stream_holds_exactly_what_was_logged_in_order(
    r: redis.Redis, keys: Keys, redis_url: str
) -> None:
    before = time.time()
    with start_run(
        MODEL, job_id="job-1", total_epochs=2, name="lr=2e-4 r=16",
        config={"learning_rate": 2e-4, "lora_r": 16}, gpu_count=4, total_steps=300,
        redis_url=redis_url, prefix=keys.prefix,
    ) as run:
        run.log(epoch=0.5, step=10, loss=1.25)
        run.log(epoch=1, step=20, loss=0.61, eval_loss=0.72)
        run.checkpoint("checkpoint-20", epoch=1, step=20)
        run.log(step=30, eval_loss=0.7)
    events = read_events(r, keys)
    assert bodies(events) == [
        {"type": "job_started", "total_epochs": 2, "name": "lr=2e-4 r=16",
         "config": {"learning_rate": 2e-4, "lora_r": 16}, "gpu_count": 4, "total_steps": 300,
         **COMMON},
        {"type": "metrics", "epoch": 0.5, "step": 10, "loss": 1.25, **COMMON},
        {"type": "metrics", "epoch": 1, "step": 20, "loss": 0.61, "eval_loss": 0.72, **COMMON},
        {"type": "checkpoint", "path": "checkpoint-20", "epoch": 1, "step": 20, **COMMON},
        {"type": "metrics", "step": 30, "eval_loss": 0.7, **COMMON},
        {"type": "job_finished", "status": "completed", **COMMON},
    ]
    assert_event_ids(events)
    assert all(before <= e["ts"] <= time.time() for e in events)
    assert run.stats == RunStats(enqueued=6, sent=6, dropped=0, pending=0)


def test_block_that_raises_sends_failed_with_the_error_and_propagates(
    r: redis.Redis, keys: Keys, redis_url: str
) -> None:
    with (
        pytest.raises(RuntimeError, match="CUDA out of memory"),
        start_run(MODEL, job_id="job-1", redis_url=redis_url, prefix=keys.prefix) as run,
    ):
        run.log(step=1, loss=2.0)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert bodies(read_events(r, keys))[-1] == {
        "type": "job_finished", "status": "failed",
        "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", **COMMON,
    }


def test_long_error_text_is_cut_to_the_contract_limit(
    r: redis.Redis, keys: Keys, redis_url: str
) -> None:
    with (
        pytest.raises(ValueError),
        start_run(MODEL, job_id="job-1", redis_url=redis_url, prefix=keys.prefix),
    ):
        raise ValueError("x" * 20_000)
    error = read_events(r, keys)[-1]["error"]
    assert error == ("ValueError: " + "x" * 20_000)[:MAX_TEXT]
    assert len(error) == MAX_TEXT


def test_a_long_display_name_is_cut_as_the_event_contract_cuts_it(
        r: redis.Redis, keys: Keys, redis_url: str) -> None:
    with start_run(MODEL, job_id="job-1", name="n" * 600, redis_url=redis_url,
                   prefix=keys.prefix):
        pass
    assert read_events(r, keys)[0]["name"] == "n" * MAX_NAME


def test_keyboard_interrupt_sends_cancelled(r: redis.Redis, keys: Keys, redis_url: str) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        start_run(MODEL, job_id="job-1", redis_url=redis_url, prefix=keys.prefix),
    ):
        raise KeyboardInterrupt
    assert bodies(read_events(r, keys))[-1] == {
        "type": "job_finished", "status": "cancelled", **COMMON,
    }


def test_finish_sends_once_with_its_finals(
    r: redis.Redis, keys: Keys, open_run: Callable[..., Run]
) -> None:
    run = open_run()
    run.finish("cancelled", final_loss=0.5, final_eval_loss=0.6)
    run.finish("failed", error="ignored")
    run.close()
    run.close()
    assert bodies(read_events(r, keys)) == [
        {"type": "job_started", **COMMON},
        {"type": "job_finished", "status": "cancelled", "final_loss": 0.5,
         "final_eval_loss": 0.6, **COMMON},
    ]


def test_settings_come_from_the_environment_at_call_time(
    r: redis.Redis, keys: Keys, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONITOR_REDIS_URL", redis_url)
    monkeypatch.setenv("MONITOR_PREFIX", keys.prefix)
    with start_run() as run:
        pass
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{6}", run.job_id)
    assert [(e["type"], e["job_id"], e["model_name"]) for e in read_events(r, keys)] == [
        ("job_started", run.job_id, None), ("job_finished", run.job_id, None),
    ]


def test_a_single_log_reaches_the_stream_quickly(
    r: redis.Redis, keys: Keys, open_run: Callable[..., Run]
) -> None:
    run = open_run()
    assert run.flush(5)
    start = time.perf_counter()
    run.log(step=1, loss=1.0)
    while r.xlen(keys.events) < 2:
        assert time.perf_counter() - start < 0.5
        time.sleep(0.0005)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ValueError),
        ({"step": 1}, ValueError),
        ({"loss": "0.5"}, TypeError),
        ({"loss": True}, TypeError),
        ({"eval_loss": None, "loss": [1.0]}, TypeError),
        ({"loss": 1.0, "step": -1}, ValueError),
        ({"loss": 1.0, "step": 1.5}, TypeError),
        ({"loss": 1.0, "step": True}, TypeError),
        ({"loss": 1.0, "epoch": -0.5}, ValueError),
        ({"loss": 1.0, "epoch": math.nan}, ValueError),
        ({"loss": 1.0, "epoch": "1"}, TypeError),
    ],
)
def test_bad_log_arguments_raise_at_once(
    open_run: Callable[..., Run], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    run = open_run()
    with pytest.raises(error):
        run.log(**kwargs)
    assert run.stats.enqueued == 1  # only job_started


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"job_id": "has space"}, ValueError, "job_id"),
        ({"job_id": "x" * 129}, ValueError, "job_id"),
        ({"job_id": ""}, ValueError, "job_id"),
        ({"job_id": "job\n"}, ValueError, "job_id"),
        ({"total_epochs": 0}, ValueError, "total_epochs"),
        ({"total_epochs": 2.0}, TypeError, "total_epochs"),
        ({"gpu_count": -1}, ValueError, "gpu_count"),
        ({"total_steps": 0}, ValueError, "total_steps"),
        ({"config": {"f": object()}}, ValueError, "config"),
        ({"config": {"big": "x" * 70_000}}, ValueError, "config"),
        ({"model_name": 7}, TypeError, "model_name"),
        ({"model_name": "m" * 513}, ValueError, "model_name"),
        ({"buffer_size": 0}, ValueError, "buffer_size"),
    ],
)
def test_bad_start_arguments_raise(
    redis_url: str, keys: Keys, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        start_run(redis_url=redis_url, prefix=keys.prefix, **kwargs)


def test_bad_checkpoint_and_finish_arguments_raise(open_run: Callable[..., Run]) -> None:
    run = open_run()
    with pytest.raises(ValueError):
        run.checkpoint("")
    with pytest.raises(TypeError):
        run.checkpoint("checkpoint-1", step="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        run.finish("done")  # type: ignore[arg-type]
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        run.log(loss=1.0)


def test_non_finite_losses_are_dropped_with_one_warning(
    r: redis.Redis, keys: Keys, open_run: Callable[..., Run], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=SDK_LOGGER)
    run = open_run()
    run.log(step=1, loss=math.nan, eval_loss=0.5)
    run.log(step=2, loss=math.inf)
    run.log(step=3, loss=-math.inf, eval_loss=math.nan)
    run.log(step=4, loss=0.4)
    run.close()
    assert bodies(read_events(r, keys))[1:] == [
        {"type": "metrics", "step": 1, "eval_loss": 0.5, **COMMON},
        {"type": "metrics", "step": 4, "loss": 0.4, **COMMON},
        {"type": "job_finished", "status": "completed", **COMMON},
    ]
    assert run.stats == RunStats(enqueued=4, sent=4, dropped=2, pending=0)
    [warning] = messages(caplog, logging.WARNING)
    assert "job-1" in warning and "loss=nan" in warning


def test_other_metrics_are_sent_in_extra_without_their_non_finite_values(
    r: redis.Redis, keys: Keys, open_run: Callable[..., Run]
) -> None:
    run = open_run()
    run.log(step=1, loss=0.9, extra={"learning_rate": 2e-5, "grad_norm": math.inf})
    run.log(step=2, extra={"accuracy": 0.5})
    run.log(step=3, extra={"accuracy": math.nan})  # nothing finite left: dropped
    with pytest.raises(ValueError, match="at most 100"):
        run.log(step=4, extra={f"m{i}": 1.0 for i in range(101)})
    with pytest.raises(ValueError, match="1 to 250 characters"):
        run.log(step=4, extra={"": 1.0})
    with pytest.raises(ValueError, match="needs loss, eval_loss or extra"):
        run.log(step=4, extra={})
    run.close()
    assert bodies(read_events(r, keys))[1:] == [
        {"type": "metrics", "step": 1, "loss": 0.9, "extra": {"learning_rate": 2e-5}, **COMMON},
        {"type": "metrics", "step": 2, "extra": {"accuracy": 0.5}, **COMMON},
        {"type": "job_finished", "status": "completed", **COMMON},
    ]
    assert run.stats.dropped == 1


def test_redis_down_log_is_instant_and_buffered_events_arrive_in_order_when_it_is_back(
    redis_server_factory: Callable[[], RedisServer], keys: Keys,
    open_run: Callable[..., Run], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=SDK_LOGGER)
    server = redis_server_factory()
    run = open_run(redis_url=server.url)
    start = time.perf_counter()
    for step in range(1_000):
        run.log(step=step, loss=1.0 + step)
    assert time.perf_counter() - start < 0.5
    time.sleep(0.2)
    assert any("cannot send" in m and "job-1" in m for m in messages(caplog, logging.WARNING))
    assert not run.flush(0.1)
    assert run.stats.pending == 1_001

    server.start()
    assert run.flush(10)
    assert any("again" in m for m in messages(caplog, logging.INFO))
    client = redis.Redis.from_url(server.url)
    try:
        events = read_events(client, keys)
    finally:
        client.close()
    assert_event_ids(events)
    assert [e.get("step") for e in events] == [None, *range(1_000)]
    assert [e.get("loss") for e in events[1:]] == [1.0 + step for step in range(1_000)]
    assert run.stats == RunStats(enqueued=1_001, sent=1_001, dropped=0, pending=0)


def test_full_buffer_drops_and_counts_but_keeps_start_and_finish(
    redis_server_factory: Callable[[], RedisServer], keys: Keys,
    open_run: Callable[..., Run], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=SDK_LOGGER)
    server = redis_server_factory()
    run = open_run(redis_url=server.url, buffer_size=10)
    for step in range(20):  # job_started takes one place: 9 fit
        run.log(step=step, loss=1.0)
    run.finish()  # never dropped: 11 waiting
    assert run.stats == RunStats(enqueued=11, sent=0, dropped=11, pending=11)
    drops = [m for m in messages(caplog, logging.WARNING) if "buffer of run" in m]
    assert len(drops) == 1 and "dropped 1 event" in drops[0]  # rate-limited

    server.start()
    assert run.flush(10)
    client = redis.Redis.from_url(server.url)
    try:
        events = read_events(client, keys)
    finally:
        client.close()
    assert [e["type"] for e in events] == ["job_started", *["metrics"] * 9, "job_finished"]
    assert [e["step"] for e in events[1:-1]] == list(range(9))
    run.close()
    assert any("dropped 10 more" in m for m in messages(caplog, logging.WARNING))


def test_close_with_redis_down_gives_up_after_flush_timeout_and_says_what_was_lost(
    redis_server_factory: Callable[[], RedisServer],
    open_run: Callable[..., Run], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=SDK_LOGGER)
    run = open_run(redis_url=redis_server_factory().url, flush_timeout=0.3)
    for step in range(5):
        run.log(step=step, loss=1.0)
    start = time.perf_counter()
    run.close()
    assert time.perf_counter() - start < 1.5
    lost = [m for m in messages(caplog, logging.WARNING) if "lost" in m]
    assert len(lost) == 1 and "7 event(s) of run job-1" in lost[0]
    assert run.stats == RunStats(enqueued=7, sent=0, dropped=0, pending=7)


@pytest.mark.parametrize(
    ("ending", "expected"),
    [
        ("pass", {"status": "completed"}),
        ("raise ValueError('boom')", {"status": "failed", "error": "ValueError: boom"}),
    ],
)
def test_a_run_left_open_is_finished_and_flushed_at_exit(
    r: redis.Redis, keys: Keys, redis_url: str, ending: str, expected: dict[str, Any]
) -> None:
    script = (
        "from monitor.sdk import start_run\n"
        f"run = start_run('m', job_id='job-1', redis_url={redis_url!r}, prefix={keys.prefix!r})\n"
        "run.log(step=1, loss=0.5)\n"
        f"{ending}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, timeout=30
    )
    assert done.returncode == (0 if expected["status"] == "completed" else 1)
    events = bodies(read_events(r, keys))
    assert [e["type"] for e in events] == ["job_started", "metrics", "job_finished"]
    assert events[-1] == {"type": "job_finished", "job_id": "job-1", "model_name": "m", **expected}


def test_the_gpu_count_comes_from_torch_only_when_the_trainer_imported_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from monitor.sdk import detected_gpu_count

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert detected_gpu_count() is None
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True,
                                                            device_count=lambda: 4))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert detected_gpu_count() == 4
    fake.cuda.is_available = lambda: False
    assert detected_gpu_count() == 0


def test_a_run_started_before_any_worker_learns_its_partition_once_one_says(
    r: redis.Redis, keys: Keys, open_run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer may start before the deployment's first worker has said how many partitions
    there are: its events go to the ingress stream (which the router reads) and stay there,
    one partition is assumed until a worker says, and then the trainer hears the stop
    requests of its model's partition."""
    monkeypatch.setattr(sdk, "UNDECLARED_RECHECK", 0.05)
    run = open_run()
    run.log(step=1, loss=1.0)
    run.flush()
    assert run.control_target is not None
    assert run.control_target[1:] == (keys.prefix, False)  # one partition, so far
    r.set(keys.prefix + "partitions", 4)  # what the first worker of 4 partitions writes
    part = Partitioning(keys.prefix, 4)
    ours = part.keys(part.of_model(MODEL))
    wait_for(lambda: run.control_target is not None and run.control_target[1] == ours.prefix,
             5, "the run to learn its partition")
    assert r.hget(part.routes, "job-1") == str(part.of_model(MODEL)).encode()  # claimed
    run.log(step=2, loss=0.5)
    run.flush()
    assert [e["step"] for e in bodies(read_events(r, keys))[1:]] == [1, 2]  # one stream
    assert not r.exists(ours.events)
    r.hset(ours.stops, "job-1", orjson.dumps({"at": 1.0, "by": "user", "reason": "late"}))
    wait_for(lambda: run.should_stop, 5, "the trainer to hear the stop")
    assert run.stop_request is not None and run.stop_request["reason"] == "late"
