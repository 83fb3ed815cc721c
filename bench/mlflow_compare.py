"""The ``mlflow`` client against this gateway and against MLflow's own server, in one run.

    .venv/bin/python -m bench.mlflow_compare [--quick] [--calls N] [--values K] [--no-install]

The same trainer code, unchanged but for ``MLFLOW_TRACKING_URI``, logs to each server
(docs/mlflow.md):

1. **calls**: one run, ``calls`` synchronous ``mlflow.log_metric("loss", v, step=i)`` calls,
   as fast as the trainer can go; calls/s is over those calls.
2. **visibility**: a second run logs ``values`` eval losses with ``mlflow.log_metric``, one
   every ``PACE_S`` at most, each a new best. A reader in a process of its own waits for each:
   on this gateway a ``/ws`` subscriber (pushed, as the page is); on MLflow's server its own
   API (``MlflowClient.search_runs``, polled with a ``bench.peers.POLL_S`` sleep between polls).
   Delay = the reader's ``time.time()`` when it first sees the value - the trainer's just
   before the call (so the call's own time counts).

Both trainers use the same ``mlflow`` client: the full ``mlflow`` package in the peers' venv
(``bench.peers``, under ``~/.cache/monitor-bench-peers``), which also runs ``mlflow server``
on SQLite. Without it (``--quick`` or ``--no-install`` never install it) only this gateway is
measured, with the project's own ``mlflow-skinny``, and the report says the comparison did not
run. This file also runs, by path, inside that venv (``--child``): its top level imports only
the standard library.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CALLS, QUICK_CALLS = 2000, 200
VALUES, QUICK_VALUES = 200, 20
PACE_S = 0.02  # one eval loss every 20 ms at most
MODEL = "bench/MLflow-7B"
READY_S = 120.0
WAIT_AFTER_S = 10.0  # what the reader gets, after the last call, to see the last value
CHILD_TIMEOUT_S = 900.0


# ============================== child side (any venv with mlflow; stdlib at import) ===========


def child_main(cfg: dict[str, Any], result_path: str) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    from bench.peers import _pct, _reader, best_value

    mlflow.set_tracking_uri(cfg["uri"])
    experiment_id = mlflow.set_experiment(cfg["experiment"]).experiment_id
    out: dict[str, Any] = {}

    with mlflow.start_run(run_name="calls"):
        mlflow.log_param("model_name", MODEL)
        t0 = time.perf_counter()
        for i in range(cfg["calls"]):
            mlflow.log_metric("loss", 2.0 - i * 1e-5, step=i)
        out["calls"] = {"calls": cfg["calls"], "seconds": time.perf_counter() - t0}

    targets = [best_value(k) for k in range(1, cfg["values"] + 1)]
    ctx = multiprocessing.get_context("spawn")
    ready, stop, queue = ctx.Event(), ctx.Event(), ctx.Queue()
    progress = ctx.Value("i", 0)
    reader_cfg = ({"ws_url": cfg["ws_url"]} if cfg["reader"] == "monitor"
                  else {"uri": cfg["uri"], "experiment_id": experiment_id})
    reader = ctx.Process(target=_reader, args=(cfg["reader"], reader_cfg, targets, ready, stop,
                                               queue, progress))
    reader.start()
    if not ready.wait(READY_S):
        stop.set()
        reader.kill()
        raise RuntimeError(f"the reader was not ready within {READY_S:.0f}s")
    called: list[float] = []
    with mlflow.start_run(run_name="visibility"):
        mlflow.log_param("model_name", MODEL)
        t0 = time.perf_counter()
        for k, value in enumerate(targets):
            delay = t0 + k * PACE_S - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            called.append(time.time())
            mlflow.log_metric("eval_loss", value, step=k)
        deadline = time.time() + WAIT_AFTER_S
        while progress.value < len(targets) and time.time() < deadline:
            time.sleep(0.01)
    stop.set()
    got = queue.get(timeout=60)
    reader.join(30)
    lat = [got["seen"][i] - called[i] for i in range(len(targets)) if i in got["seen"]]
    out["visible"] = {"values": len(targets), "seen": len(lat),
                      "p50_ms": _pct(lat, 0.5) * 1e3 if lat else None,
                      "p95_ms": _pct(lat, 0.95) * 1e3 if lat else None,
                      "max_ms": max(lat) * 1e3 if lat else None}
    Path(result_path).write_text(json.dumps(out))


# ============================== parent side (the project's venv) ==============================


def run_child(python: str, cfg: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    result = work / f"{name}-result.json"
    log = work / f"{name}-child.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
               MLFLOW_DISABLE_TELEMETRY="true")
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_")}
    cmd = [python, str(Path(__file__).resolve()), "--child", json.dumps(cfg), str(result)]
    with open(log, "wb") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work,
                              timeout=CHILD_TIMEOUT_S, check=False)
    if done.returncode or not result.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the {name} trainer exited with {done.returncode}:\n{tail}")
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def against_gateway(python: str, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """``monitor worker`` and ``monitor gateway`` on a fresh prefix, logged to through MLflow."""
    from bench.peers import monitor_stack

    with monitor_stack(work, "mlflow") as stack:
        base = f"127.0.0.1:{stack['port']}"
        return run_child(python, dict(cfg, uri=f"http://{base}", reader="monitor",
                                      ws_url=f"ws://{base}/ws"), work, "gateway")


def against_mlflow(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """``mlflow server`` on SQLite, in the peers' venv."""
    from bench.peers import mlflow_server, venv_python

    with mlflow_server(work) as uri:
        return run_child(str(venv_python("mlflow")), dict(cfg, uri=uri, reader="mlflow"),
                         work, "mlflow")


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "–"


