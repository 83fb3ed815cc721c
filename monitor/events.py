"""The wire contract: pydantic models for every event a trainer may write (docs/events.md).

They give the JSON Schema and word every refusal. The worker reads events through
:mod:`monitor.decoded` (msgspec structs, several times faster), which defers to these models
on anything it does not accept itself."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeAlias

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.limits import (
    JOB_ID_PATTERN,
    MAX_CONFIG_BYTES,
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

JobId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_JOB_ID,
                                         pattern=JOB_ID_PATTERN)]
ModelName = Annotated[str, StringConstraints(max_length=MAX_MODEL_NAME)]
NonNegInt = Annotated[int, Field(ge=0, le=MAX_INT)]
NonNegNumber = Annotated[float, Field(ge=0)]


def _cut(limit: int) -> AfterValidator:
    """Cut a text to ``limit`` characters: a long error must not cost the run its ending."""
    return AfterValidator(lambda text: text[:limit])


class _Event(BaseModel):
    """Keys common to every event. Types are strict JSON types; NaN and infinities are refused.
    Keys the contract does not name are ignored (a newer trainer may send more)."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)

    job_id: JobId
    model_name: ModelName | None = None
    ts: NonNegNumber | None = None
    event_id: Annotated[str, StringConstraints(max_length=MAX_EVENT_ID)] | None = None


class JobStarted(_Event):
    type: Literal["job_started"]
    total_epochs: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None
    name: Annotated[str, _cut(MAX_NAME)] | None = None
    config: dict[str, Any] | None = None
    gpu_count: NonNegInt | None = None
    total_steps: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None
    autostop: bool | None = None  # False: the advisor never asks this run to stop

    @field_validator("config")
    @classmethod
    def _config_size(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is not None:
            size = _json_size(config)
            if size > MAX_CONFIG_BYTES:
                raise ValueError(f"config is {size} bytes as JSON, at most {MAX_CONFIG_BYTES}")
        return config


def _json_size(config: dict[str, Any]) -> int:
    """The bytes of ``config`` as compact JSON; ValueError if it holds NaN or an infinity.

    orjson answers most configs about ten times faster than the standard library (this runs
    for every job_started). It writes NaN and infinities as ``null``, so a text without
    ``null`` has none; and it writes some numbers a byte or two longer (``0.00001`` for
    ``1e-05``), so its size decides only far below the limit. Anything else, the exact way."""
    try:
        fast = orjson.dumps(config)
    except orjson.JSONEncodeError:  # an integer past 64 bits, say
        fast = None
    if fast is not None and b"null" not in fast and len(fast) <= MAX_CONFIG_BYTES // 2:
        return len(fast)
    try:
        text = json.dumps(config, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        raise ValueError("config holds NaN or an infinity; JSON has no such number") from None
    return len(text.encode())


MetricName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METRIC_NAME)]


class Metrics(_Event):
    type: Literal["metrics"]
    epoch: NonNegNumber | None = None
    step: NonNegInt | None = None
    loss: float | None = None
    eval_loss: float | None = None
    # Other metrics by name (learning rate, accuracy, ...): kept in the metric history; they
    # do not rank.
    extra: Annotated[dict[MetricName, float], Field(min_length=1, max_length=MAX_EXTRA)] \
        | None = None

    @model_validator(mode="after")
    def _some_value(self) -> Metrics:
        if self.loss is None and self.eval_loss is None and self.extra is None:
            raise ValueError("a metrics event needs loss, eval_loss or extra")
        return self


class Checkpoint(_Event):
    type: Literal["checkpoint"]
    path: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH)]
    epoch: NonNegNumber | None = None
    step: NonNegInt | None = None
    eval_loss: float | None = None


class JobFinished(_Event):
    type: Literal["job_finished"]
    status: Status
    error: Annotated[str, _cut(MAX_TEXT)] | None = None
    final_loss: float | None = None
    final_eval_loss: float | None = None


Verdict = Literal["leading", "too_early", "cannot_win", "may_win"]
StopBy = Literal["user", "forecast"]  # who asked a job to stop
PositiveLoss = Annotated[float, Field(gt=0)]


class Forecast(BaseModel):
    """A running job's forecast (docs/insights.md#forecast), as the advisor computed it."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)

    at_step: NonNegInt
    horizon_step: Annotated[int, Field(ge=1, le=MAX_INT)]
    best_p10: PositiveLoss
    best_p50: PositiveLoss
    best_p90: PositiveLoss
    p_beat_best: Annotated[float, Field(ge=0, le=1)] | None
    verdict: Verdict
    gpu_hours_left: NonNegNumber | None

    @model_validator(mode="after")
    def _ordered(self) -> Forecast:
        if not self.best_p10 <= self.best_p50 <= self.best_p90:
            raise ValueError("best_p10 <= best_p50 <= best_p90 must hold")
        return self


class JobForecast(_Event):
    """Written by the advisor, not by trainers: the job's forecast replaces the one before
    (docs/events.md). It never creates a job and never moves its times."""

    type: Literal["job_forecast"]
    forecast: Forecast


class JobStopRequested(_Event):
    """Someone asks the trainer to stop the run: the page's user, or the advisor's auto-stop.
    The first request while the job runs is kept; the trainer hears it (docs/stopping.md)."""

    type: Literal["job_stop_requested"]
    by: StopBy
    reason: Annotated[str, StringConstraints(max_length=MAX_REASON)] | None = None


class JobHeartbeat(_Event):
    """The trainer is alive (the SDK sends one per run every 10 s). Creates no job."""

    type: Literal["job_heartbeat"]


class JobStale(_Event):
    """Written by the advisor: nothing arrived from the running job since ``last_seen``
    (arrival time, seconds since the epoch). Ignored if something arrived after it."""

    type: Literal["job_stale"]
    last_seen: NonNegNumber


class JobArchived(_Event):
    type: Literal["job_archived"]


class JobRestored(_Event):
    type: Literal["job_restored"]


Event: TypeAlias = Annotated[
    JobStarted | Metrics | Checkpoint | JobFinished | JobArchived | JobRestored | JobForecast
    | JobStopRequested | JobHeartbeat | JobStale,
    Field(discriminator="type"),
]
EVENT_TYPES = ("job_started", "metrics", "checkpoint", "job_finished", "job_archived",
               "job_restored", "job_forecast", "job_stop_requested", "job_heartbeat",
               "job_stale")

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


class BadEvent(ValueError):
    """An entry that must not be applied; ``reason`` is one line for ``<prefix>dead``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(error: ValidationError) -> str:
    """One line naming the first offending field, e.g. ``metrics.loss: Input should be ...``."""
    first = error.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first["loc"]).encode("unicode_escape").decode()
    msg = first["msg"].replace("\n", " ")
    more = error.error_count() - 1
    suffix = f" (and {more} more)" if more else ""
    return f"{loc}: {msg}{suffix}" if loc else f"{msg}{suffix}"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one event (what ``monitor schema`` prints)."""
    schema = event_adapter.json_schema()
    schema["title"] = "Training monitor event"
    schema["description"] = (
        "One entry of the <prefix>events stream (field `data`), or one item of POST /api/events."
    )
    return schema
