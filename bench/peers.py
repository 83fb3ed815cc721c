"""Peer comparison: the same trainer workload logged through MLflow, Trackio, Aim and this project.

    .venv/bin/python -m bench.peers [--quick] [--steps N] [--runs R] [--no-install] [--only T,...]

Workload, the same for every tool, on this machine, in one invocation. A trainer process
logs ``runs`` runs of one model, ``steps`` steps each; one *event* is one step's metrics,
``loss`` and ``eval_loss``, in one log call:

1. **per call**: one log call per event, as fast as the trainer can go; events/s is over the
   calls, and "until flushed" also counts the time until the tool says the data is stored
   (``mlflow`` calls are synchronous; ``trackio.finish()``; ``run.flush()``; ``Run.close()``).
2. **batched**, where the API allows it (``MlflowClient.log_batch``, 500 steps = 1,000
   metrics per call, MLflow's limit).
3. **visibility**: two more runs of ``steps`` steps, ``loss`` every step and ``eval_loss``
   every ``SAMPLE_EVERY``th step, each a new best over all runs: the first *paced*, one step
   every ``PACE_S`` at most (a fast trainer; a tool whose call takes longer simply runs slower),
   the second a *burst*, as fast as the trainer can log (so what is measured includes the
   queue the burst builds up in the tool). A reader in a process of its own looks for the
   runs' minimum eval loss (MLflow: ``MlflowClient.search_runs``; Trackio: its SQLite storage,
   ``SQLiteStorage``; Aim: ``Repo.query_metrics``, with ``aim up`` running, since only it
   keeps the index those queries read up to date while runs are open; this project: a WebSocket client on
   ``monitor gateway``, pushed). Latency of a sample = the reader's ``time.time()`` when it
   first sees the minimum at or below that value - the trainer's ``time.time()`` just before
   the log call (so a slow synchronous call counts too). Readers that poll sleep ``POLL_S``
   between polls.

The peers are installed with pip into venvs of their own under ``~/.cache/monitor-bench-peers``
(never into the project's environment); every server started (``mlflow server``, ``monitor
worker``, ``monitor gateway``) is stopped by its pid (MLflow's in its own process group, which
is signalled through that pid, so its uvicorn workers stop too). Temporary data goes to a fresh
directory under /tmp, removed at the end; Redis keys go under a fresh ``bench:<random>:`` prefix,
deleted at the end.

This file also runs, by path, inside the peers' venvs (``python bench/peers.py --child ...``):
its top level imports only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STEPS, QUICK_STEPS = 2000, 100
RUNS, QUICK_RUNS = 3, 1
SAMPLE_EVERY, QUICK_SAMPLE_EVERY = 50, 25
POLL_S = 0.01
BATCH_STEPS = 500
PEERS_HOME = Path(os.environ.get("MONITOR_BENCH_PEERS_HOME",
                                 Path.home() / ".cache" / "monitor-bench-peers"))
# tool -> (venv folder, pip requirements, import name)
VENVS = {
    "mlflow": ("venv", ["mlflow", "trackio"], "mlflow"),
    "trackio": ("venv", ["mlflow", "trackio"], "trackio"),
    "aim": ("aim-venv", ["aim"], "aim"),
}
MODEL = "bench/Peers-7B"
CHILD_TIMEOUT = 900.0
WAIT_AFTER = 10.0  # seconds the reader gets, after a run's last call, to see its last value
PACE_S = 0.005  # the paced visibility run: one step every 5 ms (200 steps/s) at most
READER_READY_S = 120.0
SERVER_READY_S = 120.0  # mlflow server takes 16-20 s to answer on a slow 2-core host
BAR_VISIBLE_MS = 10.0  # a WebSocket subscriber sees a new value, p95
BAR_DASHBOARD_FACTOR = 100.0  # that many times below the fastest peer dashboard's refresh


def eval_value(run: int, step: int) -> float:
    """eval_loss of the per-call and batched runs: all above 1.5, never a new best later."""
    return 1.5 + ((run * 7919 + step * 104729) % 1000) / 1000


def best_value(k: int) -> float:
    """The k-th new best of the visibility run (k >= 1): 1.0, 0.999, ... always lower."""
    return round(1.0 - k * 1e-3, 6)


# ============================== child side (any venv, stdlib only at import) ==================


def _reader(tool: str, cfg: dict[str, Any], targets: list[float], ready: Any, stop: Any,
            out: Any, progress: Any) -> None:
    """Reader process: poll (or, for this project, listen) for the runs' minimum eval loss.

    ``progress`` (a shared int) is the number of targets seen so far, so that the trainer
    need not wait longer than it takes.
    """
    seen: dict[int, float] = {}
    polls = 0

    def note(minimum: float | None) -> None:
        if minimum is None:
            return
        now = time.time()
        for i, t in enumerate(targets):
            if i not in seen and minimum <= t + 1e-9:
                seen[i] = now
        progress.value = len(seen)

    if tool == "monitor":
        import asyncio

        import orjson
        from websockets.asyncio.client import connect

        async def listen() -> None:
            nonlocal polls
            best: dict[str, float] = {}
            async with connect(cfg["ws_url"], proxy=None, max_size=None) as ws:
                while not stop.is_set():
                    try:
                        message = await asyncio.wait_for(ws.recv(), 0.2)
                    except TimeoutError:
                        continue
                    data = orjson.loads(message)
                    for job in data["jobs"]:
                        if job.get("best_eval_loss") is not None:
                            best[job["id"]] = job["best_eval_loss"]
                    polls += 1
                    note(min(best.values()) if best else None)
                    if data["type"] == "snapshot":
                        ready.set()

        asyncio.run(listen())
    else:
        poll = _poller(tool, cfg)
        poll()
        ready.set()
        while not stop.is_set():
            note(poll())
            polls += 1
            time.sleep(POLL_S)
    out.put({"seen": seen, "polls": polls})


def _poller(tool: str, cfg: dict[str, Any]) -> Any:
    if tool == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(cfg["uri"])

        def poll_mlflow() -> float | None:
            runs = client.search_runs([cfg["experiment_id"]], max_results=100)
            values = [r.data.metrics["eval_loss"] for r in runs if "eval_loss" in r.data.metrics]
            return min(values) if values else None
        return poll_mlflow
    if tool == "trackio":
        from trackio.sqlite_storage import SQLiteStorage

        def poll_trackio() -> float | None:
            values = []
            for run in SQLiteStorage.get_runs(cfg["project"]):
                last = SQLiteStorage.get_max_step_for_run(cfg["project"], run)
                if last is None:
                    continue
                rows = SQLiteStorage.get_metric_values(cfg["project"], run, "eval_loss",
                                                       around_step=last, window=cfg["every"])
                values += [r["value"] for r in rows if r.get("value") is not None]
            return min(values) if values else None
        return poll_trackio
    if tool == "aim":
        from aim import Repo

        # Repo's queries read the index that `aim up` keeps (bench_aim runs it); one Repo,
        # queried afresh each poll, sees new values.
        repo = Repo(cfg["repo"])

        def poll_aim() -> float | None:
            values = []
            for seq in repo.query_metrics("metric.name == 'eval_loss'", report_mode=0):
                _, vals = seq.values.sparse_numpy()
                if len(vals):
                    values.append(float(vals.min()))
            return min(values) if values else None
        return poll_aim
    raise ValueError(tool)


class Logger:
    """One tool's trainer side: open a run, log a step, log a batch, close the run."""

    batched = False

    def open(self, name: str) -> None: ...
    def log(self, step: int, loss: float, eval_loss: float | None) -> None: ...
    def batch(self, run: int, first: int, last: int) -> None:
        raise TypeError(f"{type(self).__name__} has no batch API (batched is False)")
    def close(self) -> None: ...


