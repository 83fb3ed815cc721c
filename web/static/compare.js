// The comparison modal: the table and recommendation of GET /api/compare, the curves of the
// selected runs overlaid, CSV and JSON export, a shareable link and archive buttons. It
// refetches (debounced) while open whenever one of its jobs changes.

import {
  actionButton,
  archiveActionOf,
  canStop,
  confirmedControl,
  onJobActionClick,
  runJobAction,
} from "./actions.js";
import { shareUrl } from "./address.js";
import { compareUrl, getComparison, getMetrics } from "./api.js";
import { LineChart, pointsOf, xAxisFor } from "./chart.js";
import { h, setText, trapFocus } from "./dom.js";
import {
  cellText,
  compareLossText,
  deltaText,
  epochText,
  jobTitle,
  lossText,
  significanceText,
  staleText,
  stopBadgeText,
  stopRequestText,
  tierTitle,
} from "./format.js";
import { registerRenderer, schedule } from "./render.js";
import { state } from "./state.js";

const REFRESH_MS = 300; // wait this long after a change before refetching the comparison
const RUN_COLORS = ["var(--run-1)", "var(--run-2)", "var(--run-3)", "var(--run-4)", "var(--run-5)"];
const LOSS_ROW = "best_eval_loss"; // the key of the row with deltas and tiers

const modal = document.getElementById("compare-modal");
const body = modal.querySelector(".modal-body");
const footer = modal.querySelector(".modal-footer");
const status = modal.querySelector(".compare-status");
const closeButton = modal.querySelector('[data-action="close"]');

let data = null; // the last comparison answer
let histories = null; // job id -> metric points
let error = "";
let loading = false;
let dirty = false;
let timer = null;
let generation = 0; // answers to older requests are dropped
let shared = ""; // the share link shown after a click on it
let chart = null; // the curves' LineChart, kept across live refreshes while the modal is open
// The body: the table and recommendation are rebuilt on each answer; the curves' section stays
// (its chart draws new data in place and keeps its crosshair, zoom and focus).
const answerBox = h("div", { class: "compare-answer" });
const curvesSection = h("section", { class: "chart-box" }, h("h3", {}, "Loss and eval loss"));
const runKey = h("ul", { class: "chart-key" }); // which run each colour is

async function load() {
  timer = null;
  const ids = state.compareIds;
  if (!ids) return;
  const mine = ++generation;
  loading = true;
  dirty = true;
  schedule();
  try {
    const [answer, points] = await Promise.all([
      getComparison(ids),
      Promise.all(ids.map((id) => getMetrics(id).then((m) => m.points, () => []))),
    ]);
    if (mine !== generation) return;
    data = answer;
    histories = new Map(ids.map((id, i) => [id, points[i]]));
    error = "";
  } catch (e) {
    if (mine !== generation) return;
    error = e.message;
  } finally {
    if (mine === generation) {
      loading = false;
      dirty = true;
      schedule();
    }
  }
}

/** Open the comparison of `ids` (in column order). */
export function openCompare(ids) {
  state.compareIds = ids.slice();
  data = null;
  histories = null;
  error = "";
  shared = "";
  dirty = true;
  chart?.destroy();
  chart = new LineChart({ title: "Loss and eval loss of the compared runs", height: 280 });
  curvesSection.replaceChildren(curvesSection.firstChild, chart.el, runKey);
  if (!modal.open) modal.showModal();
  load();
  schedule();
}

export function closeCompare() {
  if (modal.open) modal.close();
}

/** Jobs changed (from /ws): refetch, at most once per REFRESH_MS (so runs that log faster
 * than that are still refreshed), if any of them is being compared. */
export function compareSawChanges(ids) {
  if (!state.compareIds) return;
  const watched = new Set(state.compareIds);
  if (!ids.some((id) => watched.has(id))) return;
  dirty = true; // archive buttons follow the live state at once
  if (timer === null) timer = setTimeout(load, REFRESH_MS);
}

// --- Building the modal --------------------------------------------------------------------------

function runHeader(job, index, isBest) {
  const live = state.jobs.get(job.id) || job;
  const archived = live.archived;
  const button = actionButton(archiveActionOf(live), { class: "small", "data-job-id": job.id,
    disabled: state.pending.has(job.id) });
  const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
  swatch.style.background = RUN_COLORS[index];
  return h("th", { scope: "col", class: isBest ? "best-col" : null, "data-job-id": job.id },
    h("div", { class: "run-head" }, swatch, `Run #${index + 1}`,
      isBest ? h("span", { class: "badge badge-best" }, "🏆 Best") : null),
    h("div", { class: "run-name", title: job.name || job.id }, jobTitle(job)),
    h("div", { class: "run-actions" },
      archived ? h("span", { class: "badge badge-archived" }, "Archived") : null,
      canStop(live) ? confirmedControl("stop", live, "compare", { class: "small danger-outline" })
        : null,
      button),
    runBadges(live));
}

