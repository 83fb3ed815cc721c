// What the page asks the server for (docs/websocket.md, Windows): the list's window (flat, or
// the filter's results), a window per open model section while it is on screen, the insights
// panel's, and single jobs by `watch` (the selection, the open job view, the comparison). Each
// frame reconciles what is asked with what the page shows; after a reconnection (a new
// summary) everything is asked again, and what was loaded stays on screen until the answers.

import { dropWindow, emptyWindow, state } from "./state.js";
import { filtersOf, newWindow } from "./windows.js";

const MAX_SECTION_WINDOWS = 12; // the server allows 16 windows a connection
const SECTION = "model:";

let link = null; // the live connection: {send}
let session = -1; // the summary the windows were asked under
let nextWid = 0;
const watchBatches = []; // the ids of each watch sent and not answered yet, in order
const reserves = new Map(); // model name -> jobs its section held when its window was closed

export function initSubscriptions(connection) {
  link = connection;
}

function send(message) {
  return link !== null && link.send(message);
}

function ask(win, cursor) {
  const message = { type: "window", id: win.wid, limit: win.limit, cursor, ...win.filters };
  if (!message.status) delete message.status;
  if (!message.q) delete message.q;
  win.asking = send(message);
}

/** Ask `win` from the top under a new id. `keep`: its jobs stay on screen until the answer
 * (a reconnection), else it empties at once (other filters). */
function restart(win, keep) {
  if (win.wid !== null) {
    state.byWid.delete(win.wid);
    if (win.session === session) send({ type: "close", id: win.wid });
  }
  nextWid += 1;
  win.wid = `w${nextWid}`;
  win.session = session;
  state.byWid.set(win.wid, win);
  win.error = "";
  if (keep) {
    win.fresh = true;
    win.want = Math.max(win.want, win.ids.length);
  } else {
    emptyWindow(win);
    win.next = undefined;
    win.total = null;
    win.want = Math.max(win.limit, win.reserve);
  }
  ask(win, null);
}

function same(a, b) {
  return a.archived === b.archived && a.status === b.status && a.q === b.q
    && Object.hasOwn(a, "model") === Object.hasOwn(b, "model") && a.model === b.model;
}

/**
 * The window of `purpose` with `filters` (asked now if it is new, or asked again from the top
 * if its filters changed). `limit`: jobs per page; `want`: how many to load at first.
 */
export function openWindow(purpose, filters, { limit = state.windowLimit, want = limit } = {}) {
  let win = state.windows.get(purpose);
  if (win !== undefined && same(win.filters, filters)) return win;
  if (win === undefined) {
    win = newWindow(purpose, filters, limit);
    state.windows.set(purpose, win);
  }
  win.filters = filters;
  win.limit = limit;
  restart(win, false);
  win.want = want;
  return win;
}

/** Stop watching the window of `purpose` (its jobs go unless something else holds them). */
export function closeWindow(purpose) {
  const win = state.windows.get(purpose);
  if (win === undefined) return;
  if (win.session === session) send({ type: "close", id: win.wid });
  dropWindow(win);
}

/** Ask the next page of `win` if it holds fewer jobs than wanted and has more. */
function pump(win) {
  if (win.asking || win.fresh || win.error || !win.next || win.ids.length >= win.want) return;
  ask(win, win.next);
}

/** The user reached the end of what `win` has loaded: load another page. */
export function wantMore(win) {
  if (win.next === null || win.error) return;
  win.want = Math.max(win.want, win.ids.length + win.limit);
  pump(win);
}

// --- Model sections ---------------------------------------------------------------------------

function sectionPurpose(modelName) {
  return `${SECTION}${JSON.stringify(modelName)}`;
}

/** The window of the open section of `modelName`, now on screen (placed in frame `frame`);
 * the sections placed longest ago give theirs up past the server's limit. */
