"""The order sets and the model rows of updates (docs/state.md, What is stored): what each
commit writes, checked against a from-scratch fold on a real Redis, through the real worker;
the backfill of state older than the sets; and with partitions, a job that moves."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.cluster import RedisCluster

from monitor.decoded import parse_event
from monitor.keys import Keys, model_field
from monitor.partitions import Partitioning
from monitor.records import public_state
from monitor.rules import Board, Group
from monitor.settings import WorkerSettings
from tests.gateway_helpers import Drain, draining_worker, refused_unless_fenced
from tests.helpers import ts_of
from tests.redis_cluster import LocalCluster, flush
from tests.reference import reference_views
from worker import order
from worker.batch import Commit, build_commit, decode, fold
from worker.consumer import Worker, run_worker

pytestmark = pytest.mark.timeout(120)

MODELS = ["org/alpha", "org/beta", "gamma", None]
K = Keys("t:")

Sets = dict[str, dict[str, float]]  # order set -> job id -> score


# --- What a commit writes (pure) ----------------------------------------------------------------


def _commit_of_second_batch(first: list[dict[str, Any]], second: list[dict[str, Any]]
                            ) -> Commit:
    """The commit of ``second``, folded on a board that holds ``first`` as stored."""
    board = Board()
    n = 0
    for batch in (first, second):
        items = decode([(f"{2_000_000_000_000 + n + i}-0", {b"data": orjson.dumps(e)})
                        for i, e in enumerate(batch)])
        n += len(batch)
        if not items:
            continue
        commit = build_commit(board, fold(board, items), K, {})
    return commit


STARTED = {"type": "job_started", "job_id": "a", "model_name": "m", "ts": 10.0}
live, archived = K.order(False), K.order(True)
live_m, archived_m = K.order(False, "m"), K.order(True, "m")


@pytest.mark.parametrize("first, second, added, removed", [
    pytest.param([], [STARTED], {live: [b"-10.0", "a"], live_m: [b"-10.0", "a"]}, {},
                 id="a new job enters both its sets"),
    pytest.param([STARTED], [{"type": "metrics", "job_id": "a", "eval_loss": 0.5, "ts": 11.0},
                             {"type": "job_heartbeat", "job_id": "a"}], {}, {},
                 id="metrics and heartbeats write nothing"),
    pytest.param([STARTED], [{"type": "metrics", "job_id": "a", "loss": 0.5, "ts": 4.0}],
                 {live: [b"-4.0", "a"], live_m: [b"-4.0", "a"]}, {},
                 id="an earlier event moves created_at: new scores"),
    pytest.param([STARTED], [{"type": "job_archived", "job_id": "a"}],
                 {archived: [b"-10.0", "a"], archived_m: [b"-10.0", "a"]},
                 {live: ["a"], live_m: ["a"]}, id="archived: from the live sets to the others"),
    pytest.param([STARTED], [{"type": "job_archived", "job_id": "a"},
                             {"type": "job_restored", "job_id": "a"}], {}, {},
                 id="archived and restored in one batch: nothing"),
    pytest.param([{**STARTED, "model_name": None}],
                 [{"type": "metrics", "job_id": "a", "model_name": "m", "loss": 1.0, "ts": 12.0}],
                 {live_m: [b"-10.0", "a"]}, {K.order(False, None): ["a"]},
                 id="a model named later: only the model sets change"),
    pytest.param([], [{"type": "job_archived", "job_id": "a", "ts": 3.0}],
                 {archived: [b"-3.0", "a"], K.order(True, None): [b"-3.0", "a"]}, {},
                 id="a job created archived"),
])
def test_a_commit_writes_the_order_sets_only_when_a_place_changed(
        first: list[dict[str, Any]], second: list[dict[str, Any]],
        added: dict[str, list[Any]], removed: dict[str, list[str]]) -> None:
    commit = _commit_of_second_batch(first, second)
    assert commit.order_add == added
    assert commit.order_remove == removed


def test_an_update_carries_the_model_rows_written_and_a_zero_row_for_a_group_gone() -> None:
    commit = _commit_of_second_batch(
        [{"type": "metrics", "job_id": "a", "eval_loss": 0.5, "ts": 10.0}],
        [{"type": "metrics", "job_id": "a", "model_name": "org/m", "loss": 1.0, "ts": 12.0}])
    assert commit.update is not None
    update = orjson.loads(commit.update)
    assert list(update) == ["jobs", "models"]  # "jobs" first: readers slice the body
    assert [v["id"] for v in update["jobs"]] == ["a"]
    rows = {row["model_name"]: row for row in update["models"]}
    assert rows == {
        None: {"model_name": None, "model_display": "Unknown Model", "job_count": 0,
               "archived_count": 0, "best_job_id": None, "best_eval_loss": None},
        "org/m": {"model_name": "org/m", "model_display": "org/m", "job_count": 1,
                  "archived_count": 0, "best_job_id": "a", "best_eval_loss": 0.5},
    }
    assert commit.models == {model_field("org/m"): orjson.dumps(rows["org/m"])}
    assert commit.models_gone == [model_field(None)]


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=0, allow_infinity=False, allow_nan=False))
def test_an_order_score_reads_back_as_minus_created_at(created_at: float) -> None:
    score = order.score_of(order.Place("m", False, created_at))
    assert float(score) == -created_at  # what Redis's ZADD reads (strtod), to the last bit
    assert float(score) == float(repr(-created_at))


# --- Through the real worker ---------------------------------------------------------------------


def scenario(rng: random.Random, jobs: int) -> list[dict[str, Any]]:
    """Events of ``jobs`` jobs, interleaved: some send metrics before job_started (unnamed,
    earlier), some name their model only later, some arrive late with an earlier time, some
    are archived and restored, some finish; one is created by its archiving."""
    per_job = []
    for j in range(jobs):
        job, model = f"job-{j}", MODELS[j % len(MODELS)]
        t0 = 1000.0 + 10 * j
        events: list[dict[str, Any]] = [{"type": "job_started", "job_id": job, "ts": t0,
                                         "model_name": model if j % 3 else None}]
        for step in range(1, rng.randint(2, 7)):
            event = {"type": "metrics", "job_id": job, "step": step, "ts": t0 + step,
                     "loss": round(rng.uniform(0.1, 2), 3)}
            if rng.random() < 0.6:
                event["eval_loss"] = round(rng.uniform(0.2, 1.5), 3)
            events.append(event)
        if j % 3 == 0 and model is not None:  # the model named by a later event
            events.insert(rng.randint(2, len(events)), {
                "type": "metrics", "job_id": job, "model_name": model, "loss": 1.0,
                "ts": t0 + 8})
        if j % 4 == 1:  # metrics before job_started, without a model, earlier
            events.insert(0, {"type": "metrics", "job_id": job, "step": 0, "loss": 3.0,
                              "ts": t0 - 5})
        if j % 5 == 2:  # arrives late, from before everything else
            events.append({"type": "metrics", "job_id": job, "loss": 2.5, "ts": t0 - 7})
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            events.insert(rng.randint(1, len(events)),
                          {"type": rng.choice(["job_archived", "job_restored"]), "job_id": job})
        if rng.random() < 0.5:
            events.append({"type": "job_finished", "job_id": job,
                           "status": rng.choice(["completed", "failed"]), "ts": t0 + 9})
        per_job.append(events)
    per_job.append([{"type": "job_archived", "job_id": "archived-first", "ts": 900.0},
                    {"type": "metrics", "job_id": "archived-first", "eval_loss": 0.1,
                     "ts": 901.0}])
    out = []
    while any(per_job):
        out.append(rng.choice([e for e in per_job if e]).pop(0))
    return out


def expected_sets(keys: Keys, states: dict[str, dict[str, Any]]) -> Sets:
    """The order sets ``states`` (job states or views, by id) call for."""
    out: Sets = {}
    for state in states.values():
        for key in (keys.order(state["archived"]),
                    keys.order(state["archived"], state["model_name"])):
            out.setdefault(key, {})[state["id"]] = -state["created_at"]
    return out


def stored_sets(client: Any, keys: Keys) -> Sets:
    out: Sets = {}
    for key in client.scan_iter(match=f"{keys.prefix}order:*", count=1000):
        name = key.decode()
        if name != keys.order_built:
            out[name] = {m.decode(): s for m, s in client.zrange(name, 0, -1, withscores=True)}
    return out


def stored_jobs(client: Any, keys: Keys) -> dict[str, dict[str, Any]]:
    return {k.decode(): public_state(v) for k, v in client.hgetall(keys.jobs).items()}


def zero_row(model: str | None) -> dict[str, Any]:
    return Group(model).summary()


def check_model_rows(client: Any, keys: Keys) -> list[dict[str, Any]]:
    """Every update is ``{"jobs", "models"}``, and the last row each model had in them is its
    row in ``<prefix>models``, or one of zeros for a model whose group is gone; the updates."""
    last: dict[str, dict[str, Any]] = {}
    updates = []
    for _, fields in client.xrange(keys.updates):
        update = orjson.loads(fields[b"data"])
        assert list(update) == ["jobs", "models"]
        assert update["jobs"] or update["models"]
        updates.append(update)
        for row in update["models"]:
            last[model_field(row["model_name"])] = row
    rows = {k.decode(): orjson.loads(v) for k, v in client.hgetall(keys.models).items()}
    assert set(rows) <= set(last)
    for field, row in last.items():
        assert row == rows.get(field, zero_row(orjson.loads(field))), field
    return updates




@pytest.fixture
async def drain(redis_url: str, keys: Keys, r: redis.Redis) -> AsyncIterator[Drain]:
    """A worker in this event loop (batches of 7); ``await drain()`` waits until it applied
    every entry."""
    async with draining_worker(redis_url, keys, r, batch_size=7,
                               timeout=20) as wait:
        yield wait


def publish(r: redis.Redis, keys: Keys, events: list[dict[str, Any]]) -> list[str]:
    with r.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(keys.events, {"data": orjson.dumps(event)})
        return [i.decode() for i in pipe.execute()]


async def test_the_order_sets_and_model_rows_follow_every_commit(
        r: redis.Redis, keys: Keys, drain: Drain) -> None:
    rng = random.Random(17)
    events = scenario(rng, 40)
    stream = []
    at = 0
    while at < len(events):
        chunk = events[at : at + rng.randint(1, 40)]
        at += len(chunk)
        for entry_id, event in zip(publish(r, keys, chunk), chunk):
            parsed = parse_event(orjson.dumps(event))
            pos = tuple(int(x) for x in entry_id.split("-"))
            stream.append((pos, ts_of(parsed, pos), parsed))  # type: ignore[arg-type]
        await drain()
        jobs = stored_jobs(r, keys)
        assert stored_sets(r, keys) == expected_sets(keys, jobs)
        assert expected_sets(keys, reference_views(stream)) == expected_sets(keys, jobs)
        check_model_rows(r, keys)
    views = reference_views(stream)
    assert any(v["archived"] for v in views.values())
    assert any(v["archived"] and v["model_name"] is not None for v in views.values())
    assert r.get(keys.order_built) == b"1"  # a fresh deployment: marked complete at once


async def test_metrics_of_known_jobs_write_no_order_command(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=1000))
    sent: list[Commit] = []
    commit = worker.store.commit

    async def recording(c: Commit, *args: Any, **kwargs: Any) -> str | None:
        sent.append(c)
        return await commit(c, *args, **kwargs)

    worker.store.commit = recording  # type: ignore[method-assign]
    await worker.store.ensure_group()
    try:
        publish(r, keys, [{"type": "job_started", "job_id": f"j{i}", "model_name": "m",
                           "ts": 100.0 + i} for i in range(50)])
        await worker.step()
        assert sum(len(ids) for ids in sent[-1].order_add.values()) == 2 * 2 * 50
        publish(r, keys, [{"type": "metrics", "job_id": f"j{i % 50}", "step": i,
                           "eval_loss": 1.0 / (1 + i), "ts": 200.0 + i} for i in range(500)])
        await worker.step()
        assert (sent[-1].order_add, sent[-1].order_remove) == ({}, {})
        assert stored_sets(r, keys) == expected_sets(keys, stored_jobs(r, keys))
    finally:
        await worker.redis.aclose()


# --- Backfill -----------------------------------------------------------------------------------


def _forget_order(r: redis.Redis, keys: Keys) -> None:
    """As a deployment older than the order sets: none of them, no marker."""
    for key in [*stored_sets(r, keys), keys.order_built]:
        r.delete(key)


async def test_state_older_than_the_order_sets_is_indexed_when_a_worker_takes_the_lease(
        r: redis.Redis, keys: Keys, drain: Drain, redis_url: str) -> None:
    publish(r, keys, scenario(random.Random(3), 30))
    await drain()
    want = stored_sets(r, keys)
    assert want == expected_sets(keys, stored_jobs(r, keys))
    _forget_order(r, keys)
    r.delete(keys.lease)  # the worker of the fixture stalls: another takes over

    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix))
    try:
        await worker.step()
        assert worker.leading
    finally:
        await worker.redis.aclose()
    assert stored_sets(r, keys) == want
    assert r.get(keys.order_built) == b"1"


async def test_a_backfill_cut_short_is_done_again_whole_and_logs_its_progress(
        redis_url: str, r: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    jobs = {f"j{i}": {"id": f"j{i}", "model_name": MODELS[i % 4], "archived": i % 7 == 0,
                      "created_at": 1000.0 + i * 0.5} for i in range(5000)}
    with r.pipeline(transaction=False) as pipe:
        for job_id, state in jobs.items():
            pipe.hset(keys.jobs, job_id, orjson.dumps(state))
        pipe.execute()
    monkeypatch.setattr(order, "BACKFILL_CHUNK", 500)
    monkeypatch.setattr(order, "PROGRESS_EVERY", 0.0)
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0)

    class Died(Exception):
        pass

    first = Worker(settings)
    write = first.store.write_fenced
    chunks = 0

    async def dies_after_three_chunks(*args: Any) -> list[Any]:
        nonlocal chunks
        chunks += 1
        if chunks > 3:
            raise Died
        return await write(*args)

    first.store.write_fenced = dies_after_three_chunks  # type: ignore[method-assign]
    await first.store.ensure_group()
    try:
        with pytest.raises(Died):
            await first.step()
    finally:
        await first.redis.aclose()
    assert 0 < sum(map(len, stored_sets(r, keys).values())) < 2 * 5000
    assert r.get(keys.order_built) is None
    r.delete(keys.lease)

    caplog.set_level(logging.INFO, "monitor.worker")
    second = Worker(settings)
    try:
        await second.step()
    finally:
        await second.redis.aclose()
    assert stored_sets(r, keys) == expected_sets(keys, jobs)
    assert r.get(keys.order_built) == b"1"
    progress = [m for m in caplog.messages if m.startswith("indexed ")]
    assert progress[-1] == "indexed 5,000 jobs: the order sets are complete"
    assert any(m.endswith(" of 5,000 jobs") for m in progress[:-1])


async def test_a_backfill_without_the_lease_writes_nothing(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    r.hset(keys.jobs, "a", orjson.dumps({"id": "a", "model_name": None, "archived": False,
                                         "created_at": 5.0}))
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0))
    try:
        await refused_unless_fenced(
            r, keys, worker, lambda applied: order.backfill(worker.store, worker.lease, applied))
        assert stored_sets(r, keys) == {} and r.get(keys.order_built) is None
        await order.backfill(worker.store, worker.lease, "7-0")
        assert stored_sets(r, keys) == {keys.order(False): {"a": -5.0},
                                        keys.order(False, None): {"a": -5.0}}
    finally:
        await worker.redis.aclose()


# --- Partitions ---------------------------------------------------------------------------------


def _model_in(part: Partitioning, partition: int) -> str:
    return next(f"org/model-{i}" for i in range(1000)
                if part.of_model(f"org/model-{i}") == partition)


@pytest.fixture(params=["redis", "cluster"])
def backend(request: pytest.FixtureRequest, redis_url: str) -> tuple[str, bool]:
    """The tests' Redis, or the session's Redis Cluster (skipped without its binaries, unless
    REQUIRE_CLUSTER=1)."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        flush(cluster)
        return cluster.url, True
    return redis_url, False


