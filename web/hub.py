"""Fan-out of ``<prefix>updates`` to WebSocket subscribers: one reader task per gateway process,
one bounded queue per subscriber. A subscriber that falls behind is told to resync (a fresh
snapshot) instead of growing the gateway's memory, and never holds up the others."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from monitor.keys import Keys
from web.state import is_kept, kept_check

log = logging.getLogger("monitor.gateway")

RESYNC = "resync"  # queued instead of updates when a subscriber must start over
RETRY_MAX = 5.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def update_message(version: str, data: bytes) -> str:
    """``{"type": "update", "version": V, "jobs": [...]}`` from a stored ``{"jobs": [...]}``."""
    return '{"type":"update","version":"' + version + '",' + data.decode("utf-8", "replace")[1:]


MAX_QUEUED_BYTES = 16 * 1024 * 1024  # per client: past this, a resync is cheaper


@dataclass(eq=False)
class Subscriber:
    """One WebSocket client's queue of (version, message) or :data:`RESYNC`, bounded both in
    messages and in bytes (one update of a 100,000-job group can weigh megabytes)."""

    queue: asyncio.Queue[tuple[str, str] | str]
    max_bytes: int = MAX_QUEUED_BYTES
    queued_bytes: int = 0
    overflows: list[float] = field(default_factory=list)

    def offer(self, item: tuple[str, str]) -> None:
        """Queue an update; past either bound, drop what is queued and ask for a resync."""
        size = len(item[1])
        if self.queue.full() or (self.queued_bytes and self.queued_bytes + size > self.max_bytes):
            self.resync()
            self.overflows.append(time.monotonic())
            return
        self.queue.put_nowait(item)
        self.queued_bytes += size

    def resync(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0
        self.queue.put_nowait(RESYNC)

    async def next(self) -> tuple[str, str] | str:
        item = await self.queue.get()
        if not isinstance(item, str):
            self.queued_bytes -= len(item[1])
        return item


def _raise_if_cancelled() -> None:
    """redis-py can swallow a cancellation that lands in a blocking read (the call returns
    normally, or raises a time-out error); honour it instead of reading on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Hub:
    """Reads ``<prefix>updates`` once and hands every entry to each subscriber."""

    def __init__(self, redis: Redis, keys: Keys, queue_size: int, block_ms: int = 1000) -> None:
        self.redis = redis
        self.keys = keys
        self.queue_size = queue_size
        self.block_ms = block_ms
        self.subscribers: set[Subscriber] = set()
        self.last: str | None = None  # the last entry read; None until started
        self.connected = asyncio.Event()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        """A queue that gets every update from now on, removed on leaving."""
        subscriber = Subscriber(asyncio.Queue(self.queue_size))
        self.subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self.subscribers.discard(subscriber)

    def _broadcast(self, version: str, message: str) -> None:
        for subscriber in list(self.subscribers):
            subscriber.offer((version, message))

    async def _start_position(self) -> str:
        last: Any = await self.redis.xrevrange(self.keys.updates, count=1)
        return _text(last[0][0]) if last else "0-0"

    async def _trimmed_past(self, position: str) -> bool:
        """Were entries after ``position`` trimmed before we could read them?"""
        async with self.redis.pipeline(transaction=True) as pipe:
            kept_check(pipe, self.keys.updates, position)
            replies = await pipe.execute(raise_on_error=False)
        return not is_kept(position, *replies)

    async def run(self) -> None:
        """Read updates until cancelled; survives Redis going away and coming back."""
        delay = 0.1
        while True:
            _raise_if_cancelled()
            try:
                if self.last is None:
                    self.last = await self._start_position()
                    for subscriber in list(self.subscribers):  # joined before we knew where
                        subscriber.resync()
                elif not self.connected.is_set() and await self._trimmed_past(self.last):
                    log.warning("updates after %s were trimmed while away; resyncing all",
                                self.last)
                    self.last = await self._start_position()
                    for subscriber in list(self.subscribers):
                        subscriber.resync()
                self.connected.set()
                reply: Any = await self.redis.xread({self.keys.updates: self.last},
                                                    count=500, block=self.block_ms)
                delay = 0.1
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        version = _text(entry_id)
                        self.last = version
                        data = fields.get(b"data")
                        if data is None:
                            log.warning("update %s has no data field; skipped", version)
                            continue
                        self._broadcast(version, update_message(version, data))
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                _raise_if_cancelled()
                if self.connected.is_set():
                    log.warning("Redis unreachable (%s); WebSocket updates wait", e)
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            except Exception:
                log.exception("reading updates failed; retrying in %.1fs", delay)
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
