"""The dashboard page in a real browser: Debian's Chromium driven by Playwright,
against the real gateway (uvicorn in a thread) and a real worker applying published events.

The workflows are the original design's: find the best run of a model, compare runs and
export, archive the runs that did worse; then what makes it live: updates within a second,
reconnecting after the gateway restarts, share links, and trainer strings shown as text.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import (
    Browser,
    Locator,
    Page,
    expect,
)

from monitor.keys import Keys
from monitor.rules import shown
from tests.browser import (
    ROOT,
    LiveGateway,
    Q,
    artifacts_dir,
    board,
    run_events,
)
from tests.conftest import RedisServer, free_port
from tests.gateway_helpers import RunningWorker, publish
from tests.page_fixtures import VIEWPORT, new_page

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=10_000)

def send(r: redis.Redis, keys: Keys, events: list[dict[str, Any]]) -> None:
    """XADD each event (through the stream, as a trainer does)."""
    publish(r, keys, list[dict[str, Any] | bytes](events))


def seed(r: redis.Redis, keys: Keys, worker: RunningWorker, events: list[dict[str, Any]]) -> None:
    send(r, keys, events)
    worker.wait_applied()


def open_live(page: Page, path: str = "/") -> None:
    """Open the page and wait until its connection is live and its first summary has arrived
    (the summary line is empty until then): a socket can open, then drop before its summary."""
    page.goto(path)
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    expect(page.locator("#summary")).not_to_have_text("")


def card(page: Page | Locator, job_id: str) -> Locator:
    return page.locator(f'[data-testid="job-card"][data-job-id="{job_id}"]')


def group(page: Page, model_name: str) -> Locator:
    return page.locator(f'[data-testid="model-group"][data-model="{model_name}"]')


def screenshot(page: Page | Locator, name: str) -> None:
    page.screenshot(path=str(artifacts_dir() / name))


# --- The workflows of the original design -------------------------------------------------------


def test_find_the_best_run_of_a_model(page: Page, r: redis.Redis, keys: Keys,
                                      worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page)
    expect(page.get_by_test_id("job-card")).to_have_count(8)
    # Flat: newest first, trophies and loss badges, no delta badges.
    ids = page.get_by_test_id("job-card").evaluate_all(
        "cards => cards.map(c => c.dataset.jobId)")
    assert ids == ["mystery-1", "mistral-a", "qwen3-a", "llama-b", "llama-a", "qwen-c", "qwen-b",
                   "qwen-a"]
    expect(page.get_by_test_id("badge-delta")).to_have_count(0)
    expect(card(page, "qwen-a").get_by_test_id("badge-best")).to_have_text("🏆 Best")
    expect(card(page, "qwen-a").get_by_test_id("badge-loss")).to_have_text("Loss: 0.2345")
    expect(page.get_by_test_id("badge-best")).to_have_count(4)  # one per model with a loss

    page.get_by_test_id("group-toggle").check()
    # A section per model, by clean name; jobs that never named one last.
    expect(page.get_by_test_id("model-group").locator(".group-name")).to_have_text(
        ["meta-llama/Llama-3.2-3B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3",
         "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3-1.7B", "Unknown Model"])
    qwen = group(page, Q)
    expect(qwen).to_contain_text("Qwen/Qwen2.5-7B-Instruct")
    expect(qwen).to_contain_text("3 runs")
    expect(qwen.get_by_test_id("job-card")).to_have_count(3)
    expect(qwen.get_by_test_id("badge-best")).to_have_count(1)
    expect(card(qwen, "qwen-a").get_by_test_id("badge-best")).to_have_text("🏆 Best")
    expect(card(qwen, "qwen-a").get_by_test_id("badge-loss")).to_have_text("Loss: 0.2345")
    expect(card(qwen, "qwen-a").get_by_test_id("badge-delta")).to_have_count(0)
    orange = card(qwen, "qwen-b").get_by_test_id("badge-delta")
    expect(orange).to_have_text("⚠️ 15.2% worse")
    expect(orange).to_have_attribute("data-tier", "orange")
    red = card(qwen, "qwen-c").get_by_test_id("badge-delta")
    expect(red).to_have_text("⚠️ 47.4% worse")
    expect(red).to_have_attribute("data-tier", "red")
    # The tier colours differ (and are not the default text colour).
    colours = {t: card(qwen, j).get_by_test_id("badge-delta").evaluate(
        "e => getComputedStyle(e).backgroundColor") for t, j in [("o", "qwen-b"), ("r", "qwen-c")]}
    assert colours["o"] != colours["r"]
    # A group of jobs without a loss has no trophy; a cleaned path is grouped by its exact name.
    expect(group(page, "")).to_contain_text("Unknown Model")
    expect(group(page, "").get_by_test_id("badge-best")).to_have_count(0)
    expect(group(page, "/data/huggingface_models/Qwen-Qwen3-1.7B/snapshots/9a2c1f")
           ).to_contain_text("Qwen/Qwen3-1.7B")
    # Long names are cut with the full name on hover; a failure says why on hover.
    title = card(page, "llama-b").locator(".card-title")
    expect(title).to_have_attribute("title",
                                    "llama3b-long-context-experiment-with-a-much-longer-name")
    expect(card(page, "llama-b").locator(".status")).to_have_attribute(
        "title", "Failed: CUDA out of memory. Tried to allocate 2.00 GiB")
    expect(card(page, "qwen3-a").locator(".status")).to_have_text("Running · epoch 4/5")
    # The picture: the top of the grouped list, three runs ticked to compare.
    for job_id in ("qwen-a", "qwen-b", "qwen-c"):
        card(page, job_id).get_by_test_id("job-select").check()
    page.evaluate("window.scrollTo(0, 0)")
    expect(page.get_by_test_id("compare-button")).to_be_visible()
    screenshot(page, "grouped-list.png")
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))


def test_compare_selected_runs_and_export(page: Page, r: redis.Redis, keys: Keys,
                                          worker: RunningWorker, dialogs: list[str]) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page)
    compare = page.get_by_test_id("compare-button")
    card(page, "qwen-a").get_by_test_id("job-select").check()
    expect(compare).to_have_count(0)  # from 2 selected on
    card(page, "qwen-b").get_by_test_id("job-select").check()
    expect(compare).to_have_text("Compare Selected (2)")
    card(page, "qwen-c").get_by_test_id("job-select").check()
    expect(compare).to_have_text("Compare Selected (3)")
    expect(page.get_by_test_id("job-detail")).to_be_hidden()  # ticking never opens a job
    compare.click()

    modal = page.get_by_test_id("compare-modal")
    expect(modal).to_be_visible()
    table = modal.get_by_test_id("compare-table")
    expect(table.locator("thead th")).to_have_text(
        [re.compile(r"^Metric$"), re.compile(r"^Run #1"), re.compile(r"^Run #2"),
         re.compile(r"^Run #3"), re.compile(r"^Best Value$")])
    expect(table.locator("tbody th")).to_have_text(
        ["Model", "Job ID", "Status", "Best Eval Loss", "Final Training Loss", "Final Eval Loss",
         "Best Checkpoint Epoch", "Checkpoint Path", "Progress"])
    best_row = table.locator('tr[data-row="Best Eval Loss"] td')
    expect(best_row).to_have_text(["0.2345", "0.2701 (+15.2%)", "0.3456 (+47.4%)", "0.2345"])
    expect(best_row.nth(1).locator("[data-tier]")).to_have_attribute("data-tier", "orange")
    expect(best_row.nth(2).locator("[data-tier]")).to_have_attribute("data-tier", "red")
    expect(table.locator('tr[data-row="Job ID"] td')).to_have_text(
        ["qwen-a", "qwen-b", "qwen-c", "–"])
    expect(table.locator('tr[data-row="Best Checkpoint Epoch"] td')).to_have_text(
        ["5/12", "5/12", "3/12", "5/12"])
    # The best run's column is highlighted, the others not.
    expect(table.locator("thead th.best-col")).to_have_count(1)
    expect(table.locator("thead th.best-col")).to_contain_text("Run #1")
    expect(table.locator("tbody td.best-col")).to_have_count(9)  # one per row

    recommendation = modal.get_by_test_id("recommendation")
    expect(recommendation).to_contain_text("Best Checkpoint: Run #1 - Qwen/Qwen2.5-7B-Instruct")
    expect(recommendation).to_contain_text("Best eval loss: 0.2345 (at epoch 5/12)")
    expect(recommendation).to_contain_text("Checkpoint: checkpoint-5")
    expect(recommendation).to_contain_text("Job ID: qwen-a")
    expect(recommendation.locator("li", has_text="Run #2")).to_have_text(
        "Run #2 is 15.2% worse, seed noise unknown")  # these configs have no seed replicates
    expect(recommendation.locator("li", has_text="Run #3")).to_have_text(
        "Run #3 is 47.4% worse, seed noise unknown (consider archiving)")
    # The curves of the three runs, overlaid: eval loss and loss of each (a legend row each).
    expect(modal.locator(".chart canvas")).to_be_visible()
    expect(modal.locator(".u-legend .u-series.series-line")).to_have_count(6)
    screenshot(modal, "compare-modal.png")

    with page.expect_download() as download_info:
        modal.get_by_test_id("export-csv").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".csv")
    lines = Path(download.path()).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "Metric,Run #1,Run #2,Run #3,Best Value"
    assert "Job ID,qwen-a,qwen-b,qwen-c," in lines
    assert "Best Eval Loss,0.2345,0.2701,0.3456,0.2345" in lines
    assert "Delta vs Best (%),,+15.2,+47.4," in lines
    assert "Consider archiving,Run #3,qwen-c,47.4% worse" in lines
    with page.expect_download() as download_info:
        modal.get_by_test_id("export-json").click()
    exported = json.loads(Path(download_info.value.path()).read_text(encoding="utf-8"))
    assert [job["id"] for job in exported["jobs"]] == ["qwen-a", "qwen-b", "qwen-c"]
    assert exported["best_job_id"] == "qwen-a"

    # Keyboard: Tab stays inside the modal; Escape closes it.
    for _ in range(25):
        page.keyboard.press("Tab")
        assert page.evaluate(
            "document.querySelector('[data-testid=compare-modal]').contains(document.activeElement)")
    page.keyboard.press("Escape")
    expect(modal).to_be_hidden()
    compare.click()
    expect(modal).to_be_visible()
    modal.get_by_test_id("modal-close").click()
    expect(modal).to_be_hidden()

    # At most 5: the 6th tick is refused with a message on the page, not a dialog.
    for job_id in ("llama-a", "llama-b"):
        card(page, job_id).get_by_test_id("job-select").check()
    expect(compare).to_have_text("Compare Selected (5)")
    sixth = card(page, "mistral-a").get_by_test_id("job-select")
    sixth.click()
    message = page.get_by_test_id("selection-message")
    expect(message).to_be_visible()
    expect(message).to_contain_text("at most 5")
    expect(sixth).not_to_be_checked()
    expect(compare).to_have_text("Compare Selected (5)")
    assert dialogs == []


def test_archive_from_the_modal_moves_the_trophy_live(page: Page, r: redis.Redis, keys: Keys,
                                                      worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page, "/?group=1")
    qwen = group(page, Q)
    expect(qwen).to_contain_text("3 runs")
    for job_id in ("qwen-a", "qwen-b", "qwen-c"):
        card(page, job_id).get_by_test_id("job-select").check()
    page.get_by_test_id("compare-button").click()
    modal = page.get_by_test_id("compare-modal")
    run3 = modal.locator('thead th[data-job-id="qwen-c"]')
    expect(modal.get_by_test_id("recommendation")).to_contain_text("(consider archiving)")

    run3.get_by_test_id("archive-button").click()  # the red run
    expect(card(page, "qwen-c")).to_have_count(0)  # it leaves the list, live
    expect(qwen).to_contain_text("2 runs")
    expect(run3.get_by_test_id("restore-button")).to_be_visible()
    expect(card(page, "qwen-a").get_by_test_id("badge-best")).to_have_count(1)

    modal.locator('thead th[data-job-id="qwen-a"]').get_by_test_id("archive-button").click()
    # With the best archived, the trophy moves to the next run without a reload.
    expect(card(page, "qwen-b").get_by_test_id("badge-best")).to_have_text("🏆 Best")
    expect(card(page, "qwen-b").get_by_test_id("badge-delta")).to_have_count(0)
    expect(card(page, "qwen-a")).to_have_count(0)
    modal.get_by_test_id("modal-close").click()
    expect(qwen).to_contain_text("1 run")

    # History: archived runs show greyed, with a restore button; restoring moves it back.
    page.get_by_test_id("archived-toggle").check()
    expect(card(page, "qwen-a")).to_have_class(re.compile(r"\barchived\b"))
    expect(card(page, "qwen-c").get_by_test_id("restore-button")).to_be_visible()
    expect(card(page, "qwen-a").get_by_test_id("badge-best")).to_have_count(0)
    card(page, "qwen-a").get_by_test_id("restore-button").click()
    expect(card(page, "qwen-a").get_by_test_id("badge-best")).to_have_count(1)
    expect(card(page, "qwen-a")).not_to_have_class(re.compile(r"\barchived\b"))
    expect(card(page, "qwen-b").get_by_test_id("badge-delta")).to_have_text("⚠️ 15.2% worse")
    # Archiving from a card is one click too.
    card(page, "qwen-b").get_by_test_id("archive-button").click()
    expect(card(page, "qwen-b").get_by_test_id("restore-button")).to_be_visible()
    expect(page.get_by_test_id("job-detail")).to_be_hidden()  # the button never opens the job


def test_a_refused_archive_says_why_in_every_view(page: Page, r: redis.Redis, keys: Keys,
                                                  worker: RunningWorker) -> None:
    """The cards, the job view and the comparison share one archive action: when the gateway
    refuses it, each says so where the click was, and its button can be clicked again."""
    seed(r, keys, worker, board(time.time()))
    page.route("**/api/jobs/*/archive",
               lambda route: route.fulfill(status=503, json={"detail": "the disk is full"}))
    refused = "Could not archive qwen-b: the disk is full"
    open_live(page)
    button = card(page, "qwen-b").get_by_test_id("archive-button")
    button.click()
    expect(page.locator("#banner")).to_have_text(refused)
    expect(button).to_be_enabled()
    expect(page.get_by_test_id("job-detail")).to_be_hidden()

    card(page, "qwen-b").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    detail.get_by_test_id("archive-button").click()
    expect(detail.get_by_role("alert")).to_have_text(refused)
    expect(detail.get_by_test_id("archive-button")).to_be_enabled()
    detail.get_by_test_id("detail-close").click()

    for job_id in ("qwen-a", "qwen-b"):
        card(page, job_id).get_by_test_id("job-select").check()
    page.get_by_test_id("compare-button").click()
    modal = page.get_by_test_id("compare-modal")
    button = modal.locator('thead th[data-job-id="qwen-b"]').get_by_test_id("archive-button")
    button.click()
    expect(modal.locator(".compare-status")).to_have_text(refused)
    expect(button).to_be_enabled()
    expect(card(page, "qwen-b")).to_have_count(1)  # nothing was archived


# --- Live -----------------------------------------------------------------------------------------


def test_a_new_eval_loss_moves_the_trophy_within_a_second(page: Page, r: redis.Redis,
                                                           keys: Keys,
                                                           worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page, "/?group=1")
    expect(card(page, "qwen-a").get_by_test_id("badge-best")).to_have_count(1)
    send(r, keys, [{"type": "metrics", "job_id": "qwen-b", "step": 1300, "epoch": 13,
                       "eval_loss": 0.21}])
    within = 1_000  # ms
    expect(card(page, "qwen-b").get_by_test_id("badge-best")).to_have_count(1, timeout=within)
    expect(card(page, "qwen-b").get_by_test_id("badge-loss")).to_have_text("Loss: 0.2100",
                                                                          timeout=within)
    expect(card(page, "qwen-a").get_by_test_id("badge-best")).to_have_count(0, timeout=within)
    a_delta = card(page, "qwen-a").get_by_test_id("badge-delta")
    expect(a_delta).to_have_text("⚠️ 11.7% worse", timeout=within)
    expect(a_delta).to_have_attribute("data-tier", "orange", timeout=within)
    expect(card(page, "qwen-c").get_by_test_id("badge-delta")).to_have_text("⚠️ 64.6% worse",
                                                                           timeout=within)
    # A new run appears live too.
    send(r, keys, run_events("qwen-d", Q, 0.2201, ts=time.time(), name="qwen7b-new"))
    expect(group(page, Q)).to_contain_text("4 runs")
    expect(card(page, "qwen-d").get_by_test_id("badge-loss")).to_have_text("Loss: 0.2201")
    expect(card(page, "qwen-d").get_by_test_id("badge-delta")).to_have_count(0)  # 4.8%: none


def test_reconnects_and_resumes_after_the_gateway_restarts(page: Page, gateway: LiveGateway,
                                                          r: redis.Redis, keys: Keys,
                                                          worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    open_live(page)
    page.evaluate("window.sameDocument = true")
    status = page.get_by_test_id("connection-status")

    gateway.stop()
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status).to_contain_text("Reconnecting")
    expect(page.locator("#banner")).to_contain_text("Connection to the gateway lost")
    # Events published while the page is cut off ...
    seed(r, keys, worker, run_events("while-away", Q, 0.2000, ts=time.time(), name="late-run"))
    gateway.start()
    expect(status).to_have_attribute("data-state", "live", timeout=20_000)
    # ... are shown once it is back, on the same page (no reload): the new connection's summary
    # has the page ask for its window again (windows do not resume with ?since=).
    expect(card(page, "while-away")).to_be_visible()
    expect(card(page, "while-away").get_by_test_id("badge-best")).to_have_count(1)
    expect(card(page, "qwen-a").get_by_test_id("badge-best")).to_have_count(0)
    expect(page.get_by_test_id("job-card")).to_have_count(9)
    expect(page.locator("#banner")).to_be_hidden()
    assert page.evaluate("window.sameDocument") is True
    assert len(sockets) >= 2, sockets
    assert all(re.search(r"/ws\?windows=1$", url) for url in sockets), sockets


def test_share_link_restores_grouping_selection_and_modal(page: Page, r: redis.Redis,
                                                          keys: Keys,
                                                          worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page)
    page.get_by_test_id("group-toggle").check()
    for job_id in ("qwen-c", "qwen-a", "llama-a"):
        card(page, job_id).get_by_test_id("job-select").check()
    page.get_by_test_id("compare-button").click()
    modal = page.get_by_test_id("compare-modal")
    modal.get_by_test_id("share-link").click()
    shared = modal.get_by_test_id("share-url")
    expect(shared).to_be_visible()
    url = shared.input_value()
    assert url == f"{page.url.split('?')[0]}?group=1&archived=0&compare=qwen-c,qwen-a,llama-a"
    assert page.evaluate("navigator.clipboard.readText()") == url

    other = page.context.new_page()
    other.goto(url)
    expect(other.get_by_test_id("compare-modal")).to_be_visible()
    table = other.get_by_test_id("compare-table")
    expect(table.locator('tr[data-row="Job ID"] td')).to_have_text(
        ["qwen-c", "qwen-a", "llama-a", "–"])
    expect(other.get_by_test_id("recommendation")).to_contain_text(
        "Best Checkpoint: Run #2 - Qwen/Qwen2.5-7B-Instruct")
    expect(other.get_by_test_id("group-toggle")).to_be_checked()
    expect(other.get_by_test_id("archived-toggle")).not_to_be_checked()
    for job_id in ("qwen-c", "qwen-a", "llama-a"):
        expect(card(other, job_id).get_by_test_id("job-select")).to_be_checked()
    expect(card(other, "qwen-b").get_by_test_id("job-select")).not_to_be_checked()
    expect(group(other, Q)).to_be_attached()
    other.get_by_test_id("modal-close").click()
    expect(other.get_by_test_id("compare-button")).to_have_text("Compare Selected (3)")
    other.close()


def test_the_link_the_mlflow_client_prints_opens_that_run(page: Page, r: redis.Redis,
                                                           keys: Keys,
                                                           worker: RunningWorker) -> None:
    """``mlflow`` ends a run with "View run at <tracking URI>/#/experiments/1/runs/<id>"."""
    seed(r, keys, worker, board(time.time()))
    open_live(page, "/#/experiments/1/runs/qwen-a")
    detail = page.get_by_test_id("job-detail")
    expect(detail).to_be_visible()
    expect(detail).to_have_attribute("data-job-id", "qwen-a")
    detail.get_by_test_id("detail-close").click()
    # a new page load (another query), for an id no job can have: nothing opens
    open_live(page, "/?archived=0#/experiments/1/runs/no%20such%20run")
    expect(card(page, "qwen-a")).to_be_visible()
    expect(detail).to_be_hidden()


# --- Safety and details ---------------------------------------------------------------------------

XSS_MODEL = "<img src=x onerror=alert(1)>"
XSS_NAME = "<script>alert(2)</script><b>bold</b>"


def test_trainer_strings_are_shown_as_text(page: Page, r: redis.Redis, keys: Keys,
                                           worker: RunningWorker, dialogs: list[str]) -> None:
    now = time.time()
    seed(r, keys, worker, run_events("xss-1", XSS_MODEL, 0.5, ts=now - 10, name=XSS_NAME,
                                     status="failed", error="<img src=y onerror=alert(3)>")
         + run_events("xss-2", XSS_MODEL, 0.9, ts=now))
    open_live(page, "/?group=1")
    section = group(page, XSS_MODEL)
    expect(section).to_contain_text(XSS_MODEL)
    expect(card(page, "xss-1").locator(".card-title")).to_have_text(XSS_NAME)
    card(page, "xss-1").get_by_test_id("job-select").check()
    card(page, "xss-2").get_by_test_id("job-select").check()
    page.get_by_test_id("compare-button").click()
    expect(page.get_by_test_id("compare-table")).to_contain_text(XSS_MODEL)
    expect(page.get_by_test_id("recommendation")).to_contain_text(XSS_MODEL)
    page.get_by_test_id("modal-close").click()
    card(page, "xss-1").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    expect(detail).to_contain_text("<img src=y onerror=alert(3)>")
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("body script")).to_have_count(0)
    expect(page.locator("b")).to_have_count(0)
    page.wait_for_timeout(300)  # a dialog would have fired by now
    assert dialogs == []


def test_the_job_views_curves_follow_a_run_that_logs_faster_than_they_refresh(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page)
    card(page, "qwen-b").locator(".card-sub").click()
    detail = page.get_by_test_id("job-detail")
    evals = detail.locator(".u-legend .u-series.series-line").nth(1)
    expect(evals).to_have_attribute("data-points", "12")
    # A change every 100 ms, under the 500 ms the curves wait after a change: they must still
    # be refetched while the run goes on, not only once it pauses.
    for i in range(15):
        step = 1300 + 100 * i
        send(r, keys, [{"type": "metrics", "job_id": "qwen-b", "step": step, "loss": 0.25,
                        **({"eval_loss": 0.3} if i == 0 else {})}])
        time.sleep(0.1)
    expect(evals).to_have_attribute("data-points", "13", timeout=100)


def test_a_checkbox_click_never_opens_the_job_and_a_card_click_does(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page)
    detail = page.get_by_test_id("job-detail")
    qwen_b = card(page, "qwen-b")
    qwen_b.get_by_test_id("job-select").click()
    expect(qwen_b.get_by_test_id("job-select")).to_be_checked()
    expect(detail).to_be_hidden()
    qwen_b.get_by_test_id("job-select").click()
    expect(qwen_b.get_by_test_id("job-select")).not_to_be_checked()
    expect(detail).to_be_hidden()

    qwen_b.locator(".card-sub").click()
    expect(detail).to_be_visible()
    expect(detail.locator(".detail-title")).to_have_text("qwen7b-lr1e-4-r32")
    expect(detail).to_contain_text("0.2701 (epoch 5/12, step 500)")
    expect(detail.locator(".chart canvas")).to_be_visible()
    lines = detail.locator(".u-legend .u-series.series-line")
    expect(lines).to_have_count(2)
    expect(lines.nth(1)).to_contain_text("eval loss")
    expect(lines.nth(1)).to_have_attribute("data-points", "12")
    # The view is live: a new eval loss shows in its fields and its curve.
    send(r, keys, [{"type": "metrics", "job_id": "qwen-b", "step": 1300, "epoch": 13,
                       "loss": 0.25, "eval_loss": 0.2222}])
    expect(detail.locator("dd", has_text="0.2222 (epoch 13/12, step 1300)")).to_be_visible()
    expect(lines.nth(1)).to_have_attribute("data-points", "13")
    expect(detail).to_contain_text("🏆 best run of its model")
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    # Keyboard users open a job from its title.
    qwen_b.locator(".card-title").focus()
    page.keyboard.press("Enter")
    expect(detail).to_be_visible()
    detail.get_by_test_id("detail-close").click()
    expect(detail).to_be_hidden()


def test_empty_state_then_the_first_run_arrives(page: Page, r: redis.Redis, keys: Keys,
                                                worker: RunningWorker) -> None:
    open_live(page)
    empty = page.locator("#empty-state")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("from monitor.sdk import start_run")
    expect(empty).to_contain_text("XADD monitor:events")
    screenshot(page, "empty-state.png")
    send(r, keys, run_events("first", Q, 0.4, ts=time.time(), upto=2, status=None))
    expect(card(page, "first")).to_be_visible()
    expect(empty).to_be_hidden()


def test_without_the_token_the_page_says_how_to_give_it(browser: Browser, redis_url: str,
                                                        keys: Keys, r: redis.Redis,
                                                        worker: RunningWorker,
                                                        dialogs: list[str]) -> None:
    seed(r, keys, worker, board(time.time()))
    gw = LiveGateway(redis_url, keys.prefix, free_port(), token="s3cret-token")
    gw.start()
    errors: list[str] = []
    page = new_page(browser, gw.url, dialogs, errors)
    try:
        page.goto("/")
        expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state",
                                                                           "unauthorized")
        expect(page.locator("#error-state")).to_contain_text(
            "This monitor needs a token: open /?token=")
        expect(page.get_by_test_id("job-card")).to_have_count(0)
        page.goto("/?token=s3cret-token")
        expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
        expect(page.get_by_test_id("job-card")).to_have_count(8)
        assert "token" not in page.url  # not left in the address (or in share links)
        card(page, "qwen-a").get_by_test_id("job-select").check()
        card(page, "qwen-b").get_by_test_id("job-select").check()
        page.get_by_test_id("compare-button").click()  # REST calls carry the cookie
        expect(page.get_by_test_id("recommendation")).to_contain_text("Run #1")
    finally:
        page.context.close()
        gw.stop()
    assert errors == [] and dialogs == []


def test_the_page_rounds_deltas_as_the_server_decides_tiers(page: Page) -> None:
    """Badge text and tier colour agree: JS toFixed(1) rounds as the server's shown()."""
    page.goto("/")
    rng = random.Random(7)
    deltas = [rng.uniform(0, 60) for _ in range(2000)]
    deltas += [n / 20 for n in range(1200)]  # every x.x5 boundary up to 60
    deltas += [(0.2701 - 0.2345) / 0.2345 * 100, (0.3456 - 0.2345) / 0.2345 * 100, 25.05, 10.05]
    texts = page.evaluate(
        """async (deltas) => {
            const f = await import('/static/format.js');
            return deltas.map((d) => f.deltaText(d));
        }""", deltas)
    assert texts == [f"{shown(d)}% worse" for d in deltas]
    cases = page.evaluate("""async () => {
        const f = await import('/static/format.js');
        return [
          f.deltaBadgeText((0.2701 - 0.2345) / 0.2345 * 100),
          f.lossBadgeText(0.2345),
          f.compareLossText(0.3456, (0.3456 - 0.2345) / 0.2345 * 100),
          f.compareLossText(0.2345, null),
          f.epochText(5, 12), f.epochText(2.5, null), f.epochText(null, 12),
          f.statusText({status: 'running', total_epochs: 12, epoch: 3, step: 300}),
          f.statusText({status: 'running', total_epochs: null, epoch: null, step: null}),
          f.statusText({status: 'failed', total_epochs: 12, epoch: 3, step: 300}),
          f.statusText({status: 'running', total_epochs: 12, epoch: null, step: 400}),
          f.runCountText(1), f.runCountText(3), f.shortId('0123456789abcdef'), f.shortId('run-1'),
          f.cellText(0.12345678), f.cellText(null), f.cellText('5/12'),
        ];
    }""")
    assert cases == ["⚠️ 15.2% worse", "Loss: 0.2345", "0.3456 (+47.4%)", "0.2345", "5/12",
                     "2.5", None, "Running · epoch 3/12", "Running", "Failed",
                     "Running · step 400", "1 run", "3 runs",
                     "01234567…", "run-1", "0.1235", "N/A", "5/12"]


