"""The forecast of a running job (monitor/forecast.py) and its backtest on the real curves."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest

from bench import forecast_backtest
from bench.forecast_backtest import Call, brier, expected_calibration_error
from monitor.forecast import (
    DEFAULT_CALIBRATION,
    P_MIN,
    Calibration,
    Recalibration,
    forecast,
    recalibrate,
)

HORIZON = 1000


def power_law(a: float, b: float, c: float, until: int, every: int = 10
              ) -> list[tuple[float, float]]:
    """A clean a + b (step / horizon)^-c curve, one eval point every ``every`` steps."""
    return [(s, a + b * (s / HORIZON) ** -c) for s in range(every, until + 1, every)]


def overfitting(until: int) -> list[tuple[float, float]]:
    """Falls to 0.2 at step 300, then climbs back up."""
    return [(s, 0.2 + 0.5 * (s / 1000 - 0.3) ** 2) for s in range(20, until + 1, 20)]


def without_recalibration(calibration: Calibration = DEFAULT_CALIBRATION) -> Calibration:
    """The same calibration with the identity for its recalibration: the model's own p."""
    return replace(calibration, recalibration=Recalibration())


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


@pytest.mark.parametrize("calibration", [DEFAULT_CALIBRATION, without_recalibration()])
def test_a_lower_threshold_keeps_a_doubtful_run_going(calibration: Calibration) -> None:
    # The verdict is decided on the p_beat_best the forecast says, so the two always agree.
    p = forecast(STEEP, HORIZON, 0.2, calibration=calibration)["p_beat_best"]
    assert forecast(STEEP, HORIZON, 0.2, calibration=calibration, stop_below=p
                    )["verdict"] == "may_win"
    assert forecast(STEEP, HORIZON, 0.2, calibration=calibration, stop_below=p + 1e-9
                    )["verdict"] == "cannot_win"


@pytest.mark.parametrize(("name", "observations", "other_best", "model_p", "p_beat_best",
                          "verdict"), [
    ("steep improver heading below the best", STEEP, 0.4, 0.7455, 0.3388, "may_win"),
    ("flat run far above the best", FLAT, 0.5, 0.00125, P_MIN, "cannot_win"),
    ("clean run just above the best", CLEAN, 0.59, 0.5012, 0.1076, "may_win"),
    # The model's 17% is 1.3% once recalibrated, 2.0% as the larger with the latest point left
    # out (a stop must survive that): the verdict follows what the run is told.
    ("clean run told 2% by the recalibration, 17% by the model", CLEAN, 0.5, 0.1661, 0.0195,
     "cannot_win"),
])
def test_p_beat_best_is_the_models_p_recalibrated_and_the_verdict_follows_it(
        name: str, observations: list[tuple[float, float]], other_best: float, model_p: float,
        p_beat_best: float, verdict: str) -> None:
    model = forecast(observations, HORIZON, other_best, calibration=without_recalibration())
    f = forecast(observations, HORIZON, other_best)
    assert model["p_beat_best"] == pytest.approx(model_p, abs=1e-4)
    assert f["p_beat_best"] == pytest.approx(p_beat_best, abs=1e-4)
    recalibrated = DEFAULT_CALIBRATION.recalibration(model["p_beat_best"])
    if verdict == "may_win":
        assert f["p_beat_best"] == recalibrated
    else:  # the larger of the forecasts with and without the latest point
        assert f["p_beat_best"] >= recalibrated
    assert f["verdict"] == verdict
    assert (f["verdict"] == "cannot_win") == (f["p_beat_best"] < 0.05)


def test_a_recalibration_that_raises_p_keeps_a_run_the_model_would_stop() -> None:
    hopeful = replace(DEFAULT_CALIBRATION, recalibration=Recalibration(intercept=5.0, slope=1.0))
    assert forecast(FLAT, HORIZON, 0.5, calibration=without_recalibration())["verdict"] == (
        "cannot_win")
    f = forecast(FLAT, HORIZON, 0.5, calibration=hopeful)
    assert f["p_beat_best"] == pytest.approx(1 / (1 + math.exp(-(5 + math.log(0.00125 / 0.99875)))))
    assert f["verdict"] == "may_win"


