"""The SDK's control channel (docs/stopping.md): one daemon thread per process that tells every
open run of a stop request and marks them alive.

Every :data:`POLL_INTERVAL` seconds it asks each Redis its runs write to, in one round trip,
for the stop requests of all of them (``HMGET <prefix>stops <job ids>``), and every
:data:`HEARTBEAT_INTERVAL` seconds the same round trip carries a ``job_heartbeat`` per run. A
run that is asked to stop hears it once: :attr:`Run.should_stop` turns true and its ``on_stop``
is called from this thread. While Redis is away it tries again at the next poll; training is
never held up (``Run.log`` does not know this thread exists).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from monitor.keys import Keys

logger = logging.getLogger("monitor.sdk")

POLL_INTERVAL = 0.5  # seconds between asks for stop requests: heard within 2 s, p95 < 1 s
HEARTBEAT_INTERVAL = 10.0  # seconds between heartbeats of a run


class Controlled(Protocol):
    """What the channel needs of a run (:class:`monitor.sdk.Run`)."""

    job_id: str

    @property
    def control_target(self) -> tuple[str, str, bool] | None: ...  # (URL, prefix, cluster)

    @property
    def running(self) -> bool: ...  # not finished: it beats

    @property
    def should_stop(self) -> bool: ...  # told to stop already: not asked about again

    def hear_stop(self, request: dict[str, Any]) -> None: ...


class Channel:
    """The process's control thread and the runs it serves."""

    def __init__(self, poll: float = POLL_INTERVAL, heartbeat: float = HEARTBEAT_INTERVAL,
                 connect: Callable[[str, bool], redis.Redis] | None = None) -> None:
        self.poll = poll
        self.heartbeat = heartbeat
        self._connect = connect or _client
        self._runs: dict[Controlled, None] = {}  # insertion order: a stable HMGET order
        self._clients: dict[tuple[str, bool], redis.Redis] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_beat = -float("inf")
        self._reachable = True

    def add(self, run: Controlled) -> None:
        with self._lock:
            self._runs[run] = None
            if self._thread is None:
                # A run's job_started is its first sign of life: the first beat is due later.
                self._last_beat = time.monotonic()
                self._thread = threading.Thread(target=self._loop, name="monitor-sdk-control",
                                                daemon=True)
                self._thread.start()

    def remove(self, run: Controlled) -> None:
        with self._lock:
            self._runs.pop(run, None)

    def _loop(self) -> None:
        while True:
            time.sleep(self.poll)
            with self._lock:
                runs = [run for run in self._runs if run.running]
                if not self._runs:
                    self._thread = None  # a run added from now on starts a new thread
                    self._close_clients()
                    return
            if runs:
                self.ask(runs)

    def ask(self, runs: list[Controlled]) -> None:
        """One round trip per Redis: the runs' stop requests, and their heartbeats when due."""
        beat = time.monotonic() - self._last_beat >= self.heartbeat
        if not beat and all(run.should_stop for run in runs):
            return
        by_target: dict[tuple[str, str, bool], list[Controlled]] = {}
        for run in runs:
            if (target := run.control_target) is not None:  # None: not sent anything yet
                by_target.setdefault(target, []).append(run)
        answered = True
        for (url, prefix, cluster), group in by_target.items():
            answered &= self._ask_one(url, cluster, Keys(prefix), group, beat)
        if beat and answered:
            self._last_beat = time.monotonic()

    def _ask_one(self, url: str, cluster: bool, keys: Keys, runs: list[Controlled],
                 beat: bool) -> bool:
        asked = [run for run in runs if not run.should_stop]
        try:
            client = self._clients.get((url, cluster))
            if client is None:
                client = self._clients[url, cluster] = self._connect(url, cluster)
            with client.pipeline(transaction=False) as pipe:
                if asked:
                    pipe.hmget(keys.stops, [run.job_id for run in asked])
                if beat:
                    for run in runs:
                        pipe.xadd(keys.events, {"data": orjson.dumps(
                            {"type": "job_heartbeat", "job_id": run.job_id})})
                replies = pipe.execute()
        except (redis.RedisError, RedisClusterException) as e:
            if self._reachable:
                self._reachable = False
                logger.warning("monitor: cannot ask Redis for stop requests (%s); retrying", e)
            return False
        self._reachable = True
        for run, raw in zip(asked, replies[0] if asked else []):
            if raw is not None:
                run.hear_stop(orjson.loads(raw))
        return True

    def _close_clients(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _client(url: str, cluster: bool) -> redis.Redis:
    options: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0,
                               "retry": Retry(NoBackoff(), 0)}
    if cluster:
        return RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(url, **options)


channel = Channel()  # the process's one channel; the SDK adds every run it starts