class MlflowLogger(Logger):
    batched = True

    def __init__(self, cfg: dict[str, Any]) -> None:
        import mlflow
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self.mlflow, self.Metric = mlflow, Metric
        mlflow.set_tracking_uri(cfg["uri"])
        mlflow.set_experiment(experiment_id=cfg["experiment_id"])
        self.client = MlflowClient(cfg["uri"])
        self.run_id = ""

    def open(self, name: str) -> None:
        self.run_id = self.mlflow.start_run(run_name=name, tags={"model": MODEL}).info.run_id

    def log(self, step: int, loss: float, eval_loss: float | None) -> None:
        metrics = {"loss": loss} if eval_loss is None else {"loss": loss, "eval_loss": eval_loss}
        self.mlflow.log_metrics(metrics, step=step)

    def batch(self, run: int, first: int, last: int) -> None:
        ts = int(time.time() * 1000)
        metrics = []
        for s in range(first, last + 1):
            metrics.append(self.Metric("loss", 2.0 - s * 1e-4, ts, s))
            metrics.append(self.Metric("eval_loss", eval_value(run, s), ts, s))
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioLogger(Logger):
    def __init__(self, cfg: dict[str, Any]) -> None:
        import trackio

        self.trackio, self.project = trackio, cfg["project"]

    def open(self, name: str) -> None:
        self.trackio.init(project=self.project, name=name, config={"model": MODEL},
                          auto_log_gpu=False, auto_log_cpu=False)

    def log(self, step: int, loss: float, eval_loss: float | None) -> None:
        metrics = {"loss": loss} if eval_loss is None else {"loss": loss, "eval_loss": eval_loss}
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        self.trackio.finish()


