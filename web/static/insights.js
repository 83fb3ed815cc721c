// A model's insights (a side panel): its GPU-hours, seed noise, which hyperparameters move the
// loss, the GPU-hours / best eval loss scatter with its Pareto front, and its replicate groups.
// GET /api/insights answers, the scatter's points included (the page holds no model's every
// job). It refetches (at most once a second) while open whenever the model's row or one of
// its jobs the page holds changes.

import { getInsights } from "./api.js";
import { ScatterChart } from "./chart.js";
import { h, setText, trapFocus } from "./dom.js";
import {
  configText,
  effectText,
  gpuHoursText,
  jobTitle,
  lossText,
  noiseText,
  pText,
  runCountText,
  shareText,
} from "./format.js";
import { registerRenderer, schedule } from "./render.js";
import { state } from "./state.js";

const REFRESH_MS = 1000; // at most one refetch per this long while the model's jobs change

const panel = document.getElementById("model-insights");
const body = panel.querySelector(".insights-body");
const heading = panel.querySelector(".detail-title");
const subtitle = panel.querySelector(".detail-subtitle");

let data = null; // the last insights answer
let error = "";
let dirty = false;
let timer = null;
let generation = 0; // answers to older requests are dropped
let scatter = null; // the Pareto scatter, kept across refreshes while the panel is open

async function load() {
  timer = null;
  if (state.insights === null) return;
  const mine = ++generation;
  try {
    const answer = await getInsights(state.insights.modelName);
    if (mine !== generation) return;
    data = answer;
    error = "";
  } catch (e) {
    if (mine !== generation) return;
    error = e.message;
  }
  dirty = true;
  schedule();
}

/** Open the insights of the model named exactly `modelName` (null: the jobs without one). */
export function openInsights(modelName) {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  state.insights = { modelName };
  data = null;
  error = "";
  dirty = true;
  if (!panel.open) panel.showModal();
  load();
  schedule();
}

/** Jobs or model rows changed (from /ws): refetch, at most once a second, if the open
 * model's row or one of its jobs did. */
export function insightsSawChanges(ids, models) {
  if (state.insights === null) return;
  const { modelName } = state.insights;
  const ours = ids.some((id) => state.jobs.get(id)?.model_name === modelName);
  if (timer !== null || (!ours && !models.includes(modelName))) return;
  timer = setTimeout(load, REFRESH_MS);
}

// --- Building the panel --------------------------------------------------------------------------

function section(title, ...children) {
  return h("section", {}, h("h3", {}, title), ...children);
}

function summary(answer) {
  return h("dl", { class: "fields" },
    h("dt", {}, "GPU-hours"),
    h("dd", { class: "insights-gpu-hours" }, answer.gpu_hours === null
      ? "unknown: no run sent its gpu_count" : gpuHoursText(answer.gpu_hours)),
    h("dt", {}, "Noise"),
    h("dd", { class: "insights-noise" }, noiseText(answer.noise_pct, answer.replicates.length)));
}

function hyperparameters(answer) {
  if (answer.hyperparameters.length === 0) {
    return h("p", { class: "muted" }, "Too few runs to tell yet: a config key is weighed once "
      + "at least five runs carry it with at least two different values.");
  }
  const rows = answer.hyperparameters.map((p) => {
    const bar = h("span", { class: "importance-bar", "aria-hidden": "true" },
      h("span", { class: "importance-fill" }));
    bar.firstChild.style.width = `${Math.round(Math.max(0, Math.min(1, p.importance)) * 100)}%`;
    return h("tr", { "data-name": p.name },
      h("th", { scope: "row" }, h("code", {}, p.name)),
      h("td", {}, p.kind),
      h("td", { class: "insights-effect" }, effectText(p.kind, p.effect)),
      h("td", { class: "importance" }, bar, h("span", {}, shareText(p.importance))),
      h("td", {}, p.p_value === null ? "–" : pText(p.p_value)),
      h("td", {}, String(p.runs)));
  });
  return h("div", { class: "table-wrap" },
    h("table", { class: "compare-table insights-table", "data-testid": "insights-hparams" },
      h("caption", { class: "visually-hidden" }, "Hyperparameters, most important first"),
      h("thead", {}, h("tr", {},
        ["Key", "Kind", "Direction", "Importance", "p-value", "Runs"].map((label) =>
          h("th", { scope: "col" }, label)))),
      h("tbody", {}, rows)));
}