export function sectionWindow(modelName, frame) {
  const purpose = sectionPurpose(modelName);
  let win = state.windows.get(purpose);
  if (win === undefined) {
    const reserve = reserves.get(modelName) ?? 0;
    reserves.delete(modelName);
    win = newWindow(purpose, filtersOf({ archived: state.showArchived, model: modelName }),
      state.windowLimit);
    win.model = modelName;
    win.reserve = reserve;
    win.placed = frame;
    state.windows.set(purpose, win);
    evictSections(frame); // first: the server refuses a window past its limit
    restart(win, false);
  }
  win.placed = frame;
  return win;
}

/** How many runs the section of `modelName` held when it gave its window up (room kept). */
export function sectionReserve(modelName) {
  return reserves.get(modelName) ?? 0;
}

/** The open section's window of `modelName`, if it has one. */
export function sectionWindowOf(modelName) {
  return state.windows.get(sectionPurpose(modelName));
}

/** Past the server's limit, the open sections placed longest ago (not in frame `frame`) give
 * their windows up. Also called at the end of every frame: a frame may place more sections
 * than the limit (short ones, still loading), and those that then scroll away must give
 * theirs up even when no new section opens after them. */
export function evictSections(frame) {
  const open = [...state.windows.values()].filter((win) => win.purpose.startsWith(SECTION));
  if (open.length <= MAX_SECTION_WINDOWS) return;
  open.sort((a, b) => (a.placed ?? -1) - (b.placed ?? -1));
  for (const win of open.slice(0, open.length - MAX_SECTION_WINDOWS)) {
    if (win.placed === frame) break; // all on screen: keep them (the server says if too many)
    reserves.set(win.model, win.ids.length);
    closeWindow(win.purpose);
  }
}

// --- Watched jobs -----------------------------------------------------------------------------

function neededIds() {
  const ids = new Set(state.selected);
  for (const id of state.compareIds || []) ids.add(id);
  if (state.detailId !== null) ids.add(state.detailId);
  return ids;
}

function watch(ids) {
  for (let at = 0; at < ids.length; at += 100) {
    const batch = ids.slice(at, at + 100);
    if (send({ type: "watch", ids: batch })) watchBatches.push(batch);
  }
}

function syncWatches() {
  const needed = neededIds();
  const drop = [...state.watched].filter((id) => !needed.has(id));
  const add = [...needed].filter((id) => !state.watched.has(id));
  if (drop.length) {
    send({ type: "unwatch", ids: drop });
    for (const id of drop) {
      state.watched.delete(id);
      state.missing.delete(id);
      if (!state.held.has(id)) state.jobs.delete(id);
    }
  }
  for (const id of add) state.watched.add(id);
  if (add.length) watch(add);
}

/** The ids the oldest watch not yet answered asked for (a `jobs` answer is that watch's). */
export function answeredWatch() {
  return watchBatches.shift() ?? [];
}

// --- Each frame -------------------------------------------------------------------------------

/** A new connection: ask every window again (its jobs stay until the answers) and every
 * watched job. */
function resubscribe() {
  session = state.session;
  watchBatches.length = 0;
  for (const win of state.windows.values()) restart(win, true);
  watch([...state.watched]);
}

/** Reconcile what is asked with what the page shows (a renderer: runs each frame). */
export function syncSubscriptions() {
  if (!state.linked) return;
  if (session !== state.session) resubscribe();
  const list = filtersOf({ archived: state.showArchived, q: state.query });
  const flat = !state.grouped || list.q !== "";
  if (flat) openWindow("flat", list);
  else closeWindow("flat");
  for (const win of [...state.windows.values()]) {
    if (!win.purpose.startsWith(SECTION)) continue;
    if (flat || !state.expanded.has(win.model) || win.filters.archived !== state.showArchived) {
      reserves.delete(win.model);
      closeWindow(win.purpose);
    }
  }
  syncWatches();
  for (const win of state.windows.values()) pump(win);
}
