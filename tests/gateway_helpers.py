"""Real workers for tests (in a background thread, or in the test's event loop) and publishing
helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis

from monitor.keys import Keys
from monitor.records import public_state
from monitor.settings import WorkerSettings
from worker.consumer import Worker
from worker.store import LeaseLost

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def make_client(redis_url: str, keys: Keys, **settings: Any) -> TestClient:
    """The gateway app on ``keys``' prefix, for requests and WebSockets in this process.
    (Imported here, not above: the trainer-side tests use this module without the app.)"""
    from fastapi.testclient import TestClient

    from monitor.settings import GatewaySettings
    from web.app import create_app

    return TestClient(create_app(GatewaySettings(redis_url=redis_url, prefix=keys.prefix,
                                                 **settings)), base_url="http://127.0.0.1")


def publish(r: redis.Redis, keys: Keys, events: list[dict[str, Any] | bytes]) -> list[str]:
    """XADD each event (a dict, or raw bytes) to the events stream; their entry ids."""
    with r.pipeline(transaction=False) as pipe:
        for event in events:
            data = event if isinstance(event, bytes) else orjson.dumps(event)
            pipe.xadd(keys.events, {"data": data})
        return [i.decode() for i in pipe.execute()]


def stop_mid_run(redis_url: str, keys: Keys, job_id: str, train: Callable[[], object],
                 after_step: int, reason: str | None = None) -> None:
    """Run ``train`` in a thread; once the job's view is at ``after_step`` or later, ask it to
    stop through ``POST /api/jobs/{id}/stop`` of a real gateway app; wait for training to end."""
    client = redis.Redis.from_url(redis_url)
    training = threading.Thread(target=train)
    training.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            raw = client.hget(keys.jobs, job_id)
            if raw is not None and (public_state(raw)["step"] or 0) >= after_step:
                break
            assert time.monotonic() < deadline and training.is_alive(), "training never logged"
            time.sleep(0.05)
        with make_client(redis_url, keys) as api:
            body = {"reason": reason} if reason is not None else None
            assert api.post(f"/api/jobs/{job_id}/stop", json=body).status_code == 202
    finally:
        training.join(60)
        client.close()
    assert not training.is_alive(), "training did not end after the stop request"


class RunningWorker:
    """``monitor worker`` in a thread of this process, with its own event loop."""

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self.keys = keys
        self.client = redis.Redis.from_url(redis_url)
        settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, block=0.05,
                                  batch_size=100)
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.worker = Worker(settings)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.worker.run(self.stop))
        except BaseException as e:  # noqa: BLE001 - reported by wait_applied and close
            self.error = e

    def wait_applied(self, timeout: float = 20) -> None:
        """Until every entry now in the stream is committed."""
        last = self.client.xrevrange(self.keys.events, count=1)
        target = last[0][0] if last else b"0-0"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            if self.client.get(self.keys.applied) == target:
                return
            time.sleep(0.01)
        raise AssertionError(f"worker did not apply up to {target!r}")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()
        self.client.close()
        if self.error is not None:
            raise self.error


Drain = Callable[[], Awaitable[None]]


async def refused_unless_fenced(r: redis.Redis, keys: Keys, worker: Worker,
                                step: Callable[[str], Awaitable[object]]) -> None:
    """``step(applied)``, which ``worker`` runs believing ``"0-0"`` is applied, raises
    LeaseLost when another worker holds the lease, and when another committed since (the
    applied id is then ``"7-0"``, the lease ``worker``'s again)."""
    assert await worker.lease.hold()
    r.set(keys.lease, "another worker")
    with pytest.raises(LeaseLost):
        await step("0-0")
    r.set(keys.lease, worker.lease.token)
    r.set(keys.applied, "7-0")  # another worker committed since this one read
    with pytest.raises(LeaseLost):
        await step("0-0")


async def run_until_applied(worker: Worker, r: redis.Redis, keys: Keys, count: int, *,
                            counted: tuple[str, ...] = ("applied",),
                            timeout: float = 30.0) -> None:
    """Run ``worker`` in this event loop until the ``counted`` stats add up to ``count``
    (raises the worker's error, or AssertionError after ``timeout``), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if task.done():
                task.result()
            if sum(int(n or 0) for n in r.hmget(keys.stats, list(counted))) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not reach {count} {'+'.join(counted)}")
            await asyncio.sleep(0.025)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def draining_worker(redis_url: str, keys: Keys, r: redis.Redis, batch_size: int,
                          timeout: float = 10.0) -> AsyncIterator[Drain]:
    """A worker in this event loop; ``await drain()`` waits until it applied every entry now
    in the stream (or raises the worker's error)."""
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix,
                                   batch_size=batch_size, block=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def drain() -> None:
        last = r.xrevrange(keys.events, count=1)
        target = last[0][0].decode() if last else "0-0"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if task.done():
                task.result()
            applied = r.get(keys.applied)
            if (applied.decode() if applied else "0-0") == target:
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"worker did not apply up to {target}")

    try:
        yield drain
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
