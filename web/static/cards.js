// A job's card: built once from index.html's template, refilled from the job's view (its
// badges, the start time's place, its actions). Text from trainers goes in as text.

import { actionButton, canStop, fillControl, newControl } from "./actions.js";
import { fromTemplate, h, setAttr, setChildren, setText } from "./dom.js";
import {
  DELTA_MARK,
  DELTA_WORD,
  deltaPercentText,
  forecastRangeText,
  forecastText,
  jobTitle,
  lossBadgeText,
  shortId,
  staleText,
  statusText,
  stopBadgeText,
  stopRequestText,
  tierTitle,
  timeText,
} from "./format.js";
import { state } from "./state.js";

export function newCard() {
  const el = fromTemplate("card-template");
  const rec = {
    el,
    id: null,
    job: null,
    selected: null,
    grouped: null,
    pending: null,
    confirm: null,
    now: null,
    x: null,
    y: null,
    w: null,
    check: el.querySelector(".card-select input"),
    title: el.querySelector(".card-title"),
    status: el.querySelector(".status"),
    model: el.querySelector(".card-model"),
    time: el.querySelector(".card-time"),
    sub: el.querySelector(".card-sub"),
    badges: el.querySelector(".badges"),
    actions: el.querySelector(".card-actions"),
    best: h("span", { class: "badge badge-best", "data-testid": "badge-best" }, "🏆 Best"),
    loss: h("span", { class: "badge badge-loss", "data-testid": "badge-loss" }),
    // `⚠️ 15.2% worse` in parts: a narrow card leaves out the mark, then the word (style.css).
    deltaValue: h("span"),
    delta: null,
    forecast: h("span", { class: "badge badge-forecast", "data-testid": "badge-forecast" }),
    stale: h("span", { class: "badge badge-stale", "data-testid": "badge-stale" }),
    stopBadge: h("span", { class: "badge badge-stop", "data-testid": "badge-stop" }),
    stop: newControl("stop", { class: "card-action card-stop" }),
    archive: actionButton("archive", { class: "card-action" }),
    restore: actionButton("restore", { class: "card-action" }),
  };
  rec.delta = h("span", { class: "badge badge-delta", "data-testid": "badge-delta" },
    h("span", { class: "delta-mark" }, DELTA_MARK), rec.deltaValue,
    h("span", { class: "delta-word" }, DELTA_WORD));
  return rec;
}

export function fillCard(rec, job, selected, grouped, pending, confirming) {
  const { el } = rec;
  setAttr(el, "data-job-id", job.id);
  setAttr(el, "data-status", job.status);
  el.classList.toggle("archived", job.archived);
  el.classList.toggle("selected", selected);
  el.classList.toggle("is-best", job.is_best);
  rec.check.checked = selected;
  const title = jobTitle(job);
  setText(rec.title, title);
  setAttr(rec.title, "title", job.name || job.id);
  setAttr(rec.check, "aria-label", `Select ${title} for comparison`);
  setText(rec.status, statusText(job));
  rec.status.className = `status status-${job.status}`;
  setAttr(rec.status, "title",
    job.status === "failed" ? (job.error ? `Failed: ${job.error}` : "Failed") : null);
  if (grouped) {
    setText(rec.model, job.name ? shortId(job.id) : "");
    setAttr(rec.model, "title", job.name ? job.id : null);
  } else {
    setText(rec.model, job.model_display);
    setAttr(rec.model, "title", job.model_name === null ? "Unknown Model" : job.model_name);
  }
  setText(rec.time, timeText(job.created_at));
  setAttr(rec.time, "title", new Date(job.created_at * 1000).toLocaleString());
  // The start time's place says the most pressing of: silent, asked to stop, the forecast.
  const stale = job.status === "running" && job.stale;
  const stopText = stopBadgeText(job);
  const forecast = job.status === "running" ? job.forecast ?? null : null;
  fillStale(rec, stale ? job.last_seen : null);
  fillForecast(rec, !stale && stopText === null ? forecast : null);
  if (stopText !== null) {
    setText(rec.stopBadge, stopText);
    setAttr(rec.stopBadge, "data-by", job.stop_requested.by);
    setAttr(rec.stopBadge, "title", `Stop requested ${stopRequestText(job.stop_requested)}`);
  }
  const stopAside = stopText !== null && !stale;
  rec.el.classList.toggle("has-aside", stale || stopText !== null || forecast !== null);
  if (stopAside && rec.stopBadge.parentNode !== rec.sub) rec.sub.append(rec.stopBadge);
  else if (!stopAside && rec.stopBadge.parentNode === rec.sub) rec.stopBadge.remove();

  const badges = stopText !== null && !stopAside ? [rec.stopBadge] : [];
  if (job.is_best) badges.push(rec.best);
  if (job.best_eval_loss !== null) {
    setText(rec.loss, lossBadgeText(job.best_eval_loss));
    badges.push(rec.loss);
  }
  if (grouped && job.tier !== null && job.delta_pct !== null) {
    setText(rec.deltaValue, deltaPercentText(job.delta_pct));
    setAttr(rec.delta, "data-tier", job.tier);
    setAttr(rec.delta, "title", tierTitle(job.tier));
    rec.delta.className = `badge badge-delta tier-${job.tier}`;
    badges.push(rec.delta);
  }
  if (job.archived) badges.push(h("span", { class: "badge badge-archived" }, "Archived"));
  setChildren(rec.badges, badges);
  const action = job.archived ? rec.restore : rec.archive;
  action.disabled = pending;
  setAttr(action, "aria-label", `${job.archived ? "Restore" : "Archive"} ${title}`);
  if (confirming && canStop(job)) setChildren(rec.actions, [state.confirming.node]);
  else if (canStop(job)) setChildren(rec.actions, [fillControl(rec.stop, job), action]);
  else setChildren(rec.actions, [action]);
}

/** A silent running card's badge, in its start time's place: `no signal for 14 min`. */
function fillStale(rec, lastSeen) {
  rec.el.classList.toggle("is-stale", lastSeen !== null);
  if (lastSeen === null) {
    rec.stale.remove();
    return;
  }
  setText(rec.stale, staleText(lastSeen, state.now));
  setAttr(rec.stale, "title", `No event or heartbeat since ${timeText(lastSeen)}: the trainer `
    + "may be gone (its forecast is paused)");
  if (rec.stale.parentNode !== rec.sub) rec.sub.append(rec.stale);
}

/** A running card's forecast badge, in its start time's place (none without a forecast). */
function fillForecast(rec, forecast) {
  if (forecast === null) {
    rec.forecast.remove();
    return;
  }
  const text = forecastText(forecast);
  setText(rec.forecast, text);
  setAttr(rec.forecast, "data-verdict", forecast.verdict);
  setAttr(rec.forecast, "title", `${text}. Forecast of the best eval loss: `
    + forecastRangeText(forecast));
  rec.forecast.className = `badge badge-forecast verdict-${forecast.verdict}`;
  if (rec.forecast.parentNode !== rec.sub) rec.sub.append(rec.forecast);
}
