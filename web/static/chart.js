// Charts over uPlot (vendored in vendor/, MIT; canvas, fast on long series): loss curves of
// one run or several overlaid, with an optional forecast band, and a scatter with its front.
// A chart is an object that keeps its element across live redraws: set() hands it new data
// and it draws in place (the crosshair, the zoom and the log-scale toggle survive updates).

import uPlot from "./vendor/uPlot-1.6.32.esm.js";
import { h } from "./dom.js";
import { state } from "./state.js";

const MAX_MARKERS = 150; // markers on a line with this few points; longer ones are bare lines
const LABEL_MAX = 22; // characters of a front point's label drawn; the whole name is in the table

const scheme = window.matchMedia("(prefers-color-scheme: dark)");
const onScreen = new Set(); // charts not destroyed: redrawn in the other palette when it changes
scheme.addEventListener("change", () => {
  for (const chart of onScreen) chart.rebuild();
});

/** A colour for the canvas: `var(--name)` read from the page's current palette. */
function paint(value) {
  const named = /^var\((--[\w-]+)\)$/.exec(value);
  if (!named) return value;
  return getComputedStyle(document.documentElement).getPropertyValue(named[1]).trim();
}

/** A number as the axes and the crosshair say it: `1,300`, `2.5`, `0.00012`. */
function numberText(value) {
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return String(Number(value.toPrecision(4)));
}

/** A loss axis' tick: on a log axis only round ones are named (0.2, 0.5, 1), not its ends. */
function tickText(value, log) {
  if (value === null) return "";
  if (log && Number(value.toPrecision(1)) !== value) return "";
  return numberText(value);
}

const lossValue = (u, v) => (v === null || v === undefined ? "–" : v.toFixed(4));

/** [lo, hi] around the data with `pad` of the span on each side (never an empty range). */
function padded(min, max, pad, log) {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) {
    return log ? [0.1, 1] : [0, 1];
  }
  if (log) return [min / (1 + pad * 2), max * (1 + pad * 2)];
  const room = max > min ? (max - min) * pad : Math.abs(min) * 0.1 || 1;
  return [min - room, max + room];
}

/** The axes in the page's palette: `xLabel` below, `yLabel` (if any) on the left. */
function axes(xLabel, yLabel, yValues) {
  const font = `11px ${paint("var(--font)")}`;
  const common = {
    stroke: paint("var(--muted)"),
    font,
    labelFont: `12px ${paint("var(--font)")}`,
    grid: { stroke: paint("var(--border)"), width: 1 },
    ticks: { stroke: paint("var(--border)"), width: 1, size: 4 },
  };
  return [
    { ...common, label: xLabel, size: 28, labelSize: 16, labelGap: 2,
      values: (u, splits) => splits.map(numberText) },
    { ...common, label: yLabel, labelSize: yLabel ? 18 : 0, size: 52, values: yValues },
  ];
}

/**
 * The part every chart shares: a figure that holds a uPlot sized to its width, rebuilt when
 * what it draws changes shape (other series, the log scale, the palette) and else fed new
 * data in place. Subclasses give `shapeOf(spec)`, `dataOf(spec)` and `optionsOf(spec)`.
 */
class Chart {
  constructor(kind, { title, height }) {
    this.title = title;
    this.height = height;
    this.spec = null;
    this.plot = null;
    this.shape = "";
    this.width = 0;
    this.zoomed = false; // a drag zoomed in: live data keeps that view until a double click
    this.box = h("div", { class: "chart-plot" });
    this.empty = h("p", { class: "muted chart-empty", hidden: true });
    this.el = h("figure", { class: "chart", "data-chart": kind }, this.box, this.empty);
    this.observer = new ResizeObserver(([entry]) => this.resize(Math.floor(entry.contentRect.width)));
    this.observer.observe(this.box);
    onScreen.add(this);
  }

  /** Draw `spec` (what it is depends on the kind of chart). */
  set(spec) {
    this.spec = spec;
    this.draw();
  }

