// The actions on a job, each with one implementation the cards, the job view and the comparison
// call: archive and restore (one click), stop and "mark failed" (an inline confirmation first:
// the button turns into "Stop run? [Stop] [Cancel]"; never a dialog). A job whose call is on
// its way is in state.pending (its buttons are disabled) until its next update arrives or the
// call fails; a failure comes back as the text the view shows.

import { abandonJob, archiveJob, restoreJob, stopJob } from "./api.js";
import { h } from "./dom.js";
import { jobTitle } from "./format.js";
import { schedule } from "./render.js";
import { state } from "./state.js";

const ARCHIVE = {
  archive: { call: archiveJob, verb: "archive", label: "Archive", testid: "archive-button" },
  restore: { call: restoreJob, verb: "restore", label: "Restore", testid: "restore-button" },
};

/** The actions asked twice: the button's label, the question, and the confirming button. */
const CONFIRMED = {
  stop: {
    call: (id, reason) => stopJob(id, reason),
    verb: "stop",
    label: "Stop",
    testid: "stop-button",
    question: "Stop run?",
    yes: "Stop",
    yesTestid: "stop-confirm",
  },
  abandon: {
    call: (id) => abandonJob(id),
    verb: "mark as failed",
    label: "Mark failed",
    testid: "abandon-button",
    question: "No signal: mark as failed?",
    yes: "Mark failed",
    yesTestid: "abandon-confirm",
  },
};

const YES = { "stop-confirm": "stop", "abandon-confirm": "abandon" };
// Where each view's buttons live, to give the focus back to a button after a Cancel.
const VIEW_ROOTS = { card: "list", detail: "job-detail", compare: "compare-modal" };

/** The reason a stop from the page's "Stop all that can't win" gives. */
export const STOP_ALL_REASON = "can't win (stopped from the page)";

// --- Archive and restore --------------------------------------------------------------------------

/** The `data-action` of a job's button: `"archive"`, or `"restore"` once it is archived. */
export function archiveActionOf(job) {
  return job.archived ? "restore" : "archive";
}

/** The button of `action` ("archive" or "restore"), with `attrs` (class, disabled, ...). */
export function actionButton(action, attrs = {}) {
  const { label, testid } = ARCHIVE[action];
  return h("button", { type: "button", "data-action": action, "data-testid": testid, ...attrs },
    label);
}

/**
 * Archive or restore job `id`. Resolves to null once the gateway took the call (the job stays
 * pending until its update arrives), or to what to show when it failed.
 */
export async function runArchiveAction(action, id) {
  const { call, verb } = ARCHIVE[action];
  return send(id, verb, () => call(id));
}

async function send(id, verb, call) {
  if (state.pending.has(id)) return null; // a second click before the button is disabled
  state.pending.add(id);
  schedule();
  try {
    await call();
    return null;
  } catch (e) {
    state.pending.delete(id);
    schedule();
    return `Could not ${verb} ${id}: ${e.message}`;
  }
}

// --- Stop and mark failed -------------------------------------------------------------------------

/** Can `job` be asked to stop? Running, and not asked yet (a request cannot be taken back). */
export function canStop(job) {
  return job.status === "running" && !job.stop_requested;
}

/** Can `job` be marked failed? Running, but silent for too long (stale). */
export function canAbandon(job) {
  return job.status === "running" && Boolean(job.stale);
}

/** Is the inline confirmation of `action` on `key` (a job id) open in `view`? */
export function isConfirming(action, key, view) {
  const open = state.confirming;
  return open !== null && open.action === action && open.key === key && open.view === view;
}

/**
 * The control of `action` ("stop" or "abandon") for `job` in `view` ("card", "detail",
 * "compare"): its button, or, while it is being confirmed there, the confirmation (the same
 * element from frame to frame, so what is typed in it and the focus stay).
 */
export function confirmedControl(action, job, view, attrs = {}) {
  if (isConfirming(action, job.id, view)) return state.confirming.node;
  return fillControl(newControl(action, attrs), job);
}

/** A new button for `action` ("stop" or "abandon"), for {@link fillControl} to point at a job. */
export function newControl(action, attrs = {}) {
  const { label, testid } = CONFIRMED[action];
  return h("button", { type: "button", "data-action": action, "data-testid": testid, ...attrs },
    label);
}

/** Point `button` (from {@link newControl}) at `job`; the button. */
export function fillControl(button, job) {
  const { label } = CONFIRMED[button.dataset.action];
  button.dataset.jobId = job.id;
  button.setAttribute("aria-label", `${label} ${jobTitle(job)}`);
  button.disabled = state.pending.has(job.id);
  return button;
}

function confirmation({ question, yes, yesTestid, action, label, withReason }) {
  const reason = withReason ? h("input", { type: "text", class: "confirm-reason",
    maxlength: 1024, placeholder: "reason (optional)", "aria-label": "Why (optional)" }) : null;
  const node = h("span", { class: "confirm", role: "group", "aria-label": label,
    "data-action": "confirm" },
    h("span", { class: "confirm-question" }, question),
    reason,
    h("button", { type: "button", class: "small danger", "data-action": action,
      "data-testid": yesTestid }, yes),
    h("button", { type: "button", class: "small", "data-action": "cancel",
      "data-testid": "confirm-cancel" }, "Cancel"));
  // Enter in the reason confirms; Escape cancels (and leaves the dialog it is in open).
  node.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      node.querySelector('[data-action="cancel"]').click();
    } else if (event.key === "Enter" && event.target === reason) {
      event.preventDefault();
      node.querySelector(`[data-action="${action}"]`).click();
    }
  });
  return node;
}