async def test_a_job_that_moves_partitions_is_in_one_partitions_sets(
        backend: tuple[str, bool]) -> None:
    url, cluster = backend
    part = Partitioning(f"order{random.getrandbits(32)}:", 4, cluster)
    client: Any = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    there = (part.unnamed + 1) % 4
    elsewhere, at_home = _model_in(part, there), _model_in(part, part.unnamed)
    # Every job starts without a model, in the unnamed partition; most then name one, of
    # another partition (they move) or of the unnamed one (they stay); one never does.
    events: list[dict[str, Any]] = []
    named = {f"m{i}": elsewhere if i % 3 else at_home for i in range(9)}
    for i, (job, model) in enumerate(named.items()):
        events += [{"type": "metrics", "job_id": job, "loss": 1.0, "eval_loss": 0.5 + i / 10,
                    "ts": 100.0 + i},
                   {"type": "job_archived", "job_id": job} if i == 4 else
                   {"type": "metrics", "job_id": job, "loss": 0.9, "ts": 101.0 + i},
                   {"type": "job_started", "job_id": job, "model_name": model, "ts": 99.0 + i},
                   {"type": "metrics", "job_id": job, "loss": 0.8, "ts": 102.0 + i}]
    events += [{"type": "metrics", "job_id": "lone", "loss": 1.0, "ts": 50.0},
               {"type": "job_started", "job_id": "lone", "model_name": elsewhere, "ts": 51.0}]
    events += [{"type": "metrics", "job_id": "never", "loss": 1.0, "ts": 60.0}]
    settings = WorkerSettings(redis_url=url, prefix=part.prefix, partitions=4,
                              redis_cluster=cluster, block=0.05, batch_size=5, lease_ttl=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        for event in events:
            client.xadd(part.ingress, {"data": orjson.dumps(event)})
        for _ in range(1200):
            if task.done():
                task.result()
            if sum(int(client.hget(k.stats, "applied") or 0)
                   for k in part.all_keys()) == len(events):
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("the workers did not apply every event")
        homes: dict[str, int] = {}
        for index, keys in enumerate(part.all_keys()):
            jobs = stored_jobs(client, keys)
            assert stored_sets(client, keys) == expected_sets(keys, jobs), index
            everyone = {j for k in (keys.order(False), keys.order(True))
                        for j in stored_sets(client, keys).get(k, {})}
            assert everyone == set(jobs)
            for job_id in jobs:
                assert job_id not in homes, f"{job_id} in two partitions"
                homes[job_id] = index
            check_model_rows(client, keys)
        assert homes == {**{job: part.of_model(model) for job, model in named.items()},
                         "lone": there, "never": part.unnamed}
        moved = stored_jobs(client, part.keys(there))
        assert moved["m4"]["archived"] and moved["m4"]["created_at"] == 103.0
        assert client.zscore(part.keys(there).order(True, elsewhere), "m4") == -103.0
        # The unnamed partition keeps "never" alone in the unnamed group; "lone" left it.
        unnamed = part.keys(part.unnamed)
        assert client.zrange(unnamed.order(False, None), 0, -1) == [b"never"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        if not cluster:
            for key in client.scan_iter(match=f"{part.prefix}*", count=1000):
                client.delete(key)
        client.close()


async def test_a_partition_whose_group_empties_by_a_move_sends_its_zero_row(
        redis_url: str, r: redis.Redis) -> None:
    """The move's commit changes no view there, only the row of the group it emptied: it
    still writes an update, so a client's counts go to 0."""
    part = Partitioning(f"order{random.getrandbits(32)}:", 4)
    there = (part.unnamed + 1) % 4
    model = _model_in(part, there)
    settings = WorkerSettings(redis_url=redis_url, prefix=part.prefix, partitions=4,
                              block=0.05, lease_ttl=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    unnamed = part.keys(part.unnamed)
    try:
        r.xadd(part.ingress, {"data": orjson.dumps(
            {"type": "metrics", "job_id": "a", "eval_loss": 0.5, "ts": 1.0})})
        for _ in range(400):
            if r.hexists(unnamed.jobs, "a"):
                break
            await asyncio.sleep(0.025)
        r.xadd(part.ingress, {"data": orjson.dumps(
            {"type": "job_started", "job_id": "a", "model_name": model, "ts": 2.0})})
        for _ in range(400):
            if r.hexists(part.keys(there).jobs, "a"):
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("the job did not move")
        last = orjson.loads(r.xrevrange(unnamed.updates, count=1)[0][1][b"data"])
        assert last == {"jobs": [], "models": [zero_row(None)]}
        assert stored_sets(r, unnamed) == {} and r.hlen(unnamed.models) == 0
        assert stored_sets(r, part.keys(there)) == {
            part.keys(there).order(False): {"a": -1.0},
            part.keys(there).order(False, model): {"a": -1.0}}
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        for key in r.scan_iter(match=f"{part.prefix}*", count=1000):
            r.delete(key)

