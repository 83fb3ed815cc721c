"""Fan-out of ``<prefix>updates`` to WebSocket subscribers: one reader task per gateway process,
one bounded queue per subscriber. A subscriber that falls behind is told to resync (a fresh
snapshot) instead of growing the gateway's memory, and never holds up the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from monitor.keys import Keys, model_field
from monitor.redistools import UNREACHABLE, backoff, heal, text
from monitor.rules import parse_pos

log = logging.getLogger("monitor.gateway")

RESYNC = "resync"  # queued instead of updates when a subscriber must start over
START_WAIT = 5.0  # at most this long a subscriber waits for the hub's first try to reach Redis



def update_body(data: bytes) -> str:
    """What follows the version in an update message, from a stored ``{"jobs": [...]}``."""
    return data.decode("utf-8", "replace")[1:]


def with_version(version: str, body: str) -> str:
    return '{"type":"update","version":"' + version + '",' + body


def update_message(version: str, data: bytes) -> str:
    """``{"type": "update", "version": V, "jobs": [...]}`` from a stored ``{"jobs": [...]}``."""
    return with_version(version, update_body(data))


def merge_updates(entries: list[tuple[str, bytes]]) -> tuple[str, str]:
    """One update for consecutive updates: each job and model row as the last of them left
    it, at the last one's version (that version, and the message's body after it). Under
    load the hub reads many commits at once and each client gets one message for them,
    instead of falling behind by one message per commit."""
    if len(entries) == 1:
        version, data = entries[0]
        return version, update_body(data)
    jobs: dict[str, Any] = {}
    models: dict[str, Any] = {}  # by model field: null and "null" differ
    for _, data in entries:
        update = orjson.loads(data)
        for job in update["jobs"]:
            jobs.pop(job["id"], None)  # re-insert: the order follows the latest change
            jobs[job["id"]] = job
        for row in update.get("models", ()):
            models[model_field(row["model_name"])] = row
    merged: dict[str, Any] = {"jobs": list(jobs.values())}  # "jobs" first: see update_body
    if models:
        merged["models"] = list(models.values())
    return entries[-1][0], update_body(orjson.dumps(merged))


class Shared(str):
    """An update's text as the hub hands it to every subscriber: one object, so what is
    derived from it once (``/ws?windows=1`` parses and indexes it, web.ws_windows) is shared
    by every client, and goes when the last queue lets go of it."""

    derived: Any = None


MAX_QUEUED_BYTES = 16 * 1024 * 1024  # per client: past this, a resync is cheaper
ROUTE_IN_HUB_MAX = 1024 * 1024  # a bigger update is routed in each client's own task


ROUTED = "routed"  # first of a queued item that is a windowed client's own message


class Reply:
    """The place in a windowed client's queue of the reply to its request: everything
    queued before the request went out before it, everything after follows it. Filled in
    once the request is answered (None: nothing to send, or the client started over)."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.ready = asyncio.Event()

    def fill(self, text: str | None) -> None:
        self.text = text
        self.ready.set()


