"""Fuzzed stream entries mixed into valid traffic: the worker never stops, refuses each bad
entry into ``<prefix>dead`` with a reason, and applies every valid one."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.decoded import parse_event
from monitor.events import BadEvent
from monitor.keys import Keys
from monitor.records import public_state
from tests.gateway_helpers import RunningWorker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TYPES = ["job_started", "metrics", "checkpoint", "job_finished", "job_archived", "job_restored"]
counter = itertools.count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)

# Keys of the contract with values that are sometimes right and often wrong.
fields = {
    "type": st.sampled_from([*TYPES, "telemetry", "", "METRICS"]) | json_values,
    "model_name": st.none() | st.text(max_size=600) | json_values,
    "ts": st.floats(allow_nan=False, allow_infinity=False) | json_values,
    "event_id": st.text(max_size=140) | json_values,
    "epoch": st.floats(allow_nan=False, allow_infinity=False, min_value=-5, max_value=1e6),
    "step": st.integers(-3, 2**64) | json_values,
    "loss": st.floats(allow_nan=False, allow_infinity=False) | json_values,
    "eval_loss": st.floats(allow_nan=False, allow_infinity=False) | json_values,
    "path": st.text(max_size=1100) | json_values,
    "status": st.sampled_from(["completed", "failed", "cancelled", "done"]) | json_values,
    "error": st.text(max_size=50),
    "total_epochs": st.integers(-2, 2**60) | json_values,
    "gpu_count": st.integers(-2, 16) | json_values,
    "config": st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    "name": st.text(max_size=600),
}


@st.composite
def entries(draw: st.DrawFn, job_id: str) -> bytes:
    """One raw entry: a near-valid event, or something worse."""
    kind = draw(st.sampled_from(["event", "event", "event", "raw", "nan", "big", "unicode"]))
    event: dict[str, Any] = {"job_id": draw(st.sampled_from([job_id, job_id, "bad id!", ""]))}
    event.update(draw(st.fixed_dictionaries({}, optional=fields)))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "nan":
        spelling = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]))
        return spell({**event, "type": "metrics", "loss": 0.0}).replace(
            b'"loss":0.0', b'"loss":' + spelling.encode())
    if kind == "big":
        size = draw(st.sampled_from([70_000, 300_000, 1_000_000]))
        return spell({**event, "type": "job_started", "config": {"blob": "x" * size}})
    if kind == "unicode":
        event["model_name"] = draw(st.text(min_size=1, max_size=50))
    return spell(event)


def spell(event: dict[str, Any]) -> bytes:
    """JSON text of ``event``, integers beyond 64 bits included (as another language might
    write them)."""
    try:
        return orjson.dumps(event)
    except TypeError:
        return json.dumps(event, separators=(",", ":")).encode()


def valid_traffic(job_id: str, n: int) -> list[bytes]:
    return [orjson.dumps({"type": "metrics", "job_id": job_id, "model_name": "org/fuzz",
                          "step": i, "loss": 1.0 / (i + 1)}) for i in range(n)]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_entries_never_stop_the_worker(data: st.DataObject, r: redis.Redis, keys: Keys,
                                              worker: RunningWorker) -> None:
    n = next(counter)
    job, good = f"fuzz-{n}", f"good-{n}"
    fuzzed = data.draw(st.lists(entries(job), min_size=1, max_size=8))
    traffic = valid_traffic(good, 3)
    mixed = traffic[:1] + fuzzed[: len(fuzzed) // 2] + traffic[1:2] + fuzzed[len(fuzzed) // 2:] \
        + traffic[2:]
    with r.pipeline(transaction=False) as pipe:
        for raw in mixed:
            pipe.xadd(keys.events, {"data": raw})
        ids = [i.decode() for i in pipe.execute()]
    worker.wait_applied(timeout=60)

    expected_dead = []
    for entry_id, raw in zip(ids, mixed):
        try:
            parse_event(raw)
        except BadEvent:
            expected_dead.append(entry_id)
    mine = set(ids)
    dead = [f for _, f in r.xrange(keys.dead) if f[b"id"].decode() in mine]
    assert [f[b"id"].decode() for f in dead] == expected_dead  # each bad one, once, in order
    for fields_ in dead:
        reason = fields_[b"reason"].decode()
        assert reason and "\n" not in reason
        assert len(fields_[b"data"]) <= 4096
    stored = public_state(r.hget(keys.jobs, good))  # the valid neighbours were all applied
    assert stored["loss"] == pytest.approx(1 / 3)
    assert r.llen(keys.metrics(good)) == 3


config_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(max_size=8), config_values, max_size=6))
@settings(max_examples=500, deadline=None)
def test_a_config_is_sized_and_refused_as_the_standard_library_would(
        config: dict[str, Any]) -> None:
    from monitor.events import MAX_CONFIG_BYTES, _json_size

    try:
        exact = len(json.dumps(config, allow_nan=False, ensure_ascii=False,
                               separators=(",", ":")).encode())
    except ValueError:
        with pytest.raises(ValueError, match="NaN or an infinity"):
            _json_size(config)
        return
    size = _json_size(config)
    assert size == exact or (size <= MAX_CONFIG_BYTES // 2 and exact <= MAX_CONFIG_BYTES)


def test_a_config_at_the_limit_is_sized_exactly() -> None:
    from monitor.events import MAX_CONFIG_BYTES, _json_size

    for size in (MAX_CONFIG_BYTES // 2 + 1, MAX_CONFIG_BYTES, MAX_CONFIG_BYTES + 1):
        config: dict[str, Any] = {"s": "x" * (size - 8), "lr": 1e-05}  # '{"s":"',..'"}' = 8
        config["s"] = config["s"][:size - 8 - len(',"lr":1e-05')]
        assert _json_size(config) == size
