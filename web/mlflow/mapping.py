"""What an MLflow run becomes here (docs/mlflow.md): its model, its config, its losses and
its end, as the events of docs/events.md. Pure: no Redis, no clock, no HTTP."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from monitor.limits import MAX_CONFIG_BYTES, MAX_EXTRA, MAX_INT, MAX_MODEL_NAME

MODEL_PARAMS = ("model_name", "model_name_or_path", "_name_or_path", "base_model")
MODEL_TAG = "model_name"
RUN_NAME_TAG = "mlflow.runName"
LOSS_METRICS = ("loss", "train_loss", "training_loss")
EVAL_LOSS_METRICS = ("eval_loss", "val_loss", "validation_loss", "eval/loss")
EPOCH_METRIC = "epoch"
# Hugging Face's Trainer ends with one summary call (train_runtime, ..., train_loss): its
# train_loss is the mean over the whole run, not an observation at that step.
SUMMARY_METRIC = "train_runtime"
SUMMARY_LOSS = "train_loss"
# MLflow's terminal statuses -> job_finished statuses; RUNNING and SCHEDULED end nothing.
END_STATUSES = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "cancelled"}


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Which MLflow metric names are the training loss and which the eval loss; the first
    name of a tuple that a step has wins."""

    loss: tuple[str, ...] = LOSS_METRICS
    eval_loss: tuple[str, ...] = EVAL_LOSS_METRICS

    @classmethod
    def with_extra(cls, loss: Iterable[str] = (), eval_loss: Iterable[str] = ()) -> MetricNames:
        """The default names, then ``loss`` and ``eval_loss`` (a setting's additions)."""
        return cls(_unique([*LOSS_METRICS, *loss]), _unique([*EVAL_LOSS_METRICS, *eval_loss]))


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


@dataclass(frozen=True, slots=True)
class MetricValue:
    """One MLflow metric as logged: ``value`` is None for NaN or an infinity."""

    key: str
    value: float | None
    timestamp: int
    step: int


def metric_value(raw: float | str) -> float | None:
    """An MLflow metric value (a number, or ``"NaN"``/``"Infinity"`` as its JSON writes
    them) as a finite float, else None."""
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            return None
    return raw if math.isfinite(raw) else None


def model_from_params(params: Mapping[str, str]) -> str | None:
    """The model a run's params name: the first of :data:`MODEL_PARAMS` that is set."""
    for key in MODEL_PARAMS:
        value = params.get(key, "").strip()
        if value and value.lower() not in ("none", "null"):
            return value[:MAX_MODEL_NAME]
    return None


def choose_model(params: Mapping[str, str], tags: Mapping[str, str],
                 experiment_name: str) -> str:
    """A run's model once it must be decided: its params', else its ``model_name`` tag, else
    its experiment's name."""
    named = model_from_params(params)
    if named is not None:
        return named
    tag = tags.get(MODEL_TAG, "").strip()
    return (tag or experiment_name)[:MAX_MODEL_NAME]


_INT = re.compile(r"^[+-]?\d+$")


def param_value(text: str) -> Any:
    """A param (MLflow keeps them as text) as the config value insights can use: integers
    and finite numbers as numbers, ``True``/``False`` as booleans, ``None`` as null, anything
    else as the text itself."""
    stripped = text.strip()
    if _INT.match(stripped):
        number = int(stripped)
        return number if abs(number) <= MAX_INT else text
    if stripped in ("True", "true"):
        return True
    if stripped in ("False", "false"):
        return False
    if stripped in ("None", "null"):
        return None
    try:
        value = float(stripped)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def config_of(params: Mapping[str, str]) -> dict[str, Any] | None:
    """A run's params as a job's ``config``; None when they would not fit the event's limit."""
    config = {key: param_value(value) for key, value in sorted(params.items())}
    return config if len(orjson.dumps(config)) <= MAX_CONFIG_BYTES else None


