// The WebSocket to the page's own host, windowed (`/ws?windows=1`): a summary, then the
// answers to what the page asks and the updates of what it watches. After a drop it
// reconnects with backoff; the new connection's summary tells the page to ask again.

const CLOSE_POLICY = 1008; // wrong token or origin: retrying will not help
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];
const OFFLINE_AFTER = 5; // failed attempts in a row before the indicator says offline
const STEADY_MS = 5000; // a connection open this long resets the backoff

/**
 * Keep a live connection. `onMessage(message)` gets every parsed message; `onStatus(status,
 * detail)` hears "live", "reconnecting", "offline", "unauthorized" or "refused"; `diagnose()`
 * is asked, when a first connection fails before it opens, for a reason it will never open
 * (or null). The answer's `send(message)` sends a message on the open connection (false when
 * none is open: the next summary will have the page ask again).
 */
export function connectLive({ onMessage, onStatus, diagnose = async () => null }) {
  let socket = null;
  let failures = 0;
  let timer = null;
  let steadyTimer = null;
  let stopped = false;
  let received = false;

  function url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws?windows=1`;
  }

  function open() {
    clearTimeout(timer);
    timer = null;
    if (stopped || socket) return;
    const ws = new WebSocket(url());
    let opened = false;
    socket = ws;
    ws.onopen = () => {
      opened = true;
      if (!performance.getEntriesByName("monitor:ws-open").length) {
        performance.mark("monitor:ws-open");
      }
      onStatus("live", "");
      steadyTimer = setTimeout(() => {
        failures = 0;
      }, STEADY_MS);
    };
    ws.onmessage = (event) => {
      failures = 0;
      if (!received) {
        received = true;
        performance.mark("monitor:first-message"); // for the benchmark: transfer vs parse
      }
      onMessage(JSON.parse(event.data));
    };
    ws.onclose = (event) => {
      clearTimeout(steadyTimer);
      if (socket !== ws) return;
      socket = null;
      if (stopped) return;
      if (event.code === CLOSE_POLICY) {
        onStatus("unauthorized", event.reason || "refused by the gateway");
        return;
      }
      failures += 1;
      const detail = event.reason || "";
      onStatus(failures > OFFLINE_AFTER || !navigator.onLine ? "offline" : "reconnecting", detail);
      const delay = BACKOFF_MS[Math.min(failures - 1, BACKOFF_MS.length - 1)];
      timer = setTimeout(open, delay);
      if (!opened && failures === 1) explain();
    };
  }

  // A handshake refused before it opened: if the gateway says it always will be, stop.
  async function explain() {
    const reason = await diagnose();
    if (reason === null || stopped) return;
    stopped = true;
    clearTimeout(timer);
    if (socket) socket.close(); // a retry under way is refused as well
    onStatus("refused", reason);
  }

  // Come back at once when the machine is back online or the tab is looked at again.
  const retryNow = () => {
    if (!socket && !stopped && timer !== null) open();
  };
  window.addEventListener("online", retryNow);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") retryNow();
  });

  open();
  return {
    send(message) {
      if (socket === null || socket.readyState !== WebSocket.OPEN) return false;
      socket.send(JSON.stringify(message));
      return true;
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close();
    },
  };
}
