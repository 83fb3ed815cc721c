"""What one gateway process holds: its settings, Redis client, state reader and fan-out hub."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import HTTPConnection

from monitor.keys import Keys
from monitor.settings import GatewaySettings
from web.hub import Hub
from web.state import StateReader


@dataclass
class Gateway:
    settings: GatewaySettings
    redis: Redis  # writes and the hub: never retried blindly (an event must not be doubled)
    keys: Keys
    reader: StateReader  # reads: retried, so a connection broken by a Redis restart heals
    hub: Hub
    # POST /api/events bodies are parsed one at a time (in a thread), so a burst of large
    # ones holds at most one body's objects at once.
    parsing: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    @classmethod
    def build(cls, settings: GatewaySettings) -> Gateway:
        keys = Keys(settings.prefix)
        writes = Redis.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0))
        reads = Redis.from_url(
            settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        return cls(settings, writes, keys, StateReader(reads, keys),
                   Hub(writes, keys, settings.ws_queue))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.reader.redis.aclose()


def gateway_of(conn: HTTPConnection) -> Gateway:
    """The gateway serving a request or WebSocket (set on the app by ``create_app``)."""
    gw: Gateway = conn.app.state.gateway
    return gw
