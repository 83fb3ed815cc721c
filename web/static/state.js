// The page's one state object, and the one place a WebSocket message changes it. The page
// holds the model rows (every model's counts and best run) and the job views of the windows
// and watches it asked for (docs/websocket.md, Windows), never the whole list.

import { fold, insert, ready } from "./windows.js";

export const MAX_SELECTED = 5;

export const state = {
  jobs: new Map(), // job id -> job view as last sent: the jobs a window holds or a watch asked
  held: new Map(), // job id -> how many windows hold it
  models: new Map(), // exact model_name (null: none) -> model row, every model's
  modelsShape: 0, // moves when a model row comes or goes, or a clean name changes
  windows: new Map(), // purpose -> window (windows.js): "flat", "model:<name>", "insights"
  byWid: new Map(), // the server's window id -> window
  watched: new Set(), // job ids asked with `watch` (the selection, the job view, a comparison)
  missing: new Set(), // ids a watch answer left out: no such job
  listVersion: 0, // moves whenever what the list shows may have changed
  version: null, // the last version seen
  loaded: false, // a summary has arrived
  session: 0, // moves with each summary: a new connection, whose windows must be asked again
  linked: false, // a summary arrived on the open connection: the page may ask for windows
  connection: "connecting", // connecting | live | reconnecting | offline | unauthorized
  connectionDetail: "", // why the last connection ended, when it matters
  grouped: false,
  showArchived: false,
  filter: "", // the filter text as typed
  query: "", // the filter the list's window asks for (the text, once typing pauses)
  expanded: new Set(), // model names (exact; null: none) whose sections are open
  windowLimit: 100, // jobs per page of a window (`?window=N` for tests)
  selected: [], // job ids in the order they were ticked: Run #1, Run #2, ...
  selectionMessage: "", // the visible "at most 5" message, while shown
  notice: "", // a failed action, shown until the next one
  pending: new Set(), // job ids with an action (archive, stop, ...) on its way, until their next update
  confirming: null, // the open inline confirmation (actions.js): {action, key, view, home, node}
  advisor: null, // GET /api/advisor: whether one runs and stops runs itself; null until known
  now: Date.now() / 1000, // the clock the "no signal for" texts count from (moves every 30 s)
  detailId: null, // the job whose live view is open
  compareIds: null, // the job ids of the open comparison, else null
  logScale: false, // the loss charts' axis: log (the charts' toggle) or linear
  insights: null, // the open insights panel: {modelName} (exact; null: no model), else null
};

// --- Holding job views ----------------------------------------------------------------------

function hold(id) {
  state.held.set(id, (state.held.get(id) || 0) + 1);
}

/** A window let go of job `id`: forget its view when nothing else needs it. */
export function release(id) {
  const left = (state.held.get(id) || 0) - 1;
  if (left > 0) {
    state.held.set(id, left);
    return;
  }
  state.held.delete(id);
  if (!state.watched.has(id)) state.jobs.delete(id);
}

/** Let go of every job a window holds, and empty it. */
export function emptyWindow(win) {
  for (const id of win.ids) release(id);
  win.ids = [];
  win.members = new Set();
  state.listVersion += 1;
}

/** Forget window `win` (closed): its jobs go unless another window or a watch holds them. */
export function dropWindow(win) {
  emptyWindow(win);
  state.windows.delete(win.purpose);
  state.byWid.delete(win.wid);
}

/**
 * Take a newer view of a job: every ready window it enters or leaves follows, and the page
 * keeps it while a window holds it or it is watched. False for a view that is older than the
 * one held (a job's model never changes once named: a view without one was sent on by the
 * partition the job left, docs/websocket.md).
 */
function take(job) {
  const old = state.jobs.get(job.id);
  if (old !== undefined && old.model_name !== null && job.model_name === null) return false;
  // Windows sort by the views they hold: the new one goes in once each has moved it.
  for (const win of state.windows.values()) {
    if (!ready(win)) continue;
    const moved = fold(win, job, old, state.jobs);
    if (moved === null) continue;
    state.listVersion += 1;
    if (moved === "in") hold(job.id);
    else if (moved === "out") release(job.id);
  }
  if (state.held.has(job.id) || state.watched.has(job.id)) state.jobs.set(job.id, job);
  else state.jobs.delete(job.id);
  state.pending.delete(job.id); // it answers any archive or stop of it
  state.missing.delete(job.id);
  return true;
}

// --- Messages -----------------------------------------------------------------------------------

function takeRows(rows, replace) {
  const { models } = state;
  let shape = replace;
  if (replace) models.clear();
  for (const row of rows) {
    const old = models.get(row.model_name);
    const gone = row.job_count === 0 && row.archived_count === 0;
    if (gone) {
      if (old !== undefined) models.delete(row.model_name);
      shape = shape || old !== undefined;
      continue;
    }
    shape = shape || old === undefined || old.model_display !== row.model_display;
    models.set(row.model_name, row);
  }
  if (shape) state.modelsShape += 1;
  if (rows.length || replace) state.listVersion += 1;
}

