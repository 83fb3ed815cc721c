"""The worker's msgspec structs (monitor.decoded) against the contract's pydantic models
(monitor.events): msgspec may refuse more, never less, and what both accept decodes to the
same values, exactly (an int is not a float)."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bench.workload import Workload, generate
from monitor import events as contract
from monitor.decoded import SMALL_ENTRY, as_dict, decode_fast, event_of, from_model, parse_event
from monitor.events import EVENT_TYPES, BadEvent, describe, event_adapter
from monitor.keys import is_job_id
from monitor.limits import JOB_ID_PATTERN, MAX_CONFIG_BYTES, MAX_INT, MAX_JOB_ID, MAX_NAME, MAX_TEXT

CONTRACT_MODELS = {get_args(model.model_fields["type"].annotation)[0]: model for model in (
    contract.JobStarted, contract.Metrics, contract.Checkpoint, contract.JobFinished,
    contract.JobArchived, contract.JobRestored, contract.JobForecast, contract.JobStopRequested,
    contract.JobHeartbeat, contract.JobStale)}
BIG = "__1e999__"  # becomes the literal 1e999, which no Python float writes

texts = st.sampled_from(["", "a", "job-1", "job-1\n", "a b", "A.b:c-d_e", "é" * 10, "日本",
                         "\u2028", "x" * 128, "x" * 129, "n" * MAX_NAME, "n" * (MAX_NAME + 1),
                         "m" * 512, "m" * 513]) | st.text(max_size=20)
numbers = st.sampled_from([0, -0.0, 1, 1.5, -1, -1e-9, 0.3, 1e308, 1.7976931348623157e308,
                           MAX_INT, MAX_INT + 1, 2**64, 10**30, True, False, "1", [], {},
                           float("nan"), float("inf"), BIG]) | st.floats() | st.integers()
forecast_ok = {"at_step": 100, "horizon_step": 1000, "best_p10": 0.2, "best_p50": 0.3,
               "best_p90": 0.4, "p_beat_best": 0.1, "verdict": "may_win",
               "gpu_hours_left": 1.5}
forecasts = st.one_of(
    st.just(forecast_ok),
    st.builds(lambda k, v: {**forecast_ok, k: v}, st.sampled_from(sorted(forecast_ok)),
              numbers | texts | st.none()),
    st.builds(lambda k: {x: y for x, y in forecast_ok.items() if x != k},
              st.sampled_from(sorted(forecast_ok))),
    st.just({**forecast_ok, "extra_key": 1}),
    st.just({**forecast_ok, "best_p10": 0.5}),
    st.just({**forecast_ok, "verdict": "cannot_win", "p_beat_best": None,
             "gpu_hours_left": None}),
)
configs = st.sampled_from([{}, {"learning_rate": 1e-4, "lora_r": 16}, {"a": [1, None, {"b": "c"}]},
                           {"big": 2**70}, {"nan": float("nan")}, {"inf": BIG},
                           {"x": "y" * (MAX_CONFIG_BYTES // 2)}, {"x": "y" * MAX_CONFIG_BYTES},
                           [1], "config"])
extras = st.sampled_from([{}, {"acc": 0.5}, {"acc": 1}, {"": 1.0}, {"a" * 250: 1.0},
                          {"a" * 251: 1.0}, {"a": "x"}, {"a": True}, {"a": None},
                          {f"m{i}": 1.0 for i in range(100)}, {f"m{i}": 1.0 for i in range(101)},
                          {"a": BIG}, [1.0]])
values = numbers | texts | st.none() | configs | extras
FIELDS: dict[str, Any] = {
    "job_id": st.sampled_from(["a", "job-000001", "A.b:c-d_e", "a\n", "a b", "a/b", "é", "",
                               "a" * MAX_JOB_ID, "a" * (MAX_JOB_ID + 1)]) | texts | numbers,
    "model_name": texts | st.none() | numbers,
    "ts": numbers | st.none(),
    "event_id": texts | st.none(),
    "total_epochs": numbers | st.none(), "total_steps": numbers | st.none(),
    "gpu_count": numbers | st.none(), "autostop": st.sampled_from([True, False, None, 1, "true"]),
    "name": texts | st.none(), "config": configs | st.none(),
    "epoch": numbers | st.none(), "step": numbers | st.none(), "loss": numbers | st.none(),
    "eval_loss": numbers | st.none(), "extra": extras | st.none(),
    "path": texts | st.none(), "status": st.sampled_from(
        ["completed", "failed", "cancelled", "stopped", "running", None, 1]),
    "error": texts | st.none() | st.just("e" * (MAX_TEXT + 1)),
    "final_loss": numbers | st.none(), "final_eval_loss": numbers | st.none(),
    "forecast": forecasts | values,
    "by": st.sampled_from(["user", "forecast", "advisor", None]), "reason": texts | st.none(),
    "last_seen": numbers | st.none(),
}

OWN = {kind: set(model.model_fields) - {"type", "job_id"}
       for kind, model in CONTRACT_MODELS.items()}


@st.composite
def raw_events(draw: st.DrawFn) -> bytes:
    """A JSON object that is mostly an event: a type, some of its fields with good and bad
    values, sometimes unknown keys, a repeated key or no type at all."""
    kind = draw(st.sampled_from([*EVENT_TYPES, "unknown", None]))
    event: dict[str, Any] = {} if kind is None else {"type": kind}
    event["job_id"] = draw(st.sampled_from(["a", "job-000001"])) if draw(st.booleans()) \
        else draw(FIELDS["job_id"])
    own = sorted(OWN.get(kind, ()))  # mostly the type's own fields, so each gets tried
    for name in draw(st.lists(st.sampled_from(own), max_size=len(own), unique=True)) if own \
            else []:
        event[name] = draw(FIELDS[name])
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=2, unique=True)):
        event[name] = draw(FIELDS[name])
    if draw(st.booleans()):
        event["unknown_key"] = draw(values)
    text = json.dumps(event, allow_nan=True).replace(f'"{BIG}"', "1e999")
    if draw(st.integers(0, 9)) == 0:  # a key twice: the last one counts
        text = text[:-1] + ', "job_id": "b"}'
    return text.encode()


def test_the_tests_know_every_event_type() -> None:
    assert sorted(CONTRACT_MODELS) == sorted(EVENT_TYPES)


def _contract(raw: bytes) -> Any:
    try:
        return event_adapter.validate_json(raw)
    except ValidationError as e:
        return e


@settings(max_examples=3000, deadline=None)
@given(raw_events())
def test_msgspec_never_takes_what_the_contract_refuses_and_reads_the_same_values(
        raw: bytes) -> None:
    model = _contract(raw)
    fast = decode_fast(raw)
    if fast is not None:
        assert not isinstance(model, ValidationError), f"msgspec took what the contract refused: {model}"
        # repr shows each value with its type: 1 and 1.0 differ
        assert repr(fast) == repr(from_model(model))
    # What the worker applies is the contract's verdict either way.
    if isinstance(model, ValidationError):
        with pytest.raises(BadEvent) as refused:
            parse_event(raw)
        assert refused.value.reason == describe(model)
    else:
        assert repr(parse_event(raw)) == repr(from_model(model))


@settings(max_examples=3000, deadline=None)
@given(st.text(min_size=1) | st.text(alphabet="abcAZ09._:-/ \n\x00é", min_size=1))
def test_a_job_ids_characters_are_checked_as_the_contracts_pattern_says(text: str) -> None:
    assert is_job_id(text) == (re.fullmatch(JOB_ID_PATTERN.strip("^$"), text) is not None)


def test_every_event_the_workload_writes_is_taken_by_msgspec_itself() -> None:
    """The fast path is the common path: the benchmark's stream never falls back."""
    for event in generate(Workload(events=2000, jobs=50, models=5)):
        raw = orjson.dumps(event)
        assert repr(decode_fast(raw)) == repr(from_model(event_adapter.validate_json(raw)))


