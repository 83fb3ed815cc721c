"""Events as the fold reads them: msgspec structs, decoded straight from a stream entry's JSON.

:mod:`monitor.events` is the contract (docs/events.md): its pydantic models say what an
event may hold, give the JSON Schema and word every refusal. They cost 3 to 7 µs per event
to validate, the worker's largest single cost per event. The structs here say the same in
msgspec, which checks a ``metrics`` event in under 1 µs, and they are what the fold reads.

The contract stays the authority. :func:`parse_event` takes the struct only when msgspec
accepts the entry; otherwise the pydantic models decide: they give the reason an entry is
refused, and when they accept what msgspec refused (a name to cut to ``MAX_NAME``, say),
their values become the struct. So msgspec may be stricter than the contract, never looser,
and for anything both accept it must give the same values: ``tests/test_decoded.py`` checks
both on every event type, valid and not.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

import msgspec
from msgspec import Meta, Struct
from pydantic import BaseModel, ValidationError

from monitor import events as contract
from monitor.events import BadEvent, describe
from monitor.keys import is_job_id
from monitor.limits import (
    MAX_CONFIG_BYTES,
    MAX_ENTRY_BYTES,
    MAX_EVENT_ID,
    MAX_EXTRA,
    MAX_INT,
    MAX_JOB_ID,
    MAX_METRIC_NAME,
    MAX_MODEL_NAME,
    MAX_NAME,
    MAX_PATH,
    MAX_REASON,
    MAX_TEXT,
    Status,
)

_FINITE = 1.7976931348623157e308  # the largest float: a bound that refuses the infinities
# An entry this short holds a config far below MAX_CONFIG_BYTES as compact JSON, without
# encoding it to know: only a number grows when written again, at most 4.5 times
# ("1e15" becomes "1000000000000000.0"). (The encoding cost 3 µs per job_started.)
SMALL_ENTRY = MAX_CONFIG_BYTES // 2 // 5

# Its characters are checked after decoding (keys.is_job_id): msgspec's ``pattern`` calls
# Python's ``re`` and took half of its time per event.
JobId = Annotated[str, Meta(min_length=1, max_length=MAX_JOB_ID)]
ModelName = Annotated[str, Meta(max_length=MAX_MODEL_NAME)]
EventId = Annotated[str, Meta(max_length=MAX_EVENT_ID)]
Number = Annotated[float, Meta(ge=-_FINITE, le=_FINITE)]
NonNegNumber = Annotated[float, Meta(ge=0, le=_FINITE)]
NonNegInt = Annotated[int, Meta(ge=0, le=MAX_INT)]
PositiveInt = Annotated[int, Meta(ge=1, le=MAX_INT)]
MetricName = Annotated[str, Meta(min_length=1, max_length=MAX_METRIC_NAME)]


class _Event(Struct, frozen=True, kw_only=True, tag_field="type"):
    """Keys common to every event, in the contract's order; unknown keys are ignored."""

    job_id: JobId
    model_name: ModelName | None = None
    ts: NonNegNumber | None = None
    event_id: EventId | None = None


