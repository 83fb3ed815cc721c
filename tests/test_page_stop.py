"""Stopping runs from the page, and runs gone silent, in a real browser (Debian's Chromium
driven by Playwright) against the real gateway and worker.

One Stop action (an inline confirmation, never a dialog) on running cards, in the job view and
in the comparison; who asked a run to stop and why (``badge-stop``); "Stop all that can't win"
on a model's section while no advisor stops them itself; a silent run's ``badge-stale`` and its
"Mark failed"; a refusal (the job ended meanwhile) said where the click was.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Locator, Page, Route, expect

from monitor.keys import Keys
from tests.browser import LiveGateway, run_events
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
from tests.test_page_forecast import forecast, forecast_event, save_doc_screenshot

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=10_000)

M = "Qwen/Qwen2.5-7B-Instruct"
SOLO = "meta-llama/Llama-3.2-3B-Instruct"
AUTO_REASON = ("cannot win: p_beat_best 0.004 (below 0.05) at steps 600 and 700; a stop now "
               "saves 3.2 GPU-h")
PAGE_REASON = "can't win (stopped from the page)"
TIME = r"\d{1,2}:\d\d(?: [AP]M)?"  # a time of today, as the browser's locale writes it
# the page's clock runs 14 minutes ahead in one test: just before midnight that is tomorrow,
# and a time of another day comes with its date
DAY = r"(?:[A-Z][a-z]{2} \d{1,2}, )?"


# --- Runs -----------------------------------------------------------------------------------------


def running(job_id: str, model: str, best: float, *, ts: float, name: str) -> list[dict[str, Any]]:
    """A run half-way: 6 of 12 epochs (steps 100 to 600)."""
    return run_events(job_id, model, best, ts=ts, name=name, upto=6, status=None)


def stop_board(now: float) -> list[dict[str, Any]]:
    """A finished best run; running ones: two that can't win (3.24 and 0.5 GPU-h left), one
    that may win, one that can't win but was already asked to stop (by auto-stop); a running
    run of another model that leads; a run of that model stopped by a person."""
    events = run_events("best-a", M, 0.30, ts=now - 9000, name="qwen-best")
    events += running("run-cw", M, 0.40, ts=now - 800, name="cannot-win")
    events += running("run-cw2", M, 0.41, ts=now - 750, name="cannot-win-too")
    events += running("run-mw", M, 0.32, ts=now - 700, name="may-win")
    events += running("run-auto", M, 0.43, ts=now - 650, name="auto-stopping")
    events += running("solo-ld", SOLO, 0.50, ts=now - 600, name="solo-leading")
    events += running("solo-st", SOLO, 0.52, ts=now - 550, name="solo-stopped")
    events += [
        forecast_event("run-cw", forecast("cannot_win", p=0.012, left=3.24)),
        forecast_event("run-cw2", forecast("cannot_win", p=0.003, left=0.5)),
        forecast_event("run-mw", forecast("may_win", p=0.34, left=1.5)),
        forecast_event("run-auto", forecast("cannot_win", p=0.004, left=3.2)),
        forecast_event("solo-ld", forecast("leading", left=0.7)),
        {"type": "job_stop_requested", "job_id": "run-auto", "by": "forecast",
         "reason": AUTO_REASON},
        {"type": "job_stop_requested", "job_id": "solo-st", "by": "user", "reason": None},
        {"type": "job_finished", "job_id": "solo-st", "status": "stopped"},
    ]
    return events


def view(page: Page, job_id: str) -> dict[str, Any]:
    """The job's view, as the gateway's REST API gives it."""
    answer = page.request.get(f"/api/jobs/{job_id}")
    assert answer.ok, answer.text()
    return dict(answer.json())


def go_silent(r: redis.Redis, keys: Keys, worker: RunningWorker, job_id: str) -> None:
    """What the advisor writes when a running job sent nothing for too long."""
    seed(r, keys, worker, [{"type": "job_stale", "job_id": job_id, "last_seen": time.time()}])


def stop_button(where: Page | Locator) -> Locator:
    return where.get_by_test_id("stop-button")


# --- Stop from a card -----------------------------------------------------------------------------


def test_stop_a_run_from_its_card_after_an_inline_confirmation(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    seed(r, keys, worker, stop_board(time.time()))
    open_live(page, "/?group=1")
    # Offered on running runs not asked to stop yet; never on finished ones.
    offered = page.locator('[data-testid="job-card"]:has([data-testid="stop-button"])')
    expect(offered).to_have_count(4)
    assert sorted(offered.evaluate_all("cards => cards.map(c => c.dataset.jobId)")) == [
        "run-cw", "run-cw2", "run-mw", "solo-ld"]

    cw = card(page, "run-cw")
    expect(stop_button(cw)).to_have_accessible_name("Stop cannot-win")
    stop_button(cw).click()
    # The button turns into the question; nothing is sent, the job does not open.
    confirm = cw.get_by_test_id("stop-confirm")
    expect(confirm).to_be_focused()
    expect(cw.locator(".confirm")).to_have_text("Stop run?StopCancel")
    expect(stop_button(cw)).to_have_count(0)
    expect(cw.get_by_test_id("archive-button")).to_have_count(0)
    expect(page.get_by_test_id("job-detail")).to_be_hidden()
    # It stays open while the run goes on.
    seed(r, keys, worker, [{"type": "metrics", "job_id": "run-cw", "step": 700, "epoch": 7,
                            "loss": 0.5}])
    expect(cw.locator(".status")).to_have_text("Running · epoch 7/12")
    expect(confirm).to_be_focused()
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        page.evaluate("window.scrollTo(0, 0)")
        save_doc_screenshot(page, f"stop-confirm-{scheme}.png")
    page.emulate_media(color_scheme="light")

    # Cancel leaves nothing: the button is back (with the focus), no request was written.
    cw.get_by_test_id("confirm-cancel").click()
    expect(cw.locator(".confirm")).to_have_count(0)
    expect(stop_button(cw)).to_be_focused()
    expect(page.get_by_test_id("job-detail")).to_be_hidden()
    assert view(page, "run-cw")["stop_requested"] is None
    # Escape cancels too.
    stop_button(cw).click()
    expect(cw.get_by_test_id("stop-confirm")).to_be_focused()
    page.keyboard.press("Escape")
    expect(cw.locator(".confirm")).to_have_count(0)

    stop_button(cw).click()
    cw.get_by_test_id("stop-confirm").click()
    badge = cw.get_by_test_id("badge-stop")
    expect(badge).to_have_text("stop requested by you")
    expect(badge).to_have_attribute("title", re.compile(r"^Stop requested by you at \S+"))
    expect(stop_button(cw)).to_have_count(0)  # a request cannot be taken back
    expect(cw.get_by_test_id("archive-button")).to_be_visible()
    expect(cw.locator(".status")).to_have_text("Running · epoch 7/12")
    request = view(page, "run-cw")["stop_requested"]
    assert request["by"] == "user" and request["reason"] is None
    assert abs(request["at"] - time.time()) < 60
    for job_id in ("run-cw2", "run-mw", "run-auto", "solo-ld"):  # only that one
        assert view(page, job_id)["stop_requested"] == (
            {"at": view(page, job_id)["stop_requested"]["at"], "by": "forecast",
             "reason": AUTO_REASON} if job_id == "run-auto" else None)
    expect(page.get_by_test_id("job-detail")).to_be_hidden()

    # The trainer heard it and ended the run as stopped.
    seed(r, keys, worker, [{"type": "job_finished", "job_id": "run-cw", "status": "stopped"}])
    expect(cw.locator(".status")).to_have_text("Stopped")
    expect(badge).to_have_text("stopped by you")
    expect(cw.get_by_test_id("badge-forecast")).to_have_count(0)


def test_who_asked_a_run_to_stop_and_why(page: Page, r: redis.Redis, keys: Keys,
                                         worker: RunningWorker) -> None:
    seed(r, keys, worker, stop_board(time.time()))
    open_live(page, "/?group=1")
    auto = card(page, "run-auto").get_by_test_id("badge-stop")
    expect(auto).to_have_text("stopping: can't win (auto-stop)")
    expect(auto).to_have_attribute("data-by", "forecast")
    expect(auto).to_have_attribute("title", re.compile(
        r"^Stop requested by auto-stop at .+ — " + re.escape(AUTO_REASON) + "$"))
    expect(stop_button(card(page, "run-auto"))).to_have_count(0)
    stopped = card(page, "solo-st")
    expect(stopped.locator(".status")).to_have_text("Stopped")
    expect(stopped.get_by_test_id("badge-stop")).to_have_text("stopped by you")
    expect(page.get_by_test_id("badge-stop")).to_have_count(2)

    # The job view says it in full.
    card(page, "run-auto").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    expect(detail.get_by_test_id("badge-stop")).to_have_text("stopping: can't win (auto-stop)")
    field = detail.locator(".detail-stop")
    expect(field).to_have_text(re.compile(
        rf"^by auto-stop at {TIME} — " + re.escape(AUTO_REASON) + "$"))
    expect(detail.locator("dt", has_text="Stop requested")).to_have_count(1)
    expect(stop_button(detail)).to_have_count(0)
    seed(r, keys, worker, [{"type": "job_finished", "job_id": "run-auto", "status": "stopped"}])
    expect(detail.locator(".status")).to_have_text("Stopped")
    expect(detail.get_by_test_id("badge-stop")).to_have_text("stopped by auto-stop")
    expect(field).to_contain_text(AUTO_REASON)  # kept after the job ended
    page.keyboard.press("Escape")
    expect(card(page, "run-auto").get_by_test_id("badge-stop")).to_have_text(
        "stopped by auto-stop")


# --- Stop from the job view and the comparison -----------------------------------------------------


def test_stop_from_the_job_view_with_a_reason_and_from_the_comparison(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    seed(r, keys, worker, stop_board(time.time()))
    open_live(page)
    card(page, "run-mw").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    stop_button(detail).click()
    reason = detail.locator(".confirm-reason")
    expect(reason).to_be_focused()  # the reason is optional, asked first
    reason.fill("needs a lower learning rate")
    seed(r, keys, worker, [{"type": "metrics", "job_id": "run-mw", "step": 700, "epoch": 7,
                            "loss": 0.5}])  # a live redraw keeps what was typed
    expect(detail.locator(".status")).to_have_text("Running · epoch 7/12")
    expect(reason).to_have_value("needs a lower learning rate")
    expect(reason).to_be_focused()
    screenshot(page, "stop-job-view.png")
    page.keyboard.press("Enter")
    expect(detail.get_by_test_id("badge-stop")).to_have_text("stop requested by you")
    expect(detail.locator(".detail-stop")).to_have_text(
        re.compile(rf"^by you at {TIME} — needs a lower learning rate$"))
    expect(stop_button(detail)).to_have_count(0)
    expect(detail).to_be_visible()  # Enter did not close the view
    request = view(page, "run-mw")["stop_requested"]
    assert (request["by"], request["reason"]) == ("user", "needs a lower learning rate")
    detail.get_by_test_id("detail-close").click()
    expect(card(page, "run-mw").get_by_test_id("badge-stop")).to_have_text(
        "stop requested by you")

    # The comparison: a Stop per running run not asked yet.
    for job_id in ("best-a", "run-cw", "run-cw2", "run-auto"):
        card(page, job_id).get_by_test_id("job-select").check()
    page.get_by_test_id("compare-button").click()
    modal = page.get_by_test_id("compare-modal")
    head = modal.locator("thead")
    expect(head.locator('th[data-job-id="run-cw"]').get_by_test_id("archive-button")).to_be_visible()
    expect(stop_button(head)).to_have_count(2)  # not the finished one, nor the one asked
    expect(head.locator('th[data-job-id="run-auto"]').get_by_test_id("badge-stop")).to_have_text(
        "stopping: can't win (auto-stop)")
    column = head.locator('th[data-job-id="run-cw2"]')
    stop_button(column).click()
    expect(column.get_by_test_id("stop-confirm")).to_be_focused()
    page.keyboard.press("Escape")  # cancels the question; the comparison stays open
    expect(column.get_by_test_id("stop-confirm")).to_have_count(0)
    expect(modal).to_be_visible()
    expect(stop_button(column)).to_be_focused()
    stop_button(column).click()
    column.get_by_test_id("stop-confirm").click()
    expect(column.get_by_test_id("badge-stop")).to_have_text("stop requested by you")
    expect(stop_button(column)).to_have_count(0)
    expect(stop_button(head)).to_have_count(1)
    assert view(page, "run-cw2")["stop_requested"]["by"] == "user"
    assert view(page, "run-cw")["stop_requested"] is None
    modal.get_by_test_id("modal-close").click()
    expect(card(page, "run-cw2").get_by_test_id("badge-stop")).to_have_text(
        "stop requested by you")


# --- Stop all that can't win --------------------------------------------------------------------


def test_stop_all_that_cant_win_stops_exactly_those(page: Page, r: redis.Redis, keys: Keys,
                                                     worker: RunningWorker) -> None:
    now = time.time()
    events = stop_board(now)
    events += running("run-silent", M, 0.44, ts=now - 500, name="silent-cannot-win")
    events.append(forecast_event("run-silent", forecast("cannot_win", p=0.001, left=9.0)))
    seed(r, keys, worker, events)
    go_silent(r, keys, worker, "run-silent")  # silent: left alone
    open_live(page, "/?group=1")
    qwen = group(page, M)
    expect(card(page, "run-silent").get_by_test_id("badge-stale")).to_be_visible()
    button = qwen.get_by_test_id("stop-all-button")
    expect(button).to_have_text("Stop all that can't win")
    expect(group(page, SOLO).get_by_test_id("stop-all-button")).to_have_count(0)  # none there
    button.click()
    question = qwen.locator(".confirm-question")
    expect(question).to_have_text("Stop 2 runs that can't win? Saves 3.7 GPU-h.")
    expect(qwen.get_by_test_id("stop-all-confirm")).to_be_focused()
    expect(qwen.get_by_test_id("stop-all-confirm")).to_have_text("Stop 2")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        page.evaluate("window.scrollTo(0, 0)")
        save_doc_screenshot(page, f"stop-all-{scheme}.png")
    page.emulate_media(color_scheme="light")
    # In a narrow window the question is cut short (whole on hover); its buttons stay in view.
    page.set_viewport_size({"width": 560, "height": 800})
    boxes = [qwen.get_by_test_id(hook).bounding_box()
             for hook in ("stop-all-confirm", "confirm-cancel", "insights-button")]
    rights = [box["x"] + box["width"] for box in boxes if box is not None]
    lefts = [box["x"] for box in boxes if box is not None]
    assert len(rights) == 3 and rights[2] <= 560, boxes
    assert rights[0] <= lefts[1] and rights[1] <= lefts[2], boxes  # side by side, none hidden
    expect(question).to_have_attribute("title", "Stop 2 runs that can't win? Saves 3.7 GPU-h.")
    screenshot(page, "stop-all-narrow.png")
    page.set_viewport_size(VIEWPORT)
    qwen.get_by_test_id("confirm-cancel").click()
    expect(button).to_be_focused()
    assert view(page, "run-cw")["stop_requested"] is None

    button.click()
    qwen.get_by_test_id("stop-all-confirm").click()
    for job_id in ("run-cw", "run-cw2"):
        expect(card(page, job_id).get_by_test_id("badge-stop")).to_have_text(
            "stop requested by you")
        request = view(page, job_id)["stop_requested"]
        assert (request["by"], request["reason"]) == ("user", PAGE_REASON)
    for job_id in ("run-mw", "run-silent", "solo-ld", "best-a"):
        assert view(page, job_id)["stop_requested"] is None, job_id
    assert view(page, "run-auto")["stop_requested"]["by"] == "forecast"  # untouched
    expect(qwen.get_by_test_id("stop-all-button")).to_have_count(0)  # none left to stop

    # A new verdict brings it back, for that one run.
    seed(r, keys, worker, [forecast_event("run-mw", forecast("cannot_win", p=0.01, at=700))])
    button.click()
    expect(question).to_have_text("Stop 1 run that can't win?")


def test_no_stop_all_while_the_advisor_stops_runs_itself(page: Page, gateway: LiveGateway,
                                                         r: redis.Redis, keys: Keys,
                                                         worker: RunningWorker) -> None:
    seed(r, keys, worker, stop_board(time.time()))
    r.set(keys.advisor, json.dumps({"autostop": True, "stop_below": 0.05, "stale_after": 120}))
    open_live(page, "/?group=1")
    page.evaluate("window.sameDocument = true")
    expect(card(page, "run-cw").get_by_test_id("badge-forecast")).to_be_visible()
    expect(stop_button(card(page, "run-cw"))).to_be_visible()  # one at a time still can
    expect(page.get_by_test_id("stop-all-button")).to_have_count(0)
    # The advisor restarts without auto-stop: the page asks again when it reconnects.
    r.set(keys.advisor, json.dumps({"autostop": False, "stop_below": 0.05, "stale_after": 120}))
    gateway.stop()
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state",
                                                                        "reconnecting")
    gateway.start()
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live",
                                                                        timeout=20_000)
    expect(group(page, M).get_by_test_id("stop-all-button")).to_be_visible()
    assert page.evaluate("window.sameDocument") is True
    # No advisor at all: offered too.
    r.delete(keys.advisor)
    page.reload()
    expect(group(page, M).get_by_test_id("stop-all-button")).to_be_visible()


# --- Silent runs ----------------------------------------------------------------------------------


def test_a_silent_run_says_for_how_long_and_can_be_marked_failed(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    seed(r, keys, worker, stop_board(time.time()))
    go_silent(r, keys, worker, "run-cw")
    page.clock.install()
    open_live(page, "/?group=1")
    cw = card(page, "run-cw")
    badge = cw.get_by_test_id("badge-stale")
    expect(badge).to_have_text(re.compile(r"^no signal for \d{1,2} s$"))
    expect(cw.get_by_test_id("badge-forecast")).to_have_count(0)  # paused while silent
    expect(cw.locator(".status")).to_have_text("Running · epoch 6/12")
    page.clock.fast_forward(14 * 60 * 1000)  # the text moves on with the clock
    expect(badge).to_have_text("no signal for 14 min")
    # Only silent running cards have it.
    expect(page.get_by_test_id("badge-stale")).to_have_count(1)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        page.evaluate("window.scrollTo(0, 0)")
        save_doc_screenshot(page, f"stale-card-{scheme}.png")
    page.emulate_media(color_scheme="light")

    # A heartbeat clears it; the forecast is back.
    seed(r, keys, worker, [{"type": "job_heartbeat", "job_id": "run-cw"}])
    expect(badge).to_have_count(0)
    expect(cw.get_by_test_id("badge-forecast")).to_be_visible()
    go_silent(r, keys, worker, "run-cw")
    expect(badge).to_be_visible()

    # The job view: the same, and "Mark failed" (only for a silent running job).
    cw.locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    # (the page's clock is 14 minutes ahead now)
    expect(detail.get_by_test_id("badge-stale")).to_have_text(
        re.compile(r"^no signal for \d+ (s|min)$"))
    expect(detail.locator(".detail-stale")).to_have_text(
        re.compile(rf"^no signal for \d+ (s|min) \(since {DAY}{TIME}\)$"))
    expect(detail.locator(".detail-forecast")).to_contain_text("paused: no signal")
    abandon = detail.get_by_test_id("abandon-button")
    abandon.click()
    expect(detail.locator(".confirm")).to_contain_text("No signal: mark as failed?")
    screenshot(page, "abandon-job-view.png")
    detail.get_by_test_id("confirm-cancel").click()
    expect(abandon).to_be_focused()
    assert view(page, "run-cw")["status"] == "running"
    abandon.click()
    detail.get_by_test_id("abandon-confirm").click()
    expect(detail.locator(".status")).to_have_text("Failed")
    expect(detail.locator("dt", has_text="Error").locator("+ dd")).to_have_text(
        re.compile(r"^abandoned: no signal since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    expect(detail.get_by_test_id("badge-stale")).to_have_count(0)
    expect(detail.get_by_test_id("abandon-button")).to_have_count(0)
    expect(stop_button(detail)).to_have_count(0)
    assert view(page, "run-cw")["status"] == "failed"
    page.keyboard.press("Escape")
    expect(cw.locator(".status")).to_have_text("Failed")
    expect(cw.locator(".status")).to_have_attribute("title", re.compile(r"^Failed: abandoned: "))

    # A job that is not silent has no "Mark failed".
    card(page, "run-mw").locator(".card-title").click()
    expect(stop_button(detail)).to_be_visible()
    expect(detail.get_by_test_id("abandon-button")).to_have_count(0)


# --- Refusals -------------------------------------------------------------------------------------


def test_a_stop_refused_because_the_run_ended_meanwhile_says_so(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    """The run ends between the click and the call: the gateway's 409 is said where the click
    was (the banner for a card, under the head in the job view)."""
    seed(r, keys, worker, stop_board(time.time()))

    def end_first(route: Route) -> None:  # the trainer finishes just before the call lands
        job_id = route.request.url.split("/")[-2]
        seed(r, keys, worker, [{"type": "job_finished", "job_id": job_id,
                                "status": "completed"}])
        route.continue_()

    page.route("**/api/jobs/*/stop", end_first)
    open_live(page)
    cw = card(page, "run-cw")
    stop_button(cw).click()
    cw.get_by_test_id("stop-confirm").click()
    expect(page.locator("#banner")).to_have_text(
        "Could not stop run-cw: job 'run-cw' is not running (it is completed)")
    expect(cw.locator(".status")).to_have_text("Completed")
    expect(stop_button(cw)).to_have_count(0)
    expect(cw.get_by_test_id("badge-stop")).to_have_count(0)

    card(page, "run-mw").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    stop_button(detail).click()
    detail.get_by_test_id("stop-confirm").click()
    expect(detail.get_by_role("alert")).to_have_text(
        "Could not stop run-mw: job 'run-mw' is not running (it is completed)")
    expect(detail.locator(".status")).to_have_text("Completed")
    assert view(page, "run-mw")["stop_requested"] is None


# --- Texts and audit ------------------------------------------------------------------------------


def test_the_stop_and_silence_helpers_say_it_as_the_page_does(page: Page) -> None:
    page.goto("/")
    cases = page.evaluate("""async () => {
        const f = await import('/static/format.js');
        const job = (status, by) => ({status, stop_requested: by ? {at: 0, by, reason: null} : null});
        return {
            silence: [0, 42.9, 60, 14 * 60 + 59, 3600, 2 * 3600 + 5 * 60, 47 * 3600, 3 * 86400]
                .map((s) => f.staleText(1000, 1000 + s)),
            hours: [0, 0.00094, 0.0049, 0.005, 0.0094, 0.35, 0.8, 3.24, 12.44, 1204.4, null]
                .map(f.gpuHoursText),
            badges: [job("running", "user"), job("running", "forecast"), job("stopped", "user"),
                     job("stopped", "forecast"), job("completed", "user"), job("running", null)]
                .map(f.stopBadgeText),
            saves: f.forecastText({verdict: "cannot_win", p_beat_best: 0.001,
                                   gpu_hours_left: 0.00094}),
            status: f.statusText({status: "stopped"}),
            all: [f.stopAllQuestion(2, 3.74, 2), f.stopAllQuestion(3, 1.5, 2),
                  f.stopAllQuestion(1, 0, 0)],
        };
    }""")
    assert cases == {
        "silence": ["no signal for 0 s", "no signal for 42 s", "no signal for 1 min",
                    "no signal for 14 min", "no signal for 1 h", "no signal for 2 h 5 min",
                    "no signal for 47 h", "no signal for 3 days"],
        "hours": ["0", "< 0.01", "< 0.01", "0.01", "0.01", "0.35", "0.8", "3.2", "12.4",
                  "1,204", "N/A"],
        "badges": ["stop requested by you", "stopping: can't win (auto-stop)", "stopped by you",
                   "stopped by auto-stop", None, None],
        "saves": "can't win · p < 0.01 · saves < 0.01 GPU-h",
        "status": "Stopped",
        "all": ["Stop 2 runs that can't win? Saves 3.7 GPU-h.",
                "Stop 3 runs that can't win? Saves 1.5 GPU-h (2 of them).",
                "Stop 1 run that can't win?"],
    }


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_stop_buttons_and_badges_pass_an_accessibility_audit(
        browser: Browser, gateway: LiveGateway, r: redis.Redis, keys: Keys,
        worker: RunningWorker, color_scheme: str) -> None:
    seed(r, keys, worker, stop_board(time.time()))
    go_silent(r, keys, worker, "run-mw")
    # The audit is injected with eval, which the page's Content-Security-Policy forbids.
    context = browser.new_context(viewport=VIEWPORT, base_url=gateway.url, bypass_csp=True,
                                  color_scheme=color_scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        open_live(page, "/?group=1")
        expect(page.get_by_test_id("badge-stale")).to_have_count(1)
        expect(page.get_by_test_id("badge-stop")).to_have_count(2)
        found = {"cards": axe_violations(page)}
        stop_button(card(page, "run-cw")).click()
        found["a card's confirmation"] = axe_violations(page)
        group(page, M).get_by_test_id("stop-all-button").click()
        expect(group(page, M).get_by_test_id("stop-all-confirm")).to_be_visible()
        found["stop all's confirmation"] = axe_violations(page)
        group(page, M).get_by_test_id("confirm-cancel").click()
        card(page, "run-mw").locator(".card-title").click()
        detail = page.get_by_test_id("job-detail")
        expect(detail.get_by_test_id("abandon-button")).to_be_visible()
        found["job view"] = axe_violations(page)
        stop_button(detail).click()
        expect(detail.locator(".confirm-reason")).to_be_visible()
        found["job view's confirmation"] = axe_violations(page)
        page.keyboard.press("Escape")  # the confirmation
        expect(stop_button(detail)).to_be_focused()
        page.keyboard.press("Escape")  # the view
        expect(detail).to_be_hidden()
        for job_id in ("run-cw2", "run-auto", "solo-st", "run-mw"):
            card(page, job_id).get_by_test_id("job-select").check()
        page.get_by_test_id("compare-button").click()
        modal = page.get_by_test_id("compare-modal")
        expect(modal.locator(".chart canvas")).to_be_visible()
        head = modal.locator("thead")
        expect(head.locator('th[data-job-id="run-mw"]').get_by_test_id("badge-stale")).to_have_text(
            re.compile(r"^no signal for \d+ s$"))
        expect(head.locator('th[data-job-id="solo-st"]').get_by_test_id("badge-stop")).to_have_text(
            "stopped by you")
        stop_button(modal).first.click()
        expect(modal.get_by_test_id("stop-confirm")).to_be_visible()
        found["comparison"] = axe_violations(page)
    finally:
        context.close()
    assert found == {"cards": [], "a card's confirmation": [], "stop all's confirmation": [],
                     "job view": [], "job view's confirmation": [], "comparison": []}