def row(name: str, result: dict[str, Any]) -> list[str]:
    calls, vis = result["calls"], result["visible"]
    rate = calls["calls"] / calls["seconds"]
    return [name, f"{rate:,.0f}", f"{calls['seconds'] / calls['calls'] * 1e3:.2f}",
            f"{vis['seen']}/{vis['values']}", _ms(vis["p50_ms"]), _ms(vis["p95_ms"]),
            _ms(vis["max_ms"])]


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(json.loads(sys.argv[2]), sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.mlflow_compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_CALLS} calls and {QUICK_VALUES} values; never installs "
                             "MLflow's server")
    parser.add_argument("--calls", type=int, default=None,
                        help=f"log_metric calls (default {CALLS:,})")
    parser.add_argument("--values", type=int, default=None,
                        help=f"eval losses watched (default {VALUES})")
    parser.add_argument("--no-install", action="store_true",
                        help="without MLflow's server installed, measure this gateway only")
    args = parser.parse_args(argv)

    import redis

    from bench.common import headline, machine_line, redis_url, table
    from bench.peers import POLL_S, ensure_installed, venv_python

    cfg = {"calls": args.calls or (QUICK_CALLS if args.quick else CALLS),
           "values": args.values or (QUICK_VALUES if args.quick else VALUES),
           "experiment": f"bench-{os.getpid()}"}
    version, note = ensure_installed("mlflow", install=not (args.quick or args.no_install))
    # One client for both servers when MLflow's is there; else the project's mlflow-skinny.
    python = str(venv_python("mlflow")) if version else sys.executable
    work = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    results: dict[str, dict[str, Any]] = {"gateway": against_gateway(python, cfg, work)}
    if version:
        results["mlflow"] = against_mlflow(cfg, work)

    client = redis.Redis.from_url(redis_url())
    print("## MLflow's client: this gateway vs MLflow's own server\n")
    print(machine_line(client) + "\n")
    client.close()
    who = f"mlflow {version}" if version else "the project's mlflow-skinny"
    print(f"One trainer process, the `mlflow` client ({who}), "
          f"`MLFLOW_TRACKING_URI` pointed at each server in turn: {cfg['calls']:,} synchronous "
          f"`mlflow.log_metric` calls, then {cfg['values']} eval losses, one every "
          f"{PACE_S * 1e3:.0f} ms, each a new best, watched by a reader process: on the "
          f"gateway a `/ws` subscriber (pushed), on MLflow's server `MlflowClient.search_runs` "
          f"polled with a {POLL_S * 1e3:.0f} ms sleep. Visible after = the reader first sees "
          f"the value − just before the call. `monitor worker` and `monitor gateway` run as "
          f"processes of their own; `mlflow server` on SQLite, as it starts by "
          f"default.\n")
    rows = [row("this gateway (`/api/2.0/mlflow`, seen on `/ws`)", results["gateway"])]
    if "mlflow" in results:
        rows.append(row(f"`mlflow server` {version} (SQLite, seen through its API)",
                        results["mlflow"]))
    print(table(["server", "log_metric calls/s", "ms per call", "seen", "visible after p50 ms",
                 "p95 ms", "max ms"], rows, align=["l", "r", "r", "r", "r", "r", "r"]))
    ours = results["gateway"]
    ours_rate = ours["calls"]["calls"] / ours["calls"]["seconds"]
    if "mlflow" in results:
        theirs = results["mlflow"]
        rate = theirs["calls"]["calls"] / theirs["calls"]["seconds"]
        print(f"\n`log_metric` is {ours_rate / rate:.1f}× as fast against this gateway; a value "
              f"is visible after {_ms(ours['visible']['p50_ms'])} ms (p50) here, "
              f"{_ms(theirs['visible']['p50_ms'])} ms through MLflow's API.")
        headline("mlflow.log_metric calls/s: this gateway vs mlflow server",
                 f"{ours_rate:,.0f} vs {rate:,.0f}")
        headline("MLflow-logged value visible, p50: /ws vs MLflow's API",
                 f"{_ms(ours['visible']['p50_ms'])} ms vs {_ms(theirs['visible']['p50_ms'])} ms")
    else:
        print(f"\nRan without the comparison: MLflow's server is {note or 'not installed'} "
              f"(`python -m bench.mlflow_compare` without `--quick` installs it into the "
              f"peers' venv).")
        headline("mlflow.log_metric calls/s against this gateway", f"{ours_rate:,.0f}",
                 verdict="no comparison (mlflow server not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