class AimLogger(Logger):
    def __init__(self, cfg: dict[str, Any]) -> None:
        import aim

        self.aim, self.repo, self.run = aim, cfg["repo"], None

    def open(self, name: str) -> None:
        self.run = self.aim.Run(repo=self.repo, experiment=MODEL, system_tracking_interval=None)
        self.run.name = name

    def log(self, step: int, loss: float, eval_loss: float | None) -> None:
        assert self.run is not None
        self.run.track(loss, name="loss", step=step)
        if eval_loss is not None:
            self.run.track(eval_loss, name="eval_loss", step=step)

    def close(self) -> None:
        assert self.run is not None
        self.run.close()


class MonitorLogger(Logger):
    def __init__(self, cfg: dict[str, Any]) -> None:
        from monitor.sdk import start_run

        self.start_run, self.cfg, self.run = start_run, cfg, None

    def open(self, name: str) -> None:
        self.run = self.start_run(model_name=MODEL, job_id=name, total_epochs=1,
                                  redis_url=self.cfg["redis_url"], prefix=self.cfg["prefix"],
                                  buffer_size=STEPS * 10, flush_timeout=60.0)

    def log(self, step: int, loss: float, eval_loss: float | None) -> None:
        assert self.run is not None
        if eval_loss is None:
            self.run.log(epoch=1, step=step, loss=loss)
        else:
            self.run.log(epoch=1, step=step, loss=loss, eval_loss=eval_loss)

    def close(self) -> None:
        assert self.run is not None
        self.run.flush(60.0)
        self.run.close()


