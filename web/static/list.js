// The job list: cards in a grid that reflows with the window, flat or in a section per model.
// Flat, it shows the list's window (docs/websocket.md, Windows) and asks its next page as the
// end comes into view. Grouped, a section per model row (its name, run count and best loss
// from the row), open or closed; an open section on screen has its own window and loads more
// the same way. With a filter, the grouped view groups the filter's results. Only what is on
// screen (plus a margin) is in the DOM.

import { askStopAll, cannotWinIds, hoursLeft, isConfirming, isJobAction, stopAllControl }
  from "./actions.js";
import { fillCard, newCard } from "./cards.js";
import { fromTemplate, setAttr, setChildren, setText } from "./dom.js";
import { lossText, runCountText, stopAllQuestion } from "./format.js";
import { registerRenderer, schedule } from "./render.js";
import { modelRows, shownCount, state } from "./state.js";
import {
  evictSections, sectionReserve, sectionWindow, sectionWindowOf, wantMore,
} from "./subscribe.js";

const OVERSCAN = 600; // px drawn above and below the window
const AHEAD = 1200; // px: the next page is asked when the loaded end is this close below the view
const OPEN_FIRST = 6; // the grouped view opens at most this many sections by itself ...
const OPEN_FIRST_RUNS = 200; // ... while they hold this many runs (always the first one)

const list = document.getElementById("list");
let sizes = null; // card and header sizes, from the CSS custom properties
let layout = null;
let frameNo = 0;
const cards = new Map(); // job id -> card record
const sections = new Map(); // model key (exact model_name, null: none) -> section record
const sectionModel = new WeakMap(); // section element -> its exact model_name (null: none)
const listMore = fromTemplate("more-template"); // the flat list's "loading / searching" line
let firstShown = false;
let openedFirst = false; // the grouped view opened its first sections since it was turned on

function readSizes() {
  const css = getComputedStyle(list);
  const px = (name) => parseFloat(css.getPropertyValue(name)) || 0;
  return {
    cardH: px("--card-h"),
    gap: px("--gap"),
    headH: px("--group-head-h"),
    groupGap: px("--group-gap"),
    minW: px("--card-min-w"),
    moreH: px("--more-h"),
  };
}

// --- What the list shows ----------------------------------------------------------------------

/** The flat list's window (the list, or the filter's results), if asked. */
function flatWindow() {
  return state.windows.get("flat");
}

/** What a window's closing line says, or null when it has loaded everything. */
function moreText(win, count) {
  if (win?.error) return `Could not load the runs: ${win.error}`;
  if (win === undefined || win.next === undefined || win.fresh) {
    return win?.filters.q ? "Searching…" : "Loading runs…";
  }
  if (win.next === null) return null;
  const n = win.ids.length;
  if (win.filters.q || win.filters.status) {
    return win.asking ? `Searching… ${runCountText(n)} found so far`
      : `${runCountText(n)} found so far · more load as you scroll`;
  }
  const of = count ?? win.total;
  return `Showing ${n.toLocaleString("en-US")}${of !== null ? ` of ${runCountText(of)}` : ""}`
    + ` · ${win.asking ? "loading more…" : "more load as you scroll"}`;
}

/** Grouped, unfiltered: a section per model row with runs to show. */
function rowSections() {
  const out = [];
  for (const row of modelRows()) {
    const count = shownCount(row);
    if (count === 0) continue;
    const open = state.expanded.has(row.model_name);
    const win = open ? sectionWindowOf(row.model_name) : undefined;
    out.push({ key: row.model_name, display: row.model_display, row, count, open, win,
      ids: win ? win.ids : [] });
  }
  return out;
}

/** Grouped, filtered: the filter's results, a section per model, each open. */
function resultSections(win) {
  const byModel = new Map();
  for (const id of win ? win.ids : []) {
    const job = state.jobs.get(id);
    let entry = byModel.get(job.model_name);
    if (entry === undefined) {
      const row = state.models.get(job.model_name) ?? null;
      entry = { key: job.model_name, display: job.model_display, row, count: 0, open: true,
        win: null, ids: [], more: win.next !== null };
      byModel.set(job.model_name, entry);
    }
    entry.ids.push(id);
    entry.count += 1;
  }
  const out = [...byModel.values()];
  out.sort((a, b) => {
    if (a.key === null || b.key === null) return a.key === null ? 1 : -1;
    const x = a.display.toLowerCase();
    const y = b.display.toLowerCase();
    return x !== y ? (x < y ? -1 : 1) : a.key < b.key ? -1 : 1;
  });
  return out;
}

/** Open the first sections when the grouped view is turned on (none open yet): as many as
 * hold a screenful or two of runs, at least the first. */
