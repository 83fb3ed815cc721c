"""The forecast of a running job (monitor/forecast.py) and its backtest on the real curves."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import forecast_backtest
from monitor.forecast import forecast

HORIZON = 1000


def power_law(a: float, b: float, c: float, until: int, every: int = 10
              ) -> list[tuple[float, float]]:
    """A clean a + b (step / horizon)^-c curve, one eval point every ``every`` steps."""
    return [(s, a + b * (s / HORIZON) ** -c) for s in range(every, until + 1, every)]


def overfitting(until: int) -> list[tuple[float, float]]:
    """Falls to 0.2 at step 300, then climbs back up."""
    return [(s, 0.2 + 0.5 * (s / 1000 - 0.3) ** 2) for s in range(20, until + 1, 20)]


CLEAN = power_law(0.1, 0.5, 0.5, until=300)
FLAT = [(s, 1.0 + 0.001 * math.sin(s)) for s in range(20, 501, 20)]
STEEP = power_law(0.05, 0.3, 0.8, until=300)  # 0.35 at the horizon, heading far lower


@pytest.mark.parametrize(("name", "observations", "other_best", "verdict"), [
    ("flat run far above the best", FLAT, 0.5, "cannot_win"),
    ("steep improver heading below the best", STEEP, 0.4, "may_win"),
    ("fewer than 3 observations", [(200, 0.9), (300, 0.8)], 0.5, "too_early"),
    ("under 10% of the horizon", power_law(0.1, 0.5, 0.5, until=90), 0.1, "too_early"),
    ("the group's best itself", CLEAN, 1.5, "leading"),
    ("alone in its group", CLEAN, None, "leading"),
    ("overfitting, already past its best", overfitting(600), 0.1, "cannot_win"),
])
def test_verdicts(name: str, observations: list[tuple[float, float]],
                  other_best: float | None, verdict: str) -> None:
    assert forecast(observations, HORIZON, other_best)["verdict"] == verdict


def test_a_clean_power_law_is_forecast_within_5_percent_from_30_percent_of_its_horizon() -> None:
    f = forecast(CLEAN, HORIZON, 0.5)
    assert f["at_step"] == 300 and f["horizon_step"] == HORIZON
    assert f["best_p50"] == pytest.approx(0.1 + 0.5, rel=0.05)


@pytest.mark.parametrize("observations", [CLEAN, FLAT, STEEP, overfitting(600),
                                          overfitting(1000), [(200, 0.9), (300, 0.8)]])
def test_the_percentiles_are_ordered_and_never_above_the_best_so_far(
        observations: list[tuple[float, float]]) -> None:
    f = forecast(observations, HORIZON, 0.5)
    best = min(v for _, v in observations)
    assert f["best_p10"] <= f["best_p50"] <= f["best_p90"] <= best


def test_an_eval_at_step_0_is_left_out_of_the_fit() -> None:
    with_zero = forecast([(0, 5.0), *CLEAN], HORIZON, 0.5)
    assert with_zero["best_p50"] == pytest.approx(forecast(CLEAN, HORIZON, 0.5)["best_p50"])


def test_a_run_past_its_horizon_is_forecast_from_its_best_so_far() -> None:
    f = forecast(power_law(0.1, 0.5, 0.5, until=1200), HORIZON, 0.5)
    assert f["best_p10"] <= f["best_p50"] <= f["best_p90"] <= 0.1 + 0.5 * 1.2**-0.5
    assert f["verdict"] == "cannot_win"


def test_p_beat_best_is_a_probability_none_without_rivals_and_one_when_leading() -> None:
    assert forecast(CLEAN, HORIZON, None)["p_beat_best"] is None
    assert forecast(CLEAN, HORIZON, 1.5)["p_beat_best"] == 1.0
    p = forecast(STEEP, HORIZON, 0.4)["p_beat_best"]
    assert 0.05 <= p <= 1.0
    assert forecast(FLAT, HORIZON, 0.5)["p_beat_best"] < 0.05


def test_a_lower_threshold_keeps_a_doubtful_run_going() -> None:
    p = forecast(STEEP, HORIZON, 0.2)["p_beat_best"]
    assert forecast(STEEP, HORIZON, 0.2, stop_below=p)["verdict"] == "may_win"
    assert forecast(STEEP, HORIZON, 0.2, stop_below=p + 1e-9)["verdict"] == "cannot_win"


def test_the_same_input_gives_the_same_forecast() -> None:
    first: dict[str, Any] = forecast(STEEP, HORIZON, 0.4)
    assert all(forecast(STEEP, HORIZON, 0.4) == first for _ in range(3))


@pytest.mark.parametrize(("observations", "horizon"), [
    ([], HORIZON), (CLEAN, 0), ([*CLEAN, (310, 0.0)], HORIZON),
    ([*CLEAN, (310, math.nan)], HORIZON)])
def test_nonsense_is_refused(observations: list[tuple[float, float]], horizon: int) -> None:
    with pytest.raises(ValueError):
        forecast(observations, horizon, 0.5)


def test_the_quick_backtest_prints_its_tables_and_tells_no_winner_it_cannot_win(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert forecast_backtest.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for heading in ("## Forecast backtest (quick)", "### Calibration: ensemble",
                    "### Calibration: bootstrap power law", "### CPU per forecast"):
        assert heading in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| **all** |")]
    methods = {row[1]: row for row in rows}
    assert set(methods) == {"ensemble", "bootstrap power law", "25% worse at half-way"}
    told, winners = methods["ensemble"][5].split(" / ")
    assert told == "0" and int(winners) >= 1