class JobStarted(_Event, frozen=True, tag="job_started"):
    total_epochs: PositiveInt | None = None
    # Longer names are cut by the contract: msgspec leaves them to it.
    name: Annotated[str, Meta(max_length=MAX_NAME)] | None = None
    config: dict[str, Any] | None = None
    gpu_count: NonNegInt | None = None
    total_steps: PositiveInt | None = None
    autostop: bool | None = None

    @property
    def config_is_small(self) -> bool:
        """Is its config far below ``MAX_CONFIG_BYTES`` (the contract's own check, and
        wording, decide a larger one)?"""
        return self.config is None or len(msgspec.json.encode(self.config)) <= (
            MAX_CONFIG_BYTES // 2)


class Metrics(_Event, frozen=True, tag="metrics"):
    epoch: NonNegNumber | None = None
    step: NonNegInt | None = None
    loss: Number | None = None
    eval_loss: Number | None = None
    extra: Annotated[dict[MetricName, Number], Meta(min_length=1, max_length=MAX_EXTRA)] \
        | None = None

    def __post_init__(self) -> None:
        if self.loss is None and self.eval_loss is None and self.extra is None:
            raise ValueError("a metrics event needs loss, eval_loss or extra")


class Checkpoint(_Event, frozen=True, tag="checkpoint"):
    path: Annotated[str, Meta(min_length=1, max_length=MAX_PATH)]
    epoch: NonNegNumber | None = None
    step: NonNegInt | None = None
    eval_loss: Number | None = None


class JobFinished(_Event, frozen=True, tag="job_finished"):
    status: Status
    error: Annotated[str, Meta(max_length=MAX_TEXT)] | None = None  # longer: the contract cuts
    final_loss: Number | None = None
    final_eval_loss: Number | None = None


PositiveLoss = Annotated[float, Meta(gt=0, le=_FINITE)]


class Forecast(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A running job's forecast (docs/insights.md#forecast), as the advisor computed it."""

    at_step: NonNegInt
    horizon_step: PositiveInt
    best_p10: PositiveLoss
    best_p50: PositiveLoss
    best_p90: PositiveLoss
    p_beat_best: Annotated[float, Meta(ge=0, le=1)] | None
    verdict: contract.Verdict
    gpu_hours_left: NonNegNumber | None

    def __post_init__(self) -> None:
        if not self.best_p10 <= self.best_p50 <= self.best_p90:
            raise ValueError("best_p10 <= best_p50 <= best_p90 must hold")


class JobForecast(_Event, frozen=True, tag="job_forecast"):
    forecast: Forecast


class JobStopRequested(_Event, frozen=True, tag="job_stop_requested"):
    by: contract.StopBy
    reason: Annotated[str, Meta(max_length=MAX_REASON)] | None = None


class JobHeartbeat(_Event, frozen=True, tag="job_heartbeat"):
    """The trainer is alive; creates no job."""


class JobStale(_Event, frozen=True, tag="job_stale"):
    last_seen: NonNegNumber


class JobArchived(_Event, frozen=True, tag="job_archived"):
    """Takes the job out of the list and its group's ranking."""


class JobRestored(_Event, frozen=True, tag="job_restored"):
    """Brings an archived job back."""


Event: TypeAlias = (JobStarted | Metrics | Checkpoint | JobFinished | JobArchived | JobRestored
                    | JobForecast | JobStopRequested | JobHeartbeat | JobStale)
_STRUCTS: dict[str, type[_Event]] = {  # by event type: each struct's tag, a str on every one
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (JobStarted, Metrics, Checkpoint, JobFinished, JobArchived, JobRestored,
                JobForecast, JobStopRequested, JobHeartbeat, JobStale)}
assert set(_STRUCTS) == set(contract.EVENT_TYPES)
_decode = msgspec.json.Decoder(Event).decode


def parse_event(data: bytes | str) -> Event:
    """Validate one raw JSON event; raises :class:`BadEvent` with the contract's one-line
    reason."""
    if len(data) > MAX_ENTRY_BYTES:
        raise BadEvent(f"event is {len(data)} bytes, at most {MAX_ENTRY_BYTES}")
    event = decode_fast(data)
    if event is not None:
        return event
    try:
        return from_model(contract.event_adapter.validate_json(data))
    except ValidationError as e:
        raise BadEvent(describe(e)) from None


def decode_fast(data: bytes | str) -> Event | None:
    """The event, if msgspec takes it alone; None when the contract must decide."""
    try:
        event = _decode(data)
    except msgspec.MsgspecError:
        return None
    if not is_job_id(event.job_id):
        return None
    if type(event) is JobStarted and len(data) > SMALL_ENTRY and not event.config_is_small:
        return None
    return event


def event_of(fields: dict[str, Any]) -> Event:
    """An event from a dict, validated by the contract (for tools and tests)."""
    return from_model(contract.event_adapter.validate_python(fields))


def from_model(model: contract.Event) -> Event:
    """The struct of an event the contract's model validated (its values, not checked
    again: building a struct runs its ``__post_init__``, which holds for them)."""
    fields = _values(model)
    del fields["type"]
    if isinstance(model, contract.JobForecast):
        fields["forecast"] = Forecast(**_values(model.forecast))
    return _STRUCTS[model.type](**fields)  # type: ignore[return-value]


def _values(model: BaseModel) -> dict[str, Any]:
    return {name: getattr(model, name) for name in type(model).model_fields}


def as_dict(forecast: Forecast) -> dict[str, Any]:
    """A forecast as plain data, its fields in the contract's order."""
    return msgspec.structs.asdict(forecast)