/** A window's answer: a page of it, in order (the first page replaces what it held). */
function takePage(message) {
  const win = state.byWid.get(message.id);
  if (win === undefined) return []; // closed, or asked again since: a late answer
  if (win.fresh) {
    emptyWindow(win);
    win.fresh = false;
    win.next = undefined;
  }
  const ids = [];
  for (const job of message.jobs) {
    if (!take(job)) continue;
    ids.push(job.id);
    if (win.members.has(job.id)) continue;
    // The server put it in this window: hold it (take() kept no copy when nothing else did).
    state.jobs.set(job.id, job);
    insert(win, job, state.jobs);
    hold(job.id);
  }
  win.next = message.next;
  // The place the window covers down to (a server without `end`: its last job, if more follow).
  const last = win.ids.length ? state.jobs.get(win.ids[win.ids.length - 1]) : null;
  win.end = message.end !== undefined ? message.end
    : message.next === null || last === null ? null : { created_at: last.created_at, id: last.id };
  if (message.total !== null || win.total === null) win.total = message.total;
  win.asking = false;
  win.error = "";
  if (win.ids.length >= win.reserve || win.next === null) win.reserve = 0;
  state.listVersion += 1;
  return ids;
}

/** Ids of the jobs a watch answer named (the others are unknown: `state.missing`). */
function takeWatched(message, asked) {
  const ids = [];
  for (const job of message.jobs) if (take(job)) ids.push(job.id);
  const found = new Set(message.jobs.map((job) => job.id));
  for (const id of asked) if (!found.has(id) && state.watched.has(id)) state.missing.add(id);
  return ids;
}

/**
 * Apply one `/ws` message to the state. `asked` is, for a `jobs` answer, the ids its watch
 * asked. Returns `{ids, models, summary}`: the jobs whose views changed, the model names whose
 * rows did, and whether it was a summary (a new connection).
 */
export function applyMessage(message, asked = []) {
  const out = { ids: [], models: [], summary: false };
  switch (message.type) {
    case "summary":
      takeRows(message.models, true);
      state.version = message.version;
      state.loaded = true;
      state.session += 1;
      state.linked = true;
      state.pending.clear();
      out.summary = true;
      out.models = message.models.map((row) => row.model_name);
      break;
    case "window":
      out.ids = takePage(message);
      break;
    case "jobs":
      out.ids = takeWatched(message, asked);
      break;
    case "update":
      for (const job of message.jobs) if (take(job)) out.ids.push(job.id);
      takeRows(message.models || [], false);
      out.models = (message.models || []).map((row) => row.model_name);
      state.version = message.version;
      break;
    case "error": {
      const win = message.id ? state.byWid.get(message.id) : undefined;
      if (win !== undefined) {
        win.error = message.detail;
        win.asking = false;
        state.listVersion += 1;
      }
      break;
    }
    default:
      break;
  }
  return out;
}

// --- Model rows ---------------------------------------------------------------------------------

/** How many runs the list shows of a model row (its archived ones with "Show archived"). */
export function shownCount(row) {
  return row.job_count + (state.showArchived ? row.archived_count : 0);
}

/** Sections are in the order of their clean names (case aside); Unknown Model last. */
export function sectionBefore(a, b) {
  if (a.model_name === null || b.model_name === null) return b.model_name === null && a !== b;
  const x = a.model_display.toLowerCase();
  const y = b.model_display.toLowerCase();
  if (x !== y) return x < y;
  return a.model_name < b.model_name;
}

let sortedRows = { shape: -1, rows: [] };

/** Every model row, in the sections' order (sorted again only when a model came or went). */
export function modelRows() {
  if (sortedRows.shape !== state.modelsShape) {
    const rows = [...state.models.values()];
    rows.sort((a, b) => (sectionBefore(a, b) ? -1 : sectionBefore(b, a) ? 1 : 0));
    sortedRows = { shape: state.modelsShape, rows: rows.map((row) => row.model_name) };
  }
  return sortedRows.rows.map((name) => state.models.get(name)).filter(Boolean);
}

/** The totals the page's summary line says: runs shown, models with any, archived runs. */
export function totals() {
  let runs = 0;
  let models = 0;
  let archived = 0;
  for (const row of state.models.values()) {
    const shown = shownCount(row);
    runs += shown;
    models += shown > 0 ? 1 : 0;
    archived += row.archived_count;
  }
  return { runs, models, archived, all: runs + (state.showArchived ? 0 : archived) };
}

// --- Selection ----------------------------------------------------------------------------------

/** Tick or untick a job; false when a tick is refused (already 5 selected). */
export function setSelected(id, on) {
  const at = state.selected.indexOf(id);
  if (on && at === -1) {
    if (state.selected.length >= MAX_SELECTED) return false;
    state.selected.push(id);
  } else if (!on && at !== -1) {
    state.selected.splice(at, 1);
  }
  return true;
}
