"""worker.fenced: the worker's WATCH-fenced MULTI/EXEC, packed whole and read back raw."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from fakeredis import FakeAsyncRedis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    ExecAbortError,
    MasterDownError,
    ReadOnlyError,
    ResponseError,
    WatchError,
)

from monitor.keys import Keys
from monitor.redistools import UNREACHABLE
from tests.conftest import RedisServer, free_port
from worker.fenced import fenced
from worker.resp import Command


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


# Keeps Redis busy for ARGV[1] ms (inside EXEC: the transaction's replies come after it).
SPIN = """local t = redis.call('TIME'); local start = t[1] * 1000 + t[2] / 1000
repeat local n = redis.call('TIME') until n[1] * 1000 + n[2] / 1000 - start > tonumber(ARGV[1])
return 1"""


def nothing(values: list[Any]) -> None:
    pass


async def test_replies_come_raw_in_order_and_the_connection_serves_again(
        client: Redis, keys: Keys, r: redis.Redis) -> None:
    lst, h = keys.prefix + "list", keys.prefix + "hash"
    seen: list[list[Any]] = []
    replies = await fenced(client, (h, lst), seen.append, [
        ("RPUSH", lst, b"a", b"b"), ("HSET", h, "x", 1, "y", b"2"), ("LRANGE", lst, 0, -1),
        ("HGET", h, "missing")])
    assert seen == [[None, None]]  # the watched keys' values before the transaction
    assert replies == [2, 2, [b"a", b"b"], None]
    # 2,000 commands: replies arrive over many socket reads
    many = [("RPUSH", lst, i) for i in range(2000)]
    assert await fenced(client, (h,), nothing, many) == list(range(3, 2003))
    assert await client.llen(lst) == 2002


async def test_a_watched_key_changed_before_exec_raises_and_writes_nothing(
        client: Redis, keys: Keys, r: redis.Redis) -> None:
    lease, out = keys.prefix + "lease", keys.prefix + "out"
    r.set(lease, "mine")

    def taken_meanwhile(values: list[Any]) -> None:
        assert values == [b"mine"]
        r.set(lease, "theirs")  # another client, between WATCH and EXEC

    with pytest.raises(WatchError):
        await fenced(client, (lease,), taken_meanwhile, [("SET", out, 1)])
    assert r.get(out) is None
    assert await fenced(client, (lease,), nothing, [("SET", out, 2)]) == [b"OK"]


async def test_a_check_that_gives_up_unwatches_and_sends_nothing(
        client: Redis, keys: Keys, r: redis.Redis) -> None:
    lease, out = keys.prefix + "lease", keys.prefix + "out"
    with pytest.raises(LookupError, match="not ours"):
        await fenced(client, (lease,), refuse, [("SET", out, 1)])
    assert r.get(out) is None
    r.set(lease, "changed")  # no WATCH is left on the connection to abort the next one
    assert await fenced(client, (out,), nothing, [("SET", out, 3)]) == [b"OK"]


async def test_one_failing_command_leaves_its_error_in_place_and_the_rest_run(
        client: Redis, keys: Keys, r: redis.Redis) -> None:
    text, out = keys.prefix + "text", keys.prefix + "out"
    r.set(text, "not a hash")
    replies = await fenced(client, (text,), nothing,
                           [("HINCRBY", text, "n", 1), ("SET", out, "written")])
    assert isinstance(replies[0], ResponseError) and "WRONGTYPE" in str(replies[0])
    assert replies[1] == b"OK" and r.get(out) == b"written"


async def test_a_command_refused_while_queued_aborts_the_whole_transaction(
        client: Redis, keys: Keys, r: redis.Redis) -> None:
    out = keys.prefix + "out"
    with pytest.raises(ResponseError, match="wrong number of arguments") as raised:
        await fenced(client, (out,), nothing, [("SET", out, 1), ("SET", out)])
    assert isinstance(raised.value.__cause__, ExecAbortError)
    assert r.get(out) is None
    assert await fenced(client, (out,), nothing, [("SET", out, 2)]) == [b"OK"]


async def test_cancelled_half_way_the_connection_is_dropped_not_reused(
        client: Redis, keys: Keys, r: redis.Redis) -> None:
    lst = keys.prefix + "list"
    commands: list[Command] = [("RPUSH", lst, 1)] * 1000 + [("EVAL", SPIN, 0, 200)]
    task = asyncio.create_task(fenced(client, (lst,), nothing, commands))
    await asyncio.sleep(0.05)  # sent; Redis is running EXEC, the replies are not all there
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.llen(lst) == 1000  # it ran whole (EXEC had been sent)
    # its replies are never read as another transaction's
    assert await fenced(client, (lst,), nothing, [("PING",)]) == [b"PONG"]


async def test_a_client_that_reads_its_own_way_gets_the_same_replies(keys: Keys) -> None:
    """fakeredis (used by some tests) does not read from a socket: one reply at a time."""
    client = FakeAsyncRedis()
    lst = keys.prefix + "list"
    assert await fenced(client, (lst,), nothing,
                        [("RPUSH", lst, b"a"), ("LRANGE", lst, 0, -1)]) == [1, [b"a"]]
    await client.aclose()


async def test_replies_are_read_in_bulk_not_through_redis_pys_reader(
        client: Redis, keys: Keys, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the module: redis-py's per-reply path is never taken (a redis-py that
    changed its parser would fall back to it, and this would say so)."""
    async def per_reply(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read one reply at a time")

    lst = keys.prefix + "list"
    await fenced(client, (lst,), nothing, [("PING",)])  # connected (its handshake reads so)
    monkeypatch.setattr(AbstractConnection, "read_response", per_reply)
    assert await fenced(client, (lst,), nothing, [("RPUSH", lst, 1)] * 3) == [1, 2, 3]


async def test_a_check_that_gives_up_keeps_its_connection(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    client = Redis.from_url(redis_url, max_connections=1)
    (before,) = await fenced(client, (keys.prefix + "k",), nothing, [("CLIENT", "ID")])
    with pytest.raises(LookupError):
        await fenced(client, (keys.prefix + "k",), refuse, [("SET", keys.prefix + "k", 1)])
    (after,) = await fenced(client, (keys.prefix + "k",), nothing, [("CLIENT", "ID")])
    assert after == before
    await client.aclose()


def refuse(values: list[Any]) -> None:
    raise LookupError("not ours")


async def test_push_messages_of_resp3_are_not_taken_for_replies(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """A RESP3 client tracking keys is told, in the middle of a transaction, that one
    changed: that message is no reply."""
    client = Redis.from_url(redis_url, protocol=3, max_connections=1)
    key, lst = keys.prefix + "tracked", keys.prefix + "list"
    r.set(key, "a")
    await client.execute_command("CLIENT", "TRACKING", "ON")  # type: ignore[no-untyped-call]
    assert await client.get(key) == b"a"  # tracked from now on

    def changed_meanwhile(values: list[Any]) -> None:
        r.set(key, "b")  # the server pushes an invalidation to our connection

    assert await fenced(client, (lst,), changed_meanwhile,
                        [("RPUSH", lst, 1), ("LRANGE", lst, 0, -1)]) == [1, [b"1"]]
    assert await fenced(client, (lst,), nothing, [("PING",)]) == [b"PONG"]
    await client.aclose()


@pytest.fixture
async def orphan_replica(redis_server_factory: Any) -> AsyncIterator[RedisServer]:
    """A private server turned replica of a master that is not there: its link is down."""
    server: RedisServer = redis_server_factory()
    server.start()
    plain = redis.Redis(port=server.port)
    plain.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # type: ignore[no-untyped-call]
    plain.close()
    yield server


async def test_an_error_reading_the_watched_keys_is_raised_and_nothing_runs(
        orphan_replica: RedisServer) -> None:
    plain = redis.Redis(port=orphan_replica.port)
    plain.config_set("replica-serve-stale-data", "no")
    client = Redis.from_url(orphan_replica.url)
    with pytest.raises(MasterDownError) as raised:
        await fenced(client, ("lease",), nothing, [("PING",)])
    assert isinstance(raised.value, UNREACHABLE)  # the worker heals and tries again
    await client.aclose()
    plain.close()


async def test_a_command_refused_while_queued_is_the_error_raised(
        orphan_replica: RedisServer) -> None:
    client = Redis.from_url(orphan_replica.url)
    with pytest.raises(ReadOnlyError) as raised:  # not the EXECABORT that followed it
        await fenced(client, ("lease",), nothing, [("SET", "out", 1)])
    assert isinstance(raised.value.__cause__, ExecAbortError)
    assert isinstance(raised.value, UNREACHABLE)
    await client.aclose()
