// Pure formatting helpers: no DOM, no state. Every text a card, the table or the
// recommendation shows about a number is made here, so the page says it one way.

const NA = "N/A";

/** A loss with 4 decimals (`0.2345`), or N/A. */
export function lossText(value) {
  return value === null || value === undefined ? NA : value.toFixed(4);
}

/** The loss badge of a card: `Loss: 0.2345` (the best eval loss). */
export function lossBadgeText(bestEvalLoss) {
  return `Loss: ${lossText(bestEvalLoss)}`;
}

/** One decimal, as the server decides tiers on (JS toFixed: exact value, half up). */
export function pctText(delta) {
  return delta.toFixed(1);
}

/** `15.2%`: a delta's percent. */
export function deltaPercentText(delta) {
  return `${pctText(delta)}%`;
}

/** `15.2% worse`: the percent, then this. */
export const DELTA_WORD = " worse";

/** `15.2% worse`. */
export function deltaText(delta) {
  return `${deltaPercentText(delta)}${DELTA_WORD}`;
}

/**
 * What a difference from the best means, in words: `within seed noise`, `a real difference
 * (p 0.003)`, or, without replicates to measure noise with, `seed noise unknown`.
 */
export function significanceText(verdict, pValue) {
  if (verdict === "within_noise") return "within seed noise";
  if (verdict === "real") {
    return pValue === null ? "a real difference" : `a real difference (p ${pText(pValue)})`;
  }
  return "seed noise unknown";
}

/** A p-value for people: `0.03`, `0.004`, `< 0.001`. */
export function pText(p) {
  if (p < 0.001) return "< 0.001";
  return String(Number(p.toPrecision(1)));
}

/** What opens a card's delta badge (`⚠️ 15.2% worse`): the warning sign. */
export const DELTA_MARK = "⚠️ ";

/** The delta badge of a card: `⚠️ 15.2% worse`. */
export function deltaBadgeText(delta) {
  return `${DELTA_MARK}${deltaText(delta)}`;
}

/** A Best Eval Loss cell of the comparison: `0.3456 (+47.4%)`, or the bare loss. */
export function compareLossText(value, delta) {
  if (value === null || value === undefined) return NA;
  return delta === null || delta === undefined
    ? lossText(value)
    : `${lossText(value)} (+${pctText(delta)}%)`;
}

const TIER_TITLES = {
  yellow: "More than 5% worse than the best run",
  orange: "More than 10% worse than the best run",
  red: "More than 25% worse than the best run: consider archiving",
};

/** The hover text of a tier colour (the server decides the tier). */
export function tierTitle(tier) {
  return TIER_TITLES[tier] ?? "";
}

/** An epoch number as the server writes it: `5`, `2.5`. */
export function epochNumber(epoch) {
  return Number.isInteger(epoch) ? String(epoch) : String(Number(epoch.toFixed(3)));
}

/** `5/12` (epoch out of the run's epochs), `5` without a total, null without an epoch. */
export function epochText(epoch, totalEpochs) {
  if (epoch === null || epoch === undefined) return null;
  const text = epochNumber(epoch);
  return totalEpochs === null || totalEpochs === undefined ? text : `${text}/${totalEpochs}`;
}

/** A job id short enough for a card: the first 8 characters of a long id. */
export function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

/** What a card calls a job: its display name, else its (short) id. */
export function jobTitle(job) {
  return job.name ? job.name : shortId(job.id);
}

const STATUS_WORDS = {
  running: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  stopped: "Stopped",
};

/**
 * Where a job is, from its latest observation: `epoch 3/12`, `step 400` (no epoch), or null.
 */
export function progressText(job) {
  const epoch = epochText(job.epoch, job.total_epochs);
  if (epoch !== null) return `epoch ${epoch}`;
  return job.step !== null && job.step !== undefined ? `step ${job.step}` : null;
}

/** Where a job is, in full: `epoch 3/12, step 300` (either part alone when the other is
 * missing), or null; as the comparison's Progress row says it. */
