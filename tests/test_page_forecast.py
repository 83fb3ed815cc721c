"""The forecast on the page and the charts it is drawn on, in a real browser (Debian's Chromium
driven by Playwright) against the real gateway and worker.

A running card says its forecast's verdict in words (``badge-forecast``); a running job's view
draws the forecast band to its horizon and gives the verdict, the chance to beat the best and
the GPU-hours left; the charts of the job view, the comparison and the insights panel are uPlot
on canvas, with a crosshair that names values, a log-scale toggle and both palettes.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Locator, Page, expect

from monitor.keys import Keys
from tests.browser import ROOT, LiveGateway, run_events
from tests.gateway_helpers import RunningWorker
from tests.page_fixtures import VIEWPORT
from tests.test_page import (
    axe_violations,
    card,
    group,
    open_live,
    screenshot,
    seed,
)

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=10_000)

M = "Qwen/Qwen2.5-7B-Instruct"
SOLO = "meta-llama/Llama-3.2-3B-Instruct"
BAND = "forecast of the best eval loss (p10-p90)"


# --- Runs and forecasts -------------------------------------------------------------------------


def forecast(verdict: str, *, p: float | None = None, left: float | None = None, at: int = 600,
             horizon: int = 1200, p10: float = 0.31, p50: float = 0.33, p90: float = 0.36
             ) -> dict[str, Any]:
    return {"at_step": at, "horizon_step": horizon, "best_p10": p10, "best_p50": p50,
            "best_p90": p90, "p_beat_best": p, "verdict": verdict, "gpu_hours_left": left}


def forecast_event(job_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "job_forecast", "job_id": job_id, "forecast": value}


def running(job_id: str, model: str, best: float, *, ts: float, name: str) -> list[dict[str, Any]]:
    """A run half-way: 6 of 12 epochs (steps 100 to 600), its best eval loss at epoch 5."""
    return run_events(job_id, model, best, ts=ts, name=name, upto=6, status=None)


def badge_board(now: float) -> list[dict[str, Any]]:
    """A finished best run and five running ones, one per way a forecast is said; a run that
    finished after a forecast; a forecast for a job nobody started."""
    events = run_events("best-a", M, 0.30, ts=now - 9000, name="qwen-best")
    events += running("run-cw", M, 0.40, ts=now - 800, name="cannot-win")
    events += running("run-cw0", M, 0.41, ts=now - 700, name="cannot-win-no-gpu")
    events += running("run-mw", M, 0.32, ts=now - 600, name="may-win")
    events += running("run-te", M, 0.45, ts=now - 500, name="too-early")
    events += running("solo-ld", SOLO, 0.50, ts=now - 400, name="solo-leading")
    events += running("done-1", M, 0.42, ts=now - 300, name="finished-later")
    events += [
        forecast_event("run-cw", forecast("cannot_win", p=0.012, left=3.24)),
        forecast_event("run-cw0", forecast("cannot_win", p=0.003)),
        forecast_event("run-mw", forecast("may_win", p=0.34, left=1.5)),
        forecast_event("run-te", forecast("too_early", p=0.2, left=6.0)),
        forecast_event("solo-ld", forecast("leading", left=0.7)),
        forecast_event("done-1", forecast("cannot_win", p=0.01, left=2.0)),
        {"type": "job_finished", "job_id": "done-1", "status": "completed", "ts": now - 10},
        forecast_event("ghost", forecast("may_win", p=0.5)),
    ]
    return events


BADGES = {  # job id -> (verdict, exact text)
    "run-cw": ("cannot_win", "can't win · p 0.01 · saves 3.2 GPU-h"),
    "run-cw0": ("cannot_win", "can't win · p < 0.01"),
    "run-mw": ("may_win", "may win · p 0.34"),
    "run-te": ("too_early", "too early to tell"),
    "solo-ld": ("leading", "leading"),
}


def legend_value(chart: Locator, label: str) -> Locator:
    """The crosshair's value of the series named `label` in a chart's legend."""
    row = chart.locator(".u-legend .u-series").filter(has=chart.page.locator(
        ".u-label", has_text=label))
    return row.locator(".u-value").first


def hover(chart: Locator, fx: float, fy: float = 0.5) -> None:
    """Move the mouse over a chart's plot at fractions (fx, fy) of its width and height."""
    over = chart.locator(".u-over")
    expect(over).to_be_visible()
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    assert box is not None
    chart.page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)


RUN_1 = {"light": "rgb(37, 99, 235)", "dark": "rgb(96, 165, 250)"}  # --run-1 of each palette


