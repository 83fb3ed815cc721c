"""The page over windows (docs/websocket.md, Windows; docs/page.md): it holds the model rows
and the pages of the list it was sent, never every job. In Chromium against the real gateway
and worker, with 600 runs over 6 models and pages of 25 (`?window=25`), every check is
against the gateway's own answer (`GET /api/jobs`): scrolling through the list shows every run
once, in order, each card as its view says; the filter's results are the runs that match;
live updates (new runs, losses, archiving, a new best that moves deltas) keep every loaded
job and card equal to the server's view; and the jobs no window holds (a share link's
selection, an opened run) are watched while needed and let go after."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from playwright.sync_api import Locator, Page, expect

from monitor.keys import Keys
from tests.gateway_helpers import RunningWorker
from tests.test_page import card, group, open_live, seed

pytestmark = pytest.mark.timeout(180)
expect.set_options(timeout=10_000)

WINDOW = 25  # jobs per page of a window, small so that 600 runs take many pages
MODELS = ["org/alpha-7b", "org/beta-3b", "org/gamma-1b", "lab/delta-13b", "lab/eps-70b", None]
RUNS = 600
LRS = ["1e-4", "3e-4", "1e-3"]


# --- The runs -------------------------------------------------------------------------------


def fleet(now: float) -> list[dict[str, Any]]:
    """600 runs, 100 per model (the last model: none named), two a second apart, some pairs
    started at the same second (ties: the smaller id first); each with a name carrying its
    learning rate and a best eval loss; every 40th archived."""
    events: list[dict[str, Any]] = []
    for i in range(RUNS):
        job_id = f"run-{i:04d}"
        model = MODELS[i % len(MODELS)]
        ts = now - 100_000 + (i - i % 3 // 2) * 2  # runs 3k+1 and 3k+2 start together
        events.append({"type": "job_started", "job_id": job_id, "model_name": model,
                       "name": f"{job_id}-lr{LRS[i % 3]}", "ts": ts, "total_epochs": 3,
                       "gpu_count": 1})
        events.append({"type": "metrics", "job_id": job_id, "epoch": 1, "step": 10,
                       "loss": 1.0, "eval_loss": round(0.5 + (i * 37 % 101) / 1000, 4),
                       "ts": ts + 1})
        if i % 40 == 7:
            events.append({"type": "job_archived", "job_id": job_id, "ts": ts + 2})
    return events


# --- The server's answer ----------------------------------------------------------------------


def server_list(page: Page, **params: Any) -> list[dict[str, Any]]:
    """Every view the filters select, in the list's order, through REST pages."""
    views: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        answer = page.request.get("/api/jobs", params=query)
        assert answer.ok, answer.text()
        body = answer.json()
        views += body["jobs"]
        cursor = body["next"]
        if cursor is None:
            return views


def held(page: Page, purpose: str) -> dict[str, Any]:
    """A window of the page (its ids, whether it reached the end, its end) and the views the
    page holds."""
    return dict(page.evaluate("""(purpose) => {
        const s = window.monitor.state;
        const win = s.windows.get(purpose);
        return { ids: win ? win.ids.slice() : null, done: win ? win.next === null : false,
                 end: win ? win.end : null, asking: win ? win.asking : false,
                 jobs: Object.fromEntries(s.jobs), watched: [...s.watched] };
    }""", purpose))


def covered(views: list[dict[str, Any]], end: dict[str, Any] | None) -> list[str]:
    """The ids of ``views`` (in order) that do not sort after ``end``."""
    if end is None:
        return [v["id"] for v in views]
    return [v["id"] for v in views
            if (-v["created_at"], v["id"]) <= (-end["created_at"], end["id"])]


