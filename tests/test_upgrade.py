"""State written by a version before 2026-12-07, which kept each job's fold state in a hash of
its own (``<prefix>folds``) and each model group's job ids in a set (``<prefix>group:<model>``):
readers see it as it was, and the first worker to take the lease moves the fold states into
``<prefix>jobs`` and deletes the rest before applying anything (worker/upgrade.py; docs/state.md,
What is stored)."""

from __future__ import annotations

import logging
import random
from typing import Any

import orjson
import pytest
import redis

from monitor.decoded import parse_event
from monitor.keys import Keys, model_field
from monitor.records import public_state, split
from monitor.settings import WorkerSettings
from tests.gateway_helpers import refused_unless_fenced, run_until_applied
from tests.helpers import ts_of
from tests.reference import reference_views
from tests.test_order_index import expected_sets, publish, scenario, stored_sets
from web.state import build_views
from worker import upgrade
from worker.consumer import Worker

pytestmark = pytest.mark.timeout(60)


def to_old_layout(r: redis.Redis, keys: Keys) -> None:
    """Store the state as a version before 2026-12-07 did."""
    folds, groups = {}, {}
    for job_id, raw in r.hgetall(keys.jobs).items():
        public, fold = split(raw)
        assert fold is not None
        r.hset(keys.jobs, job_id, public)
        folds[job_id] = fold
        groups.setdefault(model_field(orjson.loads(public)["model_name"]), []).append(job_id)
    r.hset(keys.folds, mapping=folds)  # type: ignore[arg-type]
    r.zadd(keys.alive, {"a-job": 1_000})
    for field, ids in groups.items():
        r.sadd(keys.group(field), *ids)
    r.sadd(keys.group(model_field(None)), "handed-over")  # left by a move, whatever the rows


def views(r: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """The job views the gateway makes of the stored state."""
    return {v["id"]: v for v in build_views(list(r.hgetall(keys.jobs).values()),
                                            r.hgetall(keys.models))}


def stream_of(r: redis.Redis, keys: Keys, events: list[dict[str, Any]]) -> list[Any]:
    """Publish ``events``; each as (position, time, event), as tests.reference takes them."""
    out = []
    for entry_id, event in zip(publish(r, keys, events), events):
        pos = tuple(int(x) for x in entry_id.split("-"))
        parsed = parse_event(orjson.dumps(event))
        out.append((pos, ts_of(parsed, pos), parsed))  # type: ignore[arg-type]
    return out


async def test_the_first_worker_moves_the_fold_states_in_and_drops_the_group_sets(
        redis_url: str, r: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    events = scenario(random.Random(11), 30)
    half = len(events) // 2
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=9)
    stream = stream_of(r, keys, events[:half])
    await run_until_applied(Worker(settings), r, keys, half)
    before = views(r, keys)
    to_old_layout(r, keys)
    assert views(r, keys) == before  # readers of the new version, before the upgrade
    assert r.scard(keys.group(model_field("org/alpha"))) > 0

    monkeypatch.setattr(upgrade, "CHUNK", 7)
    monkeypatch.setattr(upgrade, "PROGRESS_EVERY", 0.0)
    caplog.set_level(logging.INFO, "monitor.worker")
    r.delete(keys.lease)
    stream += stream_of(r, keys, events[half:])
    await run_until_applied(Worker(settings), r, keys, len(events))

    assert not r.exists(keys.folds) and not r.exists(keys.alive)
    assert list(r.scan_iter(match=f"{keys.prefix}group:*")) == []
    assert all(split(raw)[1] is not None for raw in r.hvals(keys.jobs))
    assert views(r, keys) == reference_views(stream)  # the jobs went on from their fold state
    jobs = {k.decode(): public_state(v) for k, v in r.hgetall(keys.jobs).items()}
    assert stored_sets(r, keys) == expected_sets(keys, jobs)
    moved = [m for m in caplog.messages if m.startswith("mov")]
    total = len(before)
    assert moved[0] == f"moving the fold states of {total} jobs into {keys.jobs}"
    assert any(m.endswith(f" of {total} fold states") for m in moved[1:-1])
    assert moved[-1] == (f"moved {total} fold states into {keys.jobs}; {keys.folds}, the "
                         f"group sets and {keys.alive} are gone")


async def test_an_upgrade_without_the_lease_writes_nothing(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    public = orjson.dumps({"id": "a", "model_name": None})
    r.hset(keys.jobs, "a", public)
    r.hset(keys.folds, "a", b"{}")
    r.hset(keys.models, "null", b"{}")
    r.sadd(keys.group("null"), "a")
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0))
    try:
        await refused_unless_fenced(
            r, keys, worker, lambda applied: upgrade.upgrade(worker.store, worker.lease, applied))
    finally:
        await worker.redis.aclose()
    assert r.hget(keys.jobs, "a") == public and r.hget(keys.folds, "a") == b"{}"
    assert r.smembers(keys.group("null")) == {b"a"}
