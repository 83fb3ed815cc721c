"""With partitions: the ingress router (docs/scale-out.md, Publishing). Raw XADDs to
``<prefix>events`` are forwarded to the stream of their partition, by the rule every
publisher applies (:mod:`monitor.partitions`). One router forwards at a time (a lease); each
forwarded entry carries ``src`` = ``in|<ingress id>``, so what a crash forwards twice is
applied once (:mod:`worker.moves`).

That holds only if an entry forwarded again goes where it went the first time: its route may
have become final meanwhile (a provisional route sends it to the unnamed partition, which
relays it on; a final one straight to the model's), and two copies reaching one partition by
two paths would carry different sources. So before forwarding a batch the router records its
plan (each entry's partition) in ``<prefix>router:plan``, and a router that takes over
forwards the recorded batch again by that plan before anything new."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from redis.asyncio import Redis

from monitor.decoded import parse_event
from monitor.events import BadEvent
from monitor.partitions import UNNAMED, Routes
from monitor.redistools import UNREACHABLE, backoff, heal, text
from monitor.routing import Described, describe, route
from monitor.rules import parse_pos
from monitor.settings import WorkerSettings
from worker.lease import Lease
from worker.moves import ROUTER

log = logging.getLogger("monitor.worker")


def describe_entry(fields: dict[bytes, bytes] | None) -> Described | None:
    """What routing needs of an ingress entry; only a valid event may claim a route."""
    raw = (fields or {}).get(b"data")
    if raw is None:
        return None
    try:
        event = parse_event(raw)
    except BadEvent:
        return describe(raw, valid=False)  # routed by its job id, if it has one
    return event.job_id, True, UNNAMED if event.model_name is None else event.model_name


class IngressRouter:
    def __init__(self, settings: WorkerSettings, redis: Redis, name: str) -> None:
        self.settings = settings
        self.part = settings.partitioning
        self.redis = redis
        self.routes = Routes(self.part)
        self.lease = Lease(redis, self.part.router_lease, settings.lease_ttl, name)
        self.position: str | None = None
        self.forwarded = 0

    async def run(self, stop: asyncio.Event) -> None:
        released = asyncio.Event()
        keep_alive = asyncio.create_task(self.lease.keep_alive(released), name="router lease")
        delay = 0.1
        try:
            while not stop.is_set():
                try:
                    if not await self.lease.hold():
                        self.position = None
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), self.settings.lease_ttl / 4)
                        continue
                    await self.step()
                    delay = 0.1
                except UNREACHABLE as e:
                    log.warning("router: Redis unreachable (%s); retrying in %.1fs", e, delay)
                    self.lease.forget()
                    self.position = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    await heal(self.redis)
                    delay = backoff(delay)
        finally:
            released.set()
            await keep_alive
            with contextlib.suppress(*UNREACHABLE):
                await self.lease.release()

    async def step(self) -> None:
        """Forward the next batch of ingress entries (waiting for one up to ``block``)."""
        if self.position is None:
            await self._resume()
        assert self.position is not None
        reply: Any = await self.redis.xread({self.part.ingress: self.position},
                                            count=self.settings.batch_size,
                                            block=max(1, int(self.settings.block * 1000)))
        if not reply:
            return
        entries = reply[0][1]
        described = [describe_entry(fields) for _, fields in entries]
        partitions = await route(self.redis, self.routes, described)
        await self.redis.set(self.part.router_plan, orjson.dumps(
            {"ids": [text(entry_id) for entry_id, _ in entries], "to": partitions}))
        await self._forward(entries, partitions)

    async def _resume(self) -> None:
        """Take up where the last router left off: forward its last planned batch again, by
        its plan (the partitions skip what they have)."""
        stored = await self.redis.get(self.part.router_applied)
        self.position = text(stored) if stored is not None else "0-0"
        plan = await self.redis.get(self.part.router_plan)
        if plan is not None:
            planned = orjson.loads(plan)
            to = dict(zip(planned["ids"], planned["to"]))
            if planned["ids"] and parse_pos(planned["ids"][-1]) > parse_pos(self.position):
                entries: Any = await self.redis.xrange(
                    self.part.ingress, min=f"({self.position}", max=planned["ids"][-1])
                kept = [(i, f) for i, f in entries if text(i) in to]
                if kept:
                    log.info("forwarding %d entries again by the last router's plan",
                             len(kept))
                    await self._forward(kept, [to[text(i)] for i, _ in kept])
        log.info("routing %s from %s", self.part.ingress, self.position)

    async def _forward(self, entries: list[Any], partitions: list[int]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for (entry_id, fields), partition in zip(entries, partitions):
                data = (fields or {}).get(b"data", b"")
                pipe.xadd(self.part.keys(partition).events,
                          {"data": data, "src": f"{ROUTER}|{text(entry_id)}"})
            await pipe.execute()
        last = text(entries[-1][0])
        if not self.lease.held:
            return  # another router may be ahead: it records the position
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.part.router_applied, last)
            pipe.xtrim(self.part.ingress, minid=last, approximate=True)
            await pipe.execute()
        self.position = last
        self.forwarded += len(entries)
