"""Chaos: 5 trainer processes publish 50,000 events through the SDK while the active worker is
SIGKILLed again and again, the gateway twice, and Redis restarts once. Nothing is lost, nothing
is applied twice, and a WebSocket client that keeps resuming ends with every change."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from monitor import history
from monitor.decoded import event_of
from monitor.keys import Keys, model_field
from monitor.records import public_state
from monitor.rules import Board
from tests.conftest import RedisServer, free_port
from tests.helpers import env_for, read_not_committed, spawn_monitor, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
TRAINERS, EVENTS_EACH = 5, 10_000
TIMES = ("created_at", "updated_at", "finished_at")

TRAINER = textwrap.dedent("""
    import json, random, sys, time
    sys.path.insert(0, sys.argv[4])
    from monitor.sdk import start_run
    index, count, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = random.Random(index)
    runs = [start_run(f"chaos/model-{index % 3}", job_id=f"chaos-{index}-{j}", total_epochs=5,
                      flush_timeout=120) for j in range(2)]
    calls, started, per_second = [], time.monotonic(), 170
    for i in range(count - 4):  # 2 job_started + 2 job_finished make up the count
        job, run = i % 2, runs[i % 2]
        step = i // 2 + 1
        if step % 100 == 0 and i % 2 == 0:
            call = {"type": "checkpoint", "path": f"checkpoint-{step}", "step": step,
                    "epoch": step / 1000}
            run.checkpoint(call["path"], step=step, epoch=call["epoch"])
        else:
            call = {"type": "metrics", "step": step, "epoch": step / 1000,
                    "loss": round(rng.uniform(0.1, 2.0), 5)}
            if step % 10 == 0:
                call["eval_loss"] = round(rng.uniform(0.2, 1.5), 5)
            run.log(step=step, epoch=call["epoch"], loss=call["loss"],
                    eval_loss=call.get("eval_loss"))
        calls.append([job, call])
        time.sleep(max(0.0, started + i / per_second - time.monotonic()))
    for run in runs:
        run.close()
    json.dump({"calls": calls, "stats": [[s.enqueued, s.sent, s.dropped, s.pending]
                                         for s in (run.stats for run in runs)]}, open(out, "w"))
""")


class Follower(threading.Thread):
    """A WebSocket client that resumes with ``?since=`` after every drop, as the page does."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.views: dict[str, dict[str, Any]] = {}
        self.version: str | None = None
        self.snapshots = self.updates = self.resumes = 0
        self.backwards = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            url = f"ws://127.0.0.1:{self.port}/ws"
            if self.version is not None:
                url += f"?since={self.version}"
                self.resumes += 1
            try:
                with connect(url, open_timeout=2, max_size=None) as ws:
                    while not self.stop.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        self._apply(message)
            except (OSError, WebSocketException, TimeoutError):
                time.sleep(0.2)

    def _apply(self, message: dict[str, Any]) -> None:
        if message["type"] == "snapshot":
            self.snapshots += 1
            self.views = {job["id"]: job for job in message["jobs"]}
        else:
            self.updates += 1
            if self.version is not None and _pos(message["version"]) <= _pos(self.version):
                self.backwards += 1
            self.views.update({job["id"]: job for job in message["jobs"]})
        self.version = message["version"]


def _pos(version: str) -> tuple[int, int]:
    ms, seq = version.split("-")
    return int(ms), int(seq)


def expected(results: list[dict[str, Any]]) -> tuple[Board, dict[str, list[Any]], int]:
    """The from-scratch fold of every call the trainers made, in their order."""
    board, points, count, position = Board(), {}, 0, 0
    for index, result in enumerate(results):
        events: list[tuple[str, dict[str, Any]]] = []
        for j in range(2):
            events.append((f"chaos-{index}-{j}", {"type": "job_started",
                                                   "model_name": f"chaos/model-{index % 3}",
                                                   "total_epochs": 5}))
        events += [(f"chaos-{index}-{job}", call) for job, call in result["calls"]]
        events += [(f"chaos-{index}-{j}", {"type": "job_finished", "status": "completed"})
                   for j in range(2)]
        for job_id, call in events:
            position += 1
            event = event_of({**call, "job_id": job_id, "ts": 1.0})
            board.apply(event, (position, 0), 1.0)
            count += 1
            if call["type"] == "metrics":
                points.setdefault(job_id, []).append(
                    {"step": call["step"], "epoch": call["epoch"], "loss": call["loss"],
                     "eval_loss": call.get("eval_loss"), "ts": 1.0})
    return board, {j: history.extend([], p) for j, p in points.items()}, count