def test_narrow_window_and_dark_mode(browser: Browser, gateway: LiveGateway, r: redis.Redis,
                                     keys: Keys, worker: RunningWorker,
                                     dialogs: list[str]) -> None:
    seed(r, keys, worker, board(time.time()))
    errors: list[str] = []
    page = new_page(browser, gateway.url, dialogs, errors, color_scheme="dark")
    try:
        page.set_viewport_size({"width": 420, "height": 800})
        open_live(page, "/?group=1")
        expect(page.get_by_test_id("job-card").first).to_be_visible()  # the snapshot drawn
        # One column: every card as wide as the list, none overflowing the window.
        boxes = page.get_by_test_id("job-card").evaluate_all(
            "cards => cards.map(c => c.getBoundingClientRect().toJSON())")
        assert boxes and all(b["x"] >= 0 and b["x"] + b["width"] <= 420 for b in boxes)
        assert len({round(b["x"]) for b in boxes}) == 1
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background != "rgb(245, 246, 248)"  # the dark palette, not the light one
        screenshot(page, "grouped-list-narrow-dark.png")
        for job_id in ("qwen-a", "qwen-c"):
            card(page, job_id).get_by_test_id("job-select").check()
        page.get_by_test_id("compare-button").click()
        modal = page.get_by_test_id("compare-modal")
        expect(modal.get_by_test_id("recommendation")).to_be_visible()
        scrolls = modal.locator(".modal-body").evaluate("b => b.scrollHeight > b.clientHeight")
        assert scrolls  # the modal scrolls instead of running off the screen
        screenshot(page, "compare-modal-narrow-dark.png")
    finally:
        page.context.close()
    assert errors == [] and dialogs == []