/** A compared run's stop request and silence, as its card says them. */
function runBadges(job) {
  const stopText = stopBadgeText(job);
  const stale = job.status === "running" && job.stale;
  if (stopText === null && !stale) return null;
  return h("div", { class: "run-badges" },
    stopText === null ? null : h("span", { class: "badge badge-stop", "data-testid": "badge-stop",
      "data-by": job.stop_requested.by, title: `Stop requested ${stopRequestText(job.stop_requested)}` },
    stopText),
    stale ? h("span", { class: "badge badge-stale", "data-testid": "badge-stale" },
      staleText(job.last_seen, state.now)) : null);
}

function valueCell(row, value, i, isBest) {
  const cls = isBest ? "best-col" : null;
  if (row.key === LOSS_ROW) {
    const delta = row.deltas ? row.deltas[i] : null;
    const tier = row.tiers ? row.tiers[i] : null;
    const text = h("span", { class: tier ? `tier-text tier-${tier}` : null,
      "data-tier": tier, title: tier ? tierTitle(tier) : null }, compareLossText(value, delta));
    return h("td", { class: cls }, isBest ? h("strong", {}, text) : text);
  }
  const text = cellText(value);
  return h("td", { class: cls, title: typeof value === "string" && value.length > 24 ? value : null },
    text);
}

function table(answer) {
  const bestIndex = answer.jobs.findIndex((job) => job.id === answer.best_job_id);
  const head = h("tr", {}, h("th", { scope: "col" }, "Metric"),
    answer.jobs.map((job, i) => runHeader(job, i, i === bestIndex)),
    h("th", { scope: "col", class: "best-value" }, "Best Value"));
  const rows = answer.rows.map((row) =>
    h("tr", { "data-row": row.label },
      h("th", { scope: "row" }, row.label),
      row.values.map((value, i) => valueCell(row, value, i, i === bestIndex)),
      h("td", { class: "best-value" },
        row.best === null ? "–" : row.key === LOSS_ROW ? lossText(row.best)
          : cellText(row.best))));
  return h("div", { class: "table-wrap" },
    h("table", { class: "compare-table", "data-testid": "compare-table" },
      h("thead", {}, head), h("tbody", {}, rows)));
}

function recommendation(answer) {
  const rec = answer.recommendation;
  const box = h("section", { class: "recommendation", "data-testid": "recommendation" },
    h("h3", {}, "🎯 Recommendation"));
  if (rec.best_job_id === null) {
    box.append(h("p", {}, "None of these runs has an eval loss yet: nothing to recommend."));
    return box;
  }
  const at = epochText(rec.best_epoch, rec.total_epochs);
  box.append(
    h("p", {}, h("strong", {}, "Best Checkpoint:"), ` Run #${rec.run_number} - ${rec.model_display}`),
    h("ul", {},
      h("li", {}, h("strong", {}, "Best eval loss:"),
        ` ${lossText(rec.best_eval_loss)}${at ? ` (at epoch ${at})` : ""}`),
      h("li", {}, h("strong", {}, "Checkpoint:"), " ",
        rec.checkpoint_path ? h("code", {}, rec.checkpoint_path) : "none saved at the best eval loss"),
      h("li", {}, h("strong", {}, "Job ID:"), " ", h("code", {}, rec.best_job_id))));
  if (rec.others.length) {
    box.append(h("p", { class: "summary-title" }, "Performance summary:"),
      h("ul", {}, rec.others.map((other) => {
        if (other.delta_pct === null) {
          return h("li", {}, `Run #${other.run_number} has no eval loss to compare`);
        }
        const judged = answer.significance.find((s) => s.job_id === other.job_id);
        return h("li", { "data-job-id": other.job_id }, `Run #${other.run_number} is `,
          h("span", { class: other.tier ? `tier-text tier-${other.tier}` : "neutral",
            "data-tier": other.tier }, deltaText(other.delta_pct)),
          ", ",
          h("span", { class: "significance", "data-testid": "significance",
            "data-verdict": other.verdict, title: judged?.method ?? "no seed replicates yet" },
          significanceText(other.verdict, judged?.p_value ?? null)),
          other.consider_archiving ? " (consider archiving)" : "");
      })));
  }
  return box;
}

