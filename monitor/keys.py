"""Every Redis key and stream name, built from the prefix, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

GROUP = "workers"  # the consumer group every worker reads <prefix>events with


def is_job_id(text: str) -> bool:
    """Does ``text`` hold only the characters a job id may (monitor/limits.py's
    ``JOB_ID_PATTERN``, ``[A-Za-z0-9._:-]``; its length is checked apart)? A job id is part
    of its keys. Compiled, an indexed loop over its bytes: about 45 ns for a 10-character
    id and 80 ns for a UUID, where msgspec's ``pattern`` took 290 ns of every event through
    Python's ``re`` (iterating the str itself took 90 and 370 ns)."""
    if not text.isascii():  # a flag of the str: free
        return False
    data = text.encode()
    for i in range(len(data)):
        b = data[i]
        if not (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122  # 0-9 A-Z a-z
                or b == 45 or b == 46 or b == 58 or b == 95):  # - . : _
            return False
    return True


class Everyone:
    """The type of :data:`EVERYONE`: no model filter (``None`` is the group without a model)."""


EVERYONE = Everyone()


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis names for one deployment, all under ``prefix`` (default ``monitor:``)."""

    prefix: str = "monitor:"

    # Streams.
    @property
    def events(self) -> str:
        """What trainers write: one field ``data`` with a JSON event."""
        return f"{self.prefix}events"

    @property
    def updates(self) -> str:
        """Changed job views, one entry per worker commit; entry ids are the versions."""
        return f"{self.prefix}updates"

    @property
    def dead(self) -> str:
        """Refused entries with fields ``id``, ``data`` and ``reason``."""
        return f"{self.prefix}dead"

    # Committed state (written by the worker only, in one transaction per batch).
    @property
    def jobs(self) -> str:
        """Hash: job id -> public job state (JSON, without config), a newline, and the
        worker's fold state for the job (JSON): monitor/records.py."""
        return f"{self.prefix}jobs"

    @property
    def configs(self) -> str:
        """Hash: job id -> the ``config`` object of its ``job_started`` (JSON)."""
        return f"{self.prefix}configs"

    @property
    def models(self) -> str:
        """Hash: model field (see :func:`model_field`) -> model summary (JSON)."""
        return f"{self.prefix}models"

    def order(self, archived: bool, model: str | None | Everyone = EVERYONE) -> str:
        """Sorted set: job id -> ``-created_at`` of the jobs that are archived (or not), of
        one model group or of every model: Redis's order (score, then id) is the list's,
        newest first (docs/state.md)."""
        kind = "archived" if archived else "live"
        if isinstance(model, Everyone):
            return f"{self.prefix}order:{kind}"
        return f"{self.prefix}order:{kind}:{model_field(model)}"

    # Left by versions before 2026-12-07; worker.upgrade removes them.
    @property
    def alive(self) -> str:
        """Sorted set: running job id -> the second of its last arrival (ms), now said in
        ``heard``."""
        return f"{self.prefix}alive"

    @property
    def folds(self) -> str:
        """Hash: job id -> its fold state (JSON), now in its value in ``jobs``."""
        return f"{self.prefix}folds"

    def group(self, field: str) -> str:
        """Set of the job ids of the model whose :func:`model_field` is ``field``, now those
        of its two ``order`` sets."""
        return f"{self.prefix}group:{field}"

    @property
    def order_built(self) -> str:
        """Set once the ``order`` sets hold every job (state older than them is indexed when
        a worker first takes the lease)."""
        return f"{self.prefix}order:built"

    @property
    def heard(self) -> str:
        """Stream, one entry per commit in which the arrival second of a running job's last
        event or heartbeat changed: field ``jobs``, JSON ``{job id: that second in ms}`` (0:
        the job moved to another partition); the advisor follows it to find jobs gone
        silent."""
        return f"{self.prefix}heard"

    @property
    def stops(self) -> str:
        """Hash: running job id -> its stop request (JSON ``{at, by, reason}``), which the
        SDK polls for all runs of a process in one round trip."""
        return f"{self.prefix}stops"

    def metrics(self, job_id: str) -> str:
        """List of a job's metric points (JSON), in arrival order."""
        return f"{self.prefix}metrics:{job_id}"

    def seen(self, job_id: str) -> str:
        """Set of a job's applied event ids that its fold state does not keep (ids not of the
        SDK's ``<uid>:<n>`` form, and SDK ids past a long gap)."""
        return f"{self.prefix}seen:{job_id}"

    @property
    def marks(self) -> str:
        """Hash, with partitions: source -> the last of its forwarded entries applied here."""
        return f"{self.prefix}from"

    @property
    def moved(self) -> str:
        """Hash, with partitions: job id -> the partition it moved to from here."""
        return f"{self.prefix}moved"

    @property
    def applied(self) -> str:
        """The id of the last events entry whose effects are committed."""
        return f"{self.prefix}worker:applied"

    @property
    def lease(self) -> str:
        """Which worker may apply events (a token with a time to live)."""
        return f"{self.prefix}worker:lease"

    @property
    def advisor(self) -> str:
        """The running advisor's settings (JSON), with a time to live it renews: absent when
        no advisor runs."""
        return f"{self.prefix}advisor"

    @property
    def stats(self) -> str:
        """Hash of counters: ``applied``, ``duplicates``, ``dead``."""
        return f"{self.prefix}stats"

    @property
    def ops(self) -> str:
        """Hash of counters for operators: the histograms' buckets and sums
        (``monitor.histograms``) and ``lease_takeovers``."""
        return f"{self.prefix}ops"

    # What the MLflow tracking API needs beyond the events (docs/mlflow.md), written by the
    # gateways; with partitions these sit under the bare prefix, outside every partition.
    @property
    def mlflow_experiments(self) -> str:
        """Hash: MLflow experiment id -> the experiment (JSON)."""
        return f"{self.prefix}mlflow:experiments"

    @property
    def mlflow_experiment_names(self) -> str:
        """Hash: MLflow experiment name -> its id."""
        return f"{self.prefix}mlflow:experiment-names"

    @property
    def mlflow_experiment_ids(self) -> str:
        """Counter: the last MLflow experiment id handed out."""
        return f"{self.prefix}mlflow:experiment-ids"

    def mlflow_experiment_runs(self, experiment_id: str) -> str:
        """Sorted set: the run ids of an MLflow experiment, by start time (ms)."""
        return f"{self.prefix}mlflow:experiment-runs:{experiment_id}"

    def mlflow_run(self, run_id: str) -> str:
        """Hash: an MLflow run's info (experiment, name, status, times, the model decided)."""
        return f"{self.prefix}mlflow:run:{run_id}"

    def mlflow_params(self, run_id: str) -> str:
        """Hash: an MLflow run's params."""
        return f"{self.prefix}mlflow:params:{run_id}"

    def mlflow_tags(self, run_id: str) -> str:
        """Hash: an MLflow run's tags."""
        return f"{self.prefix}mlflow:tags:{run_id}"

    def mlflow_latest(self, run_id: str) -> str:
        """Hash: metric key -> the run's latest value of it (JSON), as ``runs/get`` shows."""
        return f"{self.prefix}mlflow:latest:{run_id}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix (for tests and reset)."""
        return f"{self.prefix}*"


FIELDS_KEPT = 4096  # model fields remembered by model_field (a deployment has tens to thousands)
_fields: dict[str | None, str] = {}


def model_field(model_name: str | None) -> str:
    """The hash field or key part for a model: its JSON, so ``null`` and ``"null"`` differ.
    (Remembered: the worker asks for a few per event, the gateway for one per view.)"""
    field = _fields.get(model_name)
    if field is None:
        if len(_fields) >= FIELDS_KEPT:
            _fields.clear()
        field = _fields[model_name] = orjson.dumps(model_name).decode()
    return field