CUT_CARDS = """() => [...document.querySelectorAll('[data-testid=job-card]')].flatMap(c => {
    const foot = c.querySelector('.card-foot');
    const sub = c.querySelector('.card-sub');
    // The foot fits whole; on the line above, only a text that ends in "…" may be short.
    const cut = [foot, ...foot.querySelectorAll('.badges, .badge'), sub]
        .filter(e => e.scrollWidth > e.clientWidth)
        .concat([...sub.children].filter(e => e.scrollWidth > e.clientWidth
            && !(getComputedStyle(e).textOverflow === 'ellipsis'
                 && getComputedStyle(e).display === 'block')));
    return cut.length ? [[c.dataset.jobId, Math.round(c.getBoundingClientRect().width),
                          cut.map(e => e.className)]] : [];
})"""


def test_no_card_cuts_off_a_badge_at_any_window_width(page: Page, r: redis.Redis, keys: Keys,
                                                      worker: RunningWorker) -> None:
    """Cards have one height, so a card's foot is one line: a narrow card makes room in steps
    (style.css) and never cuts a badge off, from a phone to a wide screen, with the longest
    foot a card has: a running run's loss over 1, its delta over 100% and its Stop; the
    forecast badge above it ends in "…" when it must."""
    now = time.time()
    seed(r, keys, worker,
         run_events("lead", Q, 0.6, ts=now - 900, status=None)  # the best, running
         + run_events("behind", Q, 1.392, ts=now - 800, status=None)  # 132.0% worse
         + run_events("done", Q, 2.4, ts=now - 700)  # 300.0% worse, finished
         + run_events("close", Q, 0.6432, ts=now - 600)  # 7.2% worse
         + [{"type": "job_forecast", "job_id": "behind", "forecast": {
             "at_step": 1200, "horizon_step": 2400, "best_p10": 1.2, "best_p50": 1.3,
             "best_p90": 1.4, "p_beat_best": 0.003, "verdict": "cannot_win",
             "gpu_hours_left": 1204.0}}])  # the longest forecast badge
    open_live(page, "/?group=1")
    behind = card(page, "behind")
    expect(behind.get_by_test_id("badge-delta")).to_have_text("⚠️ 132.0% worse")
    expect(behind.get_by_test_id("stop-button")).to_be_visible()
    expect(behind.get_by_test_id("badge-forecast")).to_have_text(
        "can't win · p < 0.01 · saves 1,204 GPU-h")
    steps: dict[int, set[str]] = {}
    for width in range(320, 1701, 20):  # 320: the narrowest phones
        page.set_viewport_size({"width": width, "height": 900})
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                      "requestAnimationFrame(r)))")  # laid out again for the new width
        assert page.evaluate(CUT_CARDS) == [], f"a badge is cut off at {width} px"
        steps[width] = set(behind.evaluate(
            "c => [...c.querySelectorAll('.card-foot *')].filter(e => getComputedStyle(e)"
            ".display === 'none').map(e => e.className)"))
        expect(behind.get_by_test_id("stop-button")).to_be_visible()  # Stop never gives way
    # The steps are taken: each of them somewhere between a phone and a wide screen.
    taken = set().union(*steps.values())
    assert {"delta-mark", "delta-word"} <= taken and any("card-action" in c for c in taken)
    assert steps[1700] == set()  # wide cards: everything shown
    page.set_viewport_size({"width": 360, "height": 900})
    screenshot(page, "grouped-list-phone.png")


