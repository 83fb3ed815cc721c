"""Stopping runs and liveness (docs/stopping.md): the API, the SDK hearing a request, Redis away
from the trainer, a trainer SIGKILLed going stale, abandon, and auto-stop by the forecast."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from monitor.keys import Keys
from monitor.records import public_state
from monitor.sdk import Run, start_run
from monitor.settings import GatewaySettings
from tests.gateway_helpers import RunningWorker, publish
from tests.helpers import env_for, spawn_monitor, stop_process, wait_for
from web.app import create_app

pytestmark = pytest.mark.timeout(120)

LOCAL = "http://127.0.0.1"
M = "org/model"


@pytest.fixture
def client(redis_url: str, keys: Keys) -> Iterator[TestClient]:
    app = create_app(GatewaySettings(redis_url=redis_url, prefix=keys.prefix))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def view(r: redis.Redis, keys: Keys, job_id: str) -> dict[str, Any] | None:
    raw = r.hget(keys.jobs, job_id)
    return None if raw is None else public_state(raw)


def test_stop_requests_are_kept_first_come_and_refused_for_ended_or_unknown_jobs(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, [{"type": "job_started", "job_id": "a", "model_name": M},
                      {"type": "job_started", "job_id": "done", "model_name": M},
                      {"type": "job_finished", "job_id": "done", "status": "completed"}])
    worker.wait_applied()
    before = time.time()
    answer = client.post("/api/jobs/a/stop", json={"reason": "lr too high"})
    assert (answer.status_code, answer.json()) == (202, {"accepted": 1})
    assert client.post("/api/jobs/a/stop").status_code == 202  # a second: accepted, ignored
    worker.wait_applied()
    asked = client.get("/api/jobs/a").json()["stop_requested"]
    assert (asked["by"], asked["reason"]) == ("user", "lr too high")
    assert before <= asked["at"] <= time.time()
    assert orjson.loads(r.hget(keys.stops, "a")) == asked  # what the SDK polls

    assert client.post("/api/jobs/done/stop").json() == {
        "detail": "job 'done' is not running (it is completed)", "status": 409,
        "errors": []}
    assert client.post("/api/jobs/nope/stop").status_code == 404
    too_long = client.post("/api/jobs/a/stop", json={"reason": "x" * 1025})
    assert too_long.status_code == 422

    publish(r, keys, [{"type": "job_finished", "job_id": "a", "status": "stopped"}])
    worker.wait_applied()
    ended = client.get("/api/jobs/a").json()
    assert (ended["status"], ended["stop_requested"]) == ("stopped", asked)  # kept after
    assert r.hget(keys.stops, "a") is None  # no longer polled
    assert client.post("/api/jobs/a/stop").status_code == 409


def test_stop_and_abandon_need_the_token_and_a_same_site_origin(
        redis_url: str, keys: Keys, r: redis.Redis, worker: RunningWorker) -> None:
    publish(r, keys, [{"type": "job_started", "job_id": "a"}])
    worker.wait_applied()
    app = create_app(GatewaySettings(redis_url=redis_url, prefix=keys.prefix, token="s3cret"))
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app, base_url=LOCAL) as c:
        for action in ("stop", "abandon"):
            assert c.post(f"/api/jobs/a/{action}").status_code == 401
            assert c.post(f"/api/jobs/a/{action}",
                          headers={**auth, "Origin": "https://evil.example"}).status_code == 403
        assert c.post("/api/jobs/a/stop", headers=auth).status_code == 202


def test_the_sdk_hears_a_stop_within_two_seconds_and_the_run_ends_stopped(
        client: TestClient, redis_url: str, r: redis.Redis, keys: Keys,
        worker: RunningWorker) -> None:
    heard: list[Run] = []
    with start_run(M, job_id="trainer", redis_url=redis_url, prefix=keys.prefix,
                   on_stop=heard.append) as run:
        run.log(step=1, loss=1.0)
        run.flush()
        worker.wait_applied()
        asked = time.monotonic()
        assert client.post("/api/jobs/trainer/stop", json={"reason": "enough"}).status_code == 202
        step = 1
        while not run.should_stop:  # the training loop goes on meanwhile
            step += 1
            run.log(step=step, loss=1.0 / step)
            time.sleep(0.01)
            assert time.monotonic() - asked < 2.0, "not heard within 2 s"
        assert run.stop_request is not None and run.stop_request["reason"] == "enough"
        time.sleep(1.2)  # more polls: on_stop is still called once
        assert heard == [run]
    worker.wait_applied()
    job = client.get("/api/jobs/trainer").json()
    assert (job["status"], job["stop_requested"]["by"]) == ("stopped", "user")


class CuttableProxy:
    """A TCP proxy to Redis on a free port whose connections can be cut and refused, so one
    client (the trainer) loses Redis while the rest of the test keeps it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.open.is_set():
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def cut(self) -> None:
        self.open.clear()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def mend(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_with_redis_away_the_trainer_trains_on_and_hears_the_stop_when_it_is_back(
        client: TestClient, redis_url: str, r: redis.Redis, keys: Keys,
        worker: RunningWorker) -> None:
    port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    proxy = CuttableProxy(int(port))
    try:
        with start_run(M, job_id="far", redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                       prefix=keys.prefix) as run:
            run.log(step=1, loss=1.0)
            assert run.flush(5)
            worker.wait_applied()
            proxy.cut()
            assert client.post("/api/jobs/far/stop").status_code == 202
            worker.wait_applied()
            for step in range(2, 152):  # 1.5 s of training without Redis: nothing raises
                run.log(step=step, loss=1.0 / step)
                time.sleep(0.01)
            assert not run.should_stop
            proxy.mend()
            wait_for(lambda: run.should_stop, 5, "hearing the stop once Redis is back")
        worker.wait_applied()
        job = view(r, keys, "far")
        assert job is not None and (job["status"], job["step"]) == ("stopped", 151)
    finally:
        proxy.close()


TRAINER = """
import sys, time
sys.path.insert(0, {root!r})
import monitor.control
monitor.control.channel.heartbeat = {heartbeat}
from monitor.sdk import start_run
from monitor.records import public_state
with start_run("org/model", job_id={job_id!r}, total_steps=100) as run:
    run.log(step=1, loss=1.0)
    run.flush()
    print("ready", flush=True)
    time.sleep(600)  # silent from here on
"""


def trainer(tmp_path: Path, env: dict[str, str], job_id: str, heartbeat: float) -> Any:
    import subprocess

    script = tmp_path / f"{job_id}.py"
    script.write_text(TRAINER.format(root=str(Path(__file__).resolve().parents[1]),
                                     job_id=job_id, heartbeat=heartbeat))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


@pytest.mark.slow
def test_a_killed_trainer_goes_stale_a_silent_healthy_one_does_not_and_abandon_ends_it(
        client: TestClient, redis_url: str, r: redis.Redis, keys: Keys,
        tmp_path: Path) -> None:
    env = env_for(redis_url, keys.prefix)
    procs = [spawn_monitor(env, tmp_path / "worker.log", "worker", "--block", "0.05"),
             spawn_monitor(env, tmp_path / "advisor.log", "advisor", "--stale-after", "2")]
    killed = trainer(tmp_path, env, "killed", heartbeat=10)
    quiet = trainer(tmp_path, env, "quiet", heartbeat=0.5)  # beats, logs nothing more
    try:
        killed.kill()
        killed.wait(10)
        died = time.time()
        stale = wait_for(lambda: (v := view(r, keys, "killed")) and v["stale"] and v, 2 + 10,
                         "killed going stale")
        assert stale["status"] == "running"  # only the trainer says how it ended
        assert died - 3 < stale["last_seen"] <= died
        time.sleep(3)  # two more checks of the advisor's
        q = view(r, keys, "quiet")
        assert q is not None and (q["stale"], q["last_seen"]) == (False, None)

        publish(r, keys, [{"type": "metrics", "job_id": "killed", "step": 2, "loss": 0.9}])
        wait_for(lambda: not view(r, keys, "killed")["stale"], 5, "an event clearing stale")
        again = wait_for(lambda: (v := view(r, keys, "killed")) and v["stale"] and v, 12,
                         "stale again")

        assert client.post("/api/jobs/killed/abandon").status_code == 202
        job = wait_for(lambda: (v := view(r, keys, "killed")) and v["status"] != "running"
                       and v, 10, "abandon")
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(again["last_seen"]))
        assert (job["status"], job["stale"], job["error"]) == (
            "failed", False, f"abandoned: no signal since {since}")
        assert client.post("/api/jobs/killed/abandon").status_code == 409
    finally:
        for proc in [killed, quiet, *procs]:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def plateau(job_id: str, floor: float, steps: range) -> list[dict[str, Any]]:
    return [{"type": "metrics", "job_id": job_id, "step": s,
             "eval_loss": round(floor + 0.05 * (s / 100) ** -0.3, 6)} for s in steps]


