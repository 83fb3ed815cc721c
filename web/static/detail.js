// A job's live view (a side panel): its loss and eval-loss curves (with the forecast band of a
// running job) and its fields. The fields and the band follow the job's live copy; the curves
// are refetched (debounced) when the job changes.

import {
  actionButton,
  archiveActionOf,
  canAbandon,
  canStop,
  confirmedControl,
  onJobActionClick,
  runJobAction,
} from "./actions.js";
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
  staleText,
  statusText,
  stopBadgeText,
  stopRequestText,
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
let drawnAt = null; // state.now when a silent job was last drawn (its "no signal for" moves)

async function loadMetrics() {
  timer = null;
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

/** Jobs changed (from /ws): redraw at once, refetch the curves shortly after: at most once
 * per REFRESH_MS, so a run that logs faster than that still has its curves refreshed. */
export function detailSawChanges(ids) {
  if (state.detailId === null) return;
  if (!state.jobs.has(state.detailId)) dirty = true; // on its way, or found unknown
  if (!ids.includes(state.detailId)) return;
  dirty = true;
  if (timer === null) timer = setTimeout(loadMetrics, REFRESH_MS);
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
    job.stop_requested ? field("Stop requested", stopRequestText(job.stop_requested),
      { class: "detail-stop" }) : null,
    job.status === "running" && job.stale ? field("Last signal",
      `${staleText(job.last_seen, state.now)} (since ${timeText(job.last_seen)})`,
      { class: "detail-stale" }) : null,
    field("Where it is", whereText(job) ?? "–"),
    field("Best eval loss", `${lossText(job.best_eval_loss)}${bestAt ? ` (${bestAt})` : ""}`),
    field("Against the best", delta),
    field("Best checkpoint", job.best_checkpoint_path
      ? h("code", {}, job.best_checkpoint_path) : "none at the best eval loss"),
    field("Latest loss", lossText(job.loss)),
    field("Latest eval loss", lossText(job.eval_loss)),
    field("Final loss", lossText(job.final_loss)),
    field("Final eval loss", lossText(job.final_eval_loss)),
    forecastFields(job.status === "running" ? job.forecast : null, job.stale),
    field("GPUs", job.gpu_count ?? "–"),
    field("Started", timeText(job.created_at)),
    field("Last event", timeText(job.updated_at)),
    field("Finished", job.finished_at === null ? "–" : timeText(job.finished_at)),
    field("Duration", end === null ? "–" : durationText(end - job.created_at)));
}

/** What a running job's forecast says: the verdict, the range at the horizon, the chance to
 * beat its group's best and the GPU-hours to go (nothing without a forecast); `paused` while
 * the job is silent (the advisor no longer recomputes it). */
function forecastFields(forecast, paused) {
  if (!forecast) return null;
  return [
    field("Forecast", [h("span", { class: `badge badge-forecast verdict-${forecast.verdict}`,
      "data-verdict": forecast.verdict }, forecastText(forecast)),
    paused ? h("span", { class: "muted forecast-paused" }, " paused: no signal") : null],
    { class: "detail-forecast" }),
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

/** An action on the job on view (archive, restore, stop, mark failed): a failure shows under
 * its head. */
async function act(action, id) {
  dirty = true; // the button is disabled at once
  error = "";
  const failed = await runJobAction(action, id, "detail");
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
  const silent = state.detailId !== null && state.jobs.get(state.detailId)?.stale;
  if (!dirty && !(silent && drawnAt !== state.now) && !confirmMoved()) return;
  dirty = false;
  drawnAt = state.now;
  const id = state.detailId;
  if (id === null) {
    body.replaceChildren();
    return;
  }
  const job = state.jobs.get(id);
  if (!job) { // asked with `watch`: on its way, or unknown
    setText(heading, id);
    body.replaceChildren(state.missing.has(id)
      ? h("p", { class: "error-text" }, "This job is not known (any more).")
      : h("p", { class: "muted" }, "Loading the run…"));
    return;
  }
  if (body.firstChild !== head) body.replaceChildren(head, curvesSection, rest);
  setText(heading, jobTitle(job));
  heading.title = job.name || job.id;
  setText(subtitle, job.model_display);
  panel.dataset.jobId = job.id;
  // Before the new controls are built: an open confirmation moves into them.
  const active = document.activeElement;
  const hadFocus = head.contains(active) || rest.contains(active); // rebuilt: focus the action
  const focusAction = hadFocus ? active.dataset.action : undefined;
  const stopText = stopBadgeText(job);
  const stale = job.status === "running" && job.stale;
  const badges = h("div", { class: "badges" },
    h("span", { class: `status status-${job.status}` }, statusText(job)),
    stopText === null ? null : h("span", { class: "badge badge-stop", "data-testid": "badge-stop",
      "data-by": job.stop_requested.by, title: `Stop requested ${stopRequestText(job.stop_requested)}` },
    stopText),
    stale ? h("span", { class: "badge badge-stale", "data-testid": "badge-stale" },
      staleText(job.last_seen, state.now)) : null,
    job.is_best ? h("span", { class: "badge badge-best" }, "🏆 Best") : null,
    job.best_eval_loss !== null
      ? h("span", { class: "badge badge-loss" }, `Loss: ${lossText(job.best_eval_loss)}`) : null,
    job.archived ? h("span", { class: "badge badge-archived" }, "Archived") : null);
  const action = actionButton(archiveActionOf(job), { class: "small",
    disabled: state.pending.has(job.id) });
  const actions = h("div", { class: "detail-actions" },
    canStop(job) ? confirmedControl("stop", job, "detail", { class: "small danger-outline" }) : null,
    canAbandon(job) ? confirmedControl("abandon", job, "detail", { class: "small" }) : null,
    action);
  head.replaceChildren(...[h("div", { class: "detail-head" }, badges, actions),
    error ? h("p", { class: "error-text", role: "alert" }, error) : null].filter(Boolean));
  drawCurves(job);
  rest.replaceChildren(...[h("section", {}, h("h3", {}, "Fields"), fields(job)), configBlock()]
    .filter(Boolean));
  if (hadFocus) {
    // The same control if it is still there (a confirmation's stay from frame to frame).
    const again = active.isConnected ? active
      : actions.querySelector(`[data-action="${focusAction}"]`) ?? action;
    again.focus();
  }
  shownConfirm = state.confirming;
}

let shownConfirm = null; // the confirmation the last frame drew (opening or closing one redraws)

function confirmMoved() {
  return shownConfirm !== state.confirming
    && (shownConfirm?.view === "detail" || state.confirming?.view === "detail");
}

export function initDetail() {
  trapFocus(panel);
  panel.querySelector('[data-action="close"]').addEventListener("click", () => panel.close());
  onJobActionClick(body, (action) => act(action, state.detailId));
  panel.addEventListener("close", () => {
    if (state.confirming?.view === "detail") state.confirming = null;
    generation += 1;
    clearTimeout(timer);
    timer = null;
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
