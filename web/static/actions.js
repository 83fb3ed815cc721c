// Archive and restore: the one implementation the cards, the job view and the comparison call.
// A job whose call is on its way is in state.pending (its buttons are disabled) until its next
// update arrives or the call fails; a failure comes back as the text the view shows.

import { archiveJob, restoreJob } from "./api.js";
import { h } from "./dom.js";
import { schedule } from "./render.js";
import { state } from "./state.js";

const ACTIONS = {
  archive: { call: archiveJob, verb: "archive", label: "Archive", testid: "archive-button" },
  restore: { call: restoreJob, verb: "restore", label: "Restore", testid: "restore-button" },
};

/** The `data-action` of a job's button: `"archive"`, or `"restore"` once it is archived. */
export function archiveActionOf(job) {
  return job.archived ? "restore" : "archive";
}

/** Is `action` (a `data-action` value) archive or restore? */
export function isArchiveAction(action) {
  return Object.hasOwn(ACTIONS, action);
}

/** The button of `action` ("archive" or "restore"), with `attrs` (class, disabled, ...). */
export function actionButton(action, attrs = {}) {
  const { label, testid } = ACTIONS[action];
  return h("button", { type: "button", "data-action": action, "data-testid": testid, ...attrs },
    label);
}

/** On a click on an archive or restore button inside `container`: `run(action, button)`. */
export function onArchiveClick(container, run) {
  container.addEventListener("click", (event) => {
    const button = event.target.closest("[data-action]");
    if (button && container.contains(button) && isArchiveAction(button.dataset.action)) {
      run(button.dataset.action, button);
    }
  });
}

/**
 * Archive or restore job `id`. Resolves to null once the gateway took the call (the job stays
 * pending until its update arrives), or to what to show when it failed.
 */
export async function runArchiveAction(action, id) {
  if (state.pending.has(id)) return null; // a second click before the button is disabled
  const { call, verb } = ACTIONS[action];
  state.pending.add(id);
  schedule();
  try {
    await call(id);
    return null;
  } catch (e) {
    state.pending.delete(id);
    schedule();
    return `Could not ${verb} ${id}: ${e.message}`;
  }
}