export function whereText(job) {
  const epoch = epochText(job.epoch, job.total_epochs);
  const parts = [epoch !== null ? `epoch ${epoch}` : null,
    job.step !== null && job.step !== undefined ? `step ${job.step}` : null];
  return parts.filter(Boolean).join(", ") || null;
}

/** The status line of a card: `Running · epoch 3/12`, `Running · step 400`, `Completed`. */
export function statusText(job) {
  const word = STATUS_WORDS[job.status] ?? job.status;
  if (job.status !== "running") return word;
  const progress = progressText(job);
  if (progress !== null) return `${word} · ${progress}`;
  return job.total_epochs ? `${word} · ${job.total_epochs} epochs` : word;
}

/** `1 run`, `3 runs`. */
export function runCountText(count) {
  return `${count.toLocaleString("en-US")} ${count === 1 ? "run" : "runs"}`;
}

/** A count with its noun: `1 model`, `200 models`. */
export function countText(count, noun) {
  return `${count.toLocaleString("en-US")} ${noun}${count === 1 ? "" : "s"}`;
}

/** A time (seconds since the epoch) as a short local date and time. */
export function timeText(ts, now = Date.now() / 1000) {
  if (ts === null || ts === undefined) return NA;
  const date = new Date(ts * 1000);
  const today = new Date(now * 1000).toDateString() === date.toDateString();
  const options = today
    ? { hour: "2-digit", minute: "2-digit" }
    : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return date.toLocaleString(undefined, options);
}

