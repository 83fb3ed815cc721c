// The one render path: anything that changes state calls schedule(); the DOM work of every
// change since the last frame happens once, in the next animation frame.

const renderers = []; // [name, fn], run in order each frame
let pending = false;

/** Timings of recent frames' DOM work (ms), for the benchmark and for curious users. */
export const stats = { frames: 0, last: 0, max: 0, recent: [], messages: 0, slow: [] };
const RECENT = 600;
const SLOW_MS = 16; // frames slower than this are kept with where the time went

/** Add a part of the page to the frame: `fn()` runs once per scheduled frame. */
export function registerRenderer(name, fn) {
  renderers.push([name, fn]);
}

function frame() {
  pending = false;
  const start = performance.now();
  const parts = {};
  let mark = start;
  for (const [name, fn] of renderers) {
    try {
      fn();
    } catch (error) {
      console.error(`rendering ${name} failed`, error);
    }
    const now = performance.now();
    parts[name] = now - mark;
    mark = now;
  }
  const took = mark - start;
  if (took > SLOW_MS) {
    stats.slow.push({ at: start, took, parts });
    if (stats.slow.length > 50) stats.slow.shift();
  }
  stats.frames += 1;
  stats.last = took;
  stats.max = Math.max(stats.max, took);
  stats.recent.push(took);
  if (stats.recent.length > RECENT) stats.recent.splice(0, stats.recent.length - RECENT);
}

/** Render at the next animation frame (once, however many times this is called before it). */
export function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(frame);
}