@dataclass(eq=False)
class Subscriber:
    """One WebSocket client's queue of (version, message) or :data:`RESYNC`, bounded both in
    messages and in bytes (one update of a 100,000-job group can weigh megabytes).

    A windowed client (``/ws?windows=1``, web.ws_windows) sets ``route``: each update is then
    routed as the hub hands it out, and only what concerns the client, its own small message,
    is queued, as ``(ROUTED, text)``. While the client answers a request (``requesting``) or
    starts over (``restarting``), or updates wait that came then (``raw``), an update is
    queued as it came instead (so is a big one, whose routing would hold up the hub), and the
    client routes it in turn and calls :meth:`routed`: updates are routed in their order, and
    a request's :class:`Reply` sits between the updates before it and those after."""

    # (version, message), or with partitions (partition, version, body); or RESYNC; or
    # (ROUTED, message); or a Reply.
    queue: asyncio.Queue[Any]
    max_bytes: int = MAX_QUEUED_BYTES
    queued_bytes: int = 0
    overflows: list[float] = field(default_factory=list)
    sending_since: float | None = None  # when the send now in progress began
    route: Callable[[tuple[Any, ...]], str | None] | None = None
    requesting: int = 0
    restarting: bool = False
    raw: int = 0  # updates queued as they came, not yet routed
    generation: int = 0  # resyncs so far: what was taken before one is dropped

    def offer(self, item: tuple[Any, ...]) -> None:
        """Queue an update; past either bound, drop what is queued and ask for a resync."""
        raw = False
        if self.route is not None:
            if self.requesting or self.restarting or self.raw or \
                    len(item[-1]) > ROUTE_IN_HUB_MAX:
                raw = True
            else:
                text = self._route(item)
                if text is None:
                    return
                item = (ROUTED, text)
        size = len(item[-1])
        if self.queue.full() or (self.queued_bytes and self.queued_bytes + size > self.max_bytes):
            self.resync()
            self.overflows.append(time.monotonic())
            return
        self.queue.put_nowait(item)
        self.queued_bytes += size
        self.raw += raw

    def start_routing(self, route: Callable[[tuple[Any, ...]], str | None]) -> None:
        """Become a windowed client's queue, restarting (a summary is on its way): the
        updates already queued are routed in turn, like any that come meanwhile."""
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        for item in items:
            self.queue.put_nowait(item)
        self.raw = sum(not isinstance(item, str) for item in items)
        self.restarting = True
        self.route = route

    def put_reply(self, reply: Reply) -> bool:
        """Queue the place of a request's reply; False when the queue is full (the client
        is sent a fresh summary instead, and asks again)."""
        if self.queue.full():
            self.resync()
            self.overflows.append(time.monotonic())
            return False
        self.queue.put_nowait(reply)
        return True

    def route_queued(self, item: tuple[Any, ...]) -> str | None:
        """Route an update that was queued as it came (the client's turn for it); what to
        send, if anything."""
        generation = self.generation
        text = self._route(item)
        if generation == self.generation:  # a resync forgot every raw one already
            self.raw -= 1
        return text

    def _route(self, item: tuple[Any, ...]) -> str | None:
        assert self.route is not None
        try:
            return self.route(item)
        except Exception:  # a defect: this client starts over, the others go on
            log.exception("routing an update to a windowed client failed")
            self.resync()
            return None

    def resync(self) -> None:
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, Reply):
                item.fill(None)
        self.queued_bytes = 0
        self.raw = 0
        self.generation += 1
        self.restarting = self.route is not None  # a windowed client starts over
        self.queue.put_nowait(RESYNC)

    async def next(self) -> Any:
        item = await self.queue.get()
        if not isinstance(item, str | Reply):
            self.queued_bytes -= len(item[-1])
        return item


def entries_added(info: Any) -> int | None:
    """How many entries a stream ever had (XINFO STREAM, Redis 7); None from Redis 6.2,
    which does not count them."""
    added = info.get("entries-added")
    return None if added is None else int(added)


def _trimmed_unread(info: Any, last: str, consumed: int) -> bool:
    """Whether entries after ``last`` were trimmed before the hub read them."""
    added = entries_added(info)
    if added is not None:
        return added - consumed > int(info["length"])
    # Redis 6.2: trimming drops the oldest first, so once ``last`` itself is gone the entries
    # after it may be too; resync rather than risk a client missing one.
    first = info.get("first-entry")
    return last != "0-0" and first is not None and parse_pos(text(first[0])) > parse_pos(last)