  resize(width) {
    if (width <= 0 || width === this.width) return;
    this.width = width;
    if (this.plot) this.plot.setSize({ width, height: this.height });
    else this.draw();
  }

  draw() {
    if (this.spec === null || this.width === 0) return;
    const emptyText = this.emptyText(this.spec);
    this.empty.hidden = emptyText === null;
    this.empty.textContent = emptyText ?? "";
    if (emptyText !== null) {
      this.dropPlot();
      return;
    }
    const data = this.dataOf(this.spec);
    const shape = this.shapeOf(this.spec);
    if (this.plot && shape === this.shape) {
      this.plot.setData(data, !this.zoomed);
    } else {
      this.dropPlot();
      this.shape = shape;
      this.zoomed = false;
      const options = this.optionsOf(this.spec);
      options.width = this.width;
      options.height = this.height;
      options.title = undefined;
      (options.hooks ??= {}).setSelect = [(u) => {
        if (u.select.width > 0) this.zoomed = true;
      }];
      this.plot = new uPlot(options, data, this.box);
      this.plot.over.addEventListener("dblclick", () => {
        this.zoomed = false;
      });
      this.plot.root.setAttribute("role", "img");
      this.plot.root.setAttribute("aria-label", this.title);
    }
    this.drawn(this.plot);
  }

  /** After each draw: what the subclass keeps in the DOM next to the canvas. */
  drawn() {}

  /** Redraw from scratch (the palette changed). */
  rebuild() {
    this.dropPlot();
    this.draw();
  }

  dropPlot() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.shape = "";
  }

  /** Free the chart (its uPlot listens on the window): call when its view closes. */
  destroy() {
    this.dropPlot();
    this.observer.disconnect();
    onScreen.delete(this);
  }
}

/**
 * Loss curves. `set({series, xLabel, band})`: `series` are [{label, color, width, dashed,
 * markers, points: [[x, y], ...]}] (colour: any CSS colour or var()); `band`, if any, is a
 * forecast {from, to, lo, mid, hi, label}: the band between lo and hi from x `from` to `to`,
 * with mid dashed. A button switches the loss axis between linear and log scale.
 */
export class LineChart extends Chart {
  constructor({ title, height = 260 }) {
    super("line", { title, height });
    this.toggle = h("button", { type: "button", class: "small chart-log", "data-action": "log-scale",
      "aria-pressed": String(state.logScale) }, "Log scale");
    this.toggle.addEventListener("click", () => {
      state.logScale = !state.logScale;
      this.toggle.setAttribute("aria-pressed", String(state.logScale));
      this.rebuild();
    });
    this.caption = h("figcaption", { class: "chart-caption muted", hidden: true });
    this.el.prepend(h("div", { class: "chart-tools" }, this.toggle));
    this.el.append(this.caption);
  }

  emptyText(spec) {
    return spec.series.some((s) => s.points.length > 0) ? null : "No metric points yet";
  }

  shapeOf({ series, xLabel, band }) {
    const styles = series.map((s) => [s.label, s.color, s.width, s.dashed,
      s.markers && s.points.length <= MAX_MARKERS]);
    return JSON.stringify([styles, xLabel, band ? band.label : null, state.logScale]);
  }

  dataOf({ series, band }) {
    // One table per series, the forecast's three lines after them; joined on x (steps).
    const tables = series.map((s) => [s.points.map((p) => p[0]), s.points.map((p) => p[1])]);
    if (band) {
      const xs = [band.from, band.to];
      tables.push([xs, [band.hi, band.hi]], [xs, [band.lo, band.lo]], [xs, [band.mid, band.mid]]);
    }
    const data = uPlot.join(tables);
    if (state.logScale) { // a log axis cannot place zero or a negative loss
      for (let i = 1; i < data.length; i++) {
        data[i] = data[i].map((v) => (v === null || v === undefined || v > 0 ? v : undefined));
      }
    }
    return data;
  }

