"""Publishing to partitions: which partition each event goes to (the rule is in
:mod:`monitor.partitions`), and its stream. One round trip for the jobs a process has not
routed before; none for the rest."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from redis.asyncio import Redis

from monitor.partitions import UNNAMED, Routes
from monitor.redistools import text

Described = tuple[str, bool, Any]  # job id, valid, model_name or UNNAMED


def describe(data: bytes | dict[str, Any], valid: bool = True) -> Described | None:
    """What routing needs of an event: its job id, whether it may claim a route, its model.
    None: no job id to route by (the partition that gets it refuses it)."""
    if isinstance(data, bytes):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
        return None
    model = data.get("model_name")
    return data["job_id"], valid, UNNAMED if model is None else model


def _claim(pipe: Any, key: str, claims: dict[str, str]) -> None:
    for job_id, value in claims.items():
        pipe.hsetnx(key, job_id, value)
        pipe.hget(key, job_id)


def _learn(routes: Routes, claims: dict[str, str], replies: list[Any]) -> None:
    for job_id, stored in zip(claims, replies[1::2]):
        routes.put(job_id, text(stored))


def _partitions(routes: Routes, events: list[Described | None]) -> list[int]:
    out = []
    for event in events:
        partition = routes.get(event[0]) if event is not None else None
        out.append(routes.part.unnamed if partition is None else partition)
    return out


async def route(redis_client: Redis, routes: Routes, events: list[Described | None]
                ) -> list[int]:
    """The partition of each event, claiming routes for jobs not seen before."""
    if not routes.part.split:
        return [0] * len(events)
    claims = routes.claims([e for e in events if e is not None])
    if claims:
        async with redis_client.pipeline(transaction=False) as pipe:
            _claim(pipe, routes.part.routes, claims)
            _learn(routes, claims, await pipe.execute())
    return _partitions(routes, events)


def route_sync(redis_client: redis.Redis, routes: Routes, events: list[Described | None]
               ) -> list[int]:
    """:func:`route` for a synchronous client (the SDK)."""
    if not routes.part.split:
        return [0] * len(events)
    claims = routes.claims([e for e in events if e is not None])
    if claims:
        with redis_client.pipeline(transaction=False) as pipe:
            _claim(pipe, routes.part.routes, claims)
            _learn(routes, claims, pipe.execute())
    return _partitions(routes, events)