def test_windows_follow_updates_as_a_rebuild_would(page: Page) -> None:
    """The page's windows are kept current in place by each update (new runs, archiving and
    restoring, a changed start time, a rename under a filter): after any sequence of updates a
    window holds exactly the jobs that match its filters and do not sort after its end, in the
    list's order, and the page keeps the view of exactly the jobs some window holds."""
    page.goto("/")
    mismatches = page.evaluate("""async () => {
        const s = await import('/static/state.js?isolated');  // its own instance
        const w = await import('/static/windows.js');
        let seed = 12345;
        const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
        const pick = (xs) => xs[Math.floor(rand() * xs.length)];
        const models = ['Qwen/Qwen2.5-7B-Instruct', 'null', null, 'meta-llama/Llama-3.2-3B'];
        let n = 0;
        const job = (over = {}) => ({ id: `j${String(n++).padStart(3, '0')}`,
            model_name: pick(models), model_display: 'x', name: pick(['alpha', 'beta', null]),
            status: 'running', created_at: Math.floor(rand() * 50), archived: rand() < 0.2,
            ...over });
        const all = new Map();  // the server's every job
        for (let i = 0; i < 60; i++) { const j = job(); all.set(j.id, j); }
        const sorted = (jobs) => [...jobs].sort((a, b) => b.created_at - a.created_at
            || (a.id < b.id ? -1 : 1));
        const windows = [
            ['every', w.filtersOf({ archived: true }), null],
            ['live-alp', w.filtersOf({ q: ' ALP ' }), null],
            ['null-model', w.filtersOf({ archived: false, model: null }), null],
            ['top', w.filtersOf({ archived: false }), { created_at: 25, id: 'j030' }],
        ];
        for (const [purpose, filters, end] of windows) {
            const win = w.newWindow(purpose, filters, 500);
            win.wid = purpose;
            s.state.windows.set(purpose, win);
            s.state.byWid.set(purpose, win);
            const covered = (j) => w.matches(filters, j) && (end === null || !w.before(end, j));
            s.applyMessage({ type: 'window', id: purpose, version: '1-0',
                jobs: sorted([...all.values()].filter(covered)), next: end ? 'more' : null,
                end, total: null });
        }
        const bad = [];
        for (let step = 0; step < 3000; step++) {
            const changes = [];
            for (let k = Math.floor(rand() * 3) + 1; k > 0; k--) {
                const roll = rand();
                if (roll < 0.2) changes.push(job());
                else {
                    const next = { ...all.get(pick([...all.keys()])) };
                    if (roll < 0.55) next.archived = !next.archived;
                    else if (roll < 0.7) next.created_at = Math.floor(rand() * 50);
                    else next.name = pick(['alpha', 'beta', 'alpine', null]);
                    changes.push(next);
                }
            }
            for (const j of changes) all.set(j.id, j);
            // The server sends more than a window needs (other windows' jobs): the page sorts it out.
            s.applyMessage({ type: 'update', version: `${step + 2}-0`, jobs: changes, models: [] });
            const held = new Set();
            for (const [purpose, filters, end] of windows) {
                const win = s.state.windows.get(purpose);
                const want = sorted([...all.values()].filter((j) => w.matches(filters, j)
                    && (end === null || !w.before(end, j)))).map((j) => j.id);
                if (JSON.stringify(win.ids) !== JSON.stringify(want)) {
                    bad.push({ step, purpose, got: win.ids, want });
                }
                win.ids.forEach((id) => held.add(id));
            }
            const kept = [...s.state.jobs.keys()].sort();
            if (JSON.stringify(kept) !== JSON.stringify([...held].sort())) bad.push({ step, kept });
            for (const id of kept) {
                if (s.state.jobs.get(id) !== all.get(id)) bad.push({ step, stale: id });
            }
            if (bad.length) break;
        }
        return bad.slice(0, 3);
    }""")
    assert mismatches == []


