"""How long the job view's chart takes to draw 5 series of 2,000 points: the hand-written SVG
chart the page had before uPlot (web/static/chart.js at OLD_COMMIT) against the uPlot one.

Not a test (nothing is asserted about time): ``python -m tests.chart_bench [--runs N]`` prints
a table. Each chart is drawn in Debian's Chromium (headless, software rendering) on a page
served from memory with the page's own style sheets, at the job view's width (560 px):

- first draw: from the call until the frame after it has been painted (for uPlot this includes
  the ResizeObserver callback that creates the plot at the container's width);
- live update: the same series with one more point each, as a /ws update brings; the SVG chart
  was rebuilt whole on each, the uPlot chart takes the new data in place.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from collections.abc import Callable

from playwright.sync_api import Route, sync_playwright

from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT

OLD_COMMIT = "9c92ab3"  # the last commit with the SVG chart.js
STATIC = ROOT / "web" / "static"
ORIGIN = "http://bench.local"

PAGE = """<!doctype html><html><head>
<link rel="stylesheet" href="/static/vendor/uPlot-1.6.32.min.css">
<link rel="stylesheet" href="/static/style.css"></head>
<body><div id="box" style="width: 560px"></div></body></html>"""

# Runs in the page: draws `runs` times with each chart and returns the timings (ms).
MEASURE = """async ({runs, series, points}) => {
  const old = await import('/old/chart.js');
  const now = await import('/static/chart.js');
  const box = document.getElementById('box');
  const frame = () => new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
  const data = (extra) => Array.from({length: series}, (_, s) => ({
    label: `run ${s + 1}`, color: `var(--run-${s + 1})`, width: 1.75, markers: true,
    points: Array.from({length: points + extra}, (_, i) =>
      [(i + 1) * 10, 0.3 + s * 0.05 + 1.2 / (1 + 0.01 * i) + 0.02 * Math.sin(i * 0.7 + s)]),
  }));
  const first = data(0);
  const next = data(1);
  const out = {svgFirst: [], svgUpdate: [], uplotFirst: [], uplotUpdate: []};
  for (let run = 0; run < runs; run++) {
    box.replaceChildren();
    await frame();
    let t = performance.now();
    box.replaceChildren(old.lineChart({series: first, xLabel: 'step', width: 560, height: 260}),
                        old.legend(first));
    await frame();
    out.svgFirst.push(performance.now() - t);
    t = performance.now();
    box.replaceChildren(old.lineChart({series: next, xLabel: 'step', width: 560, height: 260}),
                        old.legend(next));
    await frame();
    out.svgUpdate.push(performance.now() - t);

    box.replaceChildren();
    await frame();
    t = performance.now();
    const chart = new now.LineChart({title: 'bench'});
    box.append(chart.el);
    chart.set({series: first, xLabel: 'step', band: null});
    await frame();
    out.uplotFirst.push(performance.now() - t);
    if (!box.querySelector('canvas')) throw new Error('uPlot drew nothing');
    t = performance.now();
    chart.set({series: next, xLabel: 'step', band: null});
    await frame();
    out.uplotUpdate.push(performance.now() - t);
    chart.destroy();
  }
  return out;
}"""


def serve(old_chart: str) -> Callable[[Route], None]:
    """Answers the bench page's requests from memory: the page, the old chart, web/static."""

    def handle(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        if path == "/":
            route.fulfill(body=PAGE, content_type="text/html")
        elif path == "/old/chart.js":
            route.fulfill(body=old_chart, content_type="text/javascript")
        elif path.startswith("/static/"):
            file = STATIC / path.removeprefix("/static/")
            kind = "text/css" if file.suffix == ".css" else "text/javascript"
            route.fulfill(body=file.read_bytes(), content_type=kind)
        else:
            route.fulfill(status=404)
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--series", type=int, default=5)
    parser.add_argument("--points", type=int, default=2000)
    args = parser.parse_args()
    old_chart = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:web/static/chart.js"],
                               check=True, capture_output=True, text=True).stdout
    with sync_playwright() as playwright:
        # Frames as fast as they are drawn, not at 60 Hz: the time is the work, not the wait.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_ARGS, "--disable-gpu-vsync", "--disable-frame-rate-limit"])
        page = browser.new_page(viewport={"width": 800, "height": 600})
        page.route(f"{ORIGIN}/**", serve(old_chart))
        page.goto(f"{ORIGIN}/")
        warm = page.evaluate(MEASURE, {"runs": 3, "series": args.series, "points": args.points})
        assert warm
        times = page.evaluate(MEASURE, {"runs": args.runs, "series": args.series,
                                        "points": args.points})
        version = browser.version
        browser.close()
    print(f"{args.series} series x {args.points:,} points, 560x260 px, Chromium {version} headless "
          f"(software rendering), {args.runs} runs after 3 warm-up runs; ms to the painted frame")
    print()
    print("| chart | first draw, median | p90 | live update, median | p90 |")
    print("|---|---:|---:|---:|---:|")
    for name, key in (("SVG (before)", "svg"), ("uPlot 1.6.32", "uplot")):
        first, update = times[f"{key}First"], times[f"{key}Update"]
        print(f"| {name} | {statistics.median(first):.1f} | {quantile(first, 0.9):.1f} "
              f"| {statistics.median(update):.1f} | {quantile(update, 0.9):.1f} |")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    main()