def test_a_short_entry_holds_a_config_far_below_the_limit_as_the_contract_writes_it() -> None:
    """An entry of at most SMALL_ENTRY bytes skips the config's size check: the number
    that grows most when written again ("1e15") still keeps its config under half the
    limit, and the fast path reads it as the contract does."""
    head = b'{"type":"job_started","job_id":"a","config":{"x":['
    count = (SMALL_ENTRY - len(head) - 2) // len(b"1e15,")
    raw = head + b",".join([b"1e15"] * count) + b"]}}"
    assert SMALL_ENTRY - 5 < len(raw) <= SMALL_ENTRY
    config = json.loads(raw)["config"]
    written = json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(raw) * 3.5 < len(written) <= MAX_CONFIG_BYTES // 2
    assert repr(decode_fast(raw)) == repr(from_model(event_adapter.validate_json(raw)))


ONE_OF_EACH = [
    {"type": "job_started", "job_id": "a", "model_name": "org/m", "total_epochs": 3,
     "name": "run", "config": {"lr": 1e-4}, "gpu_count": 2, "total_steps": 100,
     "autostop": False, "ts": 1.5, "event_id": "u:1"},
    {"type": "metrics", "job_id": "a", "epoch": 0.5, "step": 10, "loss": 1.25, "eval_loss": 1,
     "extra": {"acc": 0.5}},
    {"type": "checkpoint", "job_id": "a", "path": "/c/1", "epoch": 1, "step": 20,
     "eval_loss": 0.5},
    {"type": "job_finished", "job_id": "a", "status": "stopped", "error": "boom",
     "final_loss": 0.1, "final_eval_loss": 0.2},
    {"type": "job_archived", "job_id": "a"},
    {"type": "job_restored", "job_id": "a"},
    {"type": "job_forecast", "job_id": "a", "forecast": forecast_ok},
    {"type": "job_stop_requested", "job_id": "a", "by": "user", "reason": "why"},
    {"type": "job_heartbeat", "job_id": "a"},
    {"type": "job_stale", "job_id": "a", "last_seen": 12.5},
]


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=[e["type"] for e in ONE_OF_EACH])
def test_one_of_each_type_is_taken_by_msgspec_with_the_contracts_values(
        event: dict[str, Any]) -> None:
    raw = orjson.dumps(event)
    assert repr(decode_fast(raw)) == repr(event_of(event))


