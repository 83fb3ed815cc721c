"""Small helpers every Redis client of the project shares: the SDK's sender, the worker and
the gateway."""

from __future__ import annotations

import contextlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RETRY_MAX = 5.0  # seconds at most between attempts while Redis is away
# Redis is away, or a cluster is between states (a master restarting, a failover): wait and
# try again from what is committed.
# (MOVED and the like reach a plain client talking to one node of a cluster: the slot moved.)
UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, TryAgainError,
    SlotNotCoveredError, RedisClusterException, MovedError, AskError, MasterDownError,
    ReadOnlyError)


async def node_client(client: Redis, key: str, cache: dict[str, Redis]) -> Redis:
    """The client for transactions on ``key``: ``client`` itself, or on a cluster a plain
    client of the node that serves its slot (kept in ``cache``). redis-py 8's cluster
    transactions spend a thread and an event loop on every queued command; a plain
    client's MULTI/EXEC on that node is the same transaction. After a failover or a slot
    move its commands fail with an error of UNREACHABLE, and :func:`heal` plus this call
    find the new node."""
    if not isinstance(client, RedisCluster):
        return client
    node = client.get_node_from_key(key)
    plain = cache.get(node.name)
    if plain is None:
        wanted = ("username", "password", "ssl", "ssl_ca_certs", "ssl_certfile",
                  "ssl_keyfile", "ssl_cert_reqs", "socket_timeout", "socket_connect_timeout")
        options = {k: v for k, v in node.connection_kwargs.items() if k in wanted}
        plain = cache[node.name] = Redis(host=node.host, port=node.port,
                                         retry=Retry(NoBackoff(), 0), **options)
    return plain


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients here are opened without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else value


def backoff(delay: float) -> float:
    """The wait after ``delay`` when Redis is still away: doubled, up to RETRY_MAX."""
    return min(delay * 2, RETRY_MAX)


async def heal(client: Redis) -> None:
    """After an unreachable error: a cluster client learns the topology again (a failover
    moved its slots), from every node it knows; nothing for a plain client, which just
    reconnects. redis-py does this by itself only every few errors."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(Exception):  # still unreachable: the caller retries later
            # redis-py 8's own refresh, which also moves the node it asks for the keys of
            # XREAD and the like (it stays on a dead node otherwise); private, so with a
            # fallback to the public part.
            refresh = getattr(client, "_refresh_topology", None)
            if refresh is not None:
                await refresh()
            else:
                await client.nodes_manager.initialize()


def connect(url: str, cluster: bool, **options: Any) -> Redis:
    """An asyncio client of ``url``: of the whole cluster when ``cluster`` (any node's URL
    will do; keys are sent to the node of their slot). Typed as ``Redis``: the commands the
    project uses are the same on both."""
    if cluster:
        options.pop("retry_on_error", None)  # the cluster client retries by itself
        return RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    return Redis.from_url(url, **options)
