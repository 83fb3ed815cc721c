"""Helpers for building events and folding them in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from monitor.decoded import Event, event_of, parse_event
from monitor.keys import Keys
from monitor.rules import Board, Pos


def ev(type: str, job_id: str = "a", **fields: Any) -> Event:
    """A validated event, e.g. ``ev("metrics", "a", eval_loss=0.3)``."""
    return event_of({"type": type, "job_id": job_id, **fields})


def pos_of(i: int) -> Pos:
    """The stream position of the i-th event of a test (one per millisecond from 1,000 s)."""
    return (1_000_000 + i, 0)


def ts_of(event: Event, pos: Pos) -> float:
    return event.ts if event.ts is not None else pos[0] / 1000


def fold(events: list[Event]) -> Board:
    """A board after applying ``events`` in order."""
    board = Board()
    for i, event in enumerate(events):
        pos = pos_of(i)
        board.apply(event, pos, ts_of(event, pos))
    return board


def read_events(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every event on the stream, each validated against the contract, as plain dicts; but
    the heartbeats, which the SDK's control thread sends on a clock of its own."""
    events = []
    for _entry_id, fields in client.xrange(keys.events):
        parse_event(fields[b"data"])
        event = orjson.loads(fields[b"data"])
        if event["type"] != "job_heartbeat":
            events.append(event)
    return events


def read_not_committed(client: redis.Redis, keys: Keys) -> int:
    """Entries the consumer group delivered after the applied id: read by a worker and not
    committed (yet). The group never keeps a pending list: entries are read with NOACK."""
    (group,) = client.xinfo_groups(keys.events)
    assert group["pending"] == 0
    applied = client.get(keys.applied) or b"0-0"
    return len(client.xrange(keys.events, min=b"(" + applied, max=group["last-delivered-id"]))


def wait_for(check: Callable[[], Any], timeout: float = 15, what: str = "it") -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def env_for(redis_url: str, prefix: str) -> dict[str, str]:
    """Our environment without MONITOR_* settings, plus the Redis URL and prefix to use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(MONITOR_REDIS_URL=redis_url, MONITOR_PREFIX=prefix)
    return env


def spawn_monitor(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``monitor <args>`` as a child process, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "monitor.cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[Any], grace: float = 15) -> None:
    """SIGTERM one process we started, then SIGKILL it if it has not exited after ``grace``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