def test_error_state_while_redis_is_away_then_it_fills_in(
        browser: Browser, redis_server_factory: Callable[..., RedisServer], keys: Keys,
        dialogs: list[str]) -> None:
    server = redis_server_factory()  # not started yet: the gateway's Redis is away
    gw = LiveGateway(server.url, keys.prefix, free_port())
    gw.start()
    errors: list[str] = []
    page = new_page(browser, gw.url, dialogs, errors)
    try:
        page.goto("/")
        error_state = page.locator("#error-state")
        expect(error_state).to_contain_text("The monitor's gateway cannot reach Redis")
        expect(page.get_by_test_id("connection-status")).to_have_attribute(
            "data-state", re.compile("reconnecting|offline"))
        server.start()
        expect(page.get_by_test_id("connection-status")).to_have_attribute(
            "data-state", "live", timeout=20_000)
        expect(error_state).to_be_hidden()
        expect(page.locator("#empty-state")).to_be_visible()
    finally:
        page.context.close()
        gw.stop()
    assert errors == [] and dialogs == []


def test_no_other_site_can_frame_the_page(browser: Browser, gateway: LiveGateway) -> None:
    """A page elsewhere that shows the dashboard in a frame (to trick clicks on its archive
    buttons) gets an empty frame."""
    context = browser.new_context()
    try:
        page = context.new_page()
        refused: list[str] = []
        page.on("console", lambda message: refused.append(message.text))
        page.set_content(f'<iframe src="{gateway.url}/" width="800" height="600"></iframe>')
        deadline = time.monotonic() + 10
        while not any("frame-ancestors" in text for text in refused):
            assert time.monotonic() < deadline, refused
            page.wait_for_timeout(50)
        frame = page.frames[1]
        assert frame.locator("[data-testid=group-toggle]").count() == 0
    finally:
        context.close()