  optionsOf({ series, xLabel, band }) {
    const log = state.logScale;
    const counts = series.map((s) => s.points.length);
    const lines = series.map((s, i) => ({
      label: s.label,
      class: "series-line",
      stroke: paint(s.color),
      width: s.width ?? 2,
      dash: s.dashed ? [5, 4] : undefined,
      spanGaps: true,
      value: lossValue,
      points: { show: Boolean(s.markers) && counts[i] <= MAX_MARKERS, size: 6,
        fill: paint(s.color), stroke: paint("var(--surface)"), width: 1 },
    }));
    const bands = [];
    if (band) {
      const color = paint("var(--forecast)");
      const edge = { class: "series-forecast-edge", stroke: color, width: 1, spanGaps: true,
        value: lossValue, points: { show: false } };
      lines.push({ ...edge, label: "forecast p90" }, { ...edge, label: "forecast p10" },
        { ...edge, class: "series-forecast", label: "forecast p50", width: 2, dash: [6, 4] });
      const hi = series.length + 1;
      bands.push({ series: [hi, hi + 1], fill: paint("var(--forecast-band)") });
    }
    return {
      class: "chart-uplot",
      scales: {
        x: { time: false },
        y: log ? { distr: 3, log: 10, range: (u, min, max) => padded(min, max, 0.03, true) }
          : { range: (u, min, max) => padded(min, max, 0.06, false) },
      },
      axes: axes(xLabel, "", (u, splits) => splits.map((v) => tickText(v, log))),
      series: [{ label: xLabel, value: (u, v) => (v === null ? "–" : numberText(v)) }, ...lines],
      bands,
      cursor: { drag: { x: true, y: false }, points: { size: 7 } },
      legend: { live: true, markers: { dash: (u, i) => (u.series[i].dash ? "dashed" : "solid") } },
    };
  }

  drawn(plot) {
    const { band } = this.spec;
    this.caption.hidden = !band;
    this.caption.textContent = band ? band.label : "";
    // Each legend row says how many points its series has (the markers are on the canvas).
    const rows = plot.root.querySelectorAll(".u-legend .u-series");
    this.spec.series.forEach((s, i) => {
      rows[i + 1]?.setAttribute("data-points", String(s.points.length));
    });
  }
}

/**
 * A scatter with a front. `set({points, xLabel, yLabel})`: points are [{x, y, label, front,
 * title}]; front points are highlighted, joined as a staircase in x order and labelled. The
 * points are also listed in a table for screen readers (a row per point).
 */
export class ScatterChart extends Chart {
  constructor({ title, height = 300 }) {
    super("scatter", { title, height });
    this.labels = h("div", { class: "scatter-labels", "aria-hidden": "true" });
    this.table = h("table", { class: "visually-hidden chart-data" });
    this.el.append(this.table);
    this.sorted = [];
    this.hovered = null; // the row of the point nearest the pointer
  }

  emptyText(spec) {
    return spec.points.length ? null : "No runs to place yet";
  }

  shapeOf({ xLabel, yLabel }) {
    return JSON.stringify([xLabel, yLabel]);
  }

  dataOf({ points }) {
    // A row per point in x order (uPlot's x must ascend): the others and the front are two
    // series, each null where the row is the other's.
    this.sorted = [...points].sort((a, b) => a.x - b.x || a.y - b.y);
    const xs = this.sorted.map((p) => p.x);
    return [xs, this.sorted.map((p) => (p.front ? null : p.y)),
      this.sorted.map((p) => (p.front ? p.y : null))];
  }

