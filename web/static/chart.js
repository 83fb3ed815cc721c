// Charts in hand-written SVG (no library): loss and eval-loss curves, one run or several
// overlaid, and a scatter with its front (GPU-hours against best eval loss). Pure DOM
// building: give it series or points, get an element back.

const SVG = "http://www.w3.org/2000/svg";
const MAX_DRAWN = 1200; // points per line drawn; longer histories are thinned (min and max kept)
const MAX_MARKERS = 150; // markers (with a hover title) only on lines with this few points

function svg(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  const span = hi - lo;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => span / s <= count) ?? raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return { ticks, step };
}

function tickText(value, step) {
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  return value.toFixed(decimals);
}

/** Thin a long line to about MAX_DRAWN points, keeping each bucket's lowest and highest. */
function thin(points) {
  if (points.length <= MAX_DRAWN) return points;
  const buckets = MAX_DRAWN / 2;
  const size = points.length / buckets;
  const out = [points[0]];
  for (let b = 0; b < buckets; b++) {
    const start = Math.floor(b * size);
    const end = Math.min(points.length, Math.floor((b + 1) * size));
    let low = null;
    let high = null;
    for (let i = start; i < end; i++) {
      if (low === null || points[i][1] < low[1]) low = points[i];
      if (high === null || points[i][1] > high[1]) high = points[i];
    }
    if (low && high) out.push(...(low[0] <= high[0] ? [low, high] : [high, low]));
  }
  out.push(points[points.length - 1]);
  return out;
}

function extent(values, pad) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === hi) {
    const room = Math.abs(lo) * 0.1 || 1;
    lo -= room;
    hi += room;
  } else {
    const room = (hi - lo) * pad;
    lo -= room;
    hi += room;
  }
  return [lo, hi];
}

/** The grid, tick labels, frame and axis names of a chart, behind what is drawn next. */
function drawAxes(root, { width, height, margin, x0, x1, y0, y1, sx, sy, xLabel, yLabel = "" }) {
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const grid = svg("g", { class: "chart-grid" }, root);
  const yTicks = niceTicks(y0, y1, 5);
  for (const v of yTicks.ticks) {
    const y = sy(v);
    svg("line", { x1: margin.left, x2: width - margin.right, y1: y, y2: y }, grid);
    const label = svg("text", { x: margin.left - 8, y: y + 4, class: "chart-tick y" }, grid);
    label.textContent = tickText(v, yTicks.step);
  }
  const xTicks = niceTicks(x0, x1, 6);
  for (const v of xTicks.ticks) {
    const x = sx(v);
    svg("line", { x1: x, x2: x, y1: margin.top, y2: height - margin.bottom, class: "v" }, grid);
    const label = svg("text", { x, y: height - margin.bottom + 16, class: "chart-tick x" }, grid);
    label.textContent = tickText(v, xTicks.step);
  }
  svg("rect", { x: margin.left, y: margin.top, width: plotW, height: plotH, class: "chart-frame" },
    root);
  const axis = svg("text", { x: margin.left + plotW / 2, y: height - 6, class: "chart-axis" }, root);
  axis.textContent = xLabel;
  if (yLabel) {
    const cy = margin.top + plotH / 2;
    const name = svg("text", { x: 14, y: cy, class: "chart-axis",
      transform: `rotate(-90 14 ${cy})` }, root);
    name.textContent = yLabel;
  }
}

/**
 * An SVG line chart. `series`: [{label, color, dashed, width, markers, points: [[x, y], ...]}]
 * (colour: any CSS colour or var()). `xLabel` names the x axis.
 */