@pytest.mark.slow
def test_auto_stop_asks_a_plateaued_loser_to_stop_and_leaves_an_opted_out_run_alone(
        redis_url: str, r: redis.Redis, keys: Keys, tmp_path: Path) -> None:
    env = env_for(redis_url, keys.prefix)
    procs = [spawn_monitor(env, tmp_path / "worker.log", "worker", "--block", "0.05"),
             spawn_monitor(env, tmp_path / "advisor.log", "advisor", "--autostop",
                           "--advisor-debounce", "0.05", "--advisor-cpu", "1")]
    try:
        publish(r, keys, [
            {"type": "job_started", "job_id": "best", "model_name": M, "total_steps": 1000},
            *plateau("best", 0.2, range(100, 1001, 100)),
            {"type": "job_finished", "job_id": "best", "status": "completed"},
            {"type": "job_started", "job_id": "loser", "model_name": M, "total_steps": 1000,
             "gpu_count": 4},
            {"type": "job_started", "job_id": "keep", "model_name": M, "total_steps": 1000,
             "autostop": False},
        ])
        for step in range(100, 701, 100):  # one eval point at a time, each forecast first
            publish(r, keys, [*plateau("loser", 0.9, range(step, step + 1)),
                              *plateau("keep", 0.9, range(step, step + 1))])
            wait_for(lambda s=step: all((v := view(r, keys, j)) and v["forecast"]
                                        and v["forecast"]["at_step"] == s
                                        for j in ("loser", "keep")), 10, f"step {step}")
        loser = wait_for(lambda: (v := view(r, keys, "loser")) and v["stop_requested"] and v,
                         10, "the auto-stop request")
        asked = loser["stop_requested"]
        assert asked["by"] == "forecast"
        assert asked["reason"].startswith("cannot win: p_beat_best ")
        keep = view(r, keys, "keep")
        assert keep is not None
        assert keep["forecast"]["verdict"] == "cannot_win" and keep["stop_requested"] is None

        app = create_app(GatewaySettings(redis_url=redis_url, prefix=keys.prefix))
        with TestClient(app, base_url=LOCAL) as client:
            assert client.get("/api/advisor").json() == {
                "running": True, "autostop": True, "stop_below": 0.05, "stale_after": 120.0}
            r.delete(keys.advisor)  # as when no advisor has renewed it for 30 s
            assert client.get("/api/advisor").json() == {
                "running": False, "autostop": False, "stop_below": None, "stale_after": None}
    finally:
        for proc in procs:
            stop_process(proc)