def wait_for(check: Callable[[], str | None], timeout: float = 15) -> None:
    """Until ``check`` says nothing is wrong (it returns what is, else None)."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = check()
        if wrong is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(wrong)
        time.sleep(0.1)


def window_matches(page: Page, purpose: str, **params: Any) -> Callable[[], str | None]:
    """A check: the page's window holds exactly the jobs the server's list has down to the
    window's end, in order, and every view the page holds is the server's."""
    def check() -> str | None:
        state = held(page, purpose)
        if state["ids"] is None or state["asking"]:
            return f"window {purpose} not answered yet"
        views = server_list(page, **params)
        want = covered(views, state["end"])
        if state["ids"] != want:
            return f"window {purpose}: {len(state['ids'])} ids, want {len(want)}: " \
                   f"{state['ids'][:8]} vs {want[:8]}"
        every = {v["id"]: v for v in server_list(page, include_archived="true")}
        stale = [i for i, view in state["jobs"].items() if every.get(i) != view]
        return f"views differ from the server's: {stale[:5]}" if stale else None
    return check


# --- Cards on screen --------------------------------------------------------------------------

CARDS = """() => [...document.querySelectorAll('[data-testid=job-card]')].map((c) => {
    const box = c.getBoundingClientRect();
    const badge = (id) => c.querySelector(`[data-testid=${id}]`);
    return { id: c.dataset.jobId, status: c.dataset.status, top: box.top + scrollY,
             left: box.left, visible: box.bottom > 0 && box.top < innerHeight,
             loss: badge('badge-loss')?.textContent ?? null, best: !!badge('badge-best'),
             tier: badge('badge-delta')?.dataset.tier ?? null,
             archived: c.classList.contains('archived'),
             title: c.querySelector('.card-title').textContent };
})"""


def card_problems(cards: list[dict[str, Any]], views: dict[str, dict[str, Any]],
                  grouped: bool) -> list[str]:
    """What the cards show that their views do not say."""
    wrong = []
    for c in cards:
        v = views[c["id"]]
        loss = None if v["best_eval_loss"] is None else f"Loss: {v['best_eval_loss']:.4f}"
        tier = v["tier"] if grouped and v["delta_pct"] is not None else None
        seen = (c["status"], c["loss"], c["best"], c["tier"], c["archived"], c["title"])
        want = (v["status"], loss, v["is_best"], tier, v["archived"], v["name"])
        if seen != want:
            wrong.append(f"{c['id']}: shows {seen}, its view says {want}")
    return wrong


def in_order(cards: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in sorted(cards, key=lambda c: (c["top"], c["left"]))]


def scroll_through(page: Page, purpose: str) -> tuple[list[str], int]:
    """Scroll down a screen at a time until the window has every job: the ids of the cards
    seen (each once, in the order seen), checked against the server's views on the way; and
    the most cards the DOM held at once."""
    seen: list[str] = []
    most = 0
    for _ in range(400):
        cards = page.evaluate(CARDS)
        most = max(most, len(cards))
        views = {v["id"]: v for v in server_list(page, include_archived="true")}
        assert card_problems(cards, views, grouped=False) == []
        seen += [i for i in in_order([c for c in cards if c["visible"]]) if i not in seen]
        state = held(page, purpose)
        at_bottom = page.evaluate("innerHeight + scrollY >= document.body.scrollHeight - 2")
        if state["done"] and at_bottom:
            return seen, most
        page.evaluate("window.scrollBy(0, innerHeight * 0.9)")
        page.wait_for_timeout(60)
    raise AssertionError("never reached the end of the list")


SCROLL_TO_SECTION = """(name) => {
    const el = [...document.querySelectorAll('[data-testid=model-group]')]
        .find((e) => e.dataset.model === name);
    if (el) scrollTo(0, el.getBoundingClientRect().top + scrollY - 100);
    return el !== undefined;
}"""


def find_section(page: Page, model: str | None) -> Locator:
    """The section of ``model``, scrolled to (sections off screen are not in the DOM)."""
    name = "" if model is None else model
    page.evaluate("window.scrollTo(0, 0)")
    for _ in range(200):
        if page.evaluate(SCROLL_TO_SECTION, name):
            page.wait_for_timeout(50)  # a frame places what is now on screen
            return group(page, name)
        page.evaluate("window.scrollBy(0, innerHeight * 0.9)")
        page.wait_for_timeout(30)
    raise AssertionError(f"no section for {model!r}")


def section_names(page: Page) -> list[str]:
    """The sections' names, top to bottom (scrolling through the list)."""
    names: list[str] = []
    page.evaluate("window.scrollTo(0, 0)")
    for _ in range(200):
        for name in page.get_by_test_id("model-group").locator(".group-name").all_text_contents():
            if name not in names:
                names.append(name)
        if page.evaluate("innerHeight + scrollY >= document.body.scrollHeight - 2"):
            page.evaluate("window.scrollTo(0, 0)")
            return names
        page.evaluate("window.scrollBy(0, innerHeight * 0.9)")
        page.wait_for_timeout(30)
    raise AssertionError("never reached the end of the list")


