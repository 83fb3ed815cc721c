"""Page scale: the dashboard in Chromium against 10,000 jobs in 200 models, and 100,000 jobs.

    .venv/bin/python -m bench.page_scale [--quick] [--seconds S] [--rate R]

The state is written straight into Redis in the shapes the worker commits (no worker runs):
the ``<prefix>jobs`` hash (``JobState.public()`` of each job, built with ``monitor.rules``)
and the ``<prefix>models`` hash (each group's summary: counts and best run), so
``monitor gateway`` (its own process) serves exactly what it would after the worker had folded
the events. The page runs in Debian's Chromium (Playwright, 1280x800), one fresh browser
context per row, and is timed with the page's own performance marks:

- /ws open, snapshot arrived, snapshot applied: navigation start until the WebSocket is
  open, until its first message (the snapshot) has arrived (the gateway's read, compression
  and the transfer), and until the page has parsed and applied it;
- list shown: until the first cards are in the DOM;
- interactive: until the page's main thread next runs a task after that (a ``setTimeout(0)``
  queued when the list is shown), i.e. when a click would be handled;
- click: a click on a card's checkbox until the next paint (Event Timing, first input);
- JS heap: ``Runtime.getHeapUsage`` after a forced garbage collection, with the list shown.

Then updates arrive at ``--rate`` per second (default 200) for ``--seconds``: entries appended
to ``<prefix>updates`` the way the worker appends them (``{"jobs": [view, ...]}``; views from
``monitor.rules.job_view``): a loss on a random run, a new eval loss on one of the runs on
screen, now and then a new run, and a new best of a model, which carries the view of every
run of that model (50 or 500 views). Measured in the page: the interval between animation
frames (p50, p95, max), the time of the page's own DOM work per frame, and the updates
received.

Every key is written under a fresh ``bench:<random>:`` prefix and deleted at the end; the
gateway process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import (
    delete_prefix,
    free_port,
    headline,
    machine_line,
    redis_url,
    start_monitor,
    stop_process,
    table,
    unique_prefix,
    verdict,
    wait_http_ok,
)
from bench.workload import model_names
from monitor.keys import Keys, model_field
from monitor.rules import JobState, job_view

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
MODELS = 200
FILL_CHUNK = 5_000
TICK = 0.05  # seconds between batches of updates
BAR_INTERACTIVE_MS = 1500.0  # 10,000 jobs
BAR_FRAME_MS = 100.0
ON_SCREEN = 30  # the newest runs: the ones a flat list shows first

# Recorded in the page from its first script on: when the main thread is free after the list
# shows, the first input's latency, and (on demand) animation-frame intervals.
PAGE_PROBE = """
(() => {
  window.__bench = { frames: [], recording: false, interactive: null, firstInput: null };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (entry.name === 'monitor:list-shown') {
        setTimeout(() => { window.__bench.interactive = performance.now(); }, 0);
      }
    }
  }).observe({ type: 'mark', buffered: true });
  new PerformanceObserver((list) => {
    const e = list.getEntries()[0];
    window.__bench.firstInput = { duration: e.duration, delay: e.processingStart - e.startTime };
  }).observe({ type: 'first-input', buffered: true });
  window.__benchRecord = (on) => {
    const b = window.__bench;
    b.recording = on;
    if (!on) return;
    b.frames = [];
    let last = performance.now();
    const tick = (t) => {
      if (!b.recording) return;
      b.frames.push(t - last);
      last = t;
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  };
})();
"""


# --- The state -------------------------------------------------------------------------------------


@dataclass
class Fleet:
    """The jobs as the worker would hold them, and each model's best run."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> public state
    groups: dict[str, list[str]] = field(default_factory=dict)  # model name -> job ids
    best: dict[str, tuple[str, float] | None] = field(default_factory=dict)
    newest: list[str] = field(default_factory=list)  # ids by created_at, newest last
    serial: int = 0

    def rank(self, model: str) -> None:
        candidates = [self.jobs[i] for i in self.groups[model]
                      if not self.jobs[i]["archived"] and self.jobs[i]["best_eval_loss"] is not None]
        if not candidates:
            self.best[model] = None
            return
        top = min(candidates, key=lambda j: (j["best_eval_loss"], j["created_at"], j["id"]))
        self.best[model] = (top["id"], top["best_eval_loss"])

    def view(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        return job_view(job, self.best[job["model_name"]])

    def summary(self, model: str) -> dict[str, Any]:
        members = self.groups[model]
        archived = sum(1 for i in members if self.jobs[i]["archived"])
        best = self.best[model]
        return {"model_name": model, "model_display": self.jobs[members[0]]["model_display"],
                "job_count": len(members) - archived, "archived_count": archived,
                "best_job_id": best[0] if best else None,
                "best_eval_loss": best[1] if best else None}


def new_job(fleet: Fleet, rng: random.Random, model: str, created: float,
            base: float, running: bool = False) -> dict[str, Any]:
    fleet.serial += 1
    n = fleet.serial
    epochs = rng.choice((3, 5, 8, 12))
    status = "running" if running else rng.choices(
        ("completed", "failed", "cancelled", "running"), (80, 6, 4, 10))[0]
    scored = running is False and rng.random() > 0.05
    best = round(base * (1 + abs(rng.gauss(0, 0.15))), 4) if scored else None
    best_epoch = rng.randint(1, epochs) if best is not None else None
    short = model.rstrip("/").split("/")[-1][:24]
    state = JobState(
        id=f"job-{n:06d}", created_at=created, updated_at=created + 600, model_name=model,
        name=f"{short}-lr{rng.choice(('5e-5', '1e-4', '2e-4'))}-r{rng.choice((8, 16, 32, 64))}",
        status=status, archived=rng.random() < 0.03,
        loss=round(base * 0.8 * (1 + rng.random() * 0.3), 4),
        eval_loss=None if best is None else round(best * 1.02, 4), best_eval_loss=best,
        best_epoch=best_epoch, best_step=None if best_epoch is None else best_epoch * 100,
        best_checkpoint_path=None if best_epoch is None else f"checkpoint-{best_epoch * 100}",
        total_epochs=epochs, finished_at=None if status == "running" else created + 3600,
        gpu_count=rng.choice((1, 2, 4, 8)),
        error="CUDA out of memory. Tried to allocate 2.00 GiB" if status == "failed" else None,
    )
    public = state.public()
    fleet.jobs[public["id"]] = public
    fleet.groups.setdefault(model, []).append(public["id"])
    fleet.newest.append(public["id"])
    return public


def build_fleet(jobs: int, seed: int = 1) -> tuple[Fleet, dict[str, float]]:
    rng = random.Random(seed)
    names = model_names(MODELS)
    bases = {name: rng.uniform(0.3, 1.2) for name in names}
    fleet = Fleet()
    start = time.time() - jobs * 30
    for i in range(jobs):
        new_job(fleet, rng, names[i % MODELS], start + i * 30, bases[names[i % MODELS]])
    for model in fleet.groups:
        fleet.rank(model)
    return fleet, bases


def write_state(client: redis.Redis, keys: Keys, fleet: Fleet) -> None:
    """The ``jobs`` and ``models`` hashes, as the worker commits them."""
    items = list(fleet.jobs.items())
    for start in range(0, len(items), FILL_CHUNK):
        chunk = {job_id: orjson.dumps(job) for job_id, job in items[start:start + FILL_CHUNK]}
        client.hset(keys.jobs, mapping=chunk)  # type: ignore[arg-type]
    models = {model_field(model): orjson.dumps(fleet.summary(model)) for model in fleet.groups}
    client.hset(keys.models, mapping=models)  # type: ignore[arg-type]


# --- Updates ---------------------------------------------------------------------------------------


class Updates:
    """Commits like the worker's: each one the views it changed."""

    def __init__(self, fleet: Fleet, bases: dict[str, float], seed: int = 2) -> None:
        self.fleet = fleet
        self.bases = bases
        self.rng = random.Random(seed)
        self.ids = list(fleet.jobs)
        self.models = list(fleet.groups)
        self.kinds = {"loss": 0, "eval": 0, "new run": 0, "new best": 0}

    def next(self, now: float) -> list[dict[str, Any]]:
        f, rng = self.fleet, self.rng
        roll = rng.random()
        if roll < 0.01:  # a new run starts
            self.kinds["new run"] += 1
            model = rng.choice(self.models)
            job = new_job(f, rng, model, now, self.bases[model], running=True)
            self.ids.append(job["id"])
            return [f.view(job["id"])]
        if roll < 0.04:  # a new best of a model: every view of the model moves
            self.kinds["new best"] += 1
            model = rng.choice(self.models)
            best = f.best[model]
            job = f.jobs[rng.choice(f.groups[model])]
            value = round((best[1] if best else 1.0) * 0.995, 6)
            job.update(best_eval_loss=value, eval_loss=value, updated_at=now, archived=False)
            f.rank(model)
            return [f.view(i) for i in f.groups[model]]
        if roll < 0.30:  # a new eval loss on a run on screen (not a new best of its model)
            self.kinds["eval"] += 1
            job = f.jobs[rng.choice(f.newest[-ON_SCREEN:])]
            best = f.best[job["model_name"]]
            floor = best[1] if best else 0.5
            job.update(eval_loss=round(floor * (1.02 + rng.random() * 0.5), 6), updated_at=now)
            if job["best_eval_loss"] is None or job["eval_loss"] < job["best_eval_loss"]:
                job["best_eval_loss"] = job["eval_loss"]
                f.rank(job["model_name"])
            return [f.view(job["id"])]
        self.kinds["loss"] += 1  # a training loss somewhere
        job = f.jobs[rng.choice(self.ids)]
        job.update(loss=round((job["loss"] or 1.0) * 0.999, 6), updated_at=now)
        return [f.view(job["id"])]


def send_updates(client: redis.Redis, keys: Keys, updates: Updates, rate: float,
                 seconds: float) -> int:
    """Append ``rate`` updates a second for ``seconds``; how many were appended."""
    sent = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1 - sent
        if due > 0:
            with client.pipeline(transaction=False) as pipe:
                now = time.time()
                for _ in range(due):
                    pipe.xadd(keys.updates, {"data": orjson.dumps({"jobs": updates.next(now)})})
                pipe.execute()
            sent += due
        time.sleep(max(0.0, start + (sent / rate) - time.monotonic()))
    return sent


# --- The page --------------------------------------------------------------------------------------


@dataclass
class Row:
    jobs: int
    view: str
    open_ms: float
    message_ms: float
    snapshot_ms: float
    shown_ms: float
    interactive_ms: float
    click_ms: float
    heap_mb: float
    cards: int
    sent: int
    received: int
    frame_p50: float
    frame_p95: float
    frame_max: float
    work_p95: float
    work_max: float


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def measure(browser: Any, base: str, client: redis.Redis, keys: Keys, updates: Updates,
            jobs: int, view: str, rate: float, seconds: float) -> Row:
    # The measuring hooks are evaluated in the page, which its Content-Security-Policy forbids.
    context = browser.new_context(viewport=VIEWPORT, bypass_csp=True)
    try:
        context.add_init_script(PAGE_PROBE)
        page = context.new_page()
        page.set_default_timeout(180_000)
        page.goto(f"{base}/{'?group=1' if view == 'grouped' else ''}", wait_until="commit")
        page.wait_for_function("window.__bench && window.__bench.interactive !== null",
                               polling=50)
        marks = page.evaluate("""() => ({
            open: performance.getEntriesByName('monitor:ws-open')[0].startTime,
            message: performance.getEntriesByName('monitor:first-message')[0].startTime,
            snapshot: performance.getEntriesByName('monitor:snapshot')[0].startTime,
            shown: performance.getEntriesByName('monitor:list-shown')[0].startTime,
            interactive: window.__bench.interactive,
            cards: document.querySelectorAll('[data-testid=job-card]').length,
        })""")
        page.locator("[data-testid=job-select]").first.click()
        page.wait_for_function("window.__bench.firstInput !== null", polling=50)
        click = page.evaluate("window.__bench.firstInput")
        cdp = context.new_cdp_session(page)
        cdp.send("HeapProfiler.collectGarbage")
        heap = cdp.send("Runtime.getHeapUsage")["usedSize"] / 1e6

        page.evaluate("monitor.stats.recent.length = 0")
        before = page.evaluate("monitor.stats.messages")
        page.evaluate("window.__benchRecord(true)")
        sent = send_updates(client, keys, updates, rate, seconds)
        page.wait_for_timeout(500)  # the last ones arrive and are drawn
        page.evaluate("window.__benchRecord(false)")
        frames = page.evaluate("window.__bench.frames")
        work = page.evaluate("monitor.stats.recent.slice()")
        received = page.evaluate("monitor.stats.messages") - before
        return Row(jobs=jobs, view=view, open_ms=marks["open"], message_ms=marks["message"],
                   snapshot_ms=marks["snapshot"], shown_ms=marks["shown"],
                   interactive_ms=marks["interactive"], click_ms=click["duration"],
                   heap_mb=heap, cards=marks["cards"], sent=sent, received=received,
                   frame_p50=quantile(frames, 0.5), frame_p95=quantile(frames, 0.95),
                   frame_max=max(frames, default=math.nan), work_p95=quantile(work, 0.95),
                   work_max=max(work, default=math.nan))
    finally:
        context.close()


def warm_up(base: str) -> tuple[float, float]:
    """Read every job twice through the gateway (its first read after a start is slower);
    both times in ms."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/jobs?include_archived=true",
                                    timeout=120) as answer:
            answer.read()
        times.append((time.perf_counter() - start) * 1000)
    return times[0], times[1]


def report(rows: list[Row], rate: float, seconds: float) -> str:
    headers = ["jobs", "view", "/ws open ms", "snapshot arrived ms", "snapshot applied ms",
               "list shown ms", "interactive ms", "click ms",
               "JS heap MB", "cards in DOM", f"updates ({rate:g}/s × {seconds:g}s) sent/got",
               "frame p50 / p95 / max ms", "page work p95 / max ms"]
    body = [[f"{r.jobs:,}", r.view, f"{r.open_ms:,.0f}", f"{r.message_ms:,.0f}",
             f"{r.snapshot_ms:,.0f}", f"{r.shown_ms:,.0f}",
             f"{r.interactive_ms:,.0f}", f"{r.click_ms:.0f}", f"{r.heap_mb:,.1f}", str(r.cards),
             f"{r.sent} / {r.received}",
             f"{r.frame_p50:.1f} / {r.frame_p95:.1f} / {r.frame_max:.1f}",
             f"{r.work_p95:.2f} / {r.work_max:.2f}"] for r in rows]
    return table(headers, body, ["r", "l"] + ["r"] * (len(headers) - 2))


def verdicts(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        if r.jobs <= 10_000:
            ok = r.interactive_ms < BAR_INTERACTIVE_MS
            headline(f"page with {r.jobs:,} jobs ({r.view}): interactive ms",
                     f"{r.interactive_ms:,.0f}", f"< {BAR_INTERACTIVE_MS:,.0f}", verdict(ok))
            out.append(f"{r.jobs:,} jobs, {r.view}: interactive in {r.interactive_ms:,.0f} ms "
                       f"({'meets' if ok else 'MISSES'} the bar of {BAR_INTERACTIVE_MS:,.0f} ms)")
        ok = r.frame_max < BAR_FRAME_MS
        headline(f"page with {r.jobs:,} jobs ({r.view}): longest frame ms under updates",
                 f"{r.frame_max:.1f}", f"< {BAR_FRAME_MS:.0f}", verdict(ok))
        out.append(f"{r.jobs:,} jobs, {r.view}: longest frame under load {r.frame_max:.1f} ms "
                   f"({'meets' if ok else 'MISSES'} the bar of {BAR_FRAME_MS:.0f} ms per frame)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.page_scale",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 s of updates per row, only the 10,000-job rows")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of updates per row (default 10; 3 with --quick)")
    parser.add_argument("--rate", type=float, default=200.0, help="updates per second")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)

    from playwright.sync_api import sync_playwright

    url = redis_url()
    client = redis.Redis.from_url(url)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-page-"))
    plan = [(10_000, ("flat", "grouped"))]
    if not args.quick:
        plan.append((100_000, ("flat", "grouped")))
    rows: list[Row] = []
    notes: list[str] = []
    updates_mix: dict[str, int] = {}
    print("## Page scale\n")
    print(machine_line(client) + f"; Chromium at {CHROMIUM}, headless, {VIEWPORT['width']}x"
          f"{VIEWPORT['height']}\n")
    print(f"State written straight into the Redis hashes the worker commits ({MODELS} models); "
          f"`monitor gateway` in its own process; updates appended to `<prefix>updates` as the "
          f"worker does, {args.rate:g} a second for {seconds:g} s per row.\n")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for jobs, views in plan:
                prefix = unique_prefix(f"page{jobs}")
                keys = Keys(prefix)
                gateway = None
                try:
                    fleet, bases = build_fleet(jobs)
                    write_state(client, keys, fleet)
                    port = free_port()
                    gateway = start_monitor("gateway", [
                        "--redis-url", url, "--prefix", prefix, "--port", str(port),
                        "--log-level", "WARNING"], log_dir / f"gateway-{jobs}.log")
                    base = f"http://127.0.0.1:{port}"
                    wait_http_ok(f"{base}/healthz", gateway)
                    cold, warm = warm_up(base)
                    notes.append(f"{jobs:,} jobs: the gateway's first `GET /api/jobs` after it "
                                 f"started took {cold:,.0f} ms, the next {warm:,.0f} ms "
                                 f"(rows are measured warm)")
                    updates = Updates(fleet, bases)
                    for view in views:
                        rows.append(measure(browser, base, client, keys, updates, jobs, view,
                                            args.rate, seconds))
                        print(f"- measured {jobs:,} jobs, {view}", file=sys.stderr)
                    for kind, count in updates.kinds.items():
                        updates_mix[kind] = updates_mix.get(kind, 0) + count
                finally:
                    if gateway is not None:
                        stop_process(gateway, "gateway")
                    delete_prefix(client, prefix)
        finally:
            browser.close()
    print(report(rows, args.rate, seconds) + "\n")
    for line in verdicts(rows) + notes:
        print(f"- {line}")
    mix = ", ".join(f"{count:,} {kind}" for kind, count in updates_mix.items())
    print(f"- the updates sent: {mix} (a new best carries every view of its model)")
    print("\nThe first five columns are times from navigation start; click is a "
          "checkbox click to the next paint; frame times are intervals between animation "
          "frames while updates arrive (16.7 ms is 60 fps); page work is the page's own DOM "
          "work per frame.")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