LOGGERS = {"mlflow": MlflowLogger, "trackio": TrackioLogger, "aim": AimLogger,
           "monitor": MonitorLogger}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def child_main(tool: str, cfg: dict[str, Any], result_path: str) -> None:
    steps, runs, tag = cfg["steps"], cfg["runs"], cfg["tag"]
    logger = LOGGERS[tool](cfg)
    out: dict[str, Any] = {"tool": tool}

    # 1. per call
    calls_s = total_s = 0.0
    for r in range(runs):
        logger.open(f"{tag}-percall-{r}")
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            logger.log(s, 2.0 - s * 1e-4, eval_value(r, s))
        t1 = time.perf_counter()
        logger.close()
        calls_s += t1 - t0
        total_s += time.perf_counter() - t0
    out["percall"] = {"events": steps * runs, "calls_s": calls_s, "flushed_s": total_s}

    # 2. batched
    if logger.batched:
        batch_s = 0.0
        for r in range(runs):
            logger.open(f"{tag}-batched-{r}")
            t0 = time.perf_counter()
            for first in range(1, steps + 1, BATCH_STEPS):
                logger.batch(r, first, min(steps, first + BATCH_STEPS - 1))
            batch_s += time.perf_counter() - t0
            logger.close()
        out["batched"] = {"events": steps * runs, "seconds": batch_s,
                          "per_call": BATCH_STEPS}

    # 3. visibility: one paced run, then one burst run, both watched by one reader
    every = cfg["every"]
    n = steps // every
    targets = [best_value(k) for k in range(1, 2 * n + 1)]
    ctx = multiprocessing.get_context("spawn")
    ready, stop, queue = ctx.Event(), ctx.Event(), ctx.Queue()
    progress = ctx.Value("i", 0)
    reader = ctx.Process(target=_reader,
                         args=(tool, cfg, targets, ready, stop, queue, progress))
    reader.start()
    if not ready.wait(READER_READY_S):
        stop.set()
        reader.join(10)
        if reader.is_alive():
            reader.kill()
        raise RuntimeError(f"the reader was not ready within {READER_READY_S:.0f}s")
    called: list[float] = []
    timing: dict[str, float] = {}
    for phase, pace, first in (("paced", PACE_S, 0), ("burst", 0.0, n)):
        logger.open(f"{tag}-visible-{phase}")
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            if pace:
                delay = t0 + (s - 1) * pace - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if s % every == 0:
                called.append(time.time())
                logger.log(s, 2.0 - s * 1e-4, targets[first + s // every - 1])
            else:
                logger.log(s, 2.0 - s * 1e-4, None)
        timing[phase] = time.perf_counter() - t0
        # The run stays open, as a live one is, until the reader has seen its last value.
        deadline = time.time() + WAIT_AFTER
        while progress.value < first + n and time.time() < deadline:
            time.sleep(0.01)
        logger.close()
    stop.set()
    got = queue.get(timeout=60)
    reader.join(30)
    seen = {int(k): v for k, v in got["seen"].items()}
    for phase, first in (("paced", 0), ("burst", n)):
        lat = [seen[i] - called[i] for i in range(first, first + n) if i in seen]
        out[f"visible_{phase}"] = {
            "samples": n, "seen": len(lat), "polls": got["polls"],
            "p50_ms": _pct(lat, 0.5) * 1e3 if lat else None,
            "p95_ms": _pct(lat, 0.95) * 1e3 if lat else None,
            "max_ms": max(lat) * 1e3 if lat else None,
            "steps_per_s": steps / timing[phase]}
    Path(result_path).write_text(json.dumps(out))


# ============================== parent side (the project's venv) ==============================


@contextlib.contextmanager
def _server(cmd: list[str], log: Path, ready_url: str, work: Path,
            stop: int = signal.SIGTERM) -> Iterator[None]:
    """A peer's server in a process group of its own, until ``ready_url`` answers 200; on the
    way out the group is signalled through the server's pid (so its workers stop too)."""
    from bench.common import wait_http_ok

    with open(log, "wb") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=work,
                                  start_new_session=True)
    try:
        wait_http_ok(ready_url, server, timeout=SERVER_READY_S)
        yield
    finally:
        _stop_group(server, stop)


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process group led by ``proc`` (started with start_new_session), then KILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # children left in the group after the leader exited
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def venv_python(tool: str) -> Path:
    return PEERS_HOME / VENVS[tool][0] / "bin" / "python"


def package_version(tool: str) -> str | None:
    python = venv_python(tool)
    if not python.exists():
        return None
    code = f"import importlib.metadata as m; print(m.version('{VENVS[tool][2]}'))"
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_installed(tool: str, install: bool) -> tuple[str | None, str]:
    """(version, note): installs the peer into its own venv if missing and ``install``."""
    version = package_version(tool)
    if version or not install:
        return version, "" if version else "not installed (install skipped)"
    folder, reqs, _ = VENVS[tool]
    venv = PEERS_HOME / folder
    PEERS_HOME.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run(["python3.11", "-m", "venv", "--clear", str(venv)], check=True)
    log = PEERS_HOME / f"install-{tool}.log"
    with open(log, "wb") as f:
        r = subprocess.run([str(venv / "bin" / "pip"), "install", *reqs], stdout=f,
                           stderr=subprocess.STDOUT, check=False)
    if r.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        return None, f"pip install failed on Python 3.11 ({' '.join(tail)[:160]}; see {log})"
    return package_version(tool), ""


def run_child(python: str, tool: str, cfg: dict[str, Any], work: Path,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    result = work / f"{tool}-result.json"
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, json.dumps(cfg), str(result)]
    child_env = dict(env or os.environ)
    child_env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    log = work / f"{tool}-child.log"
    with open(log, "wb") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env,
                           timeout=CHILD_TIMEOUT, cwd=work, check=False)
    if r.returncode or not result.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{tool} trainer exited with {r.returncode}:\n{tail}")
    data: dict[str, Any] = json.loads(result.read_text())
    return data


