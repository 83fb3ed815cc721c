"""monitor.histograms: the counters a worker adds with its commit, and what /metrics reads."""

from __future__ import annotations

from monitor.histograms import Histogram

AGE = Histogram("age", "seconds", (0.1, 1, 10), 1000)


def test_observations_land_in_their_bucket_and_read_back_cumulative() -> None:
    into: dict[str, int] = {"age:le:1": 2}  # what the batch already observed
    AGE.observe(into, [0.05, 0.1, 0.5, 1, 3, 99])
    AGE.observe(into, (value for value in [0.2]))  # any iterable
    assert into == {"age:le:0.1": 2, "age:le:1": 5, "age:le:10": 1, "age:le:inf": 1,
                    "age:sum": 103_850}
    assert AGE.read(into) == ([("0.1", 2), ("1", 7), ("10", 8), ("+Inf", 9)], 103.85)


def test_nothing_observed_adds_nothing() -> None:
    into: dict[str, int] = {}
    AGE.observe(into, [])
    assert into == {}
    assert AGE.read(into) == ([("0.1", 0), ("1", 0), ("10", 0), ("+Inf", 0)], 0.0)