# --- Tests ------------------------------------------------------------------------------------


def test_scrolling_the_flat_list_shows_every_run_once_in_order(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    seed(r, keys, worker, fleet(time.time()))
    open_live(page, f"/?window={WINDOW}")
    expect(page.get_by_test_id("job-card").first).to_be_visible()
    every = server_list(page)
    assert len(every) == RUNS - 15  # 15 archived
    # The first load is the model rows and a few pages, not every run.
    first = held(page, "flat")
    assert 0 < len(first["ids"]) <= 8 * WINDOW and not first["done"]
    assert len(first["jobs"]) == len(first["ids"])
    expect(page.locator("#summary")).to_have_text("585 runs · 6 models · 15 archived")
    expect(page.locator("#list .list-more")).to_contain_text(f"of {585:,} runs")

    seen, most = scroll_through(page, "flat")
    assert seen == [v["id"] for v in every]  # each once, in the server's order
    assert held(page, "flat")["ids"] == seen
    assert most < 120  # the DOM holds what is on screen, not what was loaded
    expect(page.locator("#list .list-more")).to_have_count(0)


def test_the_filter_is_asked_of_the_server(page: Page, r: redis.Redis, keys: Keys,
                                           worker: RunningWorker) -> None:
    seed(r, keys, worker, fleet(time.time()))
    open_live(page, f"/?window={WINDOW}")
    page.locator("#filter").fill("LR3E-4")  # case aside: a third of the runs
    expect(page.locator("#summary")).to_contain_text("runs match")
    every = server_list(page, q="lr3e-4")
    assert len(every) == 195 and all("lr3e-4" in v["name"] for v in every)
    seen, _ = scroll_through(page, "flat")
    assert seen == [v["id"] for v in every]
    expect(page.locator("#summary")).to_have_text("195 runs match")
    assert "q=LR3E-4" in page.url  # the address records it

    page.get_by_test_id("archived-toggle").check()  # the archived ones that match join
    wait_for(window_matches(page, "flat", q="lr3e-4", include_archived="true"))
    page.locator("#filter").fill("alpha-7b lr")  # nothing has both
    expect(page.locator("#no-match")).to_contain_text("No run matches “alpha-7b lr”.")
    expect(page.get_by_test_id("job-card")).to_have_count(0)


def test_live_updates_keep_every_loaded_card_as_the_server_says(
        page: Page, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    now = time.time()
    seed(r, keys, worker, fleet(now))
    open_live(page, f"/?window={WINDOW}")
    expect(page.get_by_test_id("job-card").first).to_be_visible()
    wait_for(window_matches(page, "flat"))
    loaded = held(page, "flat")["ids"]
    far = server_list(page)[-1]["id"]  # the oldest run: in no page loaded
    assert far not in loaded
    updates: list[dict[str, Any]] = [
        # new runs: the newest of the list
        *({"type": "job_started", "job_id": f"new-{k}", "model_name": MODELS[k],
           "name": f"new-{k}-lr1e-4", "ts": now + k, "gpu_count": 1} for k in range(3)),
        # losses on loaded runs, and a run far down the list the page does not hold
        *({"type": "metrics", "job_id": job_id, "step": 20, "loss": 0.25}
          for job_id in (*loaded[:5], far)),
        # archived while loaded: they leave the list
        {"type": "job_archived", "job_id": loaded[1]},
        {"type": "job_archived", "job_id": loaded[6]},
        # a new best of the first run's model: it moves that model's deltas
        {"type": "metrics", "job_id": loaded[3], "step": 30, "eval_loss": 0.01},
    ]
    seed(r, keys, worker, updates)
    wait_for(window_matches(page, "flat"))
    state = held(page, "flat")
    assert state["ids"][:3] == ["new-2", "new-1", "new-0"]
    assert loaded[1] not in state["ids"] and far not in state["jobs"]
    expect(card(page, loaded[3]).get_by_test_id("badge-best")).to_be_visible()

    # A restored run comes back at its place; the grouped view's deltas follow the new best.
    seed(r, keys, worker, [{"type": "job_restored", "job_id": loaded[1]}])
    wait_for(window_matches(page, "flat"))
    assert loaded[1] in held(page, "flat")["ids"]
    page.evaluate("window.scrollTo(0, 0)")
    cards = page.evaluate(CARDS)
    views = {v["id"]: v for v in server_list(page, include_archived="true")}
    assert card_problems(cards, views, grouped=False) == []

    page.get_by_test_id("group-toggle").check()
    model = views[loaded[3]]["model_name"]
    section = find_section(page, model)
    expand = section.locator('[data-action="expand"]')
    if expand.get_attribute("aria-expanded") == "false":
        expand.click()
    expect(section.get_by_test_id("job-card").first).to_be_visible()
    section_filter = {"unnamed": "true"} if model is None else {"model": model}
    wait_for(window_matches(page, f"model:{json.dumps(model)}", **section_filter))
    seed(r, keys, worker, [{"type": "metrics", "job_id": loaded[0], "step": 40,
                            "eval_loss": 0.005}])  # same model or not: a new best somewhere
    page.wait_for_timeout(300)
    worker.wait_applied()

    def cards_right() -> str | None:
        cards = page.evaluate(CARDS)
        views = {v["id"]: v for v in server_list(page, include_archived="true")}
        wrong = card_problems(cards, views, grouped=True)
        return "; ".join(wrong[:3]) if wrong else None
    wait_for(cards_right)
    assert page.locator("[data-testid=badge-delta]").count() > 0


def test_grouped_sections_load_only_when_open(page: Page, r: redis.Redis, keys: Keys,
                                              worker: RunningWorker) -> None:
    seed(r, keys, worker, fleet(time.time()))
    open_live(page, f"/?window={WINDOW}&group=1")
    sections = page.get_by_test_id("model-group")
    expect(sections.first).to_be_visible()
    assert section_names(page) == ["lab/delta-13b", "lab/eps-70b", "org/alpha-7b",
                                   "org/beta-3b", "org/gamma-1b", "Unknown Model"]
    expect(sections.first.locator(".group-count")).to_have_text("95 runs")  # 5 archived
    rows = page.request.get("/api/models").json()
    delta = next(row for row in rows if row["model_name"] == "lab/delta-13b")
    expect(sections.first.locator(".group-best")).to_have_text(
        f"best {delta['best_eval_loss']:.4f}")
    # The first two sections open by themselves (195 runs); the others say how many they hold.
    assert page.evaluate("[...window.monitor.state.expanded]") == ["lab/delta-13b",
                                                                   "lab/eps-70b"]
    state = held(page, "flat")
    assert state["ids"] is None and len(state["jobs"]) <= 8 * WINDOW

    beta = find_section(page, "org/beta-3b")
    expect(beta.locator('[data-action="expand"]')).to_have_attribute("aria-expanded", "false")
    expect(beta.get_by_test_id("job-card")).to_have_count(0)
    beta.locator('[data-action="expand"]').click()
    expect(beta.get_by_test_id("job-card").first).to_be_visible()
    beta.scroll_into_view_if_needed()
    purpose = 'model:"org/beta-3b"'
    for _ in range(100):  # scroll through the section until it has loaded its every run
        if held(page, purpose)["done"]:
            break
        page.evaluate("window.scrollBy(0, innerHeight * 0.9)")
        page.wait_for_timeout(60)
    wait_for(window_matches(page, purpose, model="org/beta-3b"))
    assert len(held(page, purpose)["ids"]) == 95

    beta.locator('[data-action="expand"]').click()  # closed: its window and jobs go
    expect(beta.locator('[data-action="expand"]')).to_have_attribute("aria-expanded", "false")
    expect(beta.get_by_test_id("job-card")).to_have_count(0)
    state = held(page, purpose)
    assert state["ids"] is None
    assert not any(view["model_name"] == "org/beta-3b" for view in state["jobs"].values())


def test_jobs_no_window_holds_are_watched_while_needed(page: Page, r: redis.Redis, keys: Keys,
                                                       worker: RunningWorker) -> None:
    seed(r, keys, worker, fleet(time.time()))
    old = ["run-0000", "run-0001", "run-0002"]  # the oldest runs: far down the list
    open_live(page, f"/?window={WINDOW}&compare={old[0]},{old[1]}")
    modal = page.get_by_test_id("compare-modal")
    expect(modal.get_by_test_id("compare-table").locator('tr[data-row="Job ID"] td')).to_have_text(
        [old[0], old[1], "–"])
    state = held(page, "flat")
    assert sorted(state["watched"]) == old[:2]
    assert not set(old) & set(state["ids"])
    views = {v["id"]: v for v in server_list(page, include_archived="true")}
    assert all(state["jobs"][i] == views[i] for i in old[:2])
    # Archive from the comparison: the watched view follows, the button turns to restore.
    modal.locator(f'th[data-job-id="{old[0]}"]').get_by_test_id("archive-button").click()
    expect(modal.locator(f'th[data-job-id="{old[0]}"]').get_by_test_id("restore-button")
           ).to_be_visible()
    modal.get_by_test_id("modal-close").click()
    expect(page.get_by_test_id("compare-button")).to_have_text("Compare Selected (2)")
    assert sorted(held(page, "flat")["watched"]) == old[:2]  # still selected
    page.locator("#clear-selection").click()
    wait_for(lambda: None if held(page, "flat")["watched"] == [] else "still watched")
    assert not set(old) & set(held(page, "flat")["jobs"])

    # A run opened by the address the mlflow client prints, far down the list.
    page.goto(f"/?window={WINDOW}&archived=0#/experiments/1/runs/{old[2]}")  # a new load
    detail = page.get_by_test_id("job-detail")
    expect(detail).to_have_attribute("data-job-id", old[2])
    expect(detail.locator(".detail-title")).to_have_text(f"{old[2]}-lr{LRS[2]}")
    assert held(page, "flat")["watched"] == [old[2]]
    detail.get_by_test_id("detail-close").click()
    wait_for(lambda: None if old[2] not in held(page, "flat")["jobs"] else "still held")
    # An id no job has: the view says so.
    page.goto(f"/?window={WINDOW + 1}#/experiments/1/runs/no-such-run")
    expect(detail).to_contain_text("This job is not known (any more).")


def test_more_open_sections_than_the_server_allows_windows(page: Page, r: redis.Redis,
                                                          keys: Keys,
                                                          worker: RunningWorker) -> None:
    """20 open sections, and the server allows 16 windows a connection: the sections on
    screen hold windows, those scrolled away give theirs up and ask again when they are
    back, and every section shows its runs when it is on screen."""
    now = time.time()
    models = [f"m{k:02d}/model" for k in range(20)]
    events = [{"type": "job_started", "job_id": f"m{k:02d}-{n}", "model_name": model,
               "name": f"m{k:02d}-run{n}", "ts": now - 1000 + k * 10 + n}
              for k, model in enumerate(models) for n in range(2)]
    seed(r, keys, worker, events)
    open_live(page, "/?group=1&window=5")
    expect(group(page, models[0]).get_by_test_id("job-card")).to_have_count(2)
    for model in models:  # open every section
        expand = find_section(page, model).locator('[data-action="expand"]')
        if expand.get_attribute("aria-expanded") == "false":
            expand.click()
            expect(expand).to_have_attribute("aria-expanded", "true")
    page.evaluate("window.scrollTo(0, 0)")
    for model in models:  # each, when on screen, shows its two runs
        section = find_section(page, model)
        expect(section.get_by_test_id("job-card")).to_have_count(2)
        expect(section.locator(".list-more")).to_have_count(0)
    windows = page.evaluate("[...window.monitor.state.windows.keys()]")
    assert 0 < len(windows) <= 12, windows