/** How long between two times (seconds): `42s`, `12m 5s`, `3h 20m`. */
export function durationText(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return NA;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** A cell of the comparison table: numbers with 4 decimals, N/A for nothing. */
export function cellText(value) {
  if (value === null || value === undefined || value === "") return NA;
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  return String(value);
}

/**
 * GPU-hours for people: `1,204`, `12.4`, `3.2`, `0.35`, `< 0.01` (a few seconds of one GPU);
 * N/A for none. Every view that shows GPU-hours says them this way.
 */
export function gpuHoursText(hours) {
  if (hours === null || hours === undefined) return NA;
  if (hours === 0) return "0";
  if (hours < 0.005) return "< 0.01";
  if (hours >= 100) return Math.round(hours).toLocaleString("en-US");
  if (hours >= 10) return hours.toFixed(1);
  return String(Number(hours >= 1 ? hours.toPrecision(2) : hours.toFixed(2)));
}

/**
 * A model's seed noise in words: `seed noise ±0.8% (pooled over 3 replicate groups)`, or how
 * to measure it when there are no replicates.
 */
export function noiseText(noisePct, groups) {
  if (noisePct === null || noisePct === undefined || groups === 0) {
    return "no replicates yet: run a config with another seed to measure noise";
  }
  const noun = groups === 1 ? "replicate group" : "replicate groups";
  return `seed noise ±${noisePct.toFixed(1)}% (pooled over ${groups} ${noun})`;
}

/** Which way a hyperparameter moves the loss: words for a numeric key's effect (Spearman). */
export function effectText(kind, effect) {
  if (kind !== "numeric" || effect === null || effect === undefined) return "depends on the value";
  if (effect < 0) return "lower loss with larger values";
  if (effect > 0) return "higher loss with larger values";
  return "no trend";
}

/** A probability for people, 2 decimals: `0.34`, `< 0.01` (below 0.005); `–` for none. */
export function chanceText(p) {
  if (p === null || p === undefined) return "–";
  return p < 0.005 ? "< 0.01" : p.toFixed(2);
}

const VERDICT_WORDS = {
  leading: "leading",
  too_early: "too early to tell",
  cannot_win: "can't win",
  may_win: "may win",
};

/**
 * A running job's forecast in a few words, by its verdict: `leading`, `too early to tell`,
 * `may win · p 0.34`, `can't win · p 0.01 · saves 3.2 GPU-h` (the GPU-hours it would still
 * use; left out when unknown).
 */
export function forecastText(forecast) {
  const { verdict, p_beat_best: p, gpu_hours_left: left } = forecast;
  const parts = [VERDICT_WORDS[verdict] ?? verdict];
  if (verdict !== "cannot_win" && verdict !== "may_win") return parts[0];
  if (p !== null && p !== undefined) parts.push(p < 0.005 ? "p < 0.01" : `p ${chanceText(p)}`);
  if (verdict === "cannot_win" && left !== null && left !== undefined) {
    parts.push(`saves ${gpuHoursText(left)} GPU-h`);
  }
  return parts.join(" · ");
}

/** The forecast's range in words: `0.2150 (p10 0.2000, p90 0.2300) at step 1,200`. */
export function forecastRangeText(forecast) {
  return `${lossText(forecast.best_p50)} (p10 ${lossText(forecast.best_p10)}, `
    + `p90 ${lossText(forecast.best_p90)}) at step ${forecast.horizon_step.toLocaleString("en-US")}`;
}

/** A share in 0..1 as a whole percentage: `42%` (`< 1%` for a small non-zero one). */
export function shareText(share) {
  if (share === null || share === undefined) return NA;
  if (share > 0 && share < 0.005) return "< 1%";
  return `${Math.round(share * 100)}%`;
}

/** A config without its seeds, short: `learning_rate=0.001, optim={"beta":0.9}`. */
export function configText(config) {
  const entries = Object.entries(config ?? {});
  if (entries.length === 0) return "(empty config)";
  return entries.map(([key, value]) =>
    `${key}=${value !== null && typeof value === "object" ? JSON.stringify(value) : value}`)
    .join(", ");
}

/** How long a silence has lasted (seconds): `40 s`, `14 min`, `2 h 5 min`, `3 days`. */
export function silenceText(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 48 * 3600) {
    const minutes = Math.floor((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
  }
  return `${Math.floor(s / 86400)} days`;
}

/** A stale run's badge: `no signal for 14 min` (since `lastSeen`, seconds since the epoch). */
export function staleText(lastSeen, now) {
  return `no signal for ${silenceText(now - lastSeen)}`;
}

const STOPPERS = { user: "you", forecast: "auto-stop" };

/** Who asked a run to stop, in words: `you`, `auto-stop`. */
export function stopperText(by) {
  return STOPPERS[by] ?? by;
}

/**
 * A stop request on a card, by the job's status: `stop requested by you` or `stopping: can't
 * win (auto-stop)` while it runs, `stopped by you` or `stopped by auto-stop` once it stopped;
 * null otherwise (it ended some other way: the job view still says it was asked).
 */
export function stopBadgeText(job) {
  const request = job.stop_requested;
  if (!request) return null;
  if (job.status === "stopped") return `stopped by ${stopperText(request.by)}`;
  if (job.status !== "running") return null;
  return request.by === "forecast" ? "stopping: can't win (auto-stop)"
    : `stop requested by ${stopperText(request.by)}`;
}

/** A stop request in full: `by auto-stop at 14:02 — cannot win: p_beat_best 0.004 ...`. */
export function stopRequestText(request, now = Date.now() / 1000) {
  const head = `by ${stopperText(request.by)} at ${timeText(request.at, now)}`;
  return request.reason ? `${head} — ${request.reason}` : head;
}

/** `Stop 2 runs that can't win? They would use 3.5 GPU-h more.` (the hours left out when
 * unknown; `hours` is the sum of those known, `known` how many runs it covers). */
export function stopAllQuestion(count, hours, known) {
  const runs = count === 1 ? "1 run" : `${count.toLocaleString("en-US")} runs`;
  if (known === 0) return `Stop ${runs} that can't win?`;
  const part = known < count ? ` (${known} of them)` : "";
  return `Stop ${runs} that can't win? Saves ${gpuHoursText(hours)} GPU-h${part}.`;
}