function openFirstSections() {
  if (!state.grouped || state.query) {
    openedFirst = state.grouped && openedFirst;
    return;
  }
  if (openedFirst || !state.loaded) return;
  openedFirst = true;
  if (state.expanded.size > 0) return;
  let runs = 0;
  for (const row of modelRows()) {
    const count = shownCount(row);
    if (count === 0) continue;
    if (state.expanded.size > 0 && (state.expanded.size >= OPEN_FIRST
        || runs + count > OPEN_FIRST_RUNS)) break;
    state.expanded.add(row.model_name);
    runs += count;
  }
}

// --- Layout -----------------------------------------------------------------------------------

/** How many card slots an open section keeps room for: what it holds, or what it will. */
function slotsOf(entry) {
  if (entry.win === null) return entry.ids.length; // a filter's results: what was found
  const win = entry.win;
  const first = Math.min(entry.count, state.windowLimit); // its first page, once asked
  if (win === undefined) return Math.max(first, sectionReserve(entry.key));
  return Math.max(win.ids.length, win.reserve, win.next === undefined ? first : 0);
}

function computeLayout(width) {
  const m = sizes;
  const cols = Math.max(1, Math.floor((width + m.gap) / (m.minW + m.gap)));
  const colW = (width - m.gap * (cols - 1)) / cols;
  const rowH = m.cardH + m.gap;
  const rowsH = (n) => (n ? Math.ceil(n / cols) * rowH - m.gap : 0);
  const base = { version: state.listVersion, width, grouped: state.grouped, cols, colW, rowH };
  const flat = flatWindow();
  if (!state.grouped) {
    const ids = flat ? flat.ids : [];
    const more = state.loaded ? moreText(flat, null) : null;
    const end = rowsH(ids.length);
    return { ...base, ids, win: flat, more, end,
      total: end + (more !== null ? m.moreH + (end ? m.gap : 0) : 0) };
  }
  let top = 0;
  const placed = [];
  const entries = state.query ? resultSections(flat) : rowSections();
  for (const entry of entries) {
    let height = m.headH;
    let more = null;
    if (entry.open) {
      const slots = slotsOf(entry);
      more = entry.win === null ? null : moreText(entry.win, entry.count);
      height += rowsH(slots) + (more !== null ? m.moreH + (slots ? m.gap : 0) : 0);
    }
    placed.push({ entry, top, height, more });
    top += height + m.groupGap;
  }
  const end = Math.max(0, top - m.groupGap);
  const more = state.query && state.loaded ? moreText(flat, null) : null;
  return { ...base, placed, win: state.query ? flat : null, more, end,
    total: end + (more !== null ? m.moreH + (end ? m.gap : 0) : 0) };
}

// --- Cards ------------------------------------------------------------------------------------

