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
from monitor.partitions import Routes
from monitor.redistools import connect
from monitor.routing import describe, route
from monitor.settings import GatewaySettings
from web.hub import Hub
from web.metrics import GatewayCounters
from web.partitioned import PartitionedHub, PartitionedReader
from web.state import StateReader
from web.windows import WindowReader


@dataclass
class Gateway:
    settings: GatewaySettings
    redis: Redis  # writes and the hub: never retried blindly (an event must not be doubled)
    keys: Keys
    reader: StateReader | PartitionedReader  # reads: retried, so a broken connection heals
    hub: Hub | PartitionedHub
    routes: Routes
    windows: WindowReader  # pages of the list, over the same reads (docs/websocket.md)
    counters: GatewayCounters = field(default_factory=GatewayCounters)
    # POST /api/events bodies are parsed one at a time (in a thread), so a burst of large
    # ones holds at most one body's objects at once.
    parsing: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    @classmethod
    def build(cls, settings: GatewaySettings) -> Gateway:
        keys = Keys(settings.prefix)
        part = settings.partitioning
        writes = connect(settings.redis_url, settings.redis_cluster,
                         retry=Retry(NoBackoff(), 0))
        reads = connect(
            settings.redis_url, settings.redis_cluster,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        if part.split:
            reader = PartitionedReader(reads, part)
            return cls(settings, writes, keys, reader,
                       PartitionedHub(writes, part, settings.ws_queue), Routes(part),
                       WindowReader(reader.readers, part))
        one = StateReader(reads, keys)
        return cls(settings, writes, keys, one, Hub(writes, keys, settings.ws_queue),
                   Routes(part), WindowReader([one], None))

    async def publish(self, events: list[bytes]) -> None:
        """Append events to the streams of their partitions (docs/scale-out.md), each
        partition's share in one transaction: all of them or none, with one partition."""
        if isinstance(self.reader, PartitionedReader):
            where = await route(self.redis, self.routes, [describe(e) for e in events])
        else:
            where = [0] * len(events)
        for index in sorted(set(where)):
            async with self.redis.pipeline(transaction=True) as pipe:
                for data, at in zip(events, where):
                    if at == index:
                        pipe.xadd(self.routes.part.keys(index).events, {"data": data})
                await pipe.execute()

    async def publish_about(self, job_id: str, event: bytes) -> None:
        """Append the gateway's own event about a job it found (archive, stop) to the stream
        of the partition that holds the job."""
        index = 0
        if isinstance(self.reader, PartitionedReader):
            index = await self.reader.partition_of(job_id)
        await self.redis.xadd(self.routes.part.keys(index).events, {"data": event})

    async def close(self) -> None:
        await self.redis.aclose()
        await self.reader.redis.aclose()


def gateway_of(conn: HTTPConnection) -> Gateway:
    """The gateway serving a request or WebSocket (set on the app by ``create_app``)."""
    gw: Gateway = conn.app.state.gateway
    return gw
