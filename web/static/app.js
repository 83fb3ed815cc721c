// The page's entry point: reads the address, wires the controls, keeps the live connection,
// and draws the page's frame (toolbar, summary line, connection, empty and error states,
// selection bar).

import { runJobAction, stopAll } from "./actions.js";
import { buildQuery, keepWindowLimit, parseAddress, runFromHash } from "./address.js";
import { TOKEN_MESSAGE, getAdvisor, refusalReason, setUnauthorizedHandler } from "./api.js";
import { compareSawChanges, initCompare, openCompare } from "./compare.js";
import { detailSawChanges, initDetail, openDetail } from "./detail.js";
import { h, setAttr, setText } from "./dom.js";
import { initInsights, insightsSawChanges, openInsights } from "./insights.js";
import { countText } from "./format.js";
import { initList } from "./list.js";
import { connectLive } from "./live.js";
import { registerRenderer, schedule, stats } from "./render.js";
import { MAX_SELECTED, applyMessage, setSelected, state, totals } from "./state.js";
import { answeredWatch, initSubscriptions, syncSubscriptions } from "./subscribe.js";
import { complete } from "./windows.js";

const MESSAGE_MS = 4000; // how long the "at most 5" message stays
const NOTICE_MS = 8000; // how long a failed action's notice stays
const CLOCK_MS = 30_000; // how often "no signal for 14 min" moves on
const QUERY_MS = 250; // the filter goes to the server once typing pauses this long

const $ = (id) => document.getElementById(id);
const groupToggle = $("group-toggle");
const archivedToggle = $("archived-toggle");
const filterInput = $("filter");
const connection = $("connection");
const selectionBar = $("selection-bar");
const selectionCount = $("selection-count");
const selectionMessage = h("p", { class: "selection-message", "data-testid": "selection-message",
  role: "status" });
const compareButton = h("button", { type: "button", class: "primary",
  "data-testid": "compare-button" });
let messageTimer = null;
let noticeTimer = null;
let queryTimer = null;

const CONNECTION_WORDS = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  unauthorized: "Needs a token",
  refused: "Not allowed",
};

// --- Actions ---------------------------------------------------------------------------------------

function showSelectionMessage(text) {
  state.selectionMessage = text;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => {
    state.selectionMessage = "";
    schedule();
  }, MESSAGE_MS);
  schedule();
}

function select(id, on, checkbox) {
  if (!setSelected(id, on)) {
    checkbox.checked = false;
    showSelectionMessage(
      `You can compare at most ${MAX_SELECTED} runs: untick one to pick another.`);
    return;
  }
  if (!on || state.selected.length < MAX_SELECTED) {
    state.selectionMessage = "";
  }
  schedule();
}

/** A card's action (archive, restore, stop), or a section's "Stop all that can't win": a
 * failure shows in the banner for a while. */
async function fromList(run) {
  const failed = await run();
  if (failed === null && !state.notice) return;
  state.notice = failed ?? "";
  if (failed) {
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      state.notice = "";
      schedule();
    }, NOTICE_MS);
  }
  schedule();
}

// A run an address names the MLflow way (`/#/experiments/1/runs/<id>`, the link the mlflow
// client prints): its detail opens once the first summary is in (and asks for that job).
let askedRun = null;

function onMessage(message) {
  const asked = message.type === "jobs" ? answeredWatch() : [];
  const changed = applyMessage(message, asked);
  stats.messages += 1;
  if (changed.summary && stats.messages === 1) performance.mark("monitor:summary");
  if (askedRun !== null && state.loaded) {
    openDetail(askedRun);
    askedRun = null;
  }
  compareSawChanges(changed.ids);
  detailSawChanges(changed.ids);
  insightsSawChanges(changed.ids, changed.models);
  schedule();
}

function onStatus(status, detail) {
  if (status === "live" && state.connection !== "live") loadAdvisor();
  if (status !== "live") state.linked = false; // windows are asked again after the next summary
  state.connection = status;
  state.connectionDetail = detail;
  schedule();
}

/** Whether an advisor stops runs itself (asked on each connection: it may have come or gone). */
async function loadAdvisor() {
  try {
    state.advisor = await getAdvisor();
  } catch {
    state.advisor = null; // unknown: offer nothing that depends on it
  }
  schedule();
}