def test_a_running_card_says_where_the_run_is_not_where_its_best_was(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    """Best at epoch 2, now training epoch 4: the card, the job view and the comparison say
    epoch 4, without the job being opened first."""
    seed(r, keys, worker, [
        {"type": "job_started", "job_id": "late", "model_name": Q, "total_epochs": 5},
        {"type": "metrics", "job_id": "late", "step": 200, "epoch": 2, "loss": 0.5,
         "eval_loss": 0.30},
        {"type": "metrics", "job_id": "late", "step": 400, "epoch": 4, "loss": 0.4,
         "eval_loss": 0.35},
        {"type": "job_started", "job_id": "steps", "model_name": Q},
        {"type": "metrics", "job_id": "steps", "step": 750, "loss": 0.6},
    ])
    open_live(page)
    expect(card(page, "late").locator(".status")).to_have_text("Running · epoch 4/5")
    expect(card(page, "steps").locator(".status")).to_have_text("Running · step 750")
    send(r, keys, [{"type": "metrics", "job_id": "late", "step": 500, "epoch": 5, "loss": 0.3}])
    expect(card(page, "late").locator(".status")).to_have_text("Running · epoch 5/5")  # live

    card(page, "late").locator(".card-title").click()
    detail = page.get_by_test_id("job-detail")
    expect(detail.get_by_text("epoch 5/5, step 500", exact=True)).to_be_visible()
    expect(detail).to_contain_text("0.3000 (epoch 2/5, step 200)")  # the best stays where it was
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()

    for job_id in ("late", "steps"):
        card(page, job_id).get_by_test_id("job-select").check()
    page.get_by_test_id("compare-button").click()
    table = page.get_by_test_id("compare-table")
    expect(table.locator("tr", has_text="Progress")).to_contain_text("epoch 5/5, step 500")
    expect(table.locator("tr", has_text="Progress")).to_contain_text("step 750")


AXE = (ROOT / "tests" / "vendor" / "axe-core-4.14.1.min.js").read_text()  # for tests, not served


def axe_violations(page: Page) -> list[str]:
    """Serious and critical accessibility violations axe-core finds on the page as it is."""
    page.evaluate(AXE)
    found = page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => `${v.id} (${v.impact}): ` + v.nodes.map(n => n.target.join(' ')).join(', '));
    }""")
    return list(found)


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_every_view_passes_an_accessibility_audit(
        browser: Browser, gateway: LiveGateway, r: redis.Redis, keys: Keys,
        worker: RunningWorker, color_scheme: str) -> None:
    """axe-core on the flat and grouped list, a job's view and the comparison modal: no
    serious or critical violation, in light and dark mode."""
    seed(r, keys, worker, board(time.time()))
    # The audit is injected with eval, which the page's Content-Security-Policy forbids.
    context = browser.new_context(viewport=VIEWPORT, base_url=gateway.url, bypass_csp=True,
                                  color_scheme=color_scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        open_live(page)
        found = {"flat list": axe_violations(page)}
        page.get_by_test_id("group-toggle").check()
        expect(page.get_by_test_id("model-group").first).to_be_visible()
        found["grouped list"] = axe_violations(page)
        card(page, "qwen-b").locator(".card-title").click()
        expect(page.get_by_test_id("job-detail").locator(".chart canvas")).to_be_visible()
        found["job view"] = axe_violations(page)
        page.keyboard.press("Escape")
        for job_id in ("qwen-a", "qwen-b", "qwen-c"):
            card(page, job_id).get_by_test_id("job-select").check()
        page.get_by_test_id("compare-button").click()
        expect(page.get_by_test_id("compare-modal").locator(".chart canvas").first).to_be_visible()
        found["comparison"] = axe_violations(page)
        page.keyboard.press("Escape")
        group(page, Q).get_by_test_id("insights-button").click()
        expect(page.get_by_test_id("model-insights").locator(".chart canvas")).to_be_visible()
        found["insights panel"] = axe_violations(page)
    finally:
        context.close()
    assert found == {"flat list": [], "grouped list": [], "job view": [], "comparison": [],
                     "insights panel": []}


def test_everything_works_from_the_keyboard_with_a_visible_focus(page: Page, r: redis.Redis,
                                                                 keys: Keys,
                                                                 worker: RunningWorker) -> None:
    seed(r, keys, worker, board(time.time()))
    open_live(page)

    def focus_until(selector: str) -> None:
        for _ in range(80):
            page.keyboard.press("Tab")
            if page.evaluate(f"!!document.activeElement.closest({selector!r})"):
                outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
                assert outline != "none", selector  # the focus shows
                return
        raise AssertionError(f"Tab never reached {selector}")

    focus_until('[data-job-id="qwen-b"] .card-title')
    page.keyboard.press("Enter")
    detail = page.get_by_test_id("job-detail")
    expect(detail).to_be_visible()
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    for job_id in ("qwen-a", "qwen-b"):
        focus_until(f'[data-job-id="{job_id}"] [data-testid=job-select]')
        page.keyboard.press("Space")
    focus_until("[data-testid=compare-button]")
    page.keyboard.press("Enter")
    modal = page.get_by_test_id("compare-modal")
    expect(modal).to_be_visible()
    page.keyboard.press("Escape")
    expect(modal).to_be_hidden()
    focus_until("[data-testid=group-toggle]")
    page.keyboard.press("Space")
    expect(page.get_by_test_id("model-group").first).to_be_visible()


class HostRewritingProxy:
    """A proxy in front of the gateway that sends it another Host than the browser used (a
    misconfigured reverse proxy): the page loads, but the gateway refuses its WebSocket."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.server.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            ours, theirs = f"127.0.0.1:{self.port}".encode(), f"127.0.0.1:{self.target}".encode()
            threading.Thread(target=self._pipe, args=(client, upstream, ours, theirs),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, b"", b""),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, old: bytes, new: bytes) -> None:
        with contextlib.suppress(OSError):
            while not self.stopped.is_set():
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data.replace(b"Host: " + old, b"Host: " + new) if old else data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        source.close()  # each socket is the source of one pipe, which closes it

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.server.close()


