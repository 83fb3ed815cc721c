// The job list: cards in a grid that reflows with the window, flat or in a section per model.
// Only what is on screen (plus a margin) is in the DOM: 100,000 jobs cost as much to draw as
// the 30 that fit in the window. Cards are kept by job id and refilled only when their job,
// selection, mode, pending action or open confirmation changed (a silent job's also as the
// clock moves).

import {
  actionButton,
  askStopAll,
  canStop,
  cannotWinIds,
  fillControl,
  hoursLeft,
  isConfirming,
  isJobAction,
  newControl,
  stopAllControl,
} from "./actions.js";
import { derive, state } from "./state.js";
import { h, fromTemplate, setAttr, setChildren, setText } from "./dom.js";
import {
  deltaBadgeText,
  forecastRangeText,
  forecastText,
  jobTitle,
  lossBadgeText,
  runCountText,
  shortId,
  staleText,
  statusText,
  stopAllQuestion,
  stopBadgeText,
  stopRequestText,
  tierTitle,
  timeText,
} from "./format.js";
import { registerRenderer, schedule } from "./render.js";

const OVERSCAN = 600; // px drawn above and below the window
const POOL_MAX = 200; // cards kept for reuse after they scroll away

const list = document.getElementById("list");
let sizes = null; // card and header sizes, from the CSS custom properties
let layout = null;
let frameNo = 0;
const cards = new Map(); // job id -> card record
const sections = new Map(); // model key (exact model_name, null: none) -> section record
const sectionModel = new WeakMap(); // section element -> its exact model_name (null: none)
const pool = [];
let firstShown = false;

function readSizes() {
  const css = getComputedStyle(list);
  const px = (name) => parseFloat(css.getPropertyValue(name)) || 0;
  return {
    cardH: px("--card-h"),
    gap: px("--gap"),
    headH: px("--group-head-h"),
    groupGap: px("--group-gap"),
    minW: px("--card-min-w"),
  };
}

function computeLayout(derived, width) {
  const m = sizes;
  const cols = Math.max(1, Math.floor((width + m.gap) / (m.minW + m.gap)));
  const colW = (width - m.gap * (cols - 1)) / cols;
  const rowH = m.cardH + m.gap;
  const base = { version: derived.version, width, grouped: state.grouped, cols, colW, rowH };
  if (!state.grouped) {
    const rows = Math.ceil(derived.flat.length / cols);
    return { ...base, total: rows ? rows * rowH - m.gap : 0 };
  }
  let top = 0;
  const placed = [];
  for (const group of derived.groups) {
    const rows = Math.ceil(group.ids.length / cols);
    const height = m.headH + rows * rowH - m.gap;
    placed.push({ group, top, height });
    top += height + m.groupGap;
  }
  return { ...base, placed, total: Math.max(0, top - m.groupGap) };
}

// --- Cards ------------------------------------------------------------------------------------------

function newCard() {
  const el = fromTemplate("card-template");
  const rec = {
    el,
    id: null,
    job: null,
    selected: null,
    grouped: null,
    pending: null,
    confirm: null,
    now: null,
    x: null,
    y: null,
    w: null,
    check: el.querySelector(".card-select input"),
    title: el.querySelector(".card-title"),
    status: el.querySelector(".status"),
    model: el.querySelector(".card-model"),
    time: el.querySelector(".card-time"),
    sub: el.querySelector(".card-sub"),
    badges: el.querySelector(".badges"),
    actions: el.querySelector(".card-actions"),
    best: h("span", { class: "badge badge-best", "data-testid": "badge-best" }, "🏆 Best"),
    loss: h("span", { class: "badge badge-loss", "data-testid": "badge-loss" }),
    delta: h("span", { class: "badge badge-delta", "data-testid": "badge-delta" }),
    forecast: h("span", { class: "badge badge-forecast", "data-testid": "badge-forecast" }),
    stale: h("span", { class: "badge badge-stale", "data-testid": "badge-stale" }),
    stopBadge: h("span", { class: "badge badge-stop", "data-testid": "badge-stop" }),
    stop: newControl("stop", { class: "card-action card-stop" }),
    archive: actionButton("archive", { class: "card-action" }),
    restore: actionButton("restore", { class: "card-action" }),
  };
  return rec;
}