def use_scheme(page: Page, chart: Locator, scheme: str) -> None:
    """Switch the colour scheme and wait until the chart is redrawn in its palette."""
    page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
    expect(chart.locator(".u-legend .u-series.series-line .u-marker").first).to_have_css(
        "border-bottom-color", RUN_1[scheme])


def save_doc_screenshot(page: Page, name: str) -> None:
    screenshot(page, name)
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        page.screenshot(path=str(ROOT / "docs" / "screenshots" / name))


# --- The badge ------------------------------------------------------------------------------------


def test_a_running_card_says_its_forecast_in_words(page: Page, r: redis.Redis, keys: Keys,
                                                   worker: RunningWorker) -> None:
    seed(r, keys, worker, badge_board(time.time()))
    open_live(page, "/?group=1")
    expect(page.get_by_test_id("job-card")).to_have_count(7)  # the ghost's forecast is ignored
    for job_id, (verdict, text) in BADGES.items():
        badge = card(page, job_id).get_by_test_id("badge-forecast")
        expect(badge).to_have_text(text)
        expect(badge).to_have_attribute("data-verdict", verdict)
    expect(page.get_by_test_id("badge-forecast")).to_have_count(len(BADGES))
    for job_id in ("best-a", "done-1"):  # finished: no forecast, even one sent while running
        expect(card(page, job_id).get_by_test_id("badge-forecast")).to_have_count(0)
    # Each verdict has its own colour.
    colours = {verdict: card(page, job_id).get_by_test_id("badge-forecast").evaluate(
        "e => getComputedStyle(e).backgroundColor") for job_id, (verdict, _) in BADGES.items()}
    assert len(set(colours.values())) == 4, colours
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        page.evaluate("window.scrollTo(0, 0)")
        save_doc_screenshot(page, f"forecast-cards-{scheme}.png")
    page.emulate_media(color_scheme="light")

    # Live: a new forecast replaces the badge; finishing removes it.
    seed(r, keys, worker, [forecast_event("run-mw", forecast(
        "cannot_win", p=0.004, left=0.8, at=700))])
    badge = card(page, "run-mw").get_by_test_id("badge-forecast")
    expect(badge).to_have_text("can't win · p < 0.01 · saves 0.8 GPU-h")
    expect(badge).to_have_attribute("data-verdict", "cannot_win")
    seed(r, keys, worker, [{"type": "job_finished", "job_id": "run-mw",
                                   "status": "cancelled"}])
    expect(card(page, "run-mw").locator(".status")).to_have_text("Cancelled")
    expect(card(page, "run-mw").get_by_test_id("badge-forecast")).to_have_count(0)


def test_the_forecast_helpers_say_it_as_the_page_does(page: Page) -> None:
    page.goto("/")
    cases = page.evaluate("""async () => {
        const f = await import('/static/format.js');
        const fc = (verdict, p, left) => ({verdict, p_beat_best: p, gpu_hours_left: left});
        return [
            f.forecastText(fc("cannot_win", 0.0149, 3.24)),
            f.forecastText(fc("cannot_win", 0.005, null)),
            f.forecastText(fc("cannot_win", 0.0049, 12.44)),
            f.forecastText(fc("cannot_win", 0, 0.35)),
            f.forecastText(fc("may_win", 0.335, 2)),
            f.forecastText(fc("may_win", null, 2)),
            f.forecastText(fc("leading", null, 4)),
            f.forecastText(fc("too_early", 0.4, 4)),
            f.chanceText(0.004), f.chanceText(0.5), f.chanceText(null),
            f.forecastRangeText({best_p10: 0.31, best_p50: 0.33, best_p90: 0.36,
                                 horizon_step: 12000}),
        ];
    }""")
    assert cases == ["can't win · p 0.01 · saves 3.2 GPU-h", "can't win · p 0.01",
                     "can't win · p < 0.01 · saves 12.4 GPU-h", "can't win · p < 0.01 · saves 0.35 GPU-h",
                     "may win · p 0.34", "may win", "leading", "too early to tell",
                     "< 0.01", "0.50", "–", "0.3300 (p10 0.3100, p90 0.3600) at step 12,000"]


# --- The band -------------------------------------------------------------------------------------