def test_a_page_whose_origin_the_gateway_refuses_says_so(page: Page,
                                                          gateway: LiveGateway) -> None:
    proxy = HostRewritingProxy(gateway.port)
    try:
        page.goto(f"http://127.0.0.1:{proxy.port}/")
        status = page.get_by_test_id("connection-status")
        expect(status).to_have_attribute("data-state", "refused")
        expect(status).to_have_text("Not allowed")
        panel = page.locator("#error-state")
        expect(panel).to_be_visible()
        expect(panel).to_contain_text("This page's address is not allowed by the monitor "
                                      "(MONITOR_ALLOWED_ORIGINS).")
        expect(panel).to_contain_text(f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()


def test_the_comparison_says_in_words_whether_a_difference_is_seed_noise(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    events: list[dict[str, Any]] = []
    for job_id, lr, number, loss in [("s0", 1e-4, 0, 0.500), ("s1", 1e-4, 1, 0.5025),
                                     ("f0", 1e-3, 0, 0.700), ("f1", 1e-3, 1, 0.702)]:
        events += [{"type": "job_started", "job_id": job_id, "model_name": Q,
                    "config": {"learning_rate": lr, "seed": number}},
                   {"type": "metrics", "job_id": job_id, "step": 1, "eval_loss": loss}]
    seed(r, keys, worker, events)
    open_live(page, "/?compare=s0,s1,f0")
    recommendation = page.get_by_test_id("compare-modal").get_by_test_id("recommendation")
    expect(recommendation.locator("li", has_text="Run #2")).to_have_text(
        "Run #2 is 0.5% worse, within seed noise")
    expect(recommendation.locator("li", has_text="Run #3")).to_contain_text(
        "Run #3 is 40.0% worse, a real difference (p ")
    verdicts = recommendation.get_by_test_id("significance")
    expect(verdicts).to_have_count(2)
    assert [verdicts.nth(i).get_attribute("data-verdict") for i in range(2)] == [
        "within_noise", "real"]


SWEEP = "acme/sweep-1b"


def sweep_run(job_id: str, lr: float, number: int, loss: float, gpus: int, hours: float,
              ts: float) -> list[dict[str, Any]]:
    """A finished run of the sweep: ``gpus`` GPUs for ``hours``, best eval loss ``loss``."""
    return [{"type": "job_started", "job_id": job_id, "model_name": SWEEP, "ts": ts,
             "name": f"lr{lr:g}-seed{number}", "gpu_count": gpus,
             "config": {"learning_rate": lr, "seed": number}},
            {"type": "metrics", "job_id": job_id, "step": 100, "ts": ts + 60, "loss": loss + 0.1,
             "eval_loss": loss + 0.02},
            {"type": "metrics", "job_id": job_id, "step": 200, "ts": ts + 120, "loss": loss,
             "eval_loss": loss},
            {"type": "job_finished", "job_id": job_id, "status": "completed",
             "ts": ts + hours * 3600}]


def test_a_models_insights_panel_says_what_drives_the_loss(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    """A learning-rate sweep with seeds: the panel puts learning_rate first with its direction
    in words, draws the GPU-hours / loss front, lists the replicate groups and follows new
    runs live; the model-less group says in words that there is too little to tell."""
    now = time.time()
    # (id, learning rate, seed, best eval loss, GPUs, hours): the front is a, c, e and g.
    runs = [("sw-a", 1e-4, 0, 0.900, 1, 1), ("sw-b", 1e-4, 1, 0.905, 1, 2),
            ("sw-c", 3e-4, 0, 0.700, 2, 1), ("sw-d", 3e-4, 1, 0.710, 2, 2),
            ("sw-e", 1e-3, 0, 0.500, 4, 1), ("sw-f", 1e-3, 1, 0.503, 4, 2),
            ("sw-g", 3e-3, 0, 0.400, 8, 2)]
    events: list[dict[str, Any]] = []
    for i, (job_id, lr, number, loss, gpus, hours) in enumerate(runs):
        events += sweep_run(job_id, lr, number, loss, gpus, hours, ts=now - 90_000 + i * 10)
    events.append({"type": "job_started", "job_id": "nameless-1", "ts": now - 500})
    events.append({"type": "metrics", "job_id": "nameless-1", "step": 1, "eval_loss": 1.5})
    seed(r, keys, worker, events)
    open_live(page, "/?group=1")
    expect(group(page, SWEEP)).to_contain_text("7 runs")

    # Tab reaches the group's button, Enter opens the panel.
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement.closest('[data-model=\"{SWEEP}\"]') !== null"
                         " && document.activeElement.dataset.testid === 'insights-button'"):
            break
    else:
        raise AssertionError("Tab never reached the sweep's insights button")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    panel = page.get_by_test_id("model-insights")
    expect(panel).to_be_visible()
    expect(panel.locator(".detail-title")).to_have_text(f"Insights: {SWEEP}")
    expect(panel.locator(".insights-gpu-hours")).to_have_text("37.0")  # 1+2+2+4+4+8+16
    expect(panel.locator(".insights-noise")).to_have_text(
        re.compile(r"^seed noise ±\d+\.\d% \(pooled over 3 replicate groups\)$"))

    rows = panel.get_by_test_id("insights-hparams").locator("tbody tr")
    expect(rows.first.locator("th")).to_have_text("learning_rate")
    expect(rows.first.locator(".insights-effect")).to_have_text("lower loss with larger values")
    expect(rows.first.locator(".importance")).to_contain_text("%")

    chart = panel.get_by_test_id("insights-pareto")
    expect(chart.locator(".scatter-point")).to_have_count(7)
    expect(chart.locator(".scatter-point.front")).to_have_count(4)
    expect(chart.locator(".scatter-label")).to_have_text(
        ["lr0.0001-seed0", "lr0.0003-seed0", "lr0.001-seed0", "lr0.003-seed0"])

    groups = panel.get_by_test_id("insights-replicates").locator("li")
    expect(groups).to_have_count(3)
    expect(groups.first).to_contain_text("learning_rate=0.001")
    expect(groups.first).to_contain_text("0.5015 ± ")  # the best group first: mean of 0.5, 0.503

    # Focus stays in the panel, as in the job view.
    for _ in range(4):
        page.keyboard.press("Tab")
        assert page.evaluate("!!document.activeElement.closest('[data-testid=model-insights]')")

    page.set_viewport_size({"width": 1280, "height": 1000})  # the whole panel in the picture
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        screenshot(page, f"insights-{scheme}.png")
        if os.environ.get("UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(ROOT / "docs" / "screenshots" / f"insights-{scheme}.png"))
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(VIEWPORT)

    # A cheap, better run arrives: the panel follows it while open.
    seed(r, keys, worker, sweep_run("sw-h", 3e-3, 1, 0.390, 1, 1, ts=now - 20_000))
    expect(chart.locator(".scatter-point.front")).to_have_count(1, timeout=5_000)
    chart = panel.get_by_test_id("insights-pareto")
    expect(chart.locator(".scatter-point")).to_have_count(8)
    expect(chart.locator(".scatter-label")).to_have_text(["lr0.003-seed1"])
    expect(panel.get_by_test_id("insights-replicates").locator("li")).to_have_count(4)

    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()

    # The runs that never named a model: too few to tell, in words.
    group(page, "").get_by_test_id("insights-button").click()
    expect(panel).to_be_visible()
    expect(panel.locator(".detail-title")).to_have_text("Insights: Unknown Model")
    expect(panel).to_contain_text("Too few runs to tell yet")
    expect(panel).to_contain_text("No replicates yet: run a config with another seed")
    expect(panel.get_by_test_id("insights-pareto")).to_contain_text("No run to place yet")
    expect(panel.locator(".insights-noise")).to_have_text(
        "no replicates yet: run a config with another seed to measure noise")
