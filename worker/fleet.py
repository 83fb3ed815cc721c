"""With partitions: how many worker processes are alive, so that each takes its share of the
partitions (docs/scale-out.md, Workers). Every process registers in ``<prefix>workers`` with
a time to live it renews; a process holding more than ``ceil(P / live)`` partitions gives
the extra ones up, one at a time, and a process holding fewer takes free ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from monitor.partitions import Partitioning

log = logging.getLogger("monitor.worker")


class Fleet:
    """This process's place among the live workers."""

    def __init__(self, redis: Redis, part: Partitioning, name: str, ttl: float) -> None:
        self.redis = redis
        self.part = part
        self.name = name
        self.ttl_ms = max(1, int(ttl * 1000))
        self.live = 1
        self.held: set[int] = set()

    @property
    def share(self) -> int:
        return math.ceil(self.part.count / self.live)

    def may_take(self, index: int) -> bool:
        return index in self.held or len(self.held) < self.share

    def must_give(self, index: int) -> bool:
        return len(self.held) > self.share and index == max(self.held)

    def holding(self, index: int, held: bool) -> None:
        if held:
            self.held.add(index)
        else:
            self.held.discard(index)

    async def run(self, stop: asyncio.Event) -> None:
        """Stay registered until ``stop``; keep :attr:`live` current."""
        try:
            while not stop.is_set():
                now = int(time.time() * 1000)
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.zadd(self.part.workers, {self.name: now + self.ttl_ms})
                        pipe.zremrangebyscore(self.part.workers, "-inf", now)
                        pipe.zcard(self.part.workers)
                        *_, live = await pipe.execute()
                    if live != self.live:
                        log.info("%d worker processes alive: %d partitions each at most",
                                 live, math.ceil(self.part.count / max(1, live)))
                    self.live = max(1, int(live))
                except (RedisError, OSError) as e:
                    log.debug("fleet registration failed: %s", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.ttl_ms / 3000)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.zrem(self.part.workers, self.name)