function fillCard(rec, job, selected, grouped, pending, confirming) {
  const { el } = rec;
  setAttr(el, "data-job-id", job.id);
  setAttr(el, "data-status", job.status);
  el.classList.toggle("archived", job.archived);
  el.classList.toggle("selected", selected);
  el.classList.toggle("is-best", job.is_best);
  rec.check.checked = selected;
  const title = jobTitle(job);
  setText(rec.title, title);
  setAttr(rec.title, "title", job.name || job.id);
  setAttr(rec.check, "aria-label", `Select ${title} for comparison`);
  setText(rec.status, statusText(job));
  rec.status.className = `status status-${job.status}`;
  setAttr(rec.status, "title",
    job.status === "failed" ? (job.error ? `Failed: ${job.error}` : "Failed") : null);
  if (grouped) {
    setText(rec.model, job.name ? shortId(job.id) : "");
    setAttr(rec.model, "title", job.name ? job.id : null);
  } else {
    setText(rec.model, job.model_display);
    setAttr(rec.model, "title", job.model_name === null ? "Unknown Model" : job.model_name);
  }
  setText(rec.time, timeText(job.created_at));
  setAttr(rec.time, "title", new Date(job.created_at * 1000).toLocaleString());
  // The start time's place says the most pressing of: silent, asked to stop, the forecast.
  const stale = job.status === "running" && job.stale;
  const stopText = stopBadgeText(job);
  const forecast = job.status === "running" ? job.forecast ?? null : null;
  fillStale(rec, stale ? job.last_seen : null);
  fillForecast(rec, !stale && stopText === null ? forecast : null);
  if (stopText !== null) {
    setText(rec.stopBadge, stopText);
    setAttr(rec.stopBadge, "data-by", job.stop_requested.by);
    setAttr(rec.stopBadge, "title", `Stop requested ${stopRequestText(job.stop_requested)}`);
  }
  const stopAside = stopText !== null && !stale;
  rec.el.classList.toggle("has-aside", stale || stopText !== null || forecast !== null);
  if (stopAside && rec.stopBadge.parentNode !== rec.sub) rec.sub.append(rec.stopBadge);
  else if (!stopAside && rec.stopBadge.parentNode === rec.sub) rec.stopBadge.remove();

  const badges = stopText !== null && !stopAside ? [rec.stopBadge] : [];
  if (job.is_best) badges.push(rec.best);
  if (job.best_eval_loss !== null) {
    setText(rec.loss, lossBadgeText(job.best_eval_loss));
    badges.push(rec.loss);
  }
  if (grouped && job.tier !== null && job.delta_pct !== null) {
    setText(rec.delta, deltaBadgeText(job.delta_pct));
    setAttr(rec.delta, "data-tier", job.tier);
    setAttr(rec.delta, "title", tierTitle(job.tier));
    rec.delta.className = `badge badge-delta tier-${job.tier}`;
    badges.push(rec.delta);
  }
  if (job.archived) badges.push(h("span", { class: "badge badge-archived" }, "Archived"));
  setChildren(rec.badges, badges);
  const action = job.archived ? rec.restore : rec.archive;
  action.disabled = pending;
  setAttr(action, "aria-label", `${job.archived ? "Restore" : "Archive"} ${title}`);
  if (confirming && canStop(job)) setChildren(rec.actions, [state.confirming.node]);
  else if (canStop(job)) setChildren(rec.actions, [fillControl(rec.stop, job), action]);
  else setChildren(rec.actions, [action]);
}

/** A silent running card's badge, in its start time's place: `no signal for 14 min`. */
function fillStale(rec, lastSeen) {
  rec.el.classList.toggle("is-stale", lastSeen !== null);
  if (lastSeen === null) {
    rec.stale.remove();
    return;
  }
  setText(rec.stale, staleText(lastSeen, state.now));
  setAttr(rec.stale, "title", `No event or heartbeat since ${timeText(lastSeen)}: the trainer `
    + "may be gone (its forecast is paused)");
  if (rec.stale.parentNode !== rec.sub) rec.sub.append(rec.stale);
}

