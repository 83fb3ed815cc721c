"""Histograms for operators (docs/rest.md, Metrics), kept as counters in a partition's
``ops`` hash: the worker adds a batch's observations with its commit, and any gateway
serves them on ``/metrics``. Pure: field names and bucket arithmetic."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial


@dataclass(frozen=True, slots=True)
class Histogram:
    name: str
    help: str
    bounds: tuple[float, ...]  # upper bounds of the buckets, ascending; +Inf is implied
    scale: int = 1  # the sum is stored as an integer of value * scale

    def field(self, bound: float | None) -> str:
        return f"{self.name}:le:{'inf' if bound is None else format(bound, 'g')}"

    @property
    def sum_field(self) -> str:
        return f"{self.name}:sum"

    def observe(self, into: dict[str, int], values: Iterable[float]) -> None:
        """Add ``values`` to the counters ``into`` (field -> increment)."""
        values = list(values)
        # a bucket index per value, counted in C: a batch observes one age per event
        for at, n in Counter(map(partial(bisect.bisect_left, self.bounds), values)).items():
            key = self.field(self.bounds[at] if at < len(self.bounds) else None)
            into[key] = into.get(key, 0) + n
        total = sum(values)
        if total:
            into[self.sum_field] = into.get(self.sum_field, 0) + round(total * self.scale)

    def read(self, stats: dict[str, int]) -> tuple[list[tuple[str, int]], float]:
        """Cumulative buckets (Prometheus ``le`` labels, ``+Inf`` last) and the sum."""
        buckets, running = [], 0
        for bound in (*self.bounds, None):
            running += stats.get(self.field(bound), 0)
            buckets.append(("+Inf" if bound is None else format(bound, "g"), running))
        return buckets, stats.get(self.sum_field, 0) / self.scale


BATCH_SIZE = Histogram("batch_size", "Events applied per commit",
                       (1, 10, 50, 100, 250, 500, 1000, 5000))
EVENT_AGE = Histogram("event_age_seconds", "Seconds from an entry's arrival in its "
                      "partition's stream to its commit",
                      (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), 1_000_000)
COMMIT = Histogram("commit_seconds", "Seconds a commit took in Redis, as the worker saw it",
                   (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
                   1_000_000)
WORKER_HISTOGRAMS = (BATCH_SIZE, EVENT_AGE, COMMIT)
SNAPSHOT = Histogram("snapshot_seconds", "Seconds a /ws client waited for its snapshot",
                     (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), 1_000_000)
