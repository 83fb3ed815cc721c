"""Trainer SDK (docs/sdk.md): ``start_run`` / ``Run``; buffered, batched, never blocks training.

``Run.log`` only builds a dict and appends it to an in-memory deque; a daemon thread per run
sends the deque to ``<prefix>events`` in pipelined batches and retries while Redis is away.
One more thread per process, :mod:`monitor.control`, tells every run of a stop request
(``Run.should_stop``) and marks them alive.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import numbers
import os
import re
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from monitor.control import channel
from monitor.keys import Keys
from monitor.limits import (
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    JOB_ID_PATTERN,
    MAX_CONFIG_BYTES,
    MAX_EXTRA,
    MAX_JOB_ID,
    MAX_METRIC_NAME,
    MAX_MODEL_NAME,
    MAX_NAME,
    MAX_TEXT,
    STATUSES,
    Status,
)
from monitor.partitions import UNNAMED, Partitioning, Routes
from monitor.routing import route_sync

__all__ = ["Run", "RunStats", "Status", "start_run"]

logger = logging.getLogger("monitor.sdk")


BATCH_SIZE = 500
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
DROP_WARNING_INTERVAL = 10.0
# While no worker has said how many partitions there are, the sender looks again this often
# (seconds); a deployment of one partition on a plain Redis never says.
UNDECLARED_RECHECK = 5.0
_JOB_ID = re.compile(JOB_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class RunStats:
    """Event counts of one run: ``pending`` were enqueued but are not (yet) on the stream."""

    enqueued: int
    sent: int
    dropped: int
    pending: int


def start_run(
    model_name: str | None = None,
    *,
    job_id: str | None = None,
    total_epochs: int | None = None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    gpu_count: int | None = None,
    total_steps: int | None = None,
    autostop: bool | None = None,
    on_stop: Callable[[Run], object] | None = None,
    redis_url: str | None = None,
    prefix: str | None = None,
    cluster: bool | None = None,
    buffer_size: int = 100_000,
    flush_timeout: float = 10.0,
) -> Run:
    """Start a run and enqueue its ``job_started``; use it as a context manager.

    ``redis_url`` and ``prefix`` default to ``MONITOR_REDIS_URL`` / ``MONITOR_PREFIX``, read now.
    ``gpu_count`` defaults to what PyTorch says, if the trainer imported it (GPU-hours need it).
    ``autostop=False``: the monitor's auto-stop never asks this run to stop. ``on_stop(run)``
    is called once, from the SDK's control thread, when someone asks the run to stop
    (``run.should_stop`` turns true then too; docs/stopping.md).
    """
    url = redis_url or os.environ.get("MONITOR_REDIS_URL") or DEFAULT_REDIS_URL
    if prefix is None:
        prefix = os.environ.get("MONITOR_PREFIX", DEFAULT_PREFIX)
    if cluster is None:
        cluster = os.environ.get("MONITOR_REDIS_CLUSTER", "").strip().lower() in TRUE
    uid = secrets.token_hex(6)
    if job_id is None:
        job_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uid[:6]}"
    elif (not isinstance(job_id, str) or len(job_id) > MAX_JOB_ID
          or not _JOB_ID.fullmatch(job_id)):
        raise ValueError(f"job_id must be 1-{MAX_JOB_ID} characters of A-Za-z0-9._:- , "
                         f"got {job_id!r}")
    started: dict[str, Any] = {"type": "job_started"}
    if model_name is not None and not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str or None, got {type(model_name).__name__}")
    if model_name is not None and len(model_name) > MAX_MODEL_NAME:
        raise ValueError(f"model_name is {len(model_name)} characters, at most "
                         f"{MAX_MODEL_NAME}")
    if total_epochs is not None:
        started["total_epochs"] = _count("total_epochs", total_epochs, minimum=1)
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        started["name"] = name[:MAX_NAME]  # cut, as the event contract cuts it
    if config is not None:
        started["config"] = _config_snapshot(config)
    if gpu_count is None:
        gpu_count = detected_gpu_count()
    if gpu_count is not None:
        started["gpu_count"] = _count("gpu_count", gpu_count, minimum=0)
    if total_steps is not None:
        started["total_steps"] = _count("total_steps", total_steps, minimum=1)
    if autostop is not None:
        if not isinstance(autostop, bool):
            raise TypeError(f"autostop must be a bool or None, got {type(autostop).__name__}")
        started["autostop"] = autostop
    if on_stop is not None and not callable(on_stop):
        raise TypeError(f"on_stop must be callable, got {type(on_stop).__name__}")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
        raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
    if not flush_timeout >= 0:
        raise ValueError(f"flush_timeout must be >= 0 seconds, got {flush_timeout!r}")
    run = Run(
        functools.partial(_client, url, cluster), prefix, cluster=cluster, job_id=job_id, model_name=model_name, uid=uid,
        url=_redacted(url), buffer_size=buffer_size, flush_timeout=float(flush_timeout),
        control_url=url, on_stop=on_stop,
    )
    run._enqueue(started, droppable=False)
    channel.add(run)
    return run


class Run:
    """One training run (made by :func:`start_run`): enqueues events; a daemon thread sends them."""

    def __init__(
        self, connect: Callable[[], redis.Redis], prefix: str, *, cluster: bool = False,
        job_id: str, model_name: str | None,
        uid: str, url: str, buffer_size: int, flush_timeout: float,
        control_url: str, on_stop: Callable[[Run], object] | None = None,
    ) -> None:
        self.job_id = job_id
        self.model_name = model_name
        self.flush_timeout = flush_timeout
        self._control_url = control_url
        self._on_stop = on_stop
        self._stop_request: dict[str, Any] | None = None
        self._connect = connect  # called by the sender thread (a cluster client connects)
        self._client: redis.Redis | None = None
        self._cluster = cluster
        self._prefix = prefix
        # The stream the run's events go to, chosen on the first send, and the keys of its
        # partition (docs/scale-out.md), learnt then: for good when the deployment says how
        # many partitions it has, else provisionally those of one partition.
        self._stream: str | None = None
        self._keys: Keys | None = None
        self._declared = False
        self._looked_at = 0.0  # monotonic: when the sender last asked for the partition count
        self._uid = uid
        self._url = url
        self._buffer_size = buffer_size
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # orders seq numbers with deque order; guards counters
        self._enqueued = 0
        self._dropped = 0
        self._sent = 0  # written by the sender thread only, under _sent_cond
        self._sent_cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._finished = False
        self._closed = False
        self._warned_nonfinite = False
        self._drops_unreported = 0
        self._last_drop_warning = -math.inf
        self._thread = threading.Thread(
            target=self._send_loop, name=f"monitor-sdk-{job_id}", daemon=True
        )
        self._thread.start()
        _open_runs.add(self)

    # The training side: cheap, never touches the network.

    def log(
        self, *, epoch: float | None = None, step: int | None = None,
        loss: float | None = None, eval_loss: float | None = None,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        """Enqueue a ``metrics`` event; needs ``loss``, ``eval_loss`` or ``extra`` (other
        metrics by name, such as ``{"learning_rate": 2e-5}``: kept in the metric history, they
        do not rank). Never blocks or waits."""
        if loss is None and eval_loss is None and not extra:
            raise ValueError("log() needs loss, eval_loss or extra")
        event: dict[str, Any] = {"type": "metrics"}
        if epoch is not None:
            event["epoch"] = _epoch(epoch)
        if step is not None:
            event["step"] = _count("step", step, minimum=0)
        finite = False
        if loss is not None and (value := self._loss("loss", loss)) is not None:
            event["loss"] = value
            finite = True
        if eval_loss is not None and (value := self._loss("eval_loss", eval_loss)) is not None:
            event["eval_loss"] = value
            finite = True
        if extra:
            values = self._extra(extra)
            if values:
                event["extra"] = values
                finite = True
        if finite:
            self._enqueue(event, droppable=True)
        else:
            with self._lock:
                self._dropped += 1

    def checkpoint(
        self, path: str | os.PathLike[str], *, epoch: float | None = None,
        step: int | None = None, eval_loss: float | None = None,
    ) -> None:
        """Enqueue a ``checkpoint`` event for a saved checkpoint at ``path``."""
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"checkpoint path must be a str, got {type(path).__name__}")
        if not 1 <= len(path) <= 1024:
            raise ValueError(f"checkpoint path must be 1-1024 characters, got {len(path)}")
        event: dict[str, Any] = {"type": "checkpoint", "path": path}
        if epoch is not None:
            event["epoch"] = _epoch(epoch)
        if step is not None:
            event["step"] = _count("step", step, minimum=0)
        if eval_loss is not None and (value := self._loss("eval_loss", eval_loss)) is not None:
            event["eval_loss"] = value
        self._enqueue(event, droppable=True)

    def finish(
        self, status: Status = "completed", *, error: str | None = None,
        final_loss: float | None = None, final_eval_loss: float | None = None,
    ) -> None:
        """Enqueue ``job_finished``; only the first call sends, later ones do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error must be a str or None, got {type(error).__name__}")
        event: dict[str, Any] = {"type": "job_finished", "status": status}
        if error is not None:
            event["error"] = error[:MAX_TEXT]
        if final_loss is not None and (value := self._loss("final_loss", final_loss)) is not None:
            event["final_loss"] = value
        if final_eval_loss is not None and (
            (value := self._loss("final_eval_loss", final_eval_loss)) is not None
        ):
            event["final_eval_loss"] = value
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._enqueue(event, droppable=False)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued so far is on the stream; ``None``: ``flush_timeout``."""
        target = self._enqueued
        with self._sent_cond:
            return self._sent_cond.wait_for(
                lambda: self._sent >= target,
                self.flush_timeout if timeout is None else timeout,
            )

    def close(self) -> None:
        """Finish (completed) if not finished, flush for up to ``flush_timeout``, stop the sender.

        Never raises and never waits much past ``flush_timeout``; warns if events were lost.
        """
        if self._closed:
            return
        self.finish()
        self.flush()
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=0.5)  # it may be stuck in a connect; it is a daemon
        _open_runs.discard(self)
        channel.remove(self)
        if self._drops_unreported:
            logger.warning(
                "monitor: run %s dropped %d more event(s) because its buffer was full",
                self.job_id, self._drops_unreported,
            )
        lost = self._enqueued - self._sent
        if lost:
            logger.warning(
                "monitor: %d event(s) of run %s could not be sent to Redis at %s within %.1fs "
                "and are lost", lost, self.job_id, self._url, self.flush_timeout,
            )

    @property
    def should_stop(self) -> bool:
        """True once someone asked this run to stop (the page, the API or the monitor's
        auto-stop); within about a second of the request. Leaving the ``with`` block then
        ends the run as ``stopped``."""
        return self._stop_request is not None

    @property
    def stop_request(self) -> dict[str, Any] | None:
        """The request heard: ``{"at", "by", "reason"}`` (``by``: ``user`` or ``forecast``)."""
        return self._stop_request

    @property
    def running(self) -> bool:
        """Not finished: the control channel marks it alive."""
        return not self._finished

    def hear_stop(self, request: dict[str, Any]) -> None:
        """Called by the control channel when a stop request is found; acts once."""
        with self._lock:
            if self._stop_request is not None:
                return
            self._stop_request = request
        logger.info("monitor: run %s was asked to stop (by %s%s)", self.job_id,
                    request.get("by"), f": {request['reason']}" if request.get("reason") else "")
        if self._on_stop is not None:
            try:
                self._on_stop(self)
            except Exception:  # the trainer's callback must not end the channel
                logger.exception("monitor: on_stop of run %s raised", self.job_id)

    @property
    def stats(self) -> RunStats:
        """A snapshot of the event counts."""
        with self._lock:
            enqueued, dropped, sent = self._enqueued, self._dropped, self._sent
        return RunStats(enqueued=enqueued, sent=sent, dropped=dropped, pending=enqueued - sent)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        status, error = _outcome(exc)
        if exc is None and self.should_stop:
            status = "stopped"
        self.finish(status, error=error)
        self.close()

    def __repr__(self) -> str:
        return f"Run(job_id={self.job_id!r}, model_name={self.model_name!r})"

    # Internals.

    def _extra(self, extra: Mapping[str, float]) -> dict[str, float]:
        """The finite values of ``extra``, checked as the worker will (docs/events.md)."""
        if len(extra) > MAX_EXTRA:
            raise ValueError(f"extra has {len(extra)} metrics, at most {MAX_EXTRA}")
        out = {}
        for name, value in extra.items():
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_METRIC_NAME:
                raise ValueError(f"extra metric names are 1 to {MAX_METRIC_NAME} characters, "
                                 f"not {name!r}")
            if (number := self._loss(f"extra[{name!r}]", value)) is not None:
                out[name] = number
        return out

    def _loss(self, field: str, value: object) -> float | None:
        """``value`` as a float; None (and a warning, once per run) when it is NaN or infinite."""
        number = value if type(value) is float else _real(field, value)
        if math.isfinite(number):
            return number
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            logger.warning(
                "monitor: run %s logged %s=%r; non-finite values are not sent "
                "(this warning is shown once per run)", self.job_id, field, number,
            )
        return None

    def _enqueue(self, event: dict[str, Any], *, droppable: bool) -> None:
        event["job_id"] = self.job_id
        event["model_name"] = self.model_name
        event["ts"] = time.time()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"run {self.job_id} is closed; nothing more can be logged")
            if droppable and self._enqueued - self._sent >= self._buffer_size:
                self._dropped += 1
                self._drops_unreported += 1
                now = time.monotonic()
                if now - self._last_drop_warning < DROP_WARNING_INTERVAL:
                    return
                self._last_drop_warning = now
                count, self._drops_unreported = self._drops_unreported, 0
            else:
                self._enqueued += 1
                event["event_id"] = f"{self._uid}:{self._enqueued}"
                self._queue.append(event)
                count = 0
        if count:
            logger.warning(
                "monitor: buffer of run %s is full (%d events waiting for Redis at %s); "
                "dropped %d event(s), %d in all so far",
                self.job_id, self._buffer_size, self._url, count, self._dropped,
            )
        elif not self._wake.is_set():
            self._wake.set()

    def _send_loop(self) -> None:
        """The sender thread: drain the deque in batches, retry a failed batch with backoff."""
        batch: list[bytes] = []
        backoff = BACKOFF_MIN
        reachable = True
        try:
            while True:
                if not batch:
                    self._wake.clear()  # before looking, so an append after this wakes us
                    while self._queue and len(batch) < BATCH_SIZE:
                        batch.append(orjson.dumps(self._queue.popleft()))
                if not batch:
                    if self._stop.is_set():
                        return
                    if self._stream is not None and not self._declared:
                        if not self._wake.wait(UNDECLARED_RECHECK):
                            self._look_again()
                    else:
                        self._wake.wait()
                    continue
                try:
                    self._send(batch)
                except (redis.RedisError, RedisClusterException) as e:
                    if reachable:
                        reachable = False
                        logger.warning(
                            "monitor: cannot send to Redis at %s (%s); buffering the events of "
                            "run %s and retrying", self._url, e, self.job_id,
                        )
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                with self._sent_cond:
                    self._sent += len(batch)
                    self._sent_cond.notify_all()
                batch = []
                backoff = BACKOFF_MIN
                if not reachable:
                    reachable = True
                    logger.info("monitor: sending to Redis at %s again (run %s)",
                                self._url, self.job_id)
                if self._stop.is_set() and not self._queue:
                    return
        finally:
            if self._client is not None:
                self._client.close()

    def _send(self, batch: list[bytes]) -> None:
        # A failed batch is sent again whole; its event_ids make the repeats harmless.
        if self._client is None:
            self._client = self._connect()
        if self._stream is None or (
                not self._declared
                and time.monotonic() - self._looked_at >= UNDECLARED_RECHECK):
            self._learn_partition(self._client)
        assert self._stream is not None
        pipe = self._client.pipeline(transaction=False)
        for data in batch:
            pipe.xadd(self._stream, {"data": data})
        pipe.execute()

    def _learn_partition(self, client: redis.Redis) -> None:
        """The keys of this run's partition: with one partition, the prefix's; else its
        route's, claimed as every publisher does. The deployment says how many there are
        (``<prefix>partitions``, written by the first partitioned worker) and then they are
        learnt for good. Until it does, one partition is assumed for the stop requests, and
        the events go to the ingress stream: partition 0's own with one partition on a
        plain Redis, else the router's, which sends them on. The stream, once chosen, stays,
        so the run's events never overtake each other."""
        self._looked_at = time.monotonic()
        unsaid = Partitioning(self._prefix)
        declared = client.get(unsaid.declared)
        if declared is None:
            if self._stream is None:
                self._keys = Partitioning(self._prefix, 1, self._cluster).keys(0)
                self._stream = unsaid.ingress
            return
        part = Partitioning(self._prefix, int(declared), self._cluster)
        model = UNNAMED if self.model_name is None else self.model_name
        index = route_sync(client, Routes(part), [(self.job_id, True, model)])[0]
        self._keys = part.keys(index)
        self._declared = True
        if self._stream is None:
            self._stream = self._keys.events

    def _look_again(self) -> None:
        """Idle and still undeclared: ask again (Redis away: the next send will)."""
        if self._client is None:
            return
        with contextlib.suppress(redis.RedisError, RedisClusterException):
            self._learn_partition(self._client)

    @property
    def control_target(self) -> tuple[str, str, bool] | None:
        """(Redis URL, key prefix of the run's partition, cluster) the control channel asks;
        None until the sender has learnt the partition (the first send, or later when no
        worker had said how many partitions there are)."""
        keys = self._keys
        return None if keys is None else (self._control_url, keys.prefix, self._cluster)


