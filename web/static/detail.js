// A job's live view (a side panel): its loss and eval-loss curves (with the forecast band of a
// running job) and its fields. The fields and the band follow the job's live copy; the curves
// are refetched (debounced) when the job changes.

import { actionButton, archiveActionOf, onArchiveClick, runArchiveAction } from "./actions.js";
import { getJob, getMetrics } from "./api.js";
import { LineChart, pointsOf, xAxisFor } from "./chart.js";
import { h, setText, trapFocus } from "./dom.js";
import {
  chanceText,
  deltaText,
  durationText,
  epochText,
  forecastRangeText,
  forecastText,
  gpuHoursText,
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
const BAND_LABEL = "forecast of the best eval loss (p10-p90)";

const panel = document.getElementById("job-detail");
const body = panel.querySelector(".detail-body");
const heading = panel.querySelector(".detail-title");
const subtitle = panel.querySelector(".detail-subtitle");
// The body's parts: the head and the fields are rebuilt on each change; the curves' section
// stays (its chart draws new data in place, and keeps its crosshair, zoom and focus).
const head = h("div", { class: "detail-top" });
const curvesSection = h("section", {}, h("h3", {}, "Curves"));
const rest = h("div", { class: "detail-rest" });

let points = null; // the job's metric history, once fetched
let config; // undefined until fetched, then an object or null
let error = "";
let configOpen = false; // keep the config open across live redraws
let dirty = false;
let timer = null;
let generation = 0;
let chart = null; // the open job's LineChart

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
  chart?.destroy();
  chart = new LineChart({ title: "Loss and eval loss" });
  curvesSection.replaceChildren(curvesSection.firstChild, chart.el);
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
    forecastFields(job.status === "running" ? job.forecast : null),
    field("GPUs", job.gpu_count ?? "–"),
    field("Started", timeText(job.created_at)),
    field("Last event", timeText(job.updated_at)),
    field("Finished", job.finished_at === null ? "–" : timeText(job.finished_at)),
    field("Duration", end === null ? "–" : durationText(end - job.created_at)));
}

/** What a running job's forecast says: the verdict, the range at the horizon, the chance to
 * beat its group's best and the GPU-hours to go (nothing without a forecast). */
function forecastFields(forecast) {
  if (!forecast) return null;
  return [
    field("Forecast", h("span", { class: `badge badge-forecast verdict-${forecast.verdict}`,
      "data-verdict": forecast.verdict }, forecastText(forecast)), { class: "detail-forecast" }),
    field("Best eval loss forecast", forecastRangeText(forecast)),
    field("Chance to beat the best", forecast.p_beat_best === null
      ? "– (no other run of its model to beat)" : chanceText(forecast.p_beat_best)),
    field("GPU-h left", forecast.gpu_hours_left === null
      ? "unknown (no gpu_count)" : gpuHoursText(forecast.gpu_hours_left)),
  ].flat();
}

/** The forecast band of a running job, on a chart whose x axis is in steps. */
function bandOf(job, axis) {
  const f = job.forecast;
  if (job.status !== "running" || !f || axis.label !== "step") return null;
  return { from: f.at_step, to: f.horizon_step, lo: f.best_p10, mid: f.best_p50, hi: f.best_p90,
    label: BAND_LABEL };
}

function drawCurves(job) {
  if (points === null) {
    chart.el.hidden = true;
    if (!curvesSection.querySelector(".chart-placeholder")) {
      curvesSection.append(h("p", { class: "muted chart-placeholder" }, "Loading the curves…"));
    }
    return;
  }
  curvesSection.querySelector(".chart-placeholder")?.remove();
  chart.el.hidden = false;
  const axis = xAxisFor([points]);
  chart.set({
    xLabel: axis.label,
    band: bandOf(job, axis),
    series: [
      { label: "training loss", color: "var(--run-1)", width: 1.75,
        points: pointsOf(points, "loss", axis) },
      { label: "eval loss", color: "var(--run-2)", width: 2.5, markers: true,
        points: pointsOf(points, "eval_loss", axis) },
    ],
  });
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
  if (body.firstChild !== head) body.replaceChildren(head, curvesSection, rest);
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
  const active = document.activeElement;
  const hadFocus = head.contains(active) || rest.contains(active); // rebuilt: focus the action
  head.replaceChildren(...[h("div", { class: "detail-head" }, badges, action),
    error ? h("p", { class: "error-text", role: "alert" }, error) : null].filter(Boolean));
  drawCurves(job);
  rest.replaceChildren(...[h("section", {}, h("h3", {}, "Fields"), fields(job)), configBlock()]
    .filter(Boolean));
  if (hadFocus) action.focus();
}

export function initDetail() {
  trapFocus(panel);
  panel.querySelector('[data-action="close"]').addEventListener("click", () => panel.close());
  onArchiveClick(body, (action) => act(action, state.detailId));
  panel.addEventListener("close", () => {
    generation += 1;
    clearTimeout(timer);
    chart?.destroy();
    chart = null;
    state.detailId = null;
    dirty = true;
    schedule();
  });
  panel.addEventListener("click", (event) => {
    if (event.target === panel) panel.close();
  });
  registerRenderer("detail", renderDetail);
}
