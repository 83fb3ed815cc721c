"""``/metrics`` in the Prometheus text format, built at scrape time from Redis and the hub."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(stats: dict[str, int], health: dict[str, Any], ws_clients: int) -> bytes:
    """The exposition text for the given counters and gauges."""
    families: list[Metric] = [
        CounterMetricFamily("monitor_events_applied", "Events the worker applied",
                            value=stats.get("applied", 0)),
        CounterMetricFamily("monitor_events_duplicate", "Events skipped as already applied "
                            "(same event_id)", value=stats.get("duplicates", 0)),
        CounterMetricFamily("monitor_events_dead_lettered", "Entries refused into <prefix>dead",
                            value=stats.get("dead", 0)),
        GaugeMetricFamily("monitor_worker_pending", "Entries read by a worker, not yet "
                          "acknowledged", value=health["pending"]),
        GaugeMetricFamily("monitor_websocket_clients", "WebSocket clients of this gateway",
                          value=ws_clients),
    ]
    if health["worker_lag"] is not None:
        families.append(GaugeMetricFamily("monitor_worker_lag", "Entries not yet applied",
                                          value=health["worker_lag"]))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
