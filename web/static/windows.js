// Windows: the parts of the job list the page watches (docs/websocket.md, Windows). A window
// is what one `window` request selects (its filters), the jobs of it loaded so far in the
// list's order, and where the next page starts. Pure: the fold of a job's view into a window
// compares views and moves ids; who holds which view is state.js's business.

/** Filters as a window request sends them: `{archived, model?, status?, q?}` (`model`
 * absent: every model; null: the jobs that never named one). */
export function filtersOf({ archived = false, model, status = null, q = "" } = {}) {
  const filters = { archived: Boolean(archived), status, q: q.trim().toLowerCase() };
  if (model !== undefined) filters.model = model;
  return filters;
}

/** Does a job's view belong to a window with `filters`? What the server decides, said again. */
export function matches(filters, job) {
  if (job.archived && !filters.archived) return false;
  if (Object.hasOwn(filters, "model") && job.model_name !== filters.model) return false;
  if (filters.status && job.status !== filters.status) return false;
  const q = filters.q;
  return !q || job.id.toLowerCase().includes(q)
    || (job.name !== null && job.name.toLowerCase().includes(q))
    || job.model_display.toLowerCase().includes(q)
    || (job.model_name !== null && job.model_name.toLowerCase().includes(q));
}

/** The list's order: newest created_at first, ties by the smaller id. */
export function before(a, b) {
  if (a.created_at !== b.created_at) return a.created_at > b.created_at;
  return a.id < b.id;
}

/**
 * A window for `purpose` (the page's own name for it: "flat", a model section, ...). Its
 * server id (`wid`) changes each time it is asked again from the top, so a late answer to an
 * older request is never taken for the new one.
 */
export function newWindow(purpose, filters, limit) {
  return {
    purpose,
    filters,
    limit,
    wid: null,
    ids: [], // loaded job ids, in the list's order
    members: new Set(),
    next: undefined, // the cursor of the next page; null at the end; undefined before the first answer
    end: null, // the place in the order it covers down to ({created_at, id}); null: the list's end
    total: null, // how many jobs the window selects, when the server knows it
    want: limit, // how many jobs the page wants loaded: pages are asked until it has them
    asking: false, // a page request is on its way
    fresh: false, // asked again from the top: its ids are the old ones until the answer
    reserve: 0, // rows to keep room for while reloading (a section scrolled back into view)
    error: "",
  };
}

/** Does the window take part in the fold (it had its first answer, and no newer ask is due)? */
export function ready(win) {
  return win.next !== undefined && !win.fresh;
}

/** Has the window loaded every job it selects? */
export function complete(win) {
  return win.next === null && !win.fresh;
}

/** Where `job` goes among `ids` (binary search; `jobs` has the view of every id). */
function position(win, job, jobs) {
  let lo = 0;
  let hi = win.ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (before(jobs.get(win.ids[mid]), job)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Put `job` in the window at its place. */
export function insert(win, job, jobs) {
  const last = win.ids.length ? jobs.get(win.ids[win.ids.length - 1]) : null;
  if (last === null || before(last, job)) win.ids.push(job.id);
  else win.ids.splice(position(win, job, jobs), 0, job.id);
  win.members.add(job.id);
}

/** Take job `id` out of the window. */
export function remove(win, id) {
  const at = win.ids.indexOf(id);
  if (at !== -1) win.ids.splice(at, 1);
  win.members.delete(id);
}

/** Does a window hold `job`'s place: it matches the filters and does not sort after the
 * place the window covers down to (the server's `end`)? */
export function covers(win, job) {
  return matches(win.filters, job) && (win.end === null || !before(win.end, job));
}

/**
 * Fold a newer view of a job into a ready window, as the server does: "in" when it entered,
 * "out" when it left, "moved" when its place changed, null when the window's ids are as they
 * were. A job that matches but sorts after the part covered stays out (a later page brings
 * it). `old` is the view the window was sorted by.
 */
export function fold(win, job, old, jobs) {
  const member = win.members.has(job.id);
  const fits = covers(win, job);
  if (member && !fits) {
    remove(win, job.id);
    return "out";
  }
  if (member) {
    if (old === undefined || old.created_at === job.created_at) return null;
    remove(win, job.id);
    insert(win, job, jobs);
    return "moved";
  }
  if (!fits) return null;
  insert(win, job, jobs);
  return "in";
}
