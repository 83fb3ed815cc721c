// The one fetch wrapper: same-origin JSON calls to the gateway, one error type.
// The token (if the gateway has one) travels in the HttpOnly cookie `/?token=...` set.

export const TOKEN_MESSAGE =
  "This monitor needs a token: open /?token=<your token> once and the page remembers it.";

/** A failed call: `status` is the HTTP status, 0 when the gateway could not be reached. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
  }
}

let onUnauthorized = () => {};

/** Who to tell when a call answers 401 (the page shows the token message). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/** `GET` (or `method`) `path`; the parsed JSON answer, or an {@link ApiError}. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, credentials: "same-origin", cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The monitor's gateway cannot be reached.");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.status === 401) {
    onUnauthorized();
    throw new ApiError(401, TOKEN_MESSAGE);
  }
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
    throw new ApiError(response.status, detail || `HTTP ${response.status}`);
  }
  return data;
}

/** The comparison of `ids` (2 to 5 job ids, in column order). */
export function compareUrl(ids, format) {
  const query = `ids=${ids.map(encodeURIComponent).join(",")}`;
  return `/api/compare?${query}${format ? `&format=${format}` : ""}`;
}

export const getComparison = (ids) => api(compareUrl(ids));
export const getMetrics = (id) => api(`/api/jobs/${encodeURIComponent(id)}/metrics`);
export const getJob = (id) => api(`/api/jobs/${encodeURIComponent(id)}`);
/** One model's insights (`modelName` exact; null: the jobs that never named a model). */
export const getInsights = (modelName) =>
  api(modelName === null ? "/api/insights" : `/api/insights?model=${encodeURIComponent(modelName)}`);
export const archiveJob = (id) =>
  api(`/api/jobs/${encodeURIComponent(id)}/archive`, { method: "POST" });
export const restoreJob = (id) =>
  api(`/api/jobs/${encodeURIComponent(id)}/restore`, { method: "POST" });
/** Ask job `id`'s trainer to stop (`reason`: optional words kept with the request). */
export const stopJob = (id, reason) =>
  api(`/api/jobs/${encodeURIComponent(id)}/stop`,
    { method: "POST", body: reason ? { reason } : undefined });
/** End a running job whose trainer went silent, as failed. */
export const abandonJob = (id) =>
  api(`/api/jobs/${encodeURIComponent(id)}/abandon`, { method: "POST" });
/** Whether an advisor runs and whether it stops runs that cannot win. */
export const getAdvisor = () => api("/api/advisor");

export const REFUSED_ORIGIN_MESSAGE =
  "This page's address is not allowed by the monitor (MONITOR_ALLOWED_ORIGINS).";

/**
 * Why the WebSocket cannot open, when the gateway can say: browsers hide a refused handshake,
 * so ask whether this page's origin is allowed. A reason, or null (unknown: keep trying).
 */
export async function refusalReason() {
  try {
    const answer = await api(`/api/whoami?origin=${encodeURIComponent(location.origin)}`);
    return answer.origin_allowed ? null : REFUSED_ORIGIN_MESSAGE;
  } catch {
    return null; // unreachable, or a token is missing (the page says that itself)
  }
}
