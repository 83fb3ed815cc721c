// The page's one state object, the one place a WebSocket message changes it, and the
// derived lists (flat order, model groups) the list renders from.

export const MAX_SELECTED = 5;
const JOB_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export const state = {
  jobs: new Map(), // job id -> job view, exactly as the server last sent it
  order: [], // every job id, newest created_at first (ties: smaller id first)
  version: null, // the last version applied: what a reconnect resumes from
  loaded: false, // a snapshot has arrived
  connection: "connecting", // connecting | live | reconnecting | offline | unauthorized
  connectionDetail: "", // why the last connection ended, when it matters
  grouped: false,
  showArchived: false,
  filter: "",
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
  derived: null, // see derive()
  derivedDirty: true,
};

// --- Order ------------------------------------------------------------------------------------

function before(a, b) {
  // Newest first, as the server sorts: by (-created_at, id).
  if (a.created_at !== b.created_at) return a.created_at > b.created_at;
  return a.id < b.id;
}

/** Where `job` goes in `ids` (sorted newest first): binary search on created_at, then id. */
function position(job, ids = state.order) {
  const { jobs } = state;
  let lo = 0;
  let hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (before(jobs.get(ids[mid]), job)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function sortOrder() {
  const { order, jobs } = state;
  for (let i = 1; i < order.length; i++) {
    if (!before(jobs.get(order[i - 1]), jobs.get(order[i]))) {
      order.sort((x, y) => (before(jobs.get(x), jobs.get(y)) ? -1 : 1));
      return;
    }
  }
}

// --- Messages -----------------------------------------------------------------------------------

/**
 * Apply one `/ws` message (snapshot or update) to the state; the ids of the jobs it
 * changed (every job for a snapshot).
 */
export function applyMessage(message) {
  if (message.type === "snapshot") {
    state.jobs = new Map(message.jobs.map((job) => [job.id, job]));
    state.order = message.jobs.map((job) => job.id);
    sortOrder();
    state.version = message.version;
    state.loaded = true;
    state.derivedDirty = true;
    state.pending.clear();
    return { snapshot: true, ids: state.order };
  }
  if (message.type !== "update") return { snapshot: false, ids: [] };
  // Keep the derived lists current in place (a new run, an archived one) while they are
  // valid: one update costs a binary search, not a pass over 100,000 jobs.
  const derived = state.derivedDirty ? null : state.derived;
  const needle = needleOf();
  const ids = [];
  for (const job of message.jobs) {
    const old = state.jobs.get(job.id);
    // A job's model never changes once named: a view without one is an older one, sent on
    // by the partition the job left (docs/websocket.md, Partitions).
    if (old !== undefined && old.model_name !== null && job.model_name === null) continue;
    const moved = old !== undefined && old.created_at !== job.created_at;
    const wasShown = derived !== null && old !== undefined && isShown(old, needle);
    if (moved) state.order.splice(position(old), 1);
    if (wasShown && (moved || !isShown(job, needle))) unshow(derived, old);
    state.jobs.set(job.id, job); // a job in an update replaces our copy whole
    state.pending.delete(job.id); // and answers any archive or restore of it
    if (old === undefined || moved) state.order.splice(position(job), 0, job.id);
    if (derived !== null) {
      derived.archived += Number(job.archived) - Number(old !== undefined && old.archived);
      if (isShown(job, needle) && (!wasShown || moved)) show(derived, job);
    }
    ids.push(job.id);
  }
  state.version = message.version;
  return { snapshot: false, ids };
}

// --- Derived lists --------------------------------------------------------------------------------

function matches(job, needle) {
  return (
    job.id.toLowerCase().includes(needle) ||
    (job.name !== null && job.name.toLowerCase().includes(needle)) ||
    job.model_display.toLowerCase().includes(needle) ||
    (job.model_name !== null && job.model_name.toLowerCase().includes(needle))
  );
}

function needleOf() {
  return state.filter.trim().toLowerCase();
}

function isShown(job, needle) {
  return (state.showArchived || !job.archived) && (!needle || matches(job, needle));
}

function newGroup(job) {
  // A Map tells null from "null", so the exact model name is the key.
  return { key: job.model_name, modelName: job.model_name, display: job.model_display, ids: [] };
}

/** Sections are in the order of their clean names (case aside); Unknown Model last. */
function groupBefore(a, b) {
  if (a.modelName === null || b.modelName === null) return b.modelName === null && a !== b;
  const x = a.display.toLowerCase();
  const y = b.display.toLowerCase();
  if (x !== y) return x < y;
  return a.modelName < b.modelName;
}

function placeGroup(derived, group) {
  let lo = 0;
  let hi = derived.groups.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (groupBefore(derived.groups[mid], group)) lo = mid + 1;
    else hi = mid;
  }
  derived.groups.splice(lo, 0, group);
}

function show(derived, job) {
  derived.version += 1;
  derived.flat.splice(position(job, derived.flat), 0, job.id);
  let group = derived.byModel.get(job.model_name);
  if (group === undefined) {
    group = newGroup(job);
    derived.byModel.set(job.model_name, group);
    placeGroup(derived, group);
  }
  group.ids.splice(position(job, group.ids), 0, job.id);
}

function unshow(derived, job) {
  // `job` is the copy the lists were sorted by (still the one in state.jobs).
  derived.version += 1;
  derived.flat.splice(position(job, derived.flat), 1);
  const group = derived.byModel.get(job.model_name);
  group.ids.splice(position(job, group.ids), 1);
  if (group.ids.length === 0) {
    derived.groups.splice(derived.groups.indexOf(group), 1);
    derived.byModel.delete(job.model_name);
  }
}

/**
 * The jobs the list shows, in order: `flat` (ids, newest first) and `groups` (a section per
 * model, by clean name, each with its ids newest first); `version` changes whenever they do. Built
 * in one pass after a snapshot or a change of toggle or filter; kept current in place by
 * applyMessage otherwise (a new loss changes no list at all).
 */
export function derive() {
  if (!state.derivedDirty && state.derived) return state.derived;
  const needle = needleOf();
  const flat = [];
  const byModel = new Map();
  const groups = [];
  let archived = 0;
  for (const id of state.order) {
    const job = state.jobs.get(id);
    if (job.archived) archived += 1;
    if (!isShown(job, needle)) continue;
    flat.push(id);
    let group = byModel.get(job.model_name);
    if (group === undefined) {
      group = newGroup(job);
      byModel.set(job.model_name, group);
      groups.push(group);
    }
    group.ids.push(id);
  }
  groups.sort((a, b) => (groupBefore(a, b) ? -1 : groupBefore(b, a) ? 1 : 0));
  const version = state.derived ? state.derived.version + 1 : 1;
  state.derived = { flat, groups, byModel, archived, version };
  state.derivedDirty = false;
  return state.derived;
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

// --- The address: grouping, archived toggle, filter and comparison --------------------------------

/** What a page address asks for (`/?group=1&archived=0&compare=a,b,c`). */
export function parseAddress(search) {
  const params = new URLSearchParams(search);
  const ids = (params.get("compare") || "")
    .split(",")
    .map((part) => part.trim())
    .filter((part) => JOB_ID.test(part));
  return {
    grouped: params.get("group") === "1",
    showArchived: params.get("archived") === "1",
    filter: params.get("q") || "",
    compare: [...new Set(ids)].slice(0, MAX_SELECTED),
  };
}

/** The job an MLflow-style address names (`#/experiments/<id>/runs/<run id>`), or null. */
export function runFromHash(hash) {
  const match = /^#\/experiments\/[^/]+\/runs\/([^/?#]+)/.exec(hash || "");
  let id = "";
  try {
    id = match ? decodeURIComponent(match[1]) : "";
  } catch {
    return null; // a malformed escape: no run
  }
  return JOB_ID.test(id) ? id : null;
}

/**
 * The query string for the current view. `share` spells every setting out and names the
 * selection (for a link to hand on); otherwise only what differs from the defaults, and the
 * comparison only while it is open (for the address bar, so a reload keeps the view).
 */
export function buildQuery({ share = false } = {}) {
  const parts = [];
  if (share || state.grouped) parts.push(`group=${state.grouped ? 1 : 0}`);
  if (share || state.showArchived) parts.push(`archived=${state.showArchived ? 1 : 0}`);
  if (state.filter) parts.push(`q=${encodeURIComponent(state.filter)}`);
  const ids = share ? state.compareIds || state.selected : state.compareIds;
  if (ids && ids.length) parts.push(`compare=${ids.map(encodeURIComponent).join(",")}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

export function shareUrl() {
  return `${location.origin}/${buildQuery({ share: true })}`;
}
