"""The contract's limits and defaults, in one place: the event models, the settings and the SDK
all take them from here (docs/events.md, docs/settings.md)."""

from __future__ import annotations

from typing import Literal, get_args

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "monitor:"
MAX_PARTITIONS = 256

JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
MAX_JOB_ID = 128
MAX_EVENT_ID = 128
MAX_MODEL_NAME = 512  # longer is refused: it is the grouping key
MAX_NAME = 512  # display names are cut to this
MAX_TEXT = 16 * 1024  # error texts are cut to this (a traceback fits)
MAX_PATH = 1024
MAX_REASON = 1024  # a stop request's reason
MAX_CONFIG_BYTES = 64 * 1024
MAX_EXTRA = 100  # other metrics one metrics event may carry
MAX_METRIC_NAME = 250  # as MLflow's metric keys
MAX_ENTRY_BYTES = 256 * 1024  # a whole stream entry; far above any valid event
MAX_INT = 2**53 - 1  # the largest integer every JSON reader (a browser too) keeps exact

RUNNING = "running"
Status = Literal["completed", "failed", "cancelled", "stopped"]  # how a job_finished says it ended
STATUSES: tuple[str, ...] = get_args(Status)