@contextlib.contextmanager
def mlflow_server(work: Path) -> Iterator[str]:
    """``mlflow server`` of the peers' venv on SQLite in ``work``, until the block ends; its URI."""
    from bench.common import free_port

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    store = work / "mlflow"
    store.mkdir()
    cmd = [str(venv_python("mlflow").with_name("mlflow")), "server", "--host", "127.0.0.1",
           "--port", str(port), "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
           "--artifacts-destination", str(store / "artifacts")]
    with _server(cmd, work / "mlflow-server.log", f"{uri}/health", work):
        yield uri


def bench_mlflow(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    with mlflow_server(work) as uri:
        request = urllib.request.Request(
            f"{uri}/api/2.0/mlflow/experiments/create", method="POST",
            data=json.dumps({"name": "peers-bench"}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            experiment_id = json.loads(answer.read())["experiment_id"]
        cfg = dict(cfg, uri=uri, experiment_id=experiment_id)
        return run_child(str(venv_python("mlflow")), "mlflow", cfg, work)


def bench_trackio(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    env = dict(os.environ, TRACKIO_DIR=str(work / "trackio"))
    return run_child(str(venv_python("trackio")), "trackio", dict(cfg, project="peers-bench"),
                     work, env)


def bench_aim(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Aim's queries only see what its index holds, and only ``aim up`` keeps the index up to
    date while runs are open, so the reader runs alongside ``aim up`` as a user's would."""
    from bench.common import free_port

    repo = work / "aim"
    code = "import sys; from aim import Repo; Repo.from_path(sys.argv[1], init=True)"
    subprocess.run([str(venv_python("aim")), "-c", code, str(repo)],
                   check=True, capture_output=True)
    port = free_port()
    cmd = [str(venv_python("aim").with_name("aim")), "up", "--repo", str(repo), "--host",
           "127.0.0.1", "--port", str(port), "-y", "--log-level", "warning"]
    # SIGINT: `aim up` stops its uvicorn workers (in the same group) on it.
    with _server(cmd, work / "aim-up.log", f"http://127.0.0.1:{port}/api/projects/", work,
                 stop=signal.SIGINT):
        return run_child(str(venv_python("aim")), "aim", dict(cfg, repo=str(repo)), work)


@contextlib.contextmanager
def monitor_stack(work: Path, label: str) -> Iterator[dict[str, Any]]:
    """``monitor worker`` and ``monitor gateway``, processes of their own on a fresh key prefix
    (deleted afterwards), until the block ends: ``{redis_url, prefix, port}``."""
    import redis

    from bench.common import (
        delete_prefix,
        free_port,
        redis_url,
        start_monitor,
        stop_process,
        unique_prefix,
        wait_http_ok,
    )

    url = redis_url()
    prefix = unique_prefix(label)
    client = redis.Redis.from_url(url)
    procs = []
    try:
        worker = start_monitor("worker", ["--redis-url", url, "--prefix", prefix],
                               work / "worker.log")
        procs.append(("worker", worker))
        port = free_port()
        gateway = start_monitor("gateway", ["--redis-url", url, "--prefix", prefix, "--host",
                                            "127.0.0.1", "--port", str(port),
                                            "--log-level", "warning"], work / "gateway.log")
        procs.append(("gateway", gateway))
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
        yield {"redis_url": url, "prefix": prefix, "port": port}
    finally:
        for name, proc in reversed(procs):
            stop_process(proc, name)
        delete_prefix(client, prefix)
        client.close()


def bench_monitor(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    with monitor_stack(work, "peers") as stack:
        cfg = dict(cfg, redis_url=stack["redis_url"], prefix=stack["prefix"],
                   ws_url=f"ws://127.0.0.1:{stack['port']}/ws")
        return run_child(sys.executable, "monitor", cfg, work)


BENCHES = {"monitor": bench_monitor, "mlflow": bench_mlflow, "trackio": bench_trackio,
           "aim": bench_aim}


# --- Dashboard refresh: found in the installed packages -------------------------------------


def _site_packages(tool: str) -> Path | None:
    lib = PEERS_HOME / VENVS[tool][0] / "lib"
    found = sorted(lib.glob("python3*/site-packages"))
    return found[0] if found else None


def refresh_note(tool: str) -> tuple[str, float | None]:
    """How the tool's dashboard refreshes, and the interval (ms) at which it reloads run data
    as it opens (None: push, or no polling found), read from the installed package."""
    from bench import dashboards

    if tool == "monitor":
        return ("push: the gateway sends each committed update over `/ws` "
                "(`web/hub.py`, no polling)"), None
    site = _site_packages(tool)
    if site is None:
        return "not installed", None
    found = {"mlflow": dashboards.mlflow, "trackio": dashboards.trackio,
             "aim": dashboards.aim}[tool](site)
    return found.note, found.interval_ms


# --- Report -------------------------------------------------------------------------------------


def _rate(events: int, seconds: float) -> str:
    return f"{events / seconds:,.0f}" if seconds > 0 else "–"


def _visibility(vis: dict[str, Any]) -> str:
    if vis["p50_ms"] is None:
        return f"none of {vis['samples']} seen"
    return (f"{vis['p50_ms']:,.1f} / {vis['p95_ms']:,.1f} (max {vis['max_ms']:,.0f}; "
            f"{vis['seen']} of {vis['samples']} seen; {vis['steps_per_s']:,.0f} steps/s)")


def report_rows(results: dict[str, dict[str, Any]], notes: dict[str, str],
                versions: dict[str, str | None]) -> list[list[str]]:
    rows = []
    names = {"monitor": "this project (`monitor.sdk`)", "mlflow": "MLflow", "trackio": "Trackio",
             "aim": "Aim"}
    for tool in ("monitor", "mlflow", "trackio", "aim"):
        name = f"{names[tool]} {versions.get(tool) or ''}".strip()
        res = results.get(tool)
        if res is None:
            rows.append([name, "skipped", "–", "–", "–", "–", notes.get(tool, "?")])
            continue
        pc = res["percall"]
        b = res.get("batched")
        rows.append([
            name,
            (f"{_rate(pc['events'], pc['calls_s'])} ({_rate(pc['events'], pc['flushed_s'])} "
             f"until flushed)"),
            (f"{_rate(b['events'], b['seconds'])} ({b['per_call']} steps per call)" if b
             else "no batch API (n/a)"),
            _visibility(res["visible_paced"]),
            _visibility(res["visible_burst"]),
            "push" if tool == "monitor" else f"polls every {POLL_S * 1e3:.0f} ms",
            notes.get(tool, ""),
        ])
    return rows


def verdicts(results: dict[str, dict[str, Any]],
             refresh_ms: dict[str, float | None]) -> list[str]:
    """This project against its performance bars, from this run's numbers only; each bar is also
    recorded for run_all's summary (``headline``)."""
    from bench.common import headline, verdict

    ours = results.get("monitor")
    if ours is None:
        return ["this project was not measured (--only): no comparison"]
    peers = {t: r for t, r in results.items() if t != "monitor"}
    lines = []
    pc = ours["percall"]
    rate = pc["events"] / pc["calls_s"]
    trackio = peers.get("trackio")
    if trackio:
        t_rate = trackio["percall"]["events"] / trackio["percall"]["calls_s"]
        met = rate >= t_rate
        lines.append(f"log() rate {rate:,.0f} events/s vs Trackio's {t_rate:,.0f} "
                     f"(bar: at or above it): {'met' if met else 'NOT met'}")
        headline("peers: log calls/s, ours vs Trackio's", f"{rate:,.0f} vs {t_rate:,.0f}",
                 "≥ Trackio's", verdict(met))
    p95 = ours["visible_paced"]["p95_ms"]
    if p95 is None:
        return lines + ["this project's reader saw nothing: visibility not measured"]
    met = p95 < BAR_VISIBLE_MS
    lines.append(f"visible to a WebSocket subscriber, paced: p95 {p95:.1f} ms (bar < "
                 f"{BAR_VISIBLE_MS:.0f} ms): {'met' if met else 'NOT met'}")
    headline("peers: a new best visible to a WebSocket subscriber, paced, p95 ms",
             f"{p95:.1f}", f"< {BAR_VISIBLE_MS:.0f}", verdict(met))
    reads = {t: r["visible_paced"]["p50_ms"] for t, r in peers.items()
             if r["visible_paced"]["p50_ms"] is not None}
    if reads:
        fastest = min(reads, key=lambda t: reads[t])
        met = p95 < reads[fastest]
        lines.append(f"below every peer's own API read (fastest: {fastest}, p50 "
                     f"{reads[fastest]:.1f} ms; ours p95 {p95:.1f} ms): "
                     f"{'met' if met else 'NOT met'}")
        headline("peers: our p95 vs the fastest peer's own API read, p50 ms",
                 f"{p95:.1f} vs {reads[fastest]:.1f} ({fastest})", "below", verdict(met))
    intervals = {t: ms for t, ms in refresh_ms.items() if t != "monitor" and ms}
    if intervals:
        fastest = min(intervals, key=lambda t: intervals[t])
        factor = intervals[fastest] / p95
        met = factor >= BAR_DASHBOARD_FACTOR
        lines.append(f"vs the fastest peer dashboard refresh ({fastest}, every "
                     f"{intervals[fastest]:,.0f} ms): {factor:,.0f}x below it (bar ≥ "
                     f"{BAR_DASHBOARD_FACTOR:.0f}x): {'met' if met else 'NOT met'}")
        headline("peers: fastest peer dashboard refresh ÷ our p95", f"{factor:,.0f}x",
                 f"≥ {BAR_DASHBOARD_FACTOR:.0f}x", verdict(met))
    burst = ours["visible_burst"]
    if burst["p95_ms"] is not None:
        lines.append(f"burst: {burst['steps_per_s']:,.0f} steps/s logged, the last new best "
                     f"visible p95 {burst['p95_ms']:.1f} ms after its call (it waits behind "
                     f"the steps logged before it)")
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.peers",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS} steps per run (eval_loss every {QUICK_SAMPLE_EVERY}th), "
                             f"{QUICK_RUNS} run per phase")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per run (default {STEPS:,}; {QUICK_STEPS} with --quick)")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"runs in the per-call and batched phases (default {RUNS}; "
                             f"{QUICK_RUNS} with --quick)")
    parser.add_argument("--no-install", action="store_true",
                        help="skip a peer that is not installed yet instead of installing it")
    parser.add_argument("--only", default="monitor,mlflow,trackio,aim",
                        help="comma-separated tools (monitor, mlflow, trackio, aim)")
    args = parser.parse_args(argv)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    every = QUICK_SAMPLE_EVERY if args.quick else SAMPLE_EVERY
    steps = max(every, steps // every * every)
    tools = [t.strip() for t in args.only.split(",") if t.strip()]

    import redis

    from bench.common import machine_line, redis_url, table

    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    refresh_ms: dict[str, float | None] = {}
    versions: dict[str, str | None] = {}
    timings: dict[str, float] = {}
    try:
        for tool in tools:
            t0 = time.perf_counter()
            if tool == "monitor":
                import importlib.metadata as md
                try:
                    versions[tool] = md.version("monitor")
                except md.PackageNotFoundError:
                    versions[tool] = None
            else:
                version, note = ensure_installed(tool, install=not args.no_install)
                versions[tool] = version
                if version is None:
                    notes[tool] = note
                    continue
            cfg = {"steps": steps, "runs": runs, "every": every, "tag": f"peers-{os.getpid()}"}
            sub = work / tool
            sub.mkdir()
            try:
                results[tool] = BENCHES[tool](cfg, sub)
                notes[tool], refresh_ms[tool] = refresh_note(tool)
            except Exception as e:  # noqa: BLE001 - one peer failing must not hide the others
                notes[tool] = f"failed: {str(e).strip().splitlines()[-1][:200]}"
                print(f"{tool} failed: {e}", file=sys.stderr)
            timings[tool] = time.perf_counter() - t0
        for tool in ("monitor", "mlflow", "trackio", "aim"):
            if tool not in tools:
                notes.setdefault(tool, "not selected (--only)")
        client = redis.Redis.from_url(redis_url())
        print("## Peer comparison: the same trainer workload through each tool\n")
        print(machine_line(client) + "\n")
        client.close()
        print(f"A trainer process logs {runs} run(s) × {steps:,} steps of one model (one "
              f"event = one step's `loss` and `eval_loss` in one call), then two more runs of "
              f"{steps:,} steps with `eval_loss` every {every}th step, each a new best "
              f"over all runs: one paced (a step every {PACE_S * 1e3:.0f} ms at most, a fast "
              f"trainer), one a burst (as fast as the trainer logs, so the queue it builds in "
              f"the tool counts). A reader process looks for the runs' minimum eval loss "
              f"(MLflow `MlflowClient.search_runs`, Trackio `SQLiteStorage`, Aim "
              f"`Repo.query_metrics` with `aim up` running to keep its index current, each polled with a {POLL_S * 1e3:.0f} ms sleep between "
              f"polls; this project: a WebSocket client on `monitor gateway`, as the page "
              f"is). Visibility = the reader first sees the value − just before the log call. "
              f"MLflow runs `mlflow server` on 127.0.0.1 with a SQLite backend (its default "
              f"workers); this project runs `monitor worker` and `monitor gateway` on the "
              f"Redis above. Everything shares the machine's cores.\n")
        print(table(["tool", "events/s, one call per event", "events/s, batched",
                     "log call → visible, paced: ms p50 / p95",
                     "log call → visible, burst: ms p50 / p95", "reader",
                     "dashboard refresh (from the installed package) / note"],
                    report_rows(results, notes, versions),
                    align=["l", "r", "r", "r", "r", "l", "l"]) + "\n")
        for line in verdicts(results, refresh_ms):
            print(f"- {line}")
        spent = ", ".join(f"{t} {s:.0f}s" for t, s in timings.items())
        print(f"- Wall time per tool (install, servers, all phases): {spent}. Peers' venvs: "
              f"{PEERS_HOME}. Each one's own logs were in {work} (removed).")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