/** The eval-loss (solid, markers) and training-loss (dashed) curves of each run, overlaid. */
function drawCurves(answer) {
  const jobs = answer.jobs;
  const all = jobs.map((job) => histories?.get(job.id) || []);
  const axis = xAxisFor(all);
  const series = [];
  jobs.forEach((job, i) => {
    series.push({ label: `Run #${i + 1} eval loss`, color: RUN_COLORS[i], width: 2.5, markers: true,
      points: pointsOf(all[i], "eval_loss", axis) });
    series.push({ label: `Run #${i + 1} training loss`, color: RUN_COLORS[i], width: 1.5,
      dashed: true, points: pointsOf(all[i], "loss", axis) });
  });
  chart.set({ series, xLabel: axis.label, band: null });
  runKey.replaceChildren(...jobs.map((job, i) => {
    const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = RUN_COLORS[i];
    return h("li", { title: job.name || job.id }, swatch, `Run #${i + 1} · ${jobTitle(job)}`);
  }));
}

function footerLinks(ids) {
  const csv = h("a", { class: "button", "data-testid": "export-csv", href: compareUrl(ids, "csv"),
    download: "" }, "Export CSV");
  const json = h("a", { class: "button", "data-testid": "export-json",
    href: compareUrl(ids, "json"), download: "" }, "Export JSON");
  const link = h("a", { class: "button", "data-testid": "share-link", href: shareUrl() },
    "🔗 Copy share link");
  link.addEventListener("click", async (event) => {
    event.preventDefault();
    shared = shareUrl();
    dirty = true;
    schedule();
    try {
      await navigator.clipboard.writeText(shared);
      setText(status, "Link copied to the clipboard.");
    } catch {
      setText(status, "Copy the link below (the clipboard is not available here).");
    }
  });
  const parts = [csv, json, link];
  if (shared) {
    const input = h("input", { type: "text", readonly: true, class: "share-url",
      "data-testid": "share-url", value: shared, "aria-label": "Share link" });
    input.addEventListener("focus", () => input.select());
    parts.push(input);
  }
  return parts;
}

/** An action from a column's head (archive, restore, stop): a failure shows in the modal's
 * status line. */
async function act(action, id) {
  dirty = true; // the button is disabled at once
  const failed = await runJobAction(action, id, "compare");
  if (failed) {
    setText(status, failed);
    dirty = true;
    schedule();
  }
}

let shownConfirm = null; // the confirmation the last frame drew (opening or closing one redraws)

function renderCompare() {
  const confirmMoved = shownConfirm !== state.confirming
    && (shownConfirm?.view === "compare" || state.confirming?.view === "compare");
  if (!dirty && !confirmMoved) return;
  dirty = false;
  shownConfirm = state.confirming;
  if (!state.compareIds) {
    body.replaceChildren();
    footer.replaceChildren();
    return;
  }
  const ids = state.compareIds;
  setText(modal.querySelector(".modal-title"), `Compare ${ids.length} runs`);
  if (error) {
    body.replaceChildren(h("p", { class: "error-text", role: "alert" }, error));
  } else if (!data) {
    body.replaceChildren(h("p", { class: "muted" }, "Loading the comparison…"));
  } else {
    const focused = document.activeElement;
    const focusKey = focused && body.contains(focused) ? focused.dataset.jobId : null;
    answerBox.replaceChildren(table(data), recommendation(data));
    if (body.firstChild !== answerBox) body.replaceChildren(answerBox, curvesSection);
    drawCurves(data);
    if (focused && focused.isConnected && body.contains(focused)) {
      focused.focus(); // a confirmation stays from frame to frame
    } else if (focusKey) { // keep keyboard users where they were across a live refresh
      const action = focused.dataset.action;
      const again = body.querySelector(`button[data-action="${action}"][data-job-id="${CSS.escape(focusKey)}"]`)
        ?? body.querySelector(`button[data-job-id="${CSS.escape(focusKey)}"]`);
      (again || closeButton).focus();
    }
  }
  modal.classList.toggle("loading", loading);
  // Keep the focus on the same footer control (they come in a fixed order).
  const focusedAt = [...footer.children].indexOf(document.activeElement);
  footer.replaceChildren(...footerLinks(ids));
  if (focusedAt !== -1) footer.children[focusedAt]?.focus();
}

export function initCompare() {
  trapFocus(modal);
  closeButton.addEventListener("click", closeCompare);
  onJobActionClick(body, (action, button) =>
    act(action, button.closest("[data-job-id]").dataset.jobId));
  modal.addEventListener("close", () => {
    if (state.confirming?.view === "compare") state.confirming = null;
    state.compareIds = null;
    generation += 1;
    clearTimeout(timer);
    timer = null;
    data = null;
    histories = null;
    shared = "";
    chart?.destroy();
    chart = null;
    setText(status, "");
    dirty = true;
    schedule();
  });
  // A click on the backdrop (outside the box) closes, as in most dialogs.
  modal.addEventListener("click", (event) => {
    if (event.target === modal) closeCompare();
  });
  registerRenderer("compare", renderCompare);
}
