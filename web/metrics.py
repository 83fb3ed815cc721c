"""``/metrics`` in the Prometheus text format, built at scrape time from Redis (every
partition's counters and histograms, which the workers keep) and this gateway's own counters
(docs/rest.md, Metrics)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor.histograms import SNAPSHOT, WORKER_HISTOGRAMS, Histogram


@dataclass
class GatewayCounters:
    """What this gateway process counts of its WebSocket clients."""

    sent: int = 0  # messages sent
    resyncs: int = 0  # snapshots sent to a client that fell behind
    dropped: int = 0  # clients closed for being too slow (1013)
    snapshot: dict[str, int] = field(default_factory=dict)  # the SNAPSHOT histogram


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _histogram(h: Histogram, prefix: str, stats: dict[str, int], labels: list[str],
               values: list[str], into: HistogramMetricFamily | None) -> HistogramMetricFamily:
    family = into or HistogramMetricFamily(f"{prefix}{h.name}", h.help, labels=labels)
    buckets, total = h.read(stats)
    family.add_metric(values, buckets, total)
    return family


def render(stats: list[dict[str, int]], health: dict[str, Any], ws_clients: int,
           gateway: GatewayCounters) -> bytes:
    """The exposition text: totals over the partitions (``stats``: each partition's), then
    each partition's, then this gateway's."""
    total = {k: sum(s.get(k, 0) for s in stats) for k in ("applied", "duplicates", "dead")}
    families: list[Metric] = [
        CounterMetricFamily("monitor_events_applied", "Events the worker applied",
                            value=total["applied"]),
        CounterMetricFamily("monitor_events_duplicate", "Events skipped as already applied "
                            "(same event_id)", value=total["duplicates"]),
        CounterMetricFamily("monitor_events_dead_lettered", "Entries refused into <prefix>dead",
                            value=total["dead"]),
        GaugeMetricFamily("monitor_worker_pending", "Entries read by a worker, not yet "
                          "committed", value=health["pending"]),
        GaugeMetricFamily("monitor_websocket_clients", "WebSocket clients of this gateway",
                          value=ws_clients),
    ]
    if health["worker_lag"] is not None:
        families.append(GaugeMetricFamily("monitor_worker_lag", "Entries not yet read by a worker",
                                          value=health["worker_lag"]))
    families += _partitions(stats, health)
    families += _gateway(gateway)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def _partitions(stats: list[dict[str, int]], health: dict[str, Any]) -> list[Metric]:
    labels = ["partition"]
    applied = CounterMetricFamily("monitor_partition_events_applied",
                                  "Events applied, by partition", labels=labels)
    takeovers = CounterMetricFamily("monitor_partition_lease_takeovers",
                                    "Times a worker took a partition's lease", labels=labels)
    lag = GaugeMetricFamily("monitor_partition_lag", "Entries of a partition's stream not "
                            "yet read by its worker", labels=labels)
    pending = GaugeMetricFamily("monitor_partition_pending", "Entries of a partition read "
                                "but not yet committed", labels=labels)
    histograms: dict[str, HistogramMetricFamily] = {}
    parts = health.get("partitions") or [{"partition": 0, "worker_lag": health["worker_lag"],
                                          "pending": health["pending"]}]
    for index, (counts, state) in enumerate(zip(stats, parts)):
        value = [str(index)]
        applied.add_metric(value, counts.get("applied", 0))
        takeovers.add_metric(value, counts.get("lease_takeovers", 0))
        if state["worker_lag"] is not None:
            lag.add_metric(value, state["worker_lag"])
        pending.add_metric(value, state["pending"])
        for h in WORKER_HISTOGRAMS:
            histograms[h.name] = _histogram(h, "monitor_partition_", counts, labels, value,
                                            histograms.get(h.name))
    out: list[Metric] = [applied, takeovers, lag, pending, *histograms.values()]
    if health.get("router_backlog") is not None:
        out.append(GaugeMetricFamily("monitor_router_backlog", "Raw XADDs to <prefix>events "
                                     "not yet forwarded to their partition",
                                     value=health["router_backlog"]))
    return out


def _gateway(counters: GatewayCounters) -> list[Metric]:
    return [
        CounterMetricFamily("monitor_websocket_messages_sent", "Messages this gateway sent "
                            "to WebSocket clients", value=counters.sent),
        CounterMetricFamily("monitor_websocket_resyncs", "Fresh snapshots sent to clients "
                            "that fell behind", value=counters.resyncs),
        CounterMetricFamily("monitor_websocket_dropped", "Clients closed (1013) for not "
                            "keeping up", value=counters.dropped),
        _histogram(SNAPSHOT, "monitor_websocket_", counters.snapshot, [], [], None),
    ]
