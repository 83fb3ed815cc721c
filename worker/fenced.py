"""One WATCH-fenced MULTI/EXEC: packed in one piece, its replies read back in bulk.

redis-py's pipeline spends about 5 µs of Python on every command it queues: it builds the
command, packs it, then reads its ``QUEUED`` reply and runs a callback on it. A commit
queues about one command per job its batch touches, so that was a fifth of the worker's
time per event. Here the whole transaction is packed in one piece (:mod:`worker.resp`) and
every reply is taken from hiredis' reader in a loop, so a command costs little more than
Redis's own work.

Replies are raw: bytes, integers, lists, None, and error replies as exception objects (not
raised). A transaction whose watched keys changed raises :class:`WatchError`, as redis-py's
pipeline does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError, ResponseError, WatchError

from worker.resp import Command, pack

try:  # redis-py's hiredis reader answers this when a reply is not complete yet
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - another redis-py: read_response, one at a time
    NOT_ENOUGH_DATA = None
PUSH = getattr(hiredis, "PushNotification", None)  # a RESP3 push (hiredis >= 3.2)


async def fenced(client: Redis, watch: Sequence[str], check: Callable[[list[Any]], None],
                 commands: Sequence[Command], sent: asyncio.Event | None = None) -> list[Any]:
    """WATCH ``watch`` and read them (``check`` gets their values and raises to give up),
    then run ``commands`` in MULTI/EXEC; EXEC's replies, one per command. ``sent`` is set
    once the transaction is handed to the socket (only its replies remain; a tail larger
    than the socket's buffer still goes out as the event loop turns). A retry after a
    :class:`WatchError` sends it again after ``sent`` was set.

    Raises :class:`WatchError` when a watched key changed before EXEC; an error reply to
    WATCH or to reading the keys (MOVED, MASTERDOWN, ...); and, when Redis refused the whole
    transaction (EXECABORT), the error of the command it refused, as redis-py does. An error
    of one command that ran is in its place among the replies: as with any MULTI/EXEC, the
    others ran."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    clean = False  # no reply left unread, no WATCH left on: the connection may serve again
    try:
        await conn.send_packed_command(
            pack([("WATCH", *watch), ("MGET", *watch)]), check_health=False)
        for reply in (values := await _replies(conn, 2)):
            if isinstance(reply, Exception):
                raise reply  # (a WATCH that took is dropped with the connection)
        try:
            check(values[1])
        except BaseException:
            await conn.send_packed_command(pack([("UNWATCH",)]), check_health=False)
            await _replies(conn, 1)
            clean = True
            raise
        await conn.send_packed_command(
            pack([("MULTI",), *commands, ("EXEC",)]), check_health=False)
        if sent is not None:
            sent.set()
        replies = await _replies(conn, len(commands) + 2)
        clean = _in_step(replies[-1], len(commands))
    finally:
        if not clean:
            # Cancelled or failed half-way: replies may still be on their way, so this
            # connection must not serve anyone else.
            await asyncio.shield(conn.disconnect(nowait=True))
        await asyncio.shield(pool.release(conn))
    return _result(replies, len(commands))


def _in_step(result: Any, count: int) -> bool:
    """Is ``result`` what EXEC answers to ``count`` commands (else the replies are out of
    step with the commands)?"""
    return result is None or isinstance(result, ResponseError) or (
        isinstance(result, list) and len(result) == count)


def _result(replies: list[Any], count: int) -> list[Any]:
    """EXEC's replies, from every reply to MULTI, the ``count`` commands and EXEC."""
    result = replies[-1]
    if result is None:
        raise WatchError("a watched key changed")
    if isinstance(result, ResponseError):
        refused = next((r for r in replies[1:-1] if isinstance(r, Exception)), None)
        if refused is not None:  # EXECABORT: this command was refused while queued
            raise refused from result
        raise result
    if not _in_step(result, count):
        raise ResponseError(f"EXEC answered {type(result).__name__} for {count} commands")
    assert isinstance(result, list)
    return result


async def _replies(conn: AbstractConnection, count: int) -> list[Any]:
    """The next ``count`` replies, raw."""
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if (NOT_ENOUGH_DATA is None or reader is None or parser is None
            or type(conn).read_response is not AbstractConnection.read_response):
        # No hiredis, or a connection that reads its own way (fakeredis): one at a time.
        return [await _one(conn) for _ in range(count)]
    timeout = getattr(conn, "socket_timeout", None)
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            reply = reader.gets(False)  # False: bytes as they are, never decoded
            if reply is NOT_ENOUGH_DATA:
                await parser.read_from_socket()
            elif PUSH is not None and isinstance(reply, PUSH):
                await parser.handle_push_response(reply)  # RESP3: not a reply; redis-py's way
            elif isinstance(reply, ConnectionError):  # LOADING and the like, as redis-py
                raise reply
            else:
                out.append(reply)
    return out


async def _one(conn: AbstractConnection) -> Any:
    try:
        return await conn.read_response(disable_decoding=True)
    except ResponseError as e:
        return e
