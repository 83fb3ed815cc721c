"""The data directory of ``monitor up``'s embedded Redis: the append-only file under
``redis/``, the port trainers were told (``redis-port``, kept across restarts so they
reconnect), Redis's log (``redis.log``) and a lock (``monitor.lock``) so two servers never
share one append-only file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from monitor.errors import DataDirError

LOCK_WAIT = 15.0  # seconds to wait for the Redis of a stopped ``monitor up`` to finish


class DataDir:
    """One data directory, created (mode 0700) on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()

    @property
    def redis_dir(self) -> Path:
        return self.path / "redis"

    @property
    def port_file(self) -> Path:
        return self.path / "redis-port"

    @property
    def log_file(self) -> Path:
        return self.path / "redis.log"

    @property
    def lock_file(self) -> Path:
        return self.path / "monitor.lock"

    def create(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.redis_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise DataDirError(f"cannot create the data directory {self.path} ({e.strerror}); "
                               "choose another with --data-dir / MONITOR_DATA_DIR") from None

    def lock(self) -> int:
        """Take the directory's lock and return its file descriptor (holding our pid).

        Whoever holds a copy of the descriptor holds the lock: handed to the Redis child, it
        stays taken until both we and that Redis are gone."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._wait_for_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _wait_for_lock(self, fd: int) -> None:
        deadline = time.monotonic() + LOCK_WAIT
        while not _try_lock(fd):
            holder = self._holder(fd)
            if holder is not None and _alive(holder):
                raise DataDirError(
                    f"another monitor up (pid {holder}) is using {self.path}; stop it, or "
                    "choose another --data-dir (or --ephemeral)")
            if time.monotonic() > deadline:
                raise DataDirError(
                    f"{self.path} is still locked {LOCK_WAIT:.0f}s after its monitor up "
                    f"(pid {holder}) stopped: its redis-server may still be running; stop "
                    "it, or choose another --data-dir (or --ephemeral)")
            time.sleep(0.1)

    def _holder(self, fd: int) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(os.pread(fd, 32, 0).decode().strip())
        return None

    def port(self, pick: Callable[[], int]) -> int:
        """The port recorded on first use (``pick()`` then), the same ever after."""
        if not self.port_file.exists():
            port = pick()
            temporary = self.port_file.with_name(self.port_file.name + ".new")
            temporary.write_text(f"{port}\n")
            temporary.replace(self.port_file)
            return port
        text = self.port_file.read_text().strip()
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise DataDirError(f"{self.port_file} holds {text!r}, not a port number; delete "
                               "it to pick a new port")
        port = int(text)
        if not _can_listen(port):
            raise DataDirError(
                f"port {port} (kept in {self.port_file} so trainers reconnect after a "
                "restart) is taken by another program; stop it, or delete that file to pick a "
                "new port (trainers then need the new MONITOR_REDIS_URL)")
        return port


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _can_listen(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