function pareto(answer) {
  const front = new Set(answer.pareto);
  const points = [];
  for (const p of answer.points) { // {job_id, name, gpu_hours, best_eval_loss}, cheapest first
    const run = { id: p.job_id, name: p.name };
    const onFront = front.has(p.job_id);
    points.push({ x: p.gpu_hours, y: p.best_eval_loss, label: jobTitle(run), front: onFront,
      title: `${p.name || p.job_id}: ${lossText(p.best_eval_loss)} at `
        + `${gpuHoursText(p.gpu_hours)} GPU-hours${onFront ? " (Pareto front)" : ""}` });
  }
  if (points.length === 0) {
    return h("p", { class: "muted", "data-testid": "insights-pareto" }, "No run to place yet: "
      + "a run needs an eval loss and a gpu_count (sent with job_started) to be drawn here.");
  }
  scatter ??= new ScatterChart({ title: "Best eval loss against GPU-hours" });
  scatter.set({ points, xLabel: "GPU-hours", yLabel: "best eval loss" });
  return h("div", { class: "chart-box", "data-testid": "insights-pareto" },
    scatter.el,
    h("p", { class: "muted chart-note" }, `${front.size} of ${runCountText(points.length)} on `
      + "the Pareto front (green, labelled): no other run is both as cheap and better. Hover "
      + "a point for its run."));
}

function replicates(answer) {
  if (answer.replicates.length === 0) {
    return h("p", { class: "muted" },
      "No replicates yet: run a config with another seed to measure noise.");
  }
  return h("ul", { class: "replicates", "data-testid": "insights-replicates" },
    answer.replicates.map((group) => {
      const [lo, hi] = group.ci95;
      return h("li", {},
        h("span", { class: "replicate-loss" },
          `${lossText(group.best_eval_loss_mean)} ± ${lossText((hi - lo) / 2)}`),
        h("span", { class: "muted" }, ` (95% interval, ${runCountText(group.n)}) `),
        h("code", { class: "replicate-config", title: group.job_ids.join(", ") },
          configText(group.config)));
    }));
}

function renderInsights() {
  if (!dirty) return;
  dirty = false;
  if (state.insights === null) {
    body.replaceChildren();
    return;
  }
  const { modelName } = state.insights;
  const display = data ? data.model_display : modelName ?? "Unknown Model";
  setText(heading, `Insights: ${display}`);
  setText(subtitle, modelName === null ? "the runs that never named a model"
    : modelName !== display ? modelName : "");
  subtitle.hidden = subtitle.textContent === "";
  if (error) {
    body.replaceChildren(h("p", { class: "error-text", role: "alert" }, error));
    return;
  }
  if (!data) {
    body.replaceChildren(h("p", { class: "muted" }, "Loading the insights…"));
    return;
  }
  body.replaceChildren(
    summary(data),
    section("Hyperparameters", hyperparameters(data)),
    section("Cost against loss", pareto(data)),
    section("Replicates", replicates(data)));
}

export function initInsights() {
  trapFocus(panel);
  panel.querySelector('[data-action="close"]').addEventListener("click", () => panel.close());
  panel.addEventListener("close", () => {
    generation += 1;
    clearTimeout(timer);
    timer = null;
    state.insights = null;
    data = null;
    scatter?.destroy();
    scatter = null;
    dirty = true;
    schedule();
  });
  panel.addEventListener("click", (event) => {
    if (event.target === panel) panel.close();
  });
  registerRenderer("insights", renderInsights);
}