function placeCard(id, parent, x, y, w) {
  const job = state.jobs.get(id);
  let rec = cards.get(id);
  if (rec === undefined) {
    // A new element, never one that showed another job: a click aimed at a card as it goes
    // lands on a detached element and does nothing, not on another job.
    rec = newCard();
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

/** The closing line of a window (loading, searching, how many of how many) at `y`. */
function placeMore(node, parent, text, y) {
  if (text === null) {
    node.remove();
    return;
  }
  setText(node, text);
  node.style.top = `${y}px`;
  if (node.parentNode !== parent) parent.appendChild(node);
}

// --- Sections (grouped view) ------------------------------------------------------------------

function newSection(entry) {
  const el = fromTemplate("group-template");
  const rec = {
    el,
    name: el.querySelector(".group-name"),
    count: el.querySelector(".group-count"),
    best: el.querySelector(".group-best"),
    full: el.querySelector(".group-full"),
    expand: el.querySelector('[data-action="expand"]'),
    cards: el.querySelector(".group-cards"),
    stop: el.querySelector(".group-stop"),
    more: fromTemplate("more-template"),
    ids: [],
    stopKey: null,
    top: null,
    height: null,
  };
  const modelName = entry.key;
  setAttr(el, "data-model", modelName === null ? "" : modelName);
  sectionModel.set(el, modelName);
  setAttr(el.querySelector('[data-action="insights"]'), "aria-label",
    `Insights for ${entry.display}`);
  setText(rec.name, entry.display);
  const full = modelName === null ? "" : modelName;
  setText(rec.full, full !== entry.display ? full : "");
  setAttr(rec.full, "title", full || null);
  setAttr(rec.name, "title", full || "Unknown Model");
  return rec;
}

function placeSection(placedEntry, viewTop, viewBottom) {
  const { entry, top, height, more } = placedEntry;
  let rec = sections.get(entry.key);
  if (rec === undefined) {
    rec = newSection(entry);
    sections.set(entry.key, rec);
  }
  rec.frame = frameNo;
  rec.ids = entry.ids;
  const filtered = entry.win === null; // a filter's results: no window of its own
  setText(rec.count, `${runCountText(entry.count)}${entry.more ? " so far" : ""}`);
  const best = entry.row?.best_eval_loss ?? null;
  setText(rec.best, best === null ? "" : `best ${lossText(best)}`);
  setAttr(rec.best, "title", best === null ? null : `Best eval loss of the model's runs `
    + `(${entry.row.best_job_id})`);
  setAttr(rec.el, "data-open", entry.open ? "true" : "false");
  rec.expand.hidden = filtered;
  setAttr(rec.expand, "aria-expanded", entry.open ? "true" : "false");
  setAttr(rec.expand, "aria-label", `${entry.open ? "Close" : "Open"} the runs of ${entry.display}`);
  fillStopAll(rec, entry);
  if (rec.top !== top) {
    rec.el.style.top = `${top}px`;
    rec.top = top;
  }
  if (rec.height !== height) {
    rec.el.style.height = `${height}px`;
    rec.height = height;
  }
  if (rec.el.parentNode !== list) list.appendChild(rec.el);
  if (!entry.open) {
    rec.more.remove();
    return;
  }
  const offset = top + sizes.headH;
  const win = entry.win === null ? null : sectionWindow(entry.key, frameNo);
  const ids = win === null ? entry.ids : win.ids;
  placeRows(ids, rec.cards, viewTop - offset, viewBottom - offset);
  const rowsEnd = ids.length ? Math.ceil(ids.length / layout.cols) * layout.rowH - sizes.gap : 0;
  const slotsEnd = height - sizes.headH - (more !== null ? sizes.moreH : 0);
  placeMore(rec.more, rec.cards, more, more !== null && slotsEnd > 0 ? slotsEnd : 0);
  if (win !== null && offset + rowsEnd < viewBottom + AHEAD) wantMore(win);
}

/** A section's "Stop all that can't win", while some of its loaded runs can't win and no
 * advisor stops them itself; redone only when the jobs, the advisor, a confirmation or a call
 * moved. */
function fillStopAll(rec, entry) {
  // The ids move in place as pages come: listVersion says when, version when a view changed.
  const key = [state.version, state.listVersion, state.advisor, state.confirming,
    state.pending.size, entry.ids];
  if (rec.stopKey !== null && key.every((part, i) => part === rec.stopKey[i])) return;
  rec.stopKey = key;
  const ids = cannotWinIds(entry.ids).filter((id) => !state.pending.has(id));
  if (ids.length === 0) {
    setChildren(rec.stop, []);
    return;
  }
  const control = stopAllControl(entry.key, entry.display);
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

// --- The frame --------------------------------------------------------------------------------

function renderList() {
  frameNo += 1;
  openFirstSections();
  // Read every geometry first, then write: no layout thrashing.
  sizes ??= readSizes();
  const width = list.clientWidth;
  const rect = list.getBoundingClientRect();
  const viewTop = -rect.top - OVERSCAN;
  const viewBottom = -rect.top + window.innerHeight + OVERSCAN;
  if (!layout || layout.version !== state.listVersion || layout.width !== width ||
      layout.grouped !== state.grouped) {
    layout = computeLayout(width);
    list.style.height = `${layout.total}px`;
  }
  list.classList.toggle("grouped", state.grouped);
  if (!state.grouped) {
    placeRows(layout.ids, list, viewTop, viewBottom);
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
      placeSection(placed[i], viewTop, viewBottom);
    }
    evictSections(frameNo);
  }
  placeMore(listMore, list, layout.more, layout.end + (layout.end ? sizes.gap : 0));
  if (layout.win && layout.end < viewBottom + AHEAD) wantMore(layout.win);
  sweep();
  if (!firstShown && cards.size > 0) {
    firstShown = true;
    performance.mark("monitor:list-shown");
  }
}

/** Take out of the DOM the cards and sections this frame did not place. */
function sweep() {
  for (const [id, rec] of cards) {
    if (rec.frame === frameNo) continue;
    rec.el.remove();
    cards.delete(id);
  }
  for (const [key, rec] of sections) {
    if (rec.frame === frameNo) continue;
    rec.el.remove();
    sections.delete(key);
  }
}

/** Open or close the section of `modelName`. */
function toggleSection(modelName) {
  if (state.expanded.has(modelName)) state.expanded.delete(modelName);
  else state.expanded.add(modelName);
  state.listVersion += 1;
  schedule();
}

/**
 * Wire the list's clicks by their `data-action`: the card (`open`) opens its job, its
 * checkbox (`select`) and its archive or restore button do not; a model section's `expand`
 * opens or closes it, its `insights` button opens that model's insights (with its exact
 * model_name, null for none).
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
      if (action === "expand") toggleSection(modelName);
      else if (action === "insights") onInsights(modelName);
      else if (action === "stop-all") askStopAll(modelName, sections.get(modelName)?.name.textContent ?? "");
      else if (action === "stop-all-confirm") {
        onStopAll(cannotWinIds(sections.get(modelName)?.ids ?? []));
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
