// A job's live view (a side panel): its loss and eval-loss curves and its fields. The fields
// follow the job's live copy; the curves are refetched (debounced) when the job changes.

import { actionButton, archiveActionOf, onArchiveClick, runArchiveAction } from "./actions.js";
import { getJob, getMetrics } from "./api.js";
import { legend, lineChart, pointsOf, xAxisFor } from "./chart.js";
import { h, setText, trapFocus } from "./dom.js";
import {
  deltaText,
  durationText,
  epochText,
  jobTitle,
  lossText,
  statusText,
  tierTitle,
  timeText,
  whereText,
} from "./format.js";
import { registerRenderer, schedule } from "./render.js";
import { state } from "./state.js";

const REFRESH_MS = 500;

const panel = document.getElementById("job-detail");
const body = panel.querySelector(".detail-body");
const heading = panel.querySelector(".detail-title");
const subtitle = panel.querySelector(".detail-subtitle");

let points = null; // the job's metric history, once fetched
let config; // undefined until fetched, then an object or null
let error = "";
let configOpen = false; // keep the config open across live redraws
let dirty = false;
let timer = null;
let generation = 0;

async function loadMetrics() {
  const id = state.detailId;
  const mine = generation;
  try {
    const answer = await getMetrics(id);
    if (mine !== generation) return;
    points = answer.points;
    error = "";
  } catch (e) {
    if (mine !== generation) return;
    error = e.message;
  }
  dirty = true;
  schedule();
}

async function loadConfig() {
  const id = state.detailId;
  const mine = generation;
  try {
    const job = await getJob(id);
    if (mine !== generation) return;
    config = job.config;
  } catch {
    if (mine !== generation) return;
    config = null;
  }
  dirty = true;
  schedule();
}

/** Open the live view of job `id`. */
export function openDetail(id) {
  generation += 1;
  state.detailId = id;
  points = null;
  config = undefined;
  error = "";
  configOpen = false;
  dirty = true;
  if (!panel.open) panel.showModal();
  loadMetrics();
  loadConfig();
  schedule();
}

/** Jobs changed (from /ws): redraw at once, refetch the curves shortly after. */
export function detailSawChanges(ids) {
  if (state.detailId === null || !ids.includes(state.detailId)) return;
  dirty = true;
  clearTimeout(timer);
  timer = setTimeout(loadMetrics, REFRESH_MS);
}

function field(label, value, attrs = {}) {
  return [h("dt", {}, label), h("dd", attrs, value)];
}

function fields(job) {
  const bestAt = [
    job.best_epoch !== null ? `epoch ${epochText(job.best_epoch, job.total_epochs)}` : null,
    job.best_step !== null ? `step ${job.best_step}` : null,
  ].filter(Boolean).join(", ");
  const delta = job.delta_pct === null
    ? (job.is_best ? "🏆 best run of its model" : "–")
    : h("span", { class: job.tier ? `tier-text tier-${job.tier}` : null, "data-tier": job.tier,
      title: tierTitle(job.tier) }, deltaText(job.delta_pct));
  const end = job.finished_at ?? (job.status === "running" ? Date.now() / 1000 : null);
  return h("dl", { class: "fields" },
    field("Job ID", h("code", {}, job.id)),
    field("Model", job.model_name === null ? "Unknown Model" : job.model_name),
    field("Status", statusText(job)),
    job.error ? field("Error", job.error, { class: "error-text" }) : null,
    field("Where it is", whereText(job) ?? "–"),
    field("Best eval loss", `${lossText(job.best_eval_loss)}${bestAt ? ` (${bestAt})` : ""}`),
    field("Against the best", delta),
    field("Best checkpoint", job.best_checkpoint_path
      ? h("code", {}, job.best_checkpoint_path) : "none at the best eval loss"),
    field("Latest loss", lossText(job.loss)),
    field("Latest eval loss", lossText(job.eval_loss)),
    field("Final loss", lossText(job.final_loss)),
    field("Final eval loss", lossText(job.final_eval_loss)),
    field("GPUs", job.gpu_count ?? "–"),
    field("Started", timeText(job.created_at)),
    field("Last event", timeText(job.updated_at)),
    field("Finished", job.finished_at === null ? "–" : timeText(job.finished_at)),
    field("Duration", end === null ? "–" : durationText(end - job.created_at)));
}

function curves() {
  if (points === null) return h("p", { class: "muted chart-placeholder" }, "Loading the curves…");
  const axis = xAxisFor([points]);
  const series = [
    { label: "training loss", color: "var(--run-1)", width: 1.75, points: pointsOf(points, "loss", axis) },
    { label: "eval loss", color: "var(--run-2)", width: 2.5, markers: true,
      points: pointsOf(points, "eval_loss", axis) },
  ];
  return h("div", { class: "chart-box" },
    lineChart({ series, xLabel: axis.label, width: 560, height: 260,
      title: "Loss and eval loss" }),
    legend(series));
}

/** Archive or restore the job on view: a failure shows under its head. */
async function act(action, id) {
  dirty = true; // the button is disabled at once
  const failed = await runArchiveAction(action, id);
  if (failed) {
    error = failed;
    dirty = true;
    schedule();
  }
}

function configBlock() {
  if (config === undefined) return null;
  const block = h("details", { class: "config", open: configOpen },
    h("summary", {}, "Config"),
    h("pre", {}, config === null ? "none" : JSON.stringify(config, null, 2)));
  block.addEventListener("toggle", () => {
    configOpen = block.open;
  });
  return block;
}

function renderDetail() {
  if (!dirty) return;
  dirty = false;
  const id = state.detailId;
  if (id === null) {
    body.replaceChildren();
    return;
  }
  const job = state.jobs.get(id);
  if (!job) {
    setText(heading, id);
    body.replaceChildren(h("p", { class: "error-text" }, "This job is not known (any more)."));
    return;
  }
  setText(heading, jobTitle(job));
  heading.title = job.name || job.id;
  setText(subtitle, job.model_display);
  panel.dataset.jobId = job.id;
  const badges = h("div", { class: "badges" },
    h("span", { class: `status status-${job.status}` }, statusText(job)),
    job.is_best ? h("span", { class: "badge badge-best" }, "🏆 Best") : null,
    job.best_eval_loss !== null
      ? h("span", { class: "badge badge-loss" }, `Loss: ${lossText(job.best_eval_loss)}`) : null,
    job.archived ? h("span", { class: "badge badge-archived" }, "Archived") : null);
  const action = actionButton(archiveActionOf(job), { class: "small",
    disabled: state.pending.has(job.id) });
  const hadFocus = body.contains(document.activeElement);
  const parts = [
    h("div", { class: "detail-head" }, badges, action),
    error ? h("p", { class: "error-text", role: "alert" }, error) : null,
    h("section", {}, h("h3", {}, "Curves"), curves()),
    h("section", {}, h("h3", {}, "Fields"), fields(job)),
    configBlock(),
  ];
  body.replaceChildren(...parts.filter(Boolean));
  if (hadFocus) action.focus();
}

export function initDetail() {
  trapFocus(panel);
  panel.querySelector('[data-action="close"]').addEventListener("click", () => panel.close());
  onArchiveClick(body, (action) => act(action, state.detailId));
  panel.addEventListener("close", () => {
    generation += 1;
    clearTimeout(timer);
    state.detailId = null;
    dirty = true;
    schedule();
  });
  panel.addEventListener("click", (event) => {
    if (event.target === panel) panel.close();
  });
  registerRenderer("detail", renderDetail);
}