def test_a_running_jobs_view_draws_its_forecast_band_live(page: Page, r: redis.Redis,
                                                          keys: Keys,
                                                          worker: RunningWorker) -> None:
    now = time.time()
    events = run_events("best-a", M, 0.30, ts=now - 9000, name="qwen-best")
    events += running("run-b", M, 0.40, ts=now - 800, name="qwen-running")
    events.append(forecast_event("run-b", forecast("cannot_win", p=0.012, left=3.24)))
    seed(r, keys, worker, events)
    open_live(page)
    card(page, "run-b").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    chart = detail.locator(".chart")
    expect(chart.locator("canvas")).to_be_visible()
    expect(chart.locator(".chart-caption")).to_have_text(BAND)
    expect(chart.locator(".u-legend .u-series.series-forecast")).to_have_count(1)
    # The fields say the forecast in words.
    expect(detail.locator(".detail-forecast")).to_have_text(
        "can't win · p 0.01 · saves 3.2 GPU-h")
    expect(detail.locator(".detail-forecast [data-verdict]")).to_have_attribute(
        "data-verdict", "cannot_win")
    field = detail.locator("dd")
    expect(detail.locator("dt", has_text="Chance to beat the best").locator("+ dd")).to_have_text(
        "0.01")
    expect(detail.locator("dt", has_text="GPU-h left").locator("+ dd")).to_have_text("3.2")
    expect(field.filter(has_text="(p10 0.3100, p90 0.3600) at step 1,200")).to_have_text(
        "0.3300 (p10 0.3100, p90 0.3600) at step 1,200")
    # The x axis reaches the horizon: at the right edge the crosshair is at step 1,200, on the
    # forecast's median; at step 300 it is on the curves.
    hover(chart, 0.999)
    expect(legend_value(chart, "step")).to_have_text("1,200")
    expect(legend_value(chart, "forecast p50")).to_have_text("0.3300")
    hover(chart, 0.2)
    expect(legend_value(chart, "step")).to_have_text("300")
    expect(legend_value(chart, "eval loss")).to_have_text("0.4240")
    page.set_viewport_size({"width": 1280, "height": 1040})  # the forecast's fields in view
    for scheme in ("light", "dark"):
        use_scheme(page, chart, scheme)
        hover(chart, 0.45)
        save_doc_screenshot(page, f"forecast-job-view-{scheme}.png")
    use_scheme(page, chart, "light")
    page.set_viewport_size(VIEWPORT)

    # A new eval and a new forecast: the band moves to the new horizon, the fields follow.
    seed(r, keys, worker, [
        {"type": "metrics", "job_id": "run-b", "step": 700, "epoch": 7, "loss": 0.5,
         "eval_loss": 0.39},
        forecast_event("run-b", forecast("may_win", p=0.08, left=2.5, at=700, horizon=1400,
                                         p10=0.29, p50=0.325, p90=0.35)),
    ])
    expect(detail.locator(".detail-forecast")).to_have_text("may win · p 0.08")
    hover(chart, 0.5)
    hover(chart, 0.999)
    expect(legend_value(chart, "step")).to_have_text("1,400")
    expect(legend_value(chart, "forecast p50")).to_have_text("0.3250")

    # Finished: no band, no forecast fields.
    seed(r, keys, worker, [{"type": "job_finished", "job_id": "run-b",
                                   "status": "completed"}])
    expect(detail.locator(".status")).to_have_text("Completed")
    expect(chart.locator(".chart-caption")).to_be_hidden()
    expect(chart.locator(".u-legend .u-series.series-forecast")).to_have_count(0)
    expect(detail.locator(".detail-forecast")).to_have_count(0)
    hover(chart, 0.999)
    expect(legend_value(chart, "step")).to_have_text("700")  # the x axis ends at the data


def test_a_finished_jobs_view_has_no_band(page: Page, r: redis.Redis, keys: Keys,
                                          worker: RunningWorker) -> None:
    seed(r, keys, worker, badge_board(time.time()))
    open_live(page)
    card(page, "done-1").locator(".card-title").click()
    chart = page.get_by_test_id("job-detail").locator(".chart")
    expect(chart.locator("canvas")).to_be_visible()
    expect(chart.locator(".u-legend .u-series.series-line")).to_have_count(2)
    expect(chart.locator(".u-legend .u-series.series-forecast")).to_have_count(0)
    expect(chart.locator(".chart-caption")).to_be_hidden()
    expect(page.get_by_test_id("job-detail").locator(".detail-forecast")).to_have_count(0)


# --- The charts -----------------------------------------------------------------------------------