def event_id(*parts: Any) -> str:
    """A stable id for an event made of ``parts``: the same MLflow request sent again (a retry
    after a lost answer) makes the same events with the same ids, so they are applied once."""
    digest = hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()
    return f"mlflow:{digest}"


def seconds(ms: int | None) -> float | None:
    """MLflow's milliseconds since the epoch as the events' seconds; None when unset."""
    return ms / 1000 if ms is not None and ms > 0 else None


def job_started(run_id: str, model: str, name: str | None, start_ms: int | None,
                params: Mapping[str, str]) -> dict[str, Any]:
    """The run's ``job_started``: its model, display name and params, at its start time."""
    config = config_of(params)
    event: dict[str, Any] = {"type": "job_started", "job_id": run_id, "model_name": model,
                             "name": name, "config": config}
    if (ts := seconds(start_ms)) is not None:
        event["ts"] = ts
    event["event_id"] = event_id(run_id, "started", model, name, config, start_ms)
    return event


def job_finished(run_id: str, model: str, status: str, end_ms: int | None) -> dict[str, Any]:
    """The run's ``job_finished`` for MLflow ``status`` (FINISHED, FAILED or KILLED)."""
    event: dict[str, Any] = {"type": "job_finished", "job_id": run_id, "model_name": model,
                             "status": END_STATUSES[status]}
    if status == "FAILED":
        event["error"] = "the MLflow run ended as FAILED"
    if (ts := seconds(end_ms)) is not None:
        event["ts"] = ts
    event["event_id"] = event_id(run_id, "finished", status, end_ms)
    return event


def metrics_events(run_id: str, metrics: Sequence[MetricValue],
                   names: MetricNames) -> list[dict[str, Any]]:
    """The ``metrics`` events of one MLflow request's metrics, without their model (the
    caller adds it): one per step, with its training and eval loss when logged at that step,
    the ``epoch`` metric logged at that step, if any, and every other metric of that step in
    ``extra`` (kept in the job's metric history; they do not rank). NaN and infinities are
    left out. The ``train_loss`` of a Hugging Face summary (logged with ``train_runtime``)
    is the run's mean, so it goes to ``extra``, not ``loss``."""
    by_step: dict[int, dict[str, MetricValue]] = {}
    for metric in metrics:
        if metric.value is not None:
            by_step.setdefault(metric.step, {})[metric.key] = metric
    events = []
    for step, logged in by_step.items():
        ranked = logged
        if SUMMARY_METRIC in logged:
            ranked = {k: v for k, v in logged.items() if k != SUMMARY_LOSS}
        loss = _first(ranked, names.loss)
        eval_loss = _first(ranked, names.eval_loss)
        event: dict[str, Any] = {"type": "metrics", "job_id": run_id}
        if 0 <= step <= MAX_INT:
            event["step"] = step
        used = [m for m in (loss, eval_loss) if m is not None]
        epoch = logged.get(EPOCH_METRIC)
        if epoch is not None and epoch.value is not None and epoch.value >= 0:
            event["epoch"] = epoch.value
            used.append(epoch)
        if loss is not None:
            event["loss"] = loss.value
        if eval_loss is not None:
            event["eval_loss"] = eval_loss.value
        taken = {m.key for m in used} | {EPOCH_METRIC}  # (a negative epoch is left out)
        others = [m for key, m in sorted(logged.items()) if key not in taken][:MAX_EXTRA]
        if others:
            event["extra"] = {m.key: m.value for m in others}
            used.extend(others)
        if not used or used == [epoch]:
            continue  # nothing but an epoch: where the run is, no metric
        if (ts := seconds(max(m.timestamp for m in used))) is not None:
            event["ts"] = ts
        event["event_id"] = event_id(run_id, [(m.key, m.value, m.timestamp, m.step)
                                              for m in used])
        events.append(event)
    return events


def _first(logged: Mapping[str, MetricValue], names: Sequence[str]) -> MetricValue | None:
    for name in names:
        if name in logged:
            return logged[name]
    return None