/** A running card's forecast badge, in its start time's place (none without a forecast). */
function fillForecast(rec, forecast) {
  if (forecast === null) {
    rec.forecast.remove();
    return;
  }
  const text = forecastText(forecast);
  setText(rec.forecast, text);
  setAttr(rec.forecast, "data-verdict", forecast.verdict);
  setAttr(rec.forecast, "title", `${text}. Forecast of the best eval loss: `
    + forecastRangeText(forecast));
  rec.forecast.className = `badge badge-forecast verdict-${forecast.verdict}`;
  if (rec.forecast.parentNode !== rec.sub) rec.sub.append(rec.forecast);
}

function placeCard(id, parent, x, y, w) {
  const job = state.jobs.get(id);
  let rec = cards.get(id);
  if (rec === undefined) {
    rec = pool.pop() || newCard();
    rec.id = id;
    rec.job = null;
    cards.set(id, rec);
  }
  rec.frame = frameNo;
  const selected = state.selected.includes(id);
  const pending = state.pending.has(id);
  const confirming = isConfirming("stop", id, "card");
  const now = job.stale ? state.now : null; // a silent job's text moves with the clock
  if (rec.job !== job || rec.selected !== selected || rec.grouped !== state.grouped ||
      rec.pending !== pending || rec.confirm !== confirming || rec.now !== now) {
    fillCard(rec, job, selected, state.grouped, pending, confirming);
    rec.job = job;
    rec.selected = selected;
    rec.grouped = state.grouped;
    rec.pending = pending;
    rec.confirm = confirming;
    rec.now = now;
  }
  if (rec.x !== x || rec.y !== y) {
    rec.el.style.transform = `translate(${x}px, ${y}px)`;
    rec.x = x;
    rec.y = y;
  }
  if (rec.w !== w) {
    rec.el.style.width = `${w}px`;
    rec.w = w;
  }
  if (rec.el.parentNode !== parent) parent.appendChild(rec.el);
}

// --- Sections (grouped view) ------------------------------------------------------------------------

function placeSection(entry) {
  const { group, top, height } = entry;
  let rec = sections.get(group.key);
  if (rec === undefined) {
    const el = fromTemplate("group-template");
    rec = {
      el,
      name: el.querySelector(".group-name"),
      count: el.querySelector(".group-count"),
      full: el.querySelector(".group-full"),
      cards: el.querySelector(".group-cards"),
      stop: el.querySelector(".group-stop"),
      stopKey: null,
      top: null,
      height: null,
    };
    setAttr(el, "data-model", group.modelName === null ? "" : group.modelName);
    sectionModel.set(el, group.modelName);
    setAttr(el.querySelector('[data-action="insights"]'), "aria-label",
      `Insights for ${group.display}`);
    setText(rec.name, group.display);
    const full = group.modelName === null ? "" : group.modelName;
    setText(rec.full, full !== group.display ? full : "");
    setAttr(rec.full, "title", full || null);
    setAttr(rec.name, "title", full || "Unknown Model");
    sections.set(group.key, rec);
  }
  rec.frame = frameNo;
  setText(rec.count, runCountText(group.ids.length));
  fillStopAll(rec, group);
  if (rec.top !== top) {
    rec.el.style.top = `${top}px`;
    rec.top = top;
  }
  if (rec.height !== height) {
    rec.el.style.height = `${height}px`;
    rec.height = height;
  }
  if (rec.el.parentNode !== list) list.appendChild(rec.el);
  return rec;
}

/** A section's "Stop all that can't win", while some of its runs can't win and no advisor
 * stops them itself; redone only when the jobs, the advisor, a confirmation or a call moved. */
function fillStopAll(rec, group) {
  const key = [state.version, state.advisor, state.confirming, state.pending.size, group.ids];
  if (rec.stopKey !== null && key.every((part, i) => part === rec.stopKey[i])) return;
  rec.stopKey = key;
  const ids = cannotWinIds(group.ids).filter((id) => !state.pending.has(id));
  if (ids.length === 0) {
    setChildren(rec.stop, []);
    return;
  }
  const control = stopAllControl(group.modelName, group.display);
  const { hours, known } = hoursLeft(ids);
  const question = stopAllQuestion(ids.length, hours, known);
  if (control.dataset.action === "stop-all") setAttr(control, "title", question);
  else {
    const said = control.querySelector(".confirm-question");
    setText(said, question);
    setAttr(said, "title", question); // cut short in a narrow window
    setText(control.querySelector('[data-action="stop-all-confirm"]'),
      `Stop ${ids.length.toLocaleString("en-US")}`);
  }
  setChildren(rec.stop, [control]);
}

