"""``/ws`` (docs/websocket.md): a snapshot with its version, then every update, in order;
with ``?windows=1`` a summary and what the client asks for (:mod:`web.ws_windows`).

``?since=V`` resumes after V with nothing missed (or a fresh snapshot when V is no longer
kept). A client whose queue overflows is sent a fresh snapshot; one that keeps overflowing is
closed with 1013 and can resume. Pings (the server's) drop dead clients.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from monitor.histograms import SNAPSHOT
from monitor.redistools import UNREACHABLE
from monitor.rules import parse_pos
from web.gateway import Gateway, gateway_of
from web.hub import Subscriber, update_body, update_message, with_version
from web.partitioned import (
    PartitionedReader,
    PartitionedSnapshot,
    cursor,
    parse_cursor,
    positions,
)
from web.security import origin_ok, token_ok
from web.state import Snapshot, StateReader
from web.ws_windows import NotIndexed, WindowedClient

log = logging.getLogger("monitor.gateway")

# A client frame larger than this is closed with 1009 as its header arrives, instead of being
# buffered (the server's default would take 16 MiB per client); requests are far smaller.
MAX_CLIENT_MESSAGE = 64 * 1024
TOO_SLOW = 3  # overflows within SLOW_WINDOW seconds that close the connection with 1013
SLOW_WINDOW = 30.0
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
GONE = (WebSocketDisconnect, RuntimeError, OSError)  # what sending to a closed socket raises


class TooSlow(Exception):
    """The client did not take a message within the ping interval: its connection is full."""


async def send(websocket: WebSocket, subscriber: Subscriber, text: str) -> None:
    """Send one message, noting since when, for :func:`watchdog`."""
    subscriber.sending_since = time.monotonic()
    await websocket.send_text(text)
    subscriber.sending_since = None
    gateway_of(websocket).counters.sent += 1


async def watchdog(subscriber: Subscriber, limit: float) -> None:
    """Give up on a client whose send has not gone through in ``limit`` seconds: it stopped
    reading and its TCP buffer is full, so neither our messages nor a ping can reach it.
    (One check a second per client, instead of a timer around every send.)"""
    while True:
        await anyio.sleep(min(1.0, limit / 2))
        since = subscriber.sending_since
        if since is not None and time.monotonic() - since > limit:
            raise TooSlow


async def timed_snapshot(gw: Gateway) -> Snapshot:
    """The snapshot, its wait observed for /metrics."""
    started = time.monotonic()
    snapshot = await gw.reader.snapshot()
    SNAPSHOT.observe(gw.counters.snapshot, [time.monotonic() - started])
    return snapshot


async def send_snapshot(websocket: WebSocket, gw: Gateway, subscriber: Subscriber) -> str:
    snapshot = await timed_snapshot(gw)
    await send(websocket, subscriber, snapshot.message)
    return snapshot.version


async def start(websocket: WebSocket, gw: Gateway, reader: StateReader,
                subscriber: Subscriber, since: str | None) -> str:
    """Bring a new client up to date; the version it has reached. A client resuming from
    ``since`` is sent what it missed, a page at a time, when that is cheaper than a snapshot
    (the rest arrives through its queue, which it joined before the count)."""
    if since is not None and (count := await reader.missed(since)) is not None:
        reached, left = since, count
        while left > 0:
            page = await reader.updates_page(reached)
            if not page:  # trimmed meanwhile: the snapshot below is the way back
                break
            for version, data in page[:left]:
                await send(websocket, subscriber, update_message(version, data))
                reached, left = version, left - 1
        else:
            return reached
    return await send_snapshot(websocket, gw, subscriber)


async def too_slow(websocket: WebSocket, subscriber: Subscriber) -> bool:
    """After a resync: close a client that keeps overflowing (True)."""
    counters = gateway_of(websocket).counters
    counters.resyncs += 1
    recent = [t for t in subscriber.overflows if t > time.monotonic() - SLOW_WINDOW]
    subscriber.overflows = recent
    if len(recent) >= TOO_SLOW:
        counters.dropped += 1
        await websocket.close(CLOSE_TRY_LATER, "too slow; reconnect with ?since=")
        return True
    return False


async def send_updates(websocket: WebSocket, gw: Gateway, subscriber: Subscriber,
                       reached: str) -> None:
    """Forward queued updates newer than ``reached``, resyncing a client that fell behind."""
    position = parse_pos(reached)
    while True:
        item = await subscriber.next()
        if isinstance(item, str):  # RESYNC
            if await too_slow(websocket, subscriber):
                return
            position = parse_pos(await send_snapshot(websocket, gw, subscriber))
            continue
        version, message = item
        pos = parse_pos(version)
        if pos <= position:
            continue  # already in what the client has
        await send(websocket, subscriber, message)
        position = pos


# With partitions (docs/scale-out.md): the version is a cursor of one position per partition.


async def start_partitioned(websocket: WebSocket, reader: PartitionedReader,
                            subscriber: Subscriber, since: str | None) -> list[str]:
    """:func:`start` over partitions: what a resuming client missed, partition by partition,
    or a snapshot; the versions it has reached."""
    versions = parse_cursor(since, reader.part.count) if since is not None else None
    counts = await reader.missed_each(versions) if versions is not None else None
    if versions is not None and counts is not None:
        for index, part_reader in enumerate(reader.readers):
            left = counts[index]
            while left > 0:
                page = await part_reader.updates_page(versions[index])
                if page is None:  # trimmed meanwhile: the snapshot below is the way back
                    break
                for version, data in page[:left]:
                    versions[index] = version
                    left -= 1
                    await send(websocket, subscriber,
                               with_version(cursor(versions), update_body(data)))
                if not page:
                    break
            if left > 0:
                break
        else:
            return versions
    return await send_partitioned_snapshot(websocket, reader, subscriber)


async def send_partitioned_snapshot(websocket: WebSocket, reader: PartitionedReader,
                                    subscriber: Subscriber) -> list[str]:
    snapshot = await timed_snapshot(gateway_of(websocket))
    assert isinstance(snapshot, PartitionedSnapshot)
    await send(websocket, subscriber, snapshot.message)
    return list(snapshot.versions)


async def send_partitioned_updates(websocket: WebSocket, reader: PartitionedReader,
                                   subscriber: Subscriber, versions: list[str]) -> None:
    """:func:`send_updates` over partitions: each update advances its partition's place in
    the client's cursor."""
    reached = positions(versions)
    while True:
        item = await subscriber.next()
        if isinstance(item, str):  # RESYNC
            if await too_slow(websocket, subscriber):
                return
            versions = await send_partitioned_snapshot(websocket, reader, subscriber)
            reached = positions(versions)
            continue
        index, version, body = item
        pos = parse_pos(version)
        if pos <= reached[index]:
            continue  # already in what the client has
        versions[index], reached[index] = version, pos
        await send(websocket, subscriber, with_version(cursor(versions), body))