TRUE = ("1", "true", "yes", "on")


def _client(url: str, cluster: bool) -> redis.Redis:
    """The sender's client: of the whole cluster when ``cluster`` (it connects at once, so
    the sender thread makes it, retrying while Redis is away)."""
    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0,
                               "retry": Retry(NoBackoff(), 0)}
    if cluster:
        return RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(url, **options)


def detected_gpu_count() -> int | None:
    """The GPUs this process trains on, when PyTorch is already imported (the SDK never
    imports it): ``torch.cuda.device_count()`` (0 without CUDA); else None (unknown)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except (AttributeError, RuntimeError):
        return None


def _outcome(exc: BaseException | None) -> tuple[Status, str | None]:
    """The status and error text a run ends with when ``exc`` (or nothing) ended it."""
    if exc is None:
        return "completed", None
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled", None
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "completed", None
    text = str(exc)
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return "failed", error[:MAX_TEXT]


def _real(field: str, value: object) -> float:
    """A real number as a float; TypeError for anything else, bool included."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{field} must be a number, got {type(value).__name__}")
    return float(value)


def _epoch(value: object) -> float | int:
    number = value if type(value) is int else _real("epoch", value)
    if not number >= 0 or not math.isfinite(number):
        raise ValueError(f"epoch must be a finite number >= 0, got {value!r}")
    return number


def _count(field: str, value: object, *, minimum: int) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{field} must be an int, got {type(value).__name__}")
        value = int(value)
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value}")
    return value


def _config_snapshot(config: object) -> dict[str, Any]:
    """A JSON copy of ``config`` (later changes to it are not sent), checked against the limit."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        data = orjson.dumps(config, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as e:
        raise ValueError(f"config is not JSON-serializable: {e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"config is {len(data)} bytes as JSON, at most {MAX_CONFIG_BYTES}")
    snapshot: dict[str, Any] = orjson.loads(data)
    return snapshot


def _redacted(url: str) -> str:
    """``url`` without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


_open_runs: set[Run] = set()


@atexit.register
def _close_open_runs() -> None:
    """At interpreter exit, finish and flush the runs nobody closed (failed if the program was)."""
    status, error = _outcome(getattr(sys, "last_value", None))
    for run in list(_open_runs):
        run.finish(status, error=error)
        run.close()