/** Open the inline confirmation of `action` (closing any other): `record` says where. */
function openConfirm(record) {
  state.confirming = record;
  schedule();
  // After the frame that shows it: the reason if there is one, else the confirming button.
  requestAnimationFrame(() => {
    if (state.confirming !== record) return;
    const first = record.node.querySelector("input, button");
    first?.focus();
  });
}

/** Close the open confirmation and give the focus back to the button it came from. */
function closeConfirm() {
  const record = state.confirming;
  if (record === null) return;
  const hadFocus = record.node.contains(document.activeElement);
  state.confirming = null;
  schedule();
  if (!hadFocus) return;
  requestAnimationFrame(() => document.querySelector(record.home)?.focus());
}

function askJob(action, id, view) {
  const job = state.jobs.get(id);
  const spec = CONFIRMED[action];
  const root = VIEW_ROOTS[view];
  openConfirm({
    action,
    key: id,
    view,
    home: `#${root} button[data-action="${action}"][data-job-id="${CSS.escape(id)}"]`,
    node: confirmation({ question: spec.question, yes: spec.yes, yesTestid: spec.yesTestid,
      action: `${action}-confirm`, label: `${spec.label} ${job ? jobTitle(job) : id}`,
      withReason: action === "stop" && view === "detail" }),
  });
}

async function confirmJob(action, id) {
  const record = state.confirming;
  const reason = record?.node.querySelector(".confirm-reason")?.value.trim() || undefined;
  const { call, verb } = CONFIRMED[action];
  const failed = await send(id, verb, () => call(id, reason));
  if (state.confirming === record) closeConfirm();
  return failed;
}

const JOB_ACTIONS = new Set([...Object.keys(ARCHIVE), ...Object.keys(CONFIRMED),
  ...Object.keys(YES), "cancel"]);

/** Is `action` (a `data-action` value) one of a job's actions? */
export function isJobAction(action) {
  return JOB_ACTIONS.has(action);
}

/**
 * Run a click on a job's `action` button for job `id` in `view`: archive or restore at once,
 * open or cancel a confirmation, or do what was confirmed. Resolves to null, or to what to show
 * when the gateway refused it.
 */
export async function runJobAction(action, id, view) {
  if (Object.hasOwn(ARCHIVE, action)) return runArchiveAction(action, id);
  if (Object.hasOwn(CONFIRMED, action)) askJob(action, id, view);
  else if (Object.hasOwn(YES, action)) return confirmJob(YES[action], id);
  else if (action === "cancel") closeConfirm();
  return null;
}

/** On a click on a job's action inside `container`: `run(action, button)`. */
export function onJobActionClick(container, run) {
  container.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button && container.contains(button) && isJobAction(button.dataset.action)) {
      run(button.dataset.action, button);
    }
  });
}

// --- Stop all that can't win (a model's section) --------------------------------------------------

/**
 * The runs of `ids` that "Stop all that can't win" would stop: running, not silent, not asked
 * to stop yet, and told `cannot_win` by their forecast. None while an advisor stops them
 * itself (auto-stop on).
 */
export function cannotWinIds(ids) {
  if (state.advisor === null || (state.advisor.running && state.advisor.autostop)) return [];
  return ids.filter((id) => {
    const job = state.jobs.get(id);
    return canStop(job) && !job.stale && job.forecast?.verdict === "cannot_win";
  });
}

/** The GPU-hours the runs of `ids` would still use: `{hours, known}` (how many said). */
export function hoursLeft(ids) {
  let hours = 0;
  let known = 0;
  for (const id of ids) {
    const left = state.jobs.get(id).forecast?.gpu_hours_left;
    if (left !== null && left !== undefined) {
      hours += left;
      known += 1;
    }
  }
  return { hours, known };
}

/** The "Stop all that can't win" control of the section of `modelName`: button or confirmation. */
export function stopAllControl(modelName, label) {
  if (isConfirming("stop-all", modelName, "group")) return state.confirming.node;
  return h("button", { type: "button", class: "small danger-outline", "data-action": "stop-all",
    "data-testid": "stop-all-button", "aria-label": `Stop all that can't win: ${label}` },
  "Stop all that can't win");
}

/** Ask to stop the runs of the section of `modelName` that can't win. */
export function askStopAll(modelName, label) {
  const model = modelName === null ? "" : modelName;
  openConfirm({
    action: "stop-all",
    key: modelName,
    view: "group",
    home: `.group[data-model="${CSS.escape(model)}"] button[data-action="stop-all"]`,
    node: confirmation({ question: "", yes: "Stop", yesTestid: "stop-all-confirm",
      action: "stop-all-confirm", label: `Stop the runs of ${label} that can't win`,
      withReason: false }),
  });
}

/**
 * Stop `ids` (those that can't win, as the confirmation counted them), each with the page's
 * reason. Resolves to what to show for those the gateway refused, or null.
 */
export async function stopAll(ids) {
  closeConfirm();
  const failed = await Promise.all(ids.map((id) =>
    send(id, "stop", () => stopJob(id, STOP_ALL_REASON))));
  const said = failed.filter(Boolean);
  return said.length ? said.join("; ") : null;
}