// --- The page's frame ----------------------------------------------------------------------------

function show(node, on) {
  if (node.hidden === on) node.hidden = !on;
}

function renderConnection() {
  setAttr(connection, "data-state", state.connection);
  setText(connection.querySelector(".connection-label"), CONNECTION_WORDS[state.connection]);
  const title = {
    live: "Receiving updates as trainers write them",
    reconnecting: "The connection to the gateway dropped; reconnecting",
    offline: "The gateway cannot be reached; still trying",
    unauthorized: TOKEN_MESSAGE,
    refused: "The gateway refuses pages at this address",
    connecting: "Connecting to the gateway",
  }[state.connection];
  setAttr(connection, "title", state.connectionDetail ? `${title} (${state.connectionDetail})` : title);
}

/** What the list shows nothing of, when loaded: "no match", "all archived", or null. */
function nothingShown(sums) {
  if (!state.loaded || sums.all === 0) return null;
  if (state.query) {
    const flat = state.windows.get("flat");
    const done = flat !== undefined && complete(flat) && flat.filters.q === state.query.toLowerCase();
    return done && flat.ids.length === 0 ? "no-match" : null;
  }
  return sums.runs === 0 ? "archived" : null;
}

function renderStates(sums) {
  const errorState = $("error-state");
  const unauthorized = state.connection === "unauthorized";
  const refused = state.connection === "refused";
  const unreachable = !state.loaded && (state.connection === "reconnecting" ||
    state.connection === "offline");
  show(errorState, unauthorized || refused || unreachable);
  if (refused) {
    setText(errorState.querySelector(".panel-title"), "This page's address is not allowed");
    setText(errorState.querySelector(".panel-text"),
      `${state.connectionDetail} The gateway refuses pages at ${location.origin}: open the `
      + "dashboard at the address the gateway serves it under, or add this one to "
      + "MONITOR_ALLOWED_ORIGINS.");
  } else if (unauthorized) {
    setText(errorState.querySelector(".panel-title"), "This monitor needs a token");
    setText(errorState.querySelector(".panel-text"),
      `${TOKEN_MESSAGE}${state.connectionDetail ? ` (the gateway said: ${state.connectionDetail})` : ""}`);
  } else if (unreachable) {
    const redisDown = /redis/i.test(state.connectionDetail);
    setText(errorState.querySelector(".panel-title"), redisDown
      ? "The monitor's gateway cannot reach Redis" : "Cannot reach the monitor's gateway");
    setText(errorState.querySelector(".panel-text"), redisDown
      ? `The gateway at ${location.host} answers but its Redis does not (${state.connectionDetail}). `
        + "This page keeps trying and fills in as soon as it is back."
      : `No answer from ${location.host}${state.connectionDetail ? ` (${state.connectionDetail})` : ""}. `
        + "Is `monitor gateway` running? This page keeps trying and fills in as soon as it answers.");
  }
  show($("empty-state"), state.loaded && sums.all === 0 && !unauthorized);
  const noMatch = $("no-match");
  const nothing = nothingShown(sums);
  show(noMatch, nothing !== null);
  if (nothing !== null) {
    setText(noMatch.querySelector(".panel-text"), nothing === "no-match"
      ? `No run matches “${state.query}”.`
      : `All ${countText(sums.archived, "run")} are archived: tick “Show archived” to see them.`);
  }
  const banner = $("banner");
  let text = state.notice;
  if (state.loaded && (state.connection === "reconnecting" || state.connection === "offline")) {
    text = `Connection to the gateway lost${state.connectionDetail ? ` (${state.connectionDetail})` : ""}: ` +
      "showing the last known state, reconnecting…";
  }
  setText(banner, text);
  show(banner, Boolean(text));
}

/** "1,000,000 runs · 500 models · 3,000 archived", from the model rows; with a filter, how
 * many runs match (so far, while the search goes on). */
