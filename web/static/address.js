// The page's address: what it records (grouping, archived toggle, filter, the comparison) and
// what a share link restores; and the run an MLflow-style address names.

import { MAX_SELECTED, state } from "./state.js";

const JOB_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_WINDOW = 500; // the largest page the server gives

/** What a page address asks for (`/?group=1&archived=0&q=lr&compare=a,b,c`); `window=N`
 * sets the page size of the list's windows (for tests: small pages over few runs). */
export function parseAddress(search) {
  const params = new URLSearchParams(search);
  const ids = (params.get("compare") || "")
    .split(",")
    .map((part) => part.trim())
    .filter((part) => JOB_ID.test(part));
  const size = Number(params.get("window"));
  return {
    grouped: params.get("group") === "1",
    showArchived: params.get("archived") === "1",
    filter: params.get("q") || "",
    compare: [...new Set(ids)].slice(0, MAX_SELECTED),
    windowLimit: Number.isInteger(size) && size >= 1 && size <= MAX_WINDOW ? size : null,
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

let askedLimit = null; // a `window=N` the address came with: kept in it (not in share links)

/** Remember the `window=N` the page was opened with, to keep it in the address bar. */
export function keepWindowLimit(limit) {
  askedLimit = limit;
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
  if (!share && askedLimit !== null) parts.push(`window=${askedLimit}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

export function shareUrl() {
  return `${location.origin}/${buildQuery({ share: true })}`;
}