// --- The frame -----------------------------------------------------------------------------------

function placeRows(ids, parent, from, to) {
  const { cols, colW, rowH } = layout;
  const gap = sizes.gap;
  const first = Math.max(0, Math.floor(from / rowH));
  const last = Math.min(Math.ceil(ids.length / cols) - 1, Math.floor(to / rowH));
  for (let row = first; row <= last; row++) {
    for (let col = 0; col < cols; col++) {
      const i = row * cols + col;
      if (i >= ids.length) break;
      placeCard(ids[i], parent, Math.round(col * (colW + gap)), row * rowH, Math.floor(colW));
    }
  }
}

function renderList() {
  frameNo += 1;
  const derived = state.loaded ? derive() : { flat: [], groups: [], version: 0 };
  // Read every geometry first, then write: no layout thrashing.
  sizes ??= readSizes();
  const width = list.clientWidth;
  const rect = list.getBoundingClientRect();
  const viewTop = -rect.top - OVERSCAN;
  const viewBottom = -rect.top + window.innerHeight + OVERSCAN;
  if (!layout || layout.version !== derived.version || layout.width !== width ||
      layout.grouped !== state.grouped) {
    layout = computeLayout(derived, width);
    list.style.height = `${layout.total}px`;
  }
  list.classList.toggle("grouped", state.grouped);
  if (!state.grouped) {
    placeRows(derived.flat, list, viewTop, viewBottom);
  } else {
    const placed = layout.placed;
    let lo = 0;
    let hi = placed.length;
    while (lo < hi) { // the first section that ends below the top of the view
      const mid = (lo + hi) >>> 1;
      if (placed[mid].top + placed[mid].height < viewTop) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < placed.length && placed[i].top <= viewBottom; i++) {
      const entry = placed[i];
      const rec = placeSection(entry);
      const offset = entry.top + sizes.headH;
      placeRows(entry.group.ids, rec.cards, viewTop - offset, viewBottom - offset);
    }
  }
  for (const [id, rec] of cards) {
    if (rec.frame === frameNo) continue;
    rec.el.remove();
    cards.delete(id);
    if (pool.length < POOL_MAX) pool.push(rec);
  }
  for (const [key, rec] of sections) {
    if (rec.frame === frameNo) continue;
    rec.el.remove();
    sections.delete(key);
  }
  if (!firstShown && cards.size > 0) {
    firstShown = true;
    performance.mark("monitor:list-shown");
  }
}

/**
 * Wire the list's clicks by their `data-action`: the card (`open`) opens its job, its
 * checkbox (`select`) and its archive or restore button do not; a model section's
 * `insights` button opens that model's insights (with its exact model_name, null for none).
 */
export function initList({ onOpen, onSelect, onAction, onInsights, onStopAll }) {
  list.addEventListener("click", (event) => {
    const target = event.target.closest("[data-action]");
    const head = event.target.closest(".group-head");
    if (target && head) {
      const section = head.closest(".group");
      if (!sectionModel.has(section)) return;
      const modelName = sectionModel.get(section);
      const { action } = target.dataset;
      if (action === "insights") onInsights(modelName);
      else if (action === "stop-all") askStopAll(modelName, sections.get(modelName)?.name.textContent ?? "");
      else if (action === "stop-all-confirm") {
        const group = derive().byModel.get(modelName);
        onStopAll(group ? cannotWinIds(group.ids) : []);
      } else if (isJobAction(action)) onAction(action, null);
      return;
    }
    const card = event.target.closest("[data-job-id]");
    if (!target || !card) return;
    const { action } = target.dataset;
    if (action === "open") onOpen(card.dataset.jobId);
    else if (isJobAction(action)) onAction(action, card.dataset.jobId);
  });
  list.addEventListener("change", (event) => {
    if (!event.target.closest('[data-action="select"]')) return;
    const card = event.target.closest("[data-job-id]");
    onSelect(card.dataset.jobId, event.target.checked, event.target);
  });
  window.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", () => {
    sizes = null;
    layout = null;
    schedule();
  });
  registerRenderer("list", renderList);
}