def test_chaos(redis_server_factory: Any, tmp_path: Path) -> None:
    server: RedisServer = redis_server_factory(persistent=True)
    server.start()
    prefix, port, log = "chaos:", free_port(), tmp_path / "processes.log"
    keys = Keys(prefix)
    env = env_for(server.url, prefix)
    worker = spawn_monitor(env, log, "worker", "--lease-ttl", "1", "--block", "0.1")
    gateway = spawn_monitor(env, log, "gateway", "--port", str(port))
    follower = Follower(port)
    follower.start()
    trainers = [subprocess.Popen([sys.executable, "-c", TRAINER, str(i), str(EVENTS_EACH),
                                  str(tmp_path / f"trainer-{i}.json"), str(ROOT)], env=env)
                for i in range(TRAINERS)]
    rng = random.Random()
    kills = gateway_kills = redis_restarts = 0
    started = time.monotonic()
    try:
        while any(t.poll() is None for t in trainers) or kills < 10:
            time.sleep(rng.uniform(1.0, 4.0))
            worker.kill()  # SIGKILL: no clean-up of any kind
            worker.wait(10)
            kills += 1
            worker = spawn_monitor(env, log, "worker", "--lease-ttl", "1", "--block", "0.1")
            elapsed = time.monotonic() - started
            if gateway_kills < 2 and elapsed > 15 * (gateway_kills + 1):
                gateway.kill()
                gateway.wait(10)
                gateway_kills += 1
                gateway = spawn_monitor(env, log, "gateway", "--port", str(port))
            if redis_restarts == 0 and elapsed > 25:
                server.stop()  # SIGKILL; its append-only file keeps every write
                time.sleep(1)
                server.start()
                redis_restarts += 1
        for trainer in trainers:
            assert trainer.wait(180) == 0
        client = redis.Redis.from_url(server.url)
        last = client.xrevrange(keys.events, count=1)[0][0]
        deadline = time.monotonic() + 120
        while client.get(keys.applied) != last and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get(keys.applied) == last
        time.sleep(2)  # let the follower catch up with the last update
    finally:
        follower.stop.set()
        for proc in (worker, gateway, *trainers):
            stop_process(proc)
        follower.join(10)

    results = [json.loads((tmp_path / f"trainer-{i}.json").read_text()) for i in range(TRAINERS)]
    for result in results:  # the SDKs lost nothing
        for enqueued, sent, dropped, pending in result["stats"]:
            assert (dropped, pending) == (0, 0) and sent == enqueued
    board, points, count = expected(results)
    assert count == TRAINERS * EVENTS_EACH
    assert (kills, gateway_kills, redis_restarts) >= (10, 2, 1)

    stored = {k.decode(): public_state(v) for k, v in client.hgetall(keys.jobs).items()}
    assert set(stored) == set(board.jobs)
    for job_id, job in board.jobs.items():
        want = {k: v for k, v in job.public().items() if k not in TIMES}
        assert {k: v for k, v in stored[job_id].items() if k not in TIMES} == want, job_id
        got = [orjson.loads(p) for p in client.lrange(keys.metrics(job_id), 0, -1)]
        assert [(p["step"], p["epoch"], p["loss"], p["eval_loss"]) for p in got] == \
            [(p["step"], p["epoch"], p["loss"], p["eval_loss"]) for p in points[job_id]]
    models = {k.decode(): orjson.loads(v) for k, v in client.hgetall(keys.models).items()}
    assert models == {model_field(m): g.summary() for m, g in board.groups.items()}
    stats = {k.decode(): int(v) for k, v in client.hgetall(keys.stats).items()}
    assert stats["applied"] == count and stats.get("dead", 0) == 0  # none twice, none lost
    assert read_not_committed(client, keys) == 0

    # The client that kept resuming saw every change: its copy is the final state.
    assert follower.backwards == 0
    derived = ("is_best", "delta_pct", "tier", "gpu_hours")  # in views, not in stored state
    assert {j: {k: v for k, v in view.items() if k not in derived}
            for j, view in follower.views.items()} == stored
    print(f"chaos: {count:,} events, {kills} worker kills, {gateway_kills} gateway kills, "
          f"{redis_restarts} Redis restart, {stats.get('duplicates', 0)} duplicates dropped, "
          f"client: {follower.snapshots} snapshots, {follower.updates} updates, "
          f"{follower.resumes} resumes")
    client.close()


def test_redis_away_for_ten_seconds(redis_server_factory: Any, tmp_path: Path) -> None:
    from monitor.sdk import start_run

    server: RedisServer = redis_server_factory(persistent=True)
    server.start()
    prefix, port, log = "away:", free_port(), tmp_path / "processes.log"
    keys = Keys(prefix)
    env = env_for(server.url, prefix)
    worker = spawn_monitor(env, log, "worker", "--lease-ttl", "1", "--block", "0.1")
    gateway = spawn_monitor(env, log, "gateway", "--port", str(port))
    health: list[int] = []

    def healthz() -> int:
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    try:
        deadline = time.monotonic() + 30
        while healthz() != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        slowest, logged = 0.0, 0
        with start_run("away/model", job_id="away", redis_url=server.url, prefix=prefix,
                       flush_timeout=60) as run:
            for phase in ("before", "away", "back"):
                if phase == "away":
                    server.stop()
                if phase == "back":
                    server.start()
                until = time.monotonic() + (10 if phase == "away" else 3)
                while time.monotonic() < until:
                    logged += 1
                    t = time.perf_counter()
                    run.log(step=logged, loss=1.0 / logged)
                    slowest = max(slowest, time.perf_counter() - t)
                    time.sleep(0.005)
                    if logged % 100 == 0:
                        health.append(healthz())
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = client.hget(keys.jobs, "away")
            if job and public_state(job)["status"] == "completed":
                break
            time.sleep(0.1)
        assert public_state(client.hget(keys.jobs, "away"))["status"] == "completed"
        steps = [orjson.loads(p)["step"] for p in client.lrange(keys.metrics("away"), 0, -1)]
        sent = [{"step": s, "eval_loss": None} for s in range(1, logged + 1)]
        assert steps == [p["step"] for p in history.extend([], sent)]  # none lost, none twice
        client.close()
    finally:
        for proc in (worker, gateway):
            stop_process(proc)
    assert 503 in health and health[-1] == 200  # said so while away, then recovered
    assert slowest < 0.05  # log() never waited on the network (it is µs; this is generous)
    print(f"redis away 10 s: {logged} events logged, slowest log() {slowest * 1e6:.0f} µs, "
          f"/healthz {sorted(set(health))}")