function renderSummary(sums) {
  if (!state.loaded) {
    setText($("summary"), "");
    return;
  }
  if (state.query) {
    const flat = state.windows.get("flat");
    const found = flat ? flat.ids.length : 0;
    const done = flat !== undefined && complete(flat);
    const n = found.toLocaleString("en-US");
    let text = `${n}+ runs match so far`;
    if (done) text = found === 1 ? "1 run matches" : `${n} runs match`;
    else if (found === 0) text = "Searching…";
    setText($("summary"), text);
    return;
  }
  const parts = [countText(sums.runs, "run"), countText(sums.models, "model")];
  if (sums.archived && !state.showArchived) parts.push(`${sums.archived.toLocaleString("en-US")} archived`);
  setText($("summary"), parts.join(" · "));
}

function renderSelection() {
  const count = state.selected.length;
  show(selectionBar, count > 0 || Boolean(state.selectionMessage));
  setText(selectionCount, count < 2
    ? `${count} selected · tick another run to compare`
    : `${count} of ${MAX_SELECTED} selected`);
  if (state.selectionMessage) {
    setText(selectionMessage, state.selectionMessage);
    if (!selectionMessage.isConnected) selectionBar.prepend(selectionMessage);
  } else if (selectionMessage.isConnected) {
    selectionMessage.remove();
  }
  if (count >= 2) {
    setText(compareButton, `Compare Selected (${count})`);
    if (!compareButton.isConnected) selectionBar.appendChild(compareButton);
  } else if (compareButton.isConnected) {
    compareButton.remove();
  }
}

function renderFrame() {
  const sums = totals();
  groupToggle.checked = state.grouped;
  archivedToggle.checked = state.showArchived;
  if (document.activeElement !== filterInput && filterInput.value !== state.filter) {
    filterInput.value = state.filter;
  }
  renderConnection();
  renderStates(sums);
  renderSummary(sums);
  renderSelection();
  const query = buildQuery();
  if (location.search !== query) {
    history.replaceState(null, "", `${location.pathname}${query}${location.hash}`);
  }
}

// --- Start -------------------------------------------------------------------------------------------

function start() {
  const asked = parseAddress(location.search);
  state.grouped = asked.grouped;
  state.showArchived = asked.showArchived;
  state.filter = asked.filter;
  state.query = asked.filter.trim();
  state.selected = asked.compare.slice();
  if (asked.windowLimit !== null) state.windowLimit = asked.windowLimit;
  keepWindowLimit(asked.windowLimit);
  askedRun = runFromHash(location.hash);
  setUnauthorizedHandler(() => onStatus("unauthorized", ""));

  groupToggle.addEventListener("change", () => {
    state.grouped = groupToggle.checked;
    state.listVersion += 1;
    schedule();
  });
  archivedToggle.addEventListener("change", () => {
    state.showArchived = archivedToggle.checked;
    state.listVersion += 1;
    schedule();
  });
  filterInput.addEventListener("input", () => {
    state.filter = filterInput.value;
    clearTimeout(queryTimer);
    queryTimer = setTimeout(() => {
      state.query = state.filter.trim();
      state.listVersion += 1;
      schedule();
    }, QUERY_MS);
    schedule();
  });
  $("clear-selection").addEventListener("click", () => {
    state.selected = [];
    state.selectionMessage = "";
    schedule();
  });
  compareButton.addEventListener("click", () => {
    if (state.selected.length >= 2) openCompare(state.selected);
  });

  registerRenderer("subscriptions", syncSubscriptions); // first: the list draws what it asked
  initList({
    onOpen: (id) => openDetail(id),
    onSelect: select,
    onAction: (action, id) => fromList(() => runJobAction(action, id, "card")),
    onStopAll: (ids) => fromList(() => stopAll(ids)),
    onInsights: (modelName) => openInsights(modelName),
  });
  initCompare();
  initDetail();
  initInsights();
  registerRenderer("frame", renderFrame);
  setInterval(() => {
    state.now = Date.now() / 1000;
    schedule();
  }, CLOCK_MS);

  initSubscriptions(connectLive({ onMessage, onStatus, diagnose: refusalReason }));
  if (state.selected.length >= 2) openCompare(state.selected);
  schedule();
  // For the benchmark and for debugging from the console.
  window.monitor = { state, stats };
}

start();