def _raise_if_cancelled() -> None:
    """redis-py can swallow a cancellation that lands in a blocking read (the call returns
    normally, or raises a time-out error); honour it instead of reading on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Hub:
    """Reads ``<prefix>updates`` once and hands every entry to each subscriber."""

    def __init__(self, redis: Redis, keys: Keys, queue_size: int, block_ms: int = 1000,
                 index: int | None = None, subscribers: set[Subscriber] | None = None
                 ) -> None:
        self.redis = redis
        self.keys = keys
        self.queue_size = queue_size
        self.block_ms = block_ms
        # With partitions: one hub per partition (``index``), sharing the subscribers.
        self.index = index
        self.subscribers: set[Subscriber] = subscribers if subscribers is not None else set()
        self.last: str | None = None  # the last entry read; None until started
        self.consumed = 0  # entries read since the stream began (its entries-added, when even)
        self.connected = asyncio.Event()
        self.tried = asyncio.Event()  # the first attempt to learn the position has ended

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        """A queue that gets every update from now on, removed on leaving.

        Just after start-up it waits for the hub's first try to reach Redis, so a client
        does not get a snapshot and then a resync straight away. When that try failed it
        does not wait for Redis: the client's own snapshot fails at once and it is told
        why, rather than being held on an open socket that looks live. (Whoever subscribed
        before the hub started is resynced when it does.)"""
        if not self.tried.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tried.wait(), START_WAIT)
        subscriber = Subscriber(asyncio.Queue(self.queue_size))
        self.subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self.subscribers.discard(subscriber)

    def _broadcast(self, version: str, body: str) -> None:
        item: tuple[Any, ...] = ((version, Shared(with_version(version, body)))
                                 if self.index is None else (self.index, version, Shared(body)))
        for subscriber in list(self.subscribers):
            subscriber.offer(item)

    async def _position(self) -> tuple[str, int]:
        """Where the stream ends now, and how many entries it ever had."""
        try:
            info: Any = await self.redis.xinfo_stream(self.keys.updates)
        except ResponseError:  # no stream yet
            return "0-0", 0
        return text(info["last-generated-id"]), entries_added(info) or 0

    def _resync_all(self) -> None:
        for subscriber in list(self.subscribers):
            subscriber.resync()

    async def run(self) -> None:
        """Read updates until cancelled; survives Redis going away and coming back."""
        delay = 0.1
        while True:
            _raise_if_cancelled()
            try:
                if self.last is None:
                    try:
                        self.last, self.consumed = await self._position()
                    finally:
                        self.tried.set()
                    self._resync_all()  # anyone who could not wait for us (Redis was away)
                self.connected.set()
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xinfo_stream(self.keys.updates)
                    pipe.xread({self.keys.updates: self.last}, count=500, block=self.block_ms)
                    info, reply = await pipe.execute(raise_on_error=False)
                if isinstance(reply, Exception):
                    raise reply
                delay = 0.1
                if not isinstance(info, Exception) and _trimmed_unread(info, self.last,
                                                                       self.consumed):
                    # More entries are unread than the stream still holds: the hub fell
                    # so far behind that some were trimmed unread. Everyone starts over.
                    log.warning("updates after %s were trimmed before they were read; "
                                "resyncing every client", self.last)
                    self.last = text(info["last-generated-id"])
                    self.consumed = entries_added(info) or 0
                    self._resync_all()
                    continue
                batch = []
                for _, entries in reply or []:
                    self.consumed += len(entries)
                    for entry_id, fields in entries:
                        version = text(entry_id)
                        self.last = version
                        data = fields.get(b"data")
                        if data is None:
                            log.warning("update %s has no data field; skipped", version)
                            continue
                        batch.append((version, data))
                if batch:
                    self._broadcast(*merge_updates(batch))
            except UNREACHABLE as e:
                _raise_if_cancelled()
                if self.connected.is_set():
                    log.warning("Redis unreachable (%s); WebSocket updates wait", e)
                self.connected.clear()
                await asyncio.sleep(delay)
                await heal(self.redis)
                delay = backoff(delay)
            except Exception:
                log.exception("reading updates failed; retrying in %.1fs", delay)
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = backoff(delay)