def test_a_forecast_reads_back_as_the_contracts_dict_in_its_order() -> None:
    raw = orjson.dumps(ONE_OF_EACH[6])
    fast = decode_fast(raw)
    model = event_adapter.validate_json(raw)
    assert list(as_dict(fast.forecast).items()) == list(  # type: ignore[union-attr]
        model.forecast.model_dump().items())  # type: ignore[union-attr]


@pytest.mark.parametrize(("field", "value", "kept"), [
    ("name", "n" * (MAX_NAME + 7), "n" * MAX_NAME),
    ("error", "e" * (MAX_TEXT + 7), "e" * MAX_TEXT),
])
def test_a_text_the_contract_cuts_is_cut_through_its_fallback(field: str, value: str,
                                                              kept: str) -> None:
    kind = "job_started" if field == "name" else "job_finished"
    event = {"type": kind, "job_id": "a", field: value}
    if kind == "job_finished":
        event["status"] = "failed"
    raw = orjson.dumps(event)
    assert decode_fast(raw) is None  # msgspec leaves it to the contract
    assert getattr(parse_event(raw), field) == kept


EDGES: list[Any] = [
    None, 0, -0.0, 1, -1, 1.5, -1e-9, 0.3, 1e308, 1.7976931348623157e308, MAX_INT, MAX_INT + 1,
    2**63, 2**64, 10**30, True, False, "", "a", "1", "job-1\n", "x" * 129, "n" * MAX_NAME,
    "n" * (MAX_NAME + 1), "m" * 513, "p" * 1025, "é" * 10, "e" * (MAX_TEXT + 1), [], {}, [1.0],
    float("nan"), float("inf"), BIG, {"a": 1.0}, {"a": 1}, {"a" * 251: 1.0}, {"": 1.0},
    {f"m{i}": 1.0 for i in range(101)}, {"x": "y" * MAX_CONFIG_BYTES},
    {"x": "y" * (MAX_CONFIG_BYTES // 2)}, {"big": 2**70}, {"a": [1, None]}, "completed",
    "stopped", "running", "user", "advisor", "cannot_win", forecast_ok,
    {**forecast_ok, "extra_key": 1}, {**forecast_ok, "best_p10": 0.5},
]
GONE = object()  # the field left out
CASES = [(base, name, value)
         for base in ONE_OF_EACH
         for name in sorted(set(base) - {"type"})
         for value in [*EDGES, GONE]]
CASES += [(ONE_OF_EACH[6], f"forecast.{name}", value)
          for name in sorted(forecast_ok) for value in [*EDGES, GONE]]


def _raw(base: dict[str, Any], name: str, value: Any) -> bytes:
    event = json.loads(json.dumps(base))
    where, _, field = name.rpartition(".")
    target = event[where] if where else event
    if value is GONE:
        del target[field]
    else:
        target[field] = value
    return json.dumps(event, allow_nan=True).replace(f'"{BIG}"', "1e999").encode()


def test_each_field_of_each_type_with_each_edge_value_reads_as_the_contract_says() -> None:
    """Every field of a valid event of each type, set to each edge value in turn (or left
    out): msgspec takes it only if the contract does, with the same values; the worker's
    verdict is the contract's."""
    taken = 0
    for base, name, value in CASES:
        raw = _raw(base, name, value)
        model = _contract(raw)
        fast = decode_fast(raw)
        context = f"{base['type']}.{name} = {str(value)[:40]!r}"
        if fast is not None:
            assert not isinstance(model, ValidationError), f"msgspec took {context}: {model}"
            assert repr(fast) == repr(from_model(model)), context
        if isinstance(model, ValidationError):
            with pytest.raises(BadEvent):
                parse_event(raw)
        else:
            taken += 1
            assert repr(parse_event(raw)) == repr(from_model(model)), context
    assert taken > len(CASES) // 10  # the edges are not all refused