export function lineChart({ series, xLabel, width = 720, height = 280, title = "" }) {
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart-svg",
    role: "img",
  });
  if (title) svg("title", {}, root).textContent = title;
  const drawn = series.filter((s) => s.points.length > 0);
  if (drawn.length === 0) {
    const text = svg("text", { x: width / 2, y: height / 2, class: "chart-empty" }, root);
    text.textContent = "No metric points yet";
    return root;
  }
  const margin = { left: 58, right: 18, top: 14, bottom: 40 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const xs = [];
  const ys = [];
  for (const s of drawn) {
    for (const [x, y] of s.points) {
      xs.push(x);
      ys.push(y);
    }
  }
  const [x0, x1] = extent(xs, 0);
  const [y0, y1] = extent(ys, 0.06);
  const sx = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => margin.top + (1 - (y - y0) / (y1 - y0)) * plotH;

  drawAxes(root, { width, height, margin, x0, x1, y0, y1, sx, sy, xLabel });

  for (const s of drawn) {
    const line = thin(s.points);
    const d = line.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`);
    const path = svg("path", { d: d.join(""), class: "chart-line", fill: "none" }, root);
    path.style.stroke = s.color;
    path.style.strokeWidth = String(s.width ?? 2);
    if (s.dashed) path.style.strokeDasharray = "5 4";
    if (s.markers && line.length <= MAX_MARKERS) {
      const group = svg("g", { class: "chart-markers" }, root);
      group.style.fill = s.color;
      for (const [x, y] of line) {
        const dot = svg("circle", { cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 3 }, group);
        svg("title", {}, dot).textContent = `${s.label}: ${y.toFixed(4)} at ${xLabel} ${x}`;
      }
    }
  }
  return root;
}

const LABEL_MAX = 22; // characters of a point's label drawn; the whole label is its hover title

/**
 * An SVG scatter chart with a front: `points` are [{x, y, label, front, title}]; front points
 * are highlighted, joined as a staircase (in x order) and labelled. `xLabel`, `yLabel` name
 * the axes.
 */
export function scatterChart({ points, xLabel, yLabel, width = 560, height = 300, title = "" }) {
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
  if (title) svg("title", {}, root).textContent = title;
  if (points.length === 0) {
    const text = svg("text", { x: width / 2, y: height / 2, class: "chart-empty" }, root);
    text.textContent = "No runs to place yet";
    return root;
  }
  const margin = { left: 70, right: 18, top: 24, bottom: 40 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  let [x0, x1] = extent(points.map((p) => p.x), 0.08);
  const [y0, y1] = extent(points.map((p) => p.y), 0.1);
  if (x0 < 0 && points.every((p) => p.x >= 0)) x0 = 0;
  if (x1 <= x0) x1 = x0 + 1;
  const sx = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => margin.top + (1 - (y - y0) / (y1 - y0)) * plotH;
  drawAxes(root, { width, height, margin, x0, x1, y0, y1, sx, sy, xLabel, yLabel });

  const front = points.filter((p) => p.front).sort((a, b) => a.x - b.x);
  if (front.length > 1) {
    const d = front.map((p, i) => {
      const here = `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`;
      return i === 0 ? `M${here}` : `H${sx(p.x).toFixed(1)}V${sy(p.y).toFixed(1)}`;
    });
    svg("path", { d: d.join(""), class: "scatter-front", fill: "none" }, root);
  }
  const dots = svg("g", { class: "scatter-points" }, root);
  for (const p of [...points.filter((q) => !q.front), ...front]) { // the front drawn on top
    const cx = sx(p.x);
    const cy = sy(p.y);
    const dot = svg("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: p.front ? 5.5 : 4,
      class: p.front ? "scatter-point front" : "scatter-point" }, dots);
    svg("title", {}, dot).textContent = p.title ?? p.label;
    if (!p.front) continue;
    const text = p.label.length > LABEL_MAX ? `${p.label.slice(0, LABEL_MAX - 1)}…` : p.label;
    const right = cx > width - margin.right - 150;
    const label = svg("text", { x: (right ? cx - 8 : cx + 8).toFixed(1),
      y: (cy - 8).toFixed(1), class: right ? "scatter-label end" : "scatter-label" }, dots);
    label.textContent = text;
  }
  return root;
}

/** The legend of a chart: a swatch (solid or dashed) and a label per series. */
export function legend(series) {
  const list = document.createElement("ul");
  list.className = "chart-legend";
  for (const s of series) {
    const item = document.createElement("li");
    const swatch = svg("svg", { viewBox: "0 0 24 8", class: "legend-swatch", "aria-hidden": "true" });
    const line = svg("line", { x1: 1, x2: 23, y1: 4, y2: 4 }, swatch);
    line.style.stroke = s.color;
    line.style.strokeWidth = String(Math.max(2, s.width ?? 2));
    if (s.dashed) line.style.strokeDasharray = "5 4";
    const text = document.createElement("span");
    text.textContent = s.label;
    item.append(swatch, text);
    list.appendChild(item);
  }
  return list;
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