@pytest.mark.parametrize(("p", "expected"), [
    (0.0, P_MIN), (1e-6, P_MIN), (0.01, P_MIN), (0.05, 0.00223), (0.1, 0.00610),
    (0.2, 0.01805), (0.5, 0.10698), (0.9, 0.70028), (0.99, 0.98355), (1.0, 1 - P_MIN),
])
def test_the_shipped_recalibration_at_known_points(p: float, expected: float) -> None:
    assert DEFAULT_CALIBRATION.recalibration(p) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("recalibration", [DEFAULT_CALIBRATION.recalibration, Recalibration(),
                                           Recalibration(-2.5, 0.9), Recalibration(3.0, 2.0)])
def test_a_recalibration_is_monotone_and_never_0_or_1(recalibration: Recalibration) -> None:
    grid = [0.0, *(i / 1000 for i in range(1, 1000)), 1.0]
    mapped = [recalibration(p) for p in grid]
    assert all(a <= b for a, b in itertools.pairwise(mapped))
    # Strictly increasing inside, flat only where held at a bound.
    inside = [recalibration(i / 1000) for i in range(2, 999)]
    assert all(a < b or a == b in (P_MIN, 1 - P_MIN) for a, b in itertools.pairwise(inside))
    assert min(mapped) >= P_MIN and max(mapped) <= 1 - P_MIN


def test_the_shipped_recalibration_lowers_every_p_below_the_stop_threshold() -> None:
    # So that with the default stop_below, the verdict is the model's, as backtested.
    g = DEFAULT_CALIBRATION.recalibration
    assert all(g(p) <= p for p in (i / 10000 for i in range(13, 500)))


def test_recalibrate_recovers_the_map_its_data_were_drawn_from() -> None:
    # Forecasts at p whose share that beat follows logit share = -2 + 1.5 logit p exactly,
    # each as a beaten and an unbeaten forecast weighted by that share.
    ps = [0.05, 0.1, 0.3, 0.5, 0.7, 0.9]
    share = [Recalibration(-2.0, 1.5)(p) for p in ps]
    fitted = recalibrate([*ps, *ps], [True] * len(ps) + [False] * len(ps),
                         [*share, *(1 - s for s in share)])
    assert fitted == Recalibration(-2.0, 1.5)


@pytest.mark.parametrize(("p", "beat", "message"), [
    ([0.1, 0.5, 0.9], [False, False, False], "beat their best and some that did not"),
    ([0.1, 0.1, 0.1, 0.9, 0.9, 0.9], [True, True, False, True, False, False], "decreasing"),
    ([0.1, 0.1, 0.9, 0.9], [False, False, True, True], "did not converge"),  # separable
])
def test_recalibrate_refuses_data_that_cannot_fix_an_increasing_map(
        p: list[float], beat: list[bool], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recalibrate(p, beat, [1.0] * len(p))


@pytest.mark.parametrize(("calls", "ece", "score"), [
    ([Call(0.0, False, "a")], 0.0, 0.0),
    ([Call(0.3, False, "a"), Call(0.3, True, "b")], 0.2, 0.29),  # one bin: |0.3 - 0.5|
    # two bins, each wrong by 0.2: [0.2, 0.35) told 0.2, none beat; [0.75, 1] told 0.8, all did
    ([Call(0.2, False, "a"), Call(0.8, True, "a")], 0.2, 0.04),
])
def test_the_calibration_scores(calls: list[Call], ece: float, score: float) -> None:
    assert expected_calibration_error(calls) == pytest.approx(ece)
    assert brier(calls) == pytest.approx(score)


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
                    "### Calibration: ensemble before recalibration",
                    "### Calibration: bootstrap power law", "### Calibration per dataset",
                    "### Calibration scores",
                    "### CPU per forecast"):
        assert heading in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| **all** |")]
    methods = {row[1]: row for row in rows}
    assert set(methods) == {"ensemble", "auto-stop: ensemble cannot_win twice in a row",
                            "bootstrap power law", "25% worse at half-way"}
    for method in ("ensemble", "auto-stop: ensemble cannot_win twice in a row"):
        told, winners = methods[method][5].split(" / ")
        assert told == "0" and int(winners) >= 1