async def read_until_closed(websocket: WebSocket) -> None:
    """Notice the client going away (it has nothing to say to us)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def websocket_endpoint(websocket: WebSocket) -> None:
    gw = gateway_of(websocket)
    if not origin_ok(gw.settings, websocket):
        await websocket.close(CLOSE_POLICY, "origin not allowed")  # before accept: HTTP 403
        return
    await websocket.accept()
    if not token_ok(gw.settings, websocket, query=True):
        await websocket.close(CLOSE_POLICY, "missing or wrong token")
        return
    since = websocket.query_params.get("since")
    windowed = websocket.query_params.get("windows") == "1"
    async with gw.hub.subscribe() as subscriber, anyio.create_task_group() as tasks:

        async def until_either_ends(part: Callable[[], Awaitable[None]]) -> None:
            try:
                await part()
            except GONE as e:
                log.debug("WebSocket client gone: %s", e)
            except TooSlow:
                log.info("dropping a WebSocket client that stopped reading")
                gw.counters.dropped += 1
                with anyio.move_on_after(1), contextlib.suppress(*GONE):
                    await websocket.close(CLOSE_TRY_LATER, "not reading; reconnect with ?since=")
            except NotIndexed:
                with contextlib.suppress(*GONE):
                    await websocket.close(CLOSE_TRY_LATER, "the worker is indexing the jobs; "
                                                           "reconnect")
            except UNREACHABLE as e:
                log.warning("closing a WebSocket: Redis unreachable (%s)", e)
                with contextlib.suppress(*GONE):
                    await websocket.close(CLOSE_TRY_LATER, "Redis unreachable; reconnect")
            tasks.cancel_scope.cancel()

        async def serve() -> None:
            reader = gw.reader
            if isinstance(reader, PartitionedReader):
                versions = await start_partitioned(websocket, reader, subscriber, since)
                await send_partitioned_updates(websocket, reader, subscriber, versions)
                return
            reached = await start(websocket, gw, reader, subscriber, since)
            await send_updates(websocket, gw, subscriber, reached)

        if windowed:
            client = WindowedClient(websocket, gw, subscriber, send)
            tasks.start_soon(until_either_ends, lambda: client.updates(too_slow))
            tasks.start_soon(until_either_ends, client.requests)
        else:
            tasks.start_soon(until_either_ends, serve)
            tasks.start_soon(until_either_ends, lambda: read_until_closed(websocket))
        tasks.start_soon(until_either_ends, lambda: watchdog(subscriber, gw.settings.ws_ping))
