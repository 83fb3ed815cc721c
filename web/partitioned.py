"""With partitions (docs/scale-out.md): the gateway's reads over every partition, and the
opaque ``/ws`` cursors (one update position per partition).

Each partition's state is read as with one partition (:class:`web.state.StateReader`), and
the answers are merged. A job is looked for in the partition of its route; while it moves,
the tombstone it left says where it went.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from monitor.partitions import Partitioning, parse_route
from monitor.redistools import text
from monitor.rules import Pos, parse_pos
from web.hub import START_WAIT, Hub, Subscriber
from web.state import (
    MAX_REPLAY,
    NO_VERSION,
    Snapshot,
    StateReader,
    list_key,
    model_row_key,
    valid_version,
)

CURSOR_SEPARATOR = "."


def cursor(versions: list[str]) -> str:
    """The opaque ``/ws`` version of a client that has reached ``versions``."""
    return CURSOR_SEPARATOR.join(versions)


def parse_cursor(value: str, count: int) -> list[str] | None:
    """The per-partition versions of a cursor; None when it is not one of ``count``."""
    versions = value.split(CURSOR_SEPARATOR)
    if len(versions) != count or not all(valid_version(v) for v in versions):
        return None
    return versions


def merge_model_rows(found: list[list[dict[str, Any]]], part: Partitioning | None
                     ) -> list[dict[str, Any]]:
    """One row per model from each partition's rows, by clean name; a model's row comes from
    its partition (a job that has not named its model yet may briefly be counted
    elsewhere)."""
    rows: dict[Any, dict[str, Any]] = {}
    for index, partition_rows in enumerate(found):
        for row in partition_rows:
            if part is None or part.of_model(row["model_name"]) == index or \
                    row["model_name"] not in rows:
                rows[row["model_name"]] = row
    return sorted(rows.values(), key=model_row_key)


def positions(versions: list[str]) -> list[Pos]:
    return [parse_pos(v) for v in versions]


@dataclass(frozen=True)
class PartitionedSnapshot(Snapshot):
    """Every job view of every partition, each partition at its version."""

    versions: tuple[str, ...] = ()


class PartitionedReader:
    """Reads over every partition, with :class:`StateReader`'s answers."""

    def __init__(self, redis: Redis, part: Partitioning) -> None:
        self.redis = redis
        self.part = part
        self.readers = [StateReader(redis, keys) for keys in part.all_keys()]

    async def snapshot(self) -> PartitionedSnapshot:
        parts = await asyncio.gather(*(r.snapshot() for r in self.readers))
        views: dict[str, dict[str, Any]] = {}
        for index, snap in enumerate(parts):
            for view in snap.views:
                here = self.part.of_model(view["model_name"]) == index
                if view["id"] not in views or here:  # moving: its model's partition wins
                    views[view["id"]] = view
        merged = sorted(views.values(), key=list_key)
        versions = tuple(s.version for s in parts)
        return PartitionedSnapshot(cursor(list(versions)), merged, versions)

    async def locate(self, job_ids: list[str]) -> list[int]:
        """The partition that holds each job (its route's; unrouted: the unnamed one)."""
        if not job_ids:
            return []
        routes = await self.redis.hmget(self.part.routes, job_ids)
        return [parse_route(r)[0] if r is not None else self.part.unnamed for r in routes]

    async def _moved(self, index: int, job_id: str) -> int | None:
        to = await self.redis.hget(self.readers[index].keys.moved, job_id)
        return int(to) if to is not None else None

    async def _where(self, job_id: str) -> int:
        index = (await self.locate([job_id]))[0]
        if not await self.readers[index].exists(job_id):
            moved = await self._moved(index, job_id)
            if moved is not None:
                return moved
        return index

    async def job(self, job_id: str) -> dict[str, Any] | None:
        return await self.readers[await self._where(job_id)].job(job_id)

    async def exists(self, job_id: str) -> bool:
        return await self.readers[await self._where(job_id)].exists(job_id)

    async def partition_of(self, job_id: str) -> int:
        """Where events about ``job_id`` go now (a relay follows a move in flight)."""
        return await self._where(job_id)

    async def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return await self.readers[await self._where(job_id)].metrics(job_id)

    async def views(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        where = await self.locate(job_ids)
        out: list[dict[str, Any] | None] = [None] * len(job_ids)
        for index in set(where):
            at = [i for i, w in enumerate(where) if w == index]
            found = await self.readers[index].views([job_ids[i] for i in at])
            for i, view in zip(at, found):
                out[i] = view
        for i, view in enumerate(out):
            if view is None:  # moving, or unknown
                out[i] = (await self.readers[await self._where(job_ids[i])].views(
                    [job_ids[i]]))[0]
        return out

    async def model_jobs(self, model_name: str | None
                         ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        return await self.readers[self.part.of_model(model_name)].model_jobs(model_name)

    async def models(self) -> list[dict[str, Any]]:
        """The model rows of every partition (see :func:`merge_model_rows`)."""
        return merge_model_rows(await asyncio.gather(*(r.models() for r in self.readers)),
                                self.part)

    async def missed_each(self, versions: list[str]) -> list[int] | None:
        """How many updates each partition has after its version in ``versions``, when a
        client may be sent them all instead of a snapshot (see :meth:`StateReader.missed`,
        whose bounds apply to the sum)."""
        counts = await asyncio.gather(*(r.missed(v) for r, v in zip(self.readers, versions)))
        if any(c is None for c in counts) or sum(c or 0 for c in counts) > MAX_REPLAY:
            return None
        return [c or 0 for c in counts]

    async def health(self) -> dict[str, Any]:
        """As with one partition, summed; and each partition's own, and the ingress router's
        backlog (raw XADDs to ``<prefix>events`` not yet forwarded)."""
        found = await asyncio.gather(*(r.health() for r in self.readers))
        lags = [h["worker_lag"] for h in found]
        return {"status": "ok", "redis": "ok",
                "worker_lag": None if any(lag is None for lag in lags) else sum(lags),
                "pending": sum(h["pending"] for h in found),
                "router_backlog": await self._router_backlog(),
                "partitions": [{"partition": i, "worker_lag": h["worker_lag"],
                                "pending": h["pending"]} for i, h in enumerate(found)]}

    async def _router_backlog(self) -> int | None:
        stored = await self.redis.get(self.part.router_applied)
        after = text(stored) if stored is not None else NO_VERSION
        count = await self.readers[0].count_after(self.part.ingress, after)
        return None if count < 0 else count

    async def stats_each(self) -> list[dict[str, int]]:
        return list(await asyncio.gather(*(r.stats_and_ops() for r in self.readers)))

    async def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for found in await asyncio.gather(*(r.stats() for r in self.readers)):
            for name, value in found.items():
                total[name] = total.get(name, 0) + value
        return total


class PartitionedHub:
    """One :class:`web.hub.Hub` per partition, sharing one set of subscribers: each queues
    ``(partition, version, body)`` items, in order per partition."""

    def __init__(self, redis: Redis, part: Partitioning, queue_size: int,
                 block_ms: int = 1000) -> None:
        self.subscribers: set[Subscriber] = set()
        self.hubs = [Hub(redis, keys, queue_size, block_ms, index, self.subscribers)
                     for index, keys in enumerate(part.all_keys())]

    @property
    def connected(self) -> asyncio.Event:
        return self.hubs[0].connected

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        for hub in self.hubs[1:]:  # the first waits in its subscribe, below
            if not hub.tried.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hub.tried.wait(), START_WAIT)
        async with self.hubs[0].subscribe() as subscriber:
            yield subscriber

    async def run(self) -> None:
        await asyncio.gather(*(hub.run() for hub in self.hubs))