def test_the_charts_of_every_view_are_live_canvases(page: Page, r: redis.Redis, keys: Keys,
                                                    worker: RunningWorker) -> None:
    """Job view, comparison and insights: a crosshair that names values, a log-scale toggle
    kept from one view to the next, and the palette of the colour scheme."""
    seed(r, keys, worker, badge_board(time.time()))
    open_live(page, "/?group=1")

    card(page, "best-a").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    chart = detail.locator(".chart")
    expect(chart.locator(".uplot canvas")).to_be_visible()
    hover(chart, 0.55)
    expect(legend_value(chart, "step")).to_have_text("700")
    expect(legend_value(chart, "training loss")).to_have_text("0.4988")
    expect(legend_value(chart, "eval loss")).to_have_text("0.3260")
    # The series' colours are the palette's: redrawn when the scheme changes.
    use_scheme(page, chart, "light")
    use_scheme(page, chart, "dark")
    use_scheme(page, chart, "light")
    toggle = chart.locator('[data-action="log-scale"]')
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(chart.locator(".uplot canvas")).to_be_visible()
    hover(chart, 0.55)
    expect(legend_value(chart, "eval loss")).to_have_text("0.3260")
    page.keyboard.press("Escape")

    # Dragging zooms into those steps; live data keeps the zoom; a double click zooms out.
    card(page, "run-cw").locator(".card-title").click()
    hover(chart, 0.05)
    page.mouse.down()
    hover(chart, 0.3)
    page.mouse.up()
    hover(chart, 0.999)
    expect(legend_value(chart, "step")).to_have_text("400")
    seed(r, keys, worker, [{"type": "metrics", "job_id": "run-cw", "step": 700, "epoch": 7,
                            "loss": 0.5, "eval_loss": 0.43}])
    expect(chart.locator(".u-series.series-line").nth(1)).to_have_attribute("data-points", "7")
    hover(chart, 0.5)
    hover(chart, 0.999)
    expect(legend_value(chart, "step")).to_have_text("400")
    chart.locator(".u-over").dblclick()
    hover(chart, 0.999)
    expect(legend_value(chart, "step")).to_have_text("1,200")  # the forecast's horizon
    page.keyboard.press("Escape")

    for job_id in ("best-a", "run-mw", "run-cw"):
        card(page, job_id).get_by_test_id("job-select").check()
    page.get_by_test_id("compare-button").click()
    modal = page.get_by_test_id("compare-modal")
    chart = modal.locator(".chart")
    expect(chart.locator(".uplot canvas")).to_be_visible()
    expect(chart.locator(".u-legend .u-series.series-line")).to_have_count(6)
    expect(chart.locator('[data-action="log-scale"]')).to_have_attribute("aria-pressed", "true")
    hover(chart, 0.45)
    expect(legend_value(chart, "step")).to_have_text("600")
    expect(legend_value(chart, "Run #1 eval loss")).to_have_text("0.3140")
    expect(legend_value(chart, "Run #2 eval loss")).to_have_text("0.3340")
    page.keyboard.press("Escape")

    group(page, M).get_by_test_id("insights-button").click()
    panel = page.get_by_test_id("model-insights")
    scatter = panel.get_by_test_id("insights-pareto")
    expect(scatter.locator(".uplot canvas")).to_be_visible()
    expect(scatter.locator(".scatter-point")).to_have_count(6)  # the model's runs with a loss
    front = scatter.locator(".scatter-point.front th").all_text_contents()
    expect(scatter.locator(".scatter-label")).to_have_text(front)  # labelled in x order
    label = scatter.locator(".scatter-label").first
    # The crosshair names the run under it.
    at = label.evaluate("e => [parseFloat(e.style.left), parseFloat(e.style.top)]")
    box = scatter.locator(".u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + at[0], box["y"] + at[1])
    hours = scatter.locator(".scatter-point.front td").first.text_content()
    expect(legend_value(scatter, "run")).to_have_text(f"{front[0]} · {hours} GPU-hours")
    expect(legend_value(scatter, "Pareto front")).to_have_text(re.compile(r"^0\.\d{4}$"))


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_badges_and_band_pass_an_accessibility_audit(
        browser: Browser, gateway: LiveGateway, r: redis.Redis, keys: Keys,
        worker: RunningWorker, color_scheme: str) -> None:
    seed(r, keys, worker, badge_board(time.time()))
    # The audit is injected with eval, which the page's Content-Security-Policy forbids.
    context = browser.new_context(viewport=VIEWPORT, base_url=gateway.url, bypass_csp=True,
                                  color_scheme=color_scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        open_live(page, "/?group=1")
        expect(page.get_by_test_id("badge-forecast")).to_have_count(len(BADGES))
        found = {"cards": axe_violations(page)}
        card(page, "run-cw").locator(".card-title").click()
        expect(page.get_by_test_id("job-detail").locator(".chart-caption")).to_be_visible()
        found["job view"] = axe_violations(page)
    finally:
        context.close()
    assert found == {"cards": [], "job view": []}