  optionsOf({ xLabel, yLabel }) {
    const none = () => null;
    const muted = paint("var(--muted)");
    const ok = paint("var(--ok)");
    const surface = paint("var(--surface)");
    const nameAt = (idx) => { // the run under the crosshair: `lr0.003-seed0 · 16 GPU-hours`
      const p = idx === null || idx === undefined ? undefined : this.sorted[idx];
      return p ? `${p.label} · ${numberText(p.x)} ${xLabel}` : "–";
    };
    return {
      class: "chart-uplot",
      scales: {
        x: { time: false, range: (u, min, max) => {
          const [lo, hi] = padded(min, max, 0.08, false);
          return [min >= 0 ? Math.max(0, lo) : lo, hi];
        } },
        y: { range: (u, min, max) => padded(min, max, 0.1, false) },
      },
      axes: axes(xLabel, yLabel, (u, splits) => splits.map((v) => (v === null ? "" : numberText(v)))),
      series: [
        { label: "run", value: (u, v, si, idx) => nameAt(idx) },
        { label: "other runs", class: "series-points", stroke: muted, width: 0, paths: none,
          value: lossValue, points: { show: true, size: 8, fill: muted, stroke: surface, width: 1 } },
        { label: "Pareto front", class: "series-front", stroke: ok, width: 1.5, dash: [4, 3],
          spanGaps: true, paths: uPlot.paths.stepped({ align: 1 }), value: lossValue,
          points: { show: true, size: 11, fill: ok, stroke: surface, width: 1.5 } },
      ],
      // The crosshair names the point nearest the pointer (in both directions: runs of about
      // the same cost are told apart by their loss), not the nearest one of each series.
      cursor: { drag: { x: false, y: false }, dataIdx: (u, si) => this.pointAt(u, si),
        points: { size: 10 } },
      legend: { live: true },
      hooks: { draw: [(u) => this.placeLabels(u)] },
    };
  }

  /** The row of the point nearest the pointer for series `si` (null where it has none). */
  pointAt(u, si) {
    if (si === 0) { // asked first on each move: find the point once for every series
      let best = Infinity;
      this.hovered = null;
      this.sorted.forEach((p, i) => {
        const dx = u.valToPos(p.x, "x") - u.cursor.left;
        const dy = u.valToPos(p.y, "y") - u.cursor.top;
        if (dx * dx + dy * dy < best) {
          best = dx * dx + dy * dy;
          this.hovered = i;
        }
      });
      return this.hovered;
    }
    const i = this.hovered;
    return i !== null && u.data[si][i] !== null ? i : null;
  }

  /** Name the front's points on the chart (text in the DOM, over the canvas). */
  placeLabels(u) {
    if (this.labels.parentNode !== u.over) u.over.append(this.labels);
    const width = u.over.clientWidth;
    const spans = this.sorted.filter((p) => p.front).map((p) => {
      const text = p.label.length > LABEL_MAX ? `${p.label.slice(0, LABEL_MAX - 1)}…` : p.label;
      const x = u.valToPos(p.x, "x");
      const y = u.valToPos(p.y, "y");
      const span = h("span", { class: x > width - 150 ? "scatter-label end" : "scatter-label" }, text);
      span.style.left = `${Math.round(x)}px`;
      span.style.top = `${Math.round(y)}px`;
      return span;
    });
    this.labels.replaceChildren(...spans);
  }

  drawn() {
    const rows = this.sorted.map((p) => h("tr", { class: p.front ? "scatter-point front" : "scatter-point" },
      h("th", { scope: "row" }, p.label),
      h("td", {}, numberText(p.x)),
      h("td", {}, p.y.toFixed(4)),
      h("td", {}, p.front ? "yes" : "no")));
    const { xLabel, yLabel } = this.spec;
    this.table.replaceChildren(
      h("caption", {}, this.title),
      h("thead", {}, h("tr", {}, ["run", xLabel, yLabel, "on the front"].map((label) =>
        h("th", { scope: "col" }, label)))),
      h("tbody", {}, rows));
  }
}

/**
 * What to put on the x axis for these metric histories: step if every point has one, else
 * epoch if every point has one, else the point's position.
 */
export function xAxisFor(histories) {
  const all = histories.flat();
  if (all.length && all.every((p) => p.step !== null)) return { label: "step", x: (p) => p.step };
  if (all.length && all.every((p) => p.epoch !== null)) return { label: "epoch", x: (p) => p.epoch };
  return { label: "point", x: (p, i) => i };
}

/** The [x, y] points of one metric (`loss` or `eval_loss`) of a history. */
export function pointsOf(history, metric, axis) {
  const out = [];
  history.forEach((p, i) => {
    if (p[metric] !== null) out.push([axis.x(p, i), p[metric]]);
  });
  return out;
}
