"""Partitions (docs/scale-out.md): which partition holds a model, each partition's keys, and
the routes that send a job's events to the partition of its model.

With one partition (the default) nothing here changes a key: partition 0 is today's
``<prefix>events``, ``<prefix>jobs`` and so on. With P partitions, partition i keeps its keys
under ``<prefix>{i}:``; the braces are a Redis Cluster hash tag, so every key of a partition
is in one slot and a worker commits a batch in one atomic transaction.

Routing rule (the one every publisher applies, and the ingress router for raw XADDs):

1. A job with a route goes to its route's partition.
2. Else, a valid event that names a model claims the route "the partition of that model".
3. Else (the job has not named its model yet) the event claims a provisional route to the
   partition of the unnamed model (``null``). When the job names its model later, the worker
   of that partition hands the job over to its model's partition and finalises the route.

Claims are ``HSETNX`` on ``<prefix>routes``, so every publisher agrees on a job's route and
the first event that names a model decides it, as with one partition.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

from monitor.keys import Keys, model_field

PROVISIONAL = "?"  # a route value's mark: the job has not named its model yet
PROVISIONAL_FOR = 1.0  # seconds a publisher trusts a provisional route it has seen


@dataclass(frozen=True, slots=True)
class Partitioning:
    """The partitions of one deployment: ``count`` of them under ``prefix``. On a Redis
    Cluster even one partition has its keys under a hash tag, so a commit's keys share a
    slot; the partitioned machinery (routes, the router, cursors) then runs with one."""

    prefix: str
    count: int = 1
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("there must be at least one partition")

    @property
    def split(self) -> bool:
        """Are keys under hash tags (and events routed)? With more than one partition, or
        on a cluster."""
        return self.count > 1 or self.cluster

    def keys(self, index: int) -> Keys:
        """The keys of partition ``index``."""
        if not self.split:
            return Keys(self.prefix)
        return Keys(f"{self.prefix}{{{index}}}:")

    def all_keys(self) -> list[Keys]:
        return [self.keys(i) for i in range(self.count)]

    def of_model(self, model_name: str | None) -> int:
        """The partition that holds every job of ``model_name``."""
        if self.count == 1:
            return 0
        return zlib.crc32(model_field(model_name).encode()) % self.count

    @property
    def unnamed(self) -> int:
        """The partition of jobs that have not named their model."""
        return self.of_model(None)

    # Keys outside every partition.
    @property
    def ingress(self) -> str:
        """Where raw XADDs go; with one partition it is partition 0's events stream."""
        return f"{self.prefix}events"

    @property
    def routes(self) -> str:
        """Hash: job id -> its partition (``"3"``), or provisionally (``"?3"``)."""
        return f"{self.prefix}routes"

    @property
    def router_lease(self) -> str:
        return f"{self.prefix}router:lease"

    @property
    def router_plan(self) -> str:
        """The batch the router is forwarding: each entry's partition (JSON)."""
        return f"{self.prefix}router:plan"

    @property
    def router_applied(self) -> str:
        """The last ingress entry the router has forwarded."""
        return f"{self.prefix}router:applied"

    @property
    def workers(self) -> str:
        """Sorted set: live worker process -> when its registration runs out (ms)."""
        return f"{self.prefix}workers"

    @property
    def declared(self) -> str:
        """The partition count this deployment was started with."""
        return f"{self.prefix}partitions"


def route_value(partition: int, provisional: bool) -> str:
    return f"{PROVISIONAL if provisional else ''}{partition}"


def parse_route(value: bytes | str) -> tuple[int, bool]:
    """(partition, provisional) of a stored route."""
    text = value.decode() if isinstance(value, bytes) else value
    if text.startswith(PROVISIONAL):
        return int(text[1:]), True
    return int(text), False


class Routes:
    """The routes this process has seen: final ones for good (a final route never changes),
    provisional ones for :data:`PROVISIONAL_FOR` (a stale one only costs a relay)."""

    def __init__(self, part: Partitioning, limit: int = 200_000) -> None:
        self.part = part
        self.limit = limit
        self._known: dict[str, tuple[int, float | None]] = {}  # id -> (partition, until)

    def get(self, job_id: str) -> int | None:
        known = self._known.get(job_id)
        if known is None:
            return None
        partition, until = known
        if until is not None and time.monotonic() > until:
            del self._known[job_id]
            return None
        return partition

    def put(self, job_id: str, value: bytes | str) -> int:
        partition, provisional = parse_route(value)
        if len(self._known) >= self.limit:
            self._known.clear()  # a cache: forgetting only costs a lookup
        self._known[job_id] = (partition,
                               time.monotonic() + PROVISIONAL_FOR if provisional else None)
        return partition

    def claims(self, events: list[tuple[str, bool, Any]]) -> dict[str, str]:
        """The route to claim for each job of ``events`` (job id, valid, model_name or
        :data:`UNNAMED`) that this process knows no route of: the first event of the job
        decides, as the first to arrive would."""
        out: dict[str, str] = {}
        for job_id, valid, model in events:
            if job_id in out or self.get(job_id) is not None:
                continue
            if valid and model is not UNNAMED:
                out[job_id] = route_value(self.part.of_model(model), False)
            else:
                out[job_id] = route_value(self.part.unnamed, True)
        return out


UNNAMED = object()  # an event that names no model (``model_name`` absent or null)
