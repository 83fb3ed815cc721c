"""The worker on a real Redis: events in, committed job views, model rows and updates out."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis
from redis.exceptions import ResponseError

from monitor import history
from monitor.keys import GROUP, Keys, model_field
from monitor.records import public_state, split
from monitor.rules import parse_pos
from monitor.sdk import start_run
from monitor.settings import WorkerSettings
from tests.gateway_helpers import Drain, draining_worker, run_until_applied
from tests.helpers import read_not_committed
from worker.batch import Commit
from worker.consumer import Worker
from worker.lease import Lease
from worker.pipeline import Batch
from worker.store import LeaseLost

Q = "Qwen/Qwen2.5-7B-Instruct"

pytestmark = pytest.mark.timeout(60)


def xadd(r: redis.Redis, keys: Keys, event: dict[str, Any] | bytes) -> str:
    data = event if isinstance(event, bytes) else orjson.dumps(event)
    return r.xadd(keys.events, {"data": data}).decode()


def stored_jobs(r: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    return {k.decode(): public_state(v) for k, v in r.hgetall(keys.jobs).items()}


def group(r: redis.Redis, keys: Keys, model: str | None) -> set[str]:
    """A model group's job ids: those of its two order sets."""
    return {m.decode() for archived in (False, True)
            for m in r.zrange(keys.order(archived, model), 0, -1)}


def updates(r: redis.Redis, keys: Keys) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(i.decode(), orjson.loads(f[b"data"])["jobs"]) for i, f in r.xrange(keys.updates)]




@pytest.fixture
async def drain(redis_url: str, keys: Keys, r: redis.Redis) -> AsyncIterator[Drain]:
    """Run a worker in this event loop; ``await drain()`` waits until every entry is applied."""
    async with draining_worker(redis_url, keys, r, batch_size=50,
                               timeout=10) as wait:
        yield wait


async def test_raw_events_become_job_views_model_rows_and_one_update_per_commit(
        r: redis.Redis, keys: Keys, drain: Drain) -> None:
    xadd(r, keys, {"type": "job_started", "job_id": "a", "model_name": Q, "total_epochs": 12,
                   "ts": 100.0, "config": {"lr": 2e-4}})
    xadd(r, keys, {"type": "metrics", "job_id": "a", "step": 5, "epoch": 5, "loss": 0.2,
                   "eval_loss": 0.2345, "ts": 101.0})
    xadd(r, keys, {"type": "checkpoint", "job_id": "a", "path": "checkpoint-5", "step": 5,
                   "epoch": 5, "ts": 101.5})
    xadd(r, keys, {"type": "job_started", "job_id": "b", "model_name": Q, "total_epochs": 12,
                   "ts": 102.0})
    xadd(r, keys, {"type": "metrics", "job_id": "b", "step": 3, "epoch": 3,
                   "eval_loss": 0.3456, "ts": 103.0})
    await drain()

    jobs = stored_jobs(r, keys)
    assert jobs["a"] == {
        "id": "a", "model_name": Q, "model_display": Q, "name": None, "status": "running",
        "archived": False, "epoch": 5.0, "step": 5, "loss": 0.2, "eval_loss": 0.2345,
        "best_eval_loss": 0.2345,
        "best_epoch": 5.0, "best_step": 5, "best_checkpoint_path": "checkpoint-5",
        "final_loss": None, "final_eval_loss": None, "total_epochs": 12, "total_steps": None,
        "created_at": 100.0, "updated_at": 101.5, "finished_at": None, "gpu_count": None, "error": None,
        "eval_count": 1, "forecast": None, "autostop": None,
        "stop_requested": None, "stale": False, "last_seen": None,
    }
    assert orjson.loads(r.hget(keys.configs, "a")) == {"lr": 2e-4}
    assert orjson.loads(r.hget(keys.models, model_field(Q))) == {
        "model_name": Q, "model_display": Q, "job_count": 2, "archived_count": 0,
        "best_job_id": "a", "best_eval_loss": 0.2345,
    }
    last_views = {}
    for _, views in updates(r, keys):
        last_views.update({v["id"]: v for v in views})
    assert last_views["b"]["delta_pct"] == pytest.approx(47.3774, abs=1e-4)
    assert last_views["b"]["tier"] == "red"
    assert last_views["a"]["is_best"] is True

    # Archiving the best: one commit carries the new best and every moved delta.
    xadd(r, keys, {"type": "job_archived", "job_id": "a"})
    await drain()
    _, views = updates(r, keys)[-1]
    assert {v["id"]: (v["is_best"], v["archived"], v["delta_pct"]) for v in views} == {
        "a": (False, True, None), "b": (True, False, None)}
    assert read_not_committed(r, keys) == 0


FORECAST = {"at_step": 5, "horizon_step": 50, "best_p10": 0.2, "best_p50": 0.22,
            "best_p90": 0.23, "p_beat_best": 0.01, "verdict": "cannot_win", "gpu_hours_left": 2.5}


async def test_a_forecast_is_folded_into_its_running_view_once_and_hidden_when_finished(
        r: redis.Redis, keys: Keys, drain: Drain) -> None:
    xadd(r, keys, {"type": "job_started", "job_id": "a", "model_name": Q, "ts": 100.0,
                   "total_steps": 50})
    xadd(r, keys, {"type": "metrics", "job_id": "a", "step": 5, "eval_loss": 0.25, "ts": 101.0})
    xadd(r, keys, {"type": "job_forecast", "job_id": "a", "forecast": FORECAST, "ts": 900.0})
    xadd(r, keys, {"type": "job_forecast", "job_id": "gone", "forecast": FORECAST})
    await drain()
    job = stored_jobs(r, keys)["a"]
    assert job["forecast"] == FORECAST
    assert (job["created_at"], job["updated_at"]) == (100.0, 101.0)  # a forecast is no event
    assert "gone" not in stored_jobs(r, keys)
    last = updates(r, keys)[-1][1]
    assert [(v["id"], v["forecast"]) for v in last] == [("a", FORECAST)]

    # The same forecast again changes nothing and sends no update.
    versions = len(updates(r, keys))
    xadd(r, keys, {"type": "job_forecast", "job_id": "a", "forecast": FORECAST})
    await drain()
    assert len(updates(r, keys)) == versions

    xadd(r, keys, {"type": "job_finished", "job_id": "a", "status": "completed", "ts": 102.0})
    await drain()
    assert updates(r, keys)[-1][1][0]["forecast"] is None


async def test_a_malformed_entry_is_dead_lettered_and_its_neighbours_applied(
        r: redis.Redis, keys: Keys, drain: Drain) -> None:
    xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.5})
    bad = [
        b"not json",
        orjson.dumps({"type": "metrics", "job_id": "a", "loss": "0.5"}),
        b'{"type": "metrics", "job_id": "a", "loss": NaN}',
        orjson.dumps({"type": "telemetry", "job_id": "a"}),
        orjson.dumps({"type": "metrics", "job_id": "bad id!", "loss": 1.0}),
        orjson.dumps({"type": "job_started", "job_id": "a", "config": {"x": "y" * 70_000}}),
    ]
    bad_ids = [xadd(r, keys, b) for b in bad]
    no_data = r.xadd(keys.events, {"other": "x"}).decode()
    xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.4, "step": 1})
    await drain()

    dead = [(f[b"id"].decode(), f[b"data"], f[b"reason"].decode())
            for _, f in r.xrange(keys.dead)]
    assert [d[0] for d in dead] == [*bad_ids, no_data]
    assert dead[0][2].startswith("Invalid JSON")
    assert dead[1][2] == "metrics.loss: Input should be a valid number"
    assert dead[2][2] == "metrics.loss: Input should be a finite number"
    assert "telemetry" in dead[3][2]
    assert dead[4][2].startswith("metrics.job_id: String should match pattern")
    assert dead[5][2] == ("job_started.config: Value error, config is 70008 bytes as JSON, "
                          "at most 65536")
    assert len(dead[5][1]) == 4096  # the raw data, cut
    assert dead[6][2] == "entry has no data field"
    assert stored_jobs(r, keys)["a"]["loss"] == 0.4
    stats = {k.decode(): int(v) for k, v in r.hgetall(keys.stats).items()}
    assert stats == {"applied": 2, "dead": 7}


async def test_sdk_and_raw_publishers_give_the_same_views(
        r: redis.Redis, keys: Keys, redis_url: str, drain: Drain) -> None:
    with start_run(Q, job_id="sdk-run", total_epochs=2, redis_url=redis_url,
                   prefix=keys.prefix) as run:
        run.log(epoch=1, step=10, loss=0.9, eval_loss=0.8)
        run.checkpoint("checkpoint-10", epoch=1, step=10)
        run.log(epoch=2, step=20, loss=0.7, eval_loss=0.85)
        run.checkpoint("checkpoint-20", epoch=2, step=20)
    xadd(r, keys, {"type": "job_started", "job_id": "raw-run", "model_name": Q})
    xadd(r, keys, {"type": "metrics", "job_id": "raw-run", "step": 10, "eval_loss": 0.88})
    xadd(r, keys, {"type": "job_finished", "job_id": "raw-run", "status": "cancelled"})
    await drain()

    jobs = stored_jobs(r, keys)
    sdk = jobs["sdk-run"]
    assert (sdk["status"], sdk["best_eval_loss"], sdk["best_checkpoint_path"], sdk["loss"],
            sdk["final_loss"], sdk["final_eval_loss"], sdk["total_epochs"]) == (
        "completed", 0.8, "checkpoint-10", 0.7, 0.7, 0.85, 2)
    assert jobs["raw-run"]["status"] == "cancelled"
    views = {}
    for _, batch in updates(r, keys):
        views.update({v["id"]: v for v in batch})
    assert views["sdk-run"]["is_best"] is True
    assert views["raw-run"]["delta_pct"] == pytest.approx(10.0)
    assert views["raw-run"]["tier"] == "yellow"
    points = [orjson.loads(p) for p in r.lrange(keys.metrics("sdk-run"), 0, -1)]
    assert [(p["step"], p["loss"], p["eval_loss"]) for p in points] == [
        (10, 0.9, 0.8), (20, 0.7, 0.85)]


async def test_metric_history_keeps_the_first_points_exactly_then_thins(
        r: redis.Redis, keys: Keys, drain: Drain) -> None:
    n = 2600
    events = [{"type": "metrics", "job_id": "long", "step": i, "loss": 1.0 / (i + 1),
               "eval_loss": 0.01 if i == 2201 else 0.5, "ts": 1.0} for i in range(n)]
    with r.pipeline(transaction=False) as pipe:
        for e in events:
            pipe.xadd(keys.events, {"data": orjson.dumps(e)})
        pipe.execute()
    await drain()

    stored = [orjson.loads(p) for p in r.lrange(keys.metrics("long"), 0, -1)]
    points = [{"step": e["step"], "epoch": None, "loss": e["loss"], "eval_loss": e["eval_loss"],
               "ts": 1.0} for e in events]
    assert stored == history.extend([], points)  # the same however the worker batched them
    steps = [p["step"] for p in stored]
    assert steps[:1000] == list(range(1000))
    assert steps[-1] == n - 1 and 2201 in steps
    assert len(stored) < history.LIMIT
    assert stored_jobs(r, keys)["long"]["best_step"] == 2201


async def test_a_second_worker_stands_by_and_a_stale_one_cannot_commit(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0)
    first, second = Worker(settings), Worker(settings)
    try:
        await first.store.ensure_group()
        xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.5})
        await first.step()
        assert first.leading
        await second.step()
        assert not second.leading  # standing by: the lease is taken

        # The first worker stalls past its lease; the second takes over and applies.
        r.delete(keys.lease)
        await second.step()
        assert second.leading
        xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.4})
        await second.step()
        assert stored_jobs(r, keys)["a"]["loss"] == 0.4

        # The stale first worker can neither read nor commit any more.
        first.lease.held = True  # it still believes it holds the lease
        with pytest.raises(LeaseLost):
            await first.step()
        assert read_not_committed(r, keys) == 0
    finally:
        for w in (first, second):
            await w.redis.aclose()


async def test_entries_read_but_never_committed_are_applied_once(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0)
    crashed = Worker(settings)
    await crashed.store.ensure_group()
    for loss in (0.9, 0.8, 0.7):
        xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": loss, "ts": 1.0})
    # It read the entries and died before committing anything.
    assert await crashed.lease.hold()
    read = await crashed.store.read(crashed.lease.token, 2)
    assert len(read) == 2
    assert read_not_committed(r, keys) == 2
    await crashed.redis.aclose()
    r.delete(keys.lease)

    after = Worker(settings)
    try:
        for _ in range(3):
            await after.step()
        assert read_not_committed(r, keys) == 0
        assert [orjson.loads(p)["loss"] for p in r.lrange(keys.metrics("a"), 0, -1)] == \
            [0.9, 0.8, 0.7]
        consumers = r.xinfo_consumers(keys.events, GROUP)
        assert [c["name"].decode() for c in consumers] == [after.name]
    finally:
        await after.redis.aclose()


async def test_worker_waits_for_redis_and_carries_on(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    keys = Keys("t:")
    settings = WorkerSettings(redis_url=server.url, prefix=keys.prefix, block=0.05)
    worker = Worker(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.5)  # Redis is not there yet: the worker retries
    assert not task.done()
    server.start()
    client = redis.Redis.from_url(server.url)
    xadd(client, keys, {"type": "metrics", "job_id": "a", "loss": 0.5})
    for _ in range(200):
        if client.hget(keys.jobs, "a"):
            break
        await asyncio.sleep(0.05)
    assert public_state(client.hget(keys.jobs, "a"))["loss"] == 0.5
    stop.set()
    await asyncio.wait_for(task, 10)
    client.close()


async def test_the_events_stream_is_trimmed_only_up_to_what_is_applied(
        r: redis.Redis, keys: Keys, drain: Drain) -> None:
    with r.pipeline(transaction=False) as pipe:
        for i in range(3000):
            pipe.xadd(keys.events, {"data": orjson.dumps({"type": "metrics", "job_id": "a",
                                                          "loss": 1.0, "step": i})})
        pipe.execute()
    await drain()
    assert r.xlen(keys.events) < 3000  # applied entries go
    applied = r.get(keys.applied)
    assert r.xrange(keys.events, min=applied, max=applied)  # never the last applied one



class Crash(Exception):
    """Stands for the process dying at this exact point."""


async def _a_restart_applies_nothing_twice(settings: WorkerSettings, r: redis.Redis,
                                          keys: Keys) -> None:
    """A new worker applies none of the committed entries (losses 0.9, 0.8, 0.7 of job "a")
    again."""
    after = Worker(settings)
    try:
        await after.step()
        assert read_not_committed(r, keys) == 0
        assert [orjson.loads(p)["loss"] for p in r.lrange(keys.metrics("a"), 0, -1)] == \
            [0.9, 0.8, 0.7]
    finally:
        await after.redis.aclose()


async def test_a_crash_after_a_commit_landed_applies_nothing_twice(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """The worker dies after its commit landed and before it heard so, with one more entry
    read ahead: the next worker applies only that one."""
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0)
    crashed = Worker(settings)
    await crashed.store.ensure_group()
    ids = [xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": loss})
           for loss in (0.9, 0.8, 0.7)]
    commit = crashed.store.commit

    async def commit_then_die(*args: Any, **kwargs: Any) -> str | None:
        await commit(*args, **kwargs)
        xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.6})
        await crashed.store.read(crashed.lease.token, 10)  # read ahead, never committed
        raise Crash

    crashed.store.commit = commit_then_die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await crashed.step()
    await crashed.redis.aclose()
    assert r.get(keys.applied).decode() == ids[-1]
    assert read_not_committed(r, keys) == 1
    r.delete(keys.lease)

    after = Worker(settings)
    try:
        await after.step()
        assert [orjson.loads(p)["loss"] for p in r.lrange(keys.metrics("a"), 0, -1)] == \
            [0.9, 0.8, 0.7, 0.6]
        assert read_not_committed(r, keys) == 0
    finally:
        await after.redis.aclose()
    assert int(r.hget(keys.stats, "applied")) == 4
    assert len(r.xrange(keys.updates)) == 2


async def test_a_crash_after_a_commit_landed_with_nothing_read_ahead(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """As above, with nothing read past the commit: the next worker applies nothing."""
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0)
    crashed = Worker(settings)
    await crashed.store.ensure_group()
    for loss in (0.9, 0.8, 0.7):
        xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": loss})
    commit = crashed.store.commit

    async def commit_then_die(*args: Any, **kwargs: Any) -> str | None:
        await commit(*args, **kwargs)
        raise Crash

    crashed.store.commit = commit_then_die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await crashed.step()
    await crashed.redis.aclose()
    assert read_not_committed(r, keys) == 0
    r.delete(keys.lease)

    await _a_restart_applies_nothing_twice(settings, r, keys)
    assert int(r.hget(keys.stats, "applied")) == 3
    assert len(r.xrange(keys.updates)) == 1


def _losses_in_order(jobs: int, per_job: int) -> list[dict[str, Any]]:
    return [{"type": "metrics", "job_id": f"j{i % jobs}", "step": i // jobs,
             "loss": 1.0 / (1 + i), "eval_loss": 1.0 / (1 + i) + (i % 7) / 100,
             "ts": 1000.0 + i} for i in range(jobs * per_job)]


async def test_batches_folded_while_the_last_commit_runs_apply_everything_once(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """run() folds each full batch while the one before commits: 1,000 events in batches
    of 50 end exactly as the same events applied one batch at a time."""
    events = _losses_in_order(jobs=20, per_job=50)
    for event in events:
        xadd(r, keys, event)
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=50,
                              block=0.05)
    await run_until_applied(Worker(settings), r, keys, len(events))
    overlapped = (stored_jobs(r, keys), {f"j{i}": r.lrange(keys.metrics(f"j{i}"), 0, -1)
                                         for i in range(20)})
    assert int(r.hget(keys.stats, "applied")) == 1000 and r.hget(keys.stats, "duplicates") is None
    assert read_not_committed(r, keys) == 0

    other = Keys(keys.prefix + "plain:")
    with r.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(other.events, {"data": orjson.dumps(event)})
        pipe.execute()
    plain = Worker(WorkerSettings(redis_url=redis_url, prefix=other.prefix, batch_size=1000))
    try:
        await plain.store.ensure_group()
        await plain.step()
    finally:
        await plain.redis.aclose()
    assert overlapped == (stored_jobs(r, other), {f"j{i}": r.lrange(other.metrics(f"j{i}"), 0, -1)
                                                  for i in range(20)})


def _each_loss_applied_once(r: redis.Redis, keys: Keys, jobs: int = 10, per_job: int = 30
                            ) -> None:
    """The events of ``_losses_in_order(jobs, per_job)`` are each applied exactly once."""
    assert int(r.hget(keys.stats, "applied")) == jobs * per_job
    assert r.hget(keys.stats, "duplicates") is None
    for j in range(jobs):
        steps = [orjson.loads(p)["step"] for p in r.lrange(keys.metrics(f"j{j}"), 0, -1)]
        assert steps == list(range(per_job))


class FailsOnce:
    """An async method that raises ``ValueError(message)`` on its ``at``-th call, and
    otherwise does what ``method`` does; ``calls`` counts the calls."""

    def __init__(self, method: Callable[..., Awaitable[Any]], at: int, message: str) -> None:
        self.method, self.at, self.message = method, at, message
        self.calls = 0

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise ValueError(self.message)
        return await self.method(*args)


def _order_seen(redis_url: str, keys: Keys, on: threading.Event, out: list[str]) -> None:
    """Redis's MONITOR, until it sees a GET of ``<prefix>watched``: in the order Redis ran
    them, ``read`` for each read of ``keys``' events, ``load`` for each lookup of stored
    jobs, ``commit`` for each commit (its write of the applied id). ``on`` is set once it
    watches."""
    client = redis.Redis.from_url(redis_url)
    with client.monitor() as monitor:
        on.set()
        end = ["GET", f"{keys.prefix}watched"]
        while (command := monitor.next_command()["command"].split()) != end:
            if command[:1] == ["XREADGROUP"] and keys.events in command:
                out.append("read")
            elif command[:2] == ["HMGET", keys.jobs]:
                out.append("load")
            elif command[:2] == ["SET", keys.applied]:
                out.append("commit")
    client.close()


async def test_in_a_backlog_the_next_batch_is_read_and_loaded_before_the_commit_is_sent(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """Redis answers the read of the next batch and the lookup of its jobs before it runs
    the commit of the batch before: sent after that commit, they would wait for it, and the
    worker would wait with them."""
    for i in range(150):  # three batches of 50 runs that are new to the worker
        xadd(r, keys, {"type": "job_started", "job_id": f"n{i:03d}", "model_name": "m",
                       "ts": 1_700_000_000 + i})
    seen: list[str] = []
    on = threading.Event()
    watcher = threading.Thread(target=_order_seen, args=(redis_url, keys, on, seen))
    watcher.start()
    try:
        assert await asyncio.to_thread(on.wait, 10)
        settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=50,
                                  block=0.05)
        await run_until_applied(Worker(settings), r, keys, 150)
    finally:
        r.get(f"{keys.prefix}watched")
        await asyncio.to_thread(watcher.join, 10)
    assert seen[:10] == ["read", "load",
                         "read", "load", "commit",  # batch 2 read and loaded, then commit 1
                         "read", "load", "commit",
                         "read", "commit"]  # nothing more to read: commit 3
    assert int(r.hget(keys.stats, "applied")) == 150


async def test_event_ids_of_any_form_are_applied_once_across_batches_and_restarts(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """Ids not of the SDK's form live in the job's stored set, not in its fold state: re-sent
    in the same batch, in the batch folded while the last one commits, or after a restart,
    each is applied once."""
    rng = random.Random(7)
    fresh = [{"type": "metrics", "job_id": "j", "step": i, "loss": 1 / (1 + i),
              "event_id": f"{rng.getrandbits(64):016x}-{i}"} for i in range(300)]
    sent: list[dict[str, Any]] = []
    for event in fresh:
        sent.append(event)
        if rng.random() < 0.3:
            sent.append(rng.choice(sent))  # a retry, often of an event a batch or two back
    for event in sent:
        xadd(r, keys, event)
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=50,
                              block=0.05)
    await run_until_applied(Worker(settings), r, keys, 300)
    assert int(r.hget(keys.stats, "duplicates")) == len(sent) - 300
    assert r.scard(keys.seen("j")) == 300
    assert len(split(r.hget(keys.jobs, "j"))[1] or b"") < 300  # it does not grow with the ids
    steps = [orjson.loads(p)["step"] for p in r.lrange(keys.metrics("j"), 0, -1)]
    assert steps == list(range(300))

    later = [*rng.sample(fresh, 40), {**fresh[0], "event_id": "new-1", "step": 300}]
    for event in later:
        xadd(r, keys, event)
    await run_until_applied(Worker(settings), r, keys, 301)
    assert int(r.hget(keys.stats, "duplicates")) == len(sent) - 300 + 40
    assert orjson.loads(r.lrange(keys.metrics("j"), -1, -1)[0])["step"] == 300


async def test_a_commit_that_fails_while_the_next_batch_is_folded_loses_nothing(
        redis_url: str, keys: Keys, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """The failure of a commit left running surfaces while the next batch is being applied;
    the worker starts again from what is committed instead of going on past the failed
    batch, and every event still lands exactly once."""
    events = _losses_in_order(jobs=10, per_job=30)
    ids = [xadd(r, keys, event) for event in events]
    bad = ids[75]  # in the second batch of 50
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=50,
                                   block=0.05))
    commit = worker.store.commit

    async def fails_for_a_batch_holding_bad(batch: Commit, lease: Lease, expected: str,
                                            **kwargs: Any) -> str | None:
        holds_bad = parse_pos(expected) < parse_pos(bad) <= parse_pos(batch.applied)
        if holds_bad and batch.counts["applied"] > 1:  # a whole batch, not one entry at a time
            raise ValueError("a defect in the commit")
        return await commit(batch, lease, expected, **kwargs)

    worker.store.commit = fails_for_a_batch_holding_bad  # type: ignore[method-assign]
    await run_until_applied(worker, r, keys, len(events))
    _each_loss_applied_once(r, keys)
    assert read_not_committed(r, keys) == 0
    assert "a commit failed: ValueError: a defect in the commit" in caplog.text


async def test_a_lookup_that_fails_while_the_next_batch_is_prepared_loses_nothing(
        redis_url: str, keys: Keys, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """The lookup of the stored jobs of the next batch, made before the commit of the batch
    before is sent, fails once (a defect): neither batch is lost or applied twice."""
    events = _losses_in_order(jobs=10, per_job=30)
    for event in events:
        xadd(r, keys, event)
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=50,
                                   block=0.05))
    # Batch 1 is loaded on its own, batches 2 and 3 while they are prepared.
    lookup = FailsOnce(worker.store.load_jobs, 3, "a defect in a lookup")
    worker.store.load_jobs = lookup  # type: ignore[method-assign]
    await run_until_applied(worker, r, keys, len(events))
    assert lookup.calls > 3
    _each_loss_applied_once(r, keys)
    assert read_not_committed(r, keys) == 0
    assert "ValueError: a defect in a lookup" in caplog.text
    assert "one at a time" not in caplog.text  # the batch before was committed as it was


@pytest.mark.parametrize("strikes", ["lookup", "commit"])
async def test_a_partition_redoing_a_batch_one_at_a_time_skips_none_of_its_forwarded_entries(
        redis_url: str, keys: Keys, r: redis.Redis, strikes: str) -> None:
    """With partitions, entries the router forwarded carry their place in the ingress stream,
    and a fold moves the partition's position there past them. When a defect (in the lookup
    of the next batch, or in building this batch's commit) makes the worker fold a batch
    again, it starts from the position committed, so none is skipped as applied already."""
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, partitions=2,
                              batch_size=50, block=0.05)
    part = settings.partitioning
    index = part.of_model("m")
    own = part.keys(index)
    events = _losses_in_order(jobs=10, per_job=30)
    for n, event in enumerate(events, start=1):
        r.xadd(own.events, {"data": orjson.dumps({**event, "model_name": "m"}),
                            "src": f"in|{n}-0"})
    worker = Worker(settings, index)
    if strikes == "lookup":  # while the third batch is prepared
        worker.store.load_jobs = FailsOnce(  # type: ignore[method-assign]
            worker.store.load_jobs, 3, "a defect in a lookup")
    else:  # the second batch, whole
        worker._build_commit = FailsOnce(  # type: ignore[method-assign]
            worker._build_commit, 2, "a defect in a commit")
    await run_until_applied(worker, r, own, len(events))
    _each_loss_applied_once(r, own)
    assert r.hget(own.marks, "in") == b"300-0"


async def test_stopping_lets_a_commit_left_running_land_under_a_live_lease(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """Stop arrives while a full batch's commit is still running and takes longer than the
    lease lasts: the lease is renewed until it answers, so it lands, not the next worker."""
    ids = [xadd(r, keys, event) for event in _losses_in_order(jobs=5, per_job=20)]
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=50,
                                   block=0.05, lease_ttl=0.6))
    commit = worker.store.commit
    sent = asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> str | None:
        sent.set()
        await asyncio.sleep(1.5)  # 2.5 lease lifetimes
        return await commit(*args, **kwargs)

    worker.store.commit = slow  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(sent.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    applied = r.get(keys.applied)  # the batch stop came during may have gone through too
    assert applied is not None and applied.decode() in (ids[49], ids[99])
    assert int(r.hget(keys.stats, "applied")) == ids.index(applied.decode()) + 1


async def test_a_commit_of_thousands_of_runs_arrives_whole(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """4,200 runs of one model in one batch: the jobs hash alone gets 8,400 values in one
    command; every run and view arrives."""
    with r.pipeline(transaction=False) as pipe:
        for i in range(4200):
            pipe.xadd(keys.events, {"data": orjson.dumps(
                {"type": "job_started", "job_id": f"j{i}", "model_name": Q})})
        pipe.xadd(keys.events, {"data": orjson.dumps(
            {"type": "metrics", "job_id": "j7", "eval_loss": 0.5})})
        pipe.execute()
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=10_000))
    await worker.store.ensure_group()
    try:
        await worker.step()
        jobs = stored_jobs(r, keys)
        assert len(jobs) == 4200
        assert r.zcard(keys.order(False, Q)) == 4200
        model = orjson.loads(r.hget(keys.models, model_field(Q)))
        assert (model["best_job_id"], model["job_count"]) == ("j7", 4200)
        update = orjson.loads(r.xrevrange(keys.updates, count=1)[0][1][b"data"])
        assert len(update["jobs"]) == 4200  # a new best changes every view of the model
        assert read_not_committed(r, keys) == 0
        assert int(r.hget(keys.stats, "applied")) == 4201
    finally:
        await worker.redis.aclose()


async def test_a_command_failing_in_a_commit_applies_the_rest_once(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """MULTI/EXEC: the other writes, the applied id and the acknowledgements go through, so a
    restart does not apply the batch again."""
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0)
    first = Worker(settings)
    await first.store.ensure_group()
    ids = [xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": loss})
           for loss in (0.9, 0.8, 0.7)]
    r.set(keys.stats, "not a hash")  # HINCRBY on it fails: WRONGTYPE
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await first.step()
    finally:
        await first.redis.aclose()
    assert r.get(keys.applied).decode() == ids[-1]
    assert read_not_committed(r, keys) == 0
    assert len(r.xrange(keys.updates)) == 1
    r.delete(keys.stats, keys.lease)

    await _a_restart_applies_nothing_twice(settings, r, keys)


async def test_a_commit_without_the_lease_in_redis_writes_nothing(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """The worker believes it holds the lease, but Redis says another does: the script refuses."""
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0))
    await worker.store.ensure_group()
    xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.5})
    try:
        assert await worker.lease.hold()
        entries = await worker.store.read(worker.lease.token, 10)
        r.set(keys.lease, "another worker")
        with pytest.raises(LeaseLost):
            await worker._apply(Batch.of(entries), worker.pipeline.commit)
        assert r.get(keys.applied) is None
        assert r.hget(keys.jobs, "a") is None
        assert read_not_committed(r, keys) == 1
    finally:
        await worker.redis.aclose()


async def test_values_at_the_edges_never_stop_the_worker(
        r: redis.Redis, keys: Keys, drain: Drain) -> None:
    huge_step = xadd(r, keys, b'{"type":"metrics","job_id":"a","step":18446744073709551616,'
                              b'"loss":1}')
    xadd(r, keys, {"type": "metrics", "job_id": "a", "model_name": Q, "eval_loss": 0.5})
    xadd(r, keys, {"type": "metrics", "job_id": "b", "model_name": Q, "eval_loss": 3.4e38})
    xadd(r, keys, {"type": "metrics", "job_id": "c", "model_name": Q, "eval_loss": 1e308})
    xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.4, "lr": 2e-4})  # extra key
    await drain()
    dead = r.xrange(keys.dead)
    assert [(f[b"id"].decode(), f[b"reason"].decode()) for _, f in dead] == [
        (huge_step, "metrics.step: Input should be less than or equal to 9007199254740991")]
    views: dict[str, Any] = {}
    for _, batch in updates(r, keys):
        views.update({v["id"]: v for v in batch})
    assert (views["b"]["tier"], views["b"]["delta_pct"]) == ("red", pytest.approx(6.8e40))
    assert (views["c"]["tier"], views["c"]["delta_pct"]) == (None, None)  # beyond a float
    assert stored_jobs(r, keys)["a"]["loss"] == 0.4


async def test_an_entry_the_worker_cannot_apply_is_refused_and_the_rest_applied(
        r: redis.Redis, keys: Keys, drain: Drain, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import consumer

    real = consumer.build_commit

    def broken(board: Any, folded: Any, *args: Any) -> Any:
        if "poison" in folded.jobs:
            raise ValueError("a defect")
        return real(board, folded, *args)

    monkeypatch.setattr(consumer, "build_commit", broken)
    xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.5})
    poison = xadd(r, keys, {"type": "metrics", "job_id": "poison", "loss": 0.5})
    xadd(r, keys, {"type": "metrics", "job_id": "b", "loss": 0.5})
    await drain()
    assert set(stored_jobs(r, keys)) == {"a", "b"}
    (_, fields), = r.xrange(keys.dead)
    assert (fields[b"id"].decode(), fields[b"reason"].decode()) == (
        poison, "internal error: ValueError: a defect")
    xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 0.3})
    await drain()  # and it carries on
    assert stored_jobs(r, keys)["a"]["loss"] == 0.3


@pytest.mark.parametrize("fields, reason", [
    ({"handoff": b"[1]"}, "field handoff is not a JSON object"),
    ({"handoff": b"{"}, "field handoff is not JSON"),
    ({"src": b"p1|later"}, "field src is not <source>|<entry id>: b'p1|later'"),
    ({"src": b"\xff|5-0"}, "field src is not <source>|<entry id>: b'\\xff|5-0'"),
], ids=["handoff not an object", "handoff not JSON", "src position", "src not UTF-8"])
async def test_an_entry_with_a_malformed_src_or_handoff_is_refused_with_its_reason(
        r: redis.Redis, keys: Keys, drain: Drain, fields: dict[str, bytes],
        reason: str) -> None:
    """src and handoff are written by workers (docs/scale-out.md); one that is malformed is
    dead-lettered like a bad event, and the worker carries on."""
    bad = r.xadd(keys.events, {"data": orjson.dumps(
        {"type": "metrics", "job_id": "a", "loss": 0.5}), **fields}).decode()
    xadd(r, keys, {"type": "metrics", "job_id": "b", "loss": 0.5})
    await drain()
    assert set(stored_jobs(r, keys)) == {"b"}
    (_, dead), = r.xrange(keys.dead)
    assert (dead[b"id"].decode(), dead[b"reason"].decode()) == (bad, reason)


async def test_a_commit_that_does_not_start_where_the_last_ended_is_refused(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    from worker.batch import Commit

    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix)
    w = Worker(settings)
    try:
        assert await w.lease.hold()
        r.set(keys.applied, "5-0")  # another worker committed meanwhile
        commit = Commit(applied="9-0", jobs={"x": b"{}\n{}"})
        with pytest.raises(LeaseLost):
            await w.store.commit(commit, w.lease, "4-0", updates_keep=10, dead_keep=10)
        w.lease.held = False  # the lease ran out
        with pytest.raises(LeaseLost):
            await w.store.commit(commit, w.lease, "5-0", updates_keep=10, dead_keep=10)
        assert r.hgetall(keys.jobs) == {} and r.get(keys.applied) == b"5-0"
    finally:
        await w.redis.aclose()


async def test_a_job_named_after_a_restart_moves_groups(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=5.0)
    first = Worker(settings)
    xadd(r, keys, {"type": "metrics", "job_id": "a", "eval_loss": 0.2})
    xadd(r, keys, {"type": "metrics", "job_id": "b", "eval_loss": 0.3})
    xadd(r, keys, {"type": "metrics", "job_id": "c", "model_name": Q, "eval_loss": 0.4})
    await first.store.ensure_group()
    await first.step()
    await first.lease.release()
    await first.redis.aclose()
    assert group(r, keys, None) == {"a", "b"}

    second = Worker(settings)  # a fresh process: nothing cached
    try:
        xadd(r, keys, {"type": "metrics", "job_id": "a", "model_name": Q, "loss": 1.0})
        await second.step()
        await second.step()
        await second.lease.release()
    finally:
        await second.redis.aclose()
    assert group(r, keys, None) == {"b"}
    assert group(r, keys, Q) == {"a", "c"}
    models = {orjson.loads(k): orjson.loads(v) for k, v in r.hgetall(keys.models).items()}
    assert (models[None]["best_job_id"], models[None]["job_count"]) == ("b", 1)
    assert (models[Q]["best_job_id"], models[Q]["job_count"]) == ("a", 2)
    last = {v["id"]: v for v in updates(r, keys)[-1][1]}
    assert set(last) == {"a", "b", "c"}  # b: now alone, best; c: no longer best
    assert last["c"]["delta_pct"] == pytest.approx(100.0)

    xadd(r, keys, {"type": "metrics", "job_id": "b", "model_name": Q, "loss": 1.0})
    third = Worker(settings)
    try:
        await third.step()
        await third.step()
    finally:
        await third.redis.aclose()
    assert r.hget(keys.models, "null") is None  # an emptied group has no row
    assert group(r, keys, None) == set()


async def stored(client: redis.Redis, keys: Keys, job_id: str, task: asyncio.Task[None]
                 ) -> None:
    """Wait until the worker running as ``task`` has stored ``job_id`` (raises its error if
    it ended; fails after 10 s)."""
    for _ in range(200):
        if task.done():
            task.result()
        if client.hget(keys.jobs, job_id):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} not applied")


async def applies_after(worker: Worker, client: redis.Redis, keys: Keys,
                        upset: Callable[[], Awaitable[None]]) -> None:
    """Run ``worker``: it stores job ``a``; then ``upset()``; then it stores job ``b`` and is
    still running."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        xadd(client, keys, {"type": "metrics", "job_id": "a", "loss": 0.5})
        await stored(client, keys, "a", task)
        await upset()
        xadd(client, keys, {"type": "metrics", "job_id": "b", "loss": 0.5})
        await stored(client, keys, "b", task)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_worker_starts_over_when_redis_comes_back_empty(
        redis_server_factory: Any) -> None:
    server = redis_server_factory()
    server.start()
    keys = Keys("t:")
    worker = Worker(WorkerSettings(redis_url=server.url, prefix=keys.prefix, block=0.05))

    async def restart() -> None:
        server.stop()
        server.start()  # no persistence: everything is gone, the consumer group too

    client = redis.Redis.from_url(server.url)
    try:
        await applies_after(worker, client, keys, restart)
    finally:
        client.close()


async def test_a_worker_whose_keys_were_deleted_starts_afresh(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """Every key of the prefix deleted under a running worker (the lease, the stream and its
    group): it takes the lease again, creates the group again and applies what comes next."""
    worker = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix, lease_ttl=1.0,
                                   block=0.05))

    async def wipe() -> None:
        r.delete(*r.keys(keys.prefix + "*"))
        await asyncio.sleep(1.5)  # the lease is gone: the worker takes it again, finds no stream

    await applies_after(worker, r, keys, wipe)


async def test_a_rewind_aborts_a_read_this_process_sent_before(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """A read sent before the rewind (WATCHing the lease, its token checked) whose EXEC
    arrives after it does not run: the rewind wrote the lease again. Else it could move the
    group past entries nobody holds."""
    w = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix))
    stale = redis.Redis.from_url(redis_url)
    try:
        await w.store.ensure_group()
        ids = [xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 1.0}) for _ in range(3)]
        assert await w.lease.hold()
        pipe = stale.pipeline(transaction=True)
        pipe.watch(keys.lease)
        assert pipe.get(keys.lease).decode() == w.lease.token  # the read's check passes
        await w.store.rewind(w.lease.token, "0-0")
        pipe.multi()
        pipe.xreadgroup(GROUP, "stale", {keys.events: ">"}, noack=True)
        with pytest.raises(redis.WatchError):
            pipe.execute()
        assert [e for e, _ in await w.store.read(w.lease.token, 10)] == ids
    finally:
        stale.close()
        await w.redis.aclose()


async def test_only_the_lease_holder_rewinds_the_group_and_forgets_old_consumers(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """Rewinding also clears what a version that acknowledged left pending."""
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix)
    w = Worker(settings)
    try:
        await w.store.ensure_group()
        ids = [xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": loss})
               for loss in (0.9, 0.8)]
        r.xreadgroup(GROUP, "old-worker", {keys.events: ">"})  # pending: both
        with pytest.raises(LeaseLost):
            await w.store.rewind("not-the-lease-token", ids[0])
        assert r.xinfo_groups(keys.events)[0]["pending"] == 2
        assert await w.lease.hold()
        await w.store.rewind(w.lease.token, ids[0])
        assert r.xinfo_consumers(keys.events, GROUP) == []
        (group,) = r.xinfo_groups(keys.events)
        assert (group["pending"], group["last-delivered-id"].decode()) == (0, ids[0])
        assert [e for e, _ in await w.store.read(w.lease.token, 10)] == ids[1:]
    finally:
        await w.redis.aclose()


async def test_a_rewound_group_still_knows_its_lag(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """Redis 7 counts what a group read, and its lag (/healthz's worker_lag) comes from that
    count: the rewind tells it the count at the applied id, even in a trimmed stream."""
    w = Worker(WorkerSettings(redis_url=redis_url, prefix=keys.prefix))
    try:
        await w.store.ensure_group()
        ids = [xadd(r, keys, {"type": "metrics", "job_id": "a", "loss": 1.0}) for _ in range(10)]
        if "entries-read" not in r.xinfo_groups(keys.events)[0]:
            pytest.skip("Redis 6.2 does not count what a group read")
        assert await w.lease.hold()
        assert len(await w.store.read(w.lease.token, 6)) == 6
        r.xtrim(keys.events, minid=ids[3])
        assert await w.store.rewind(w.lease.token, ids[3]) == ids[5]
        assert r.xinfo_groups(keys.events)[0]["lag"] == 6
        assert len(await w.store.read(w.lease.token, 2)) == 2
        assert r.xinfo_groups(keys.events)[0]["lag"] == 4
        r.xdel(keys.events, ids[6])  # deleted after the applied id: Redis cannot count now
        await w.store.rewind(w.lease.token, ids[3])
        assert r.xinfo_groups(keys.events)[0]["lag"] is None
    finally:
        await w.redis.aclose()


async def test_the_updates_stream_is_bounded_in_bytes_too(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, updates_mb=1,
                              batch_size=10)
    w = Worker(settings)
    await w.store.ensure_group()
    try:
        for i in range(300):  # each commit's update: ~10 views of ~1 KB names
            for j in range(10):
                xadd(r, keys, {"type": "metrics", "job_id": f"j{i}-{j}", "loss": 1.0,
                               "model_name": f"m{i}", "name": "x" * 900})
            await w.step()
        sizes = sum(len(f[b"data"]) for _, f in r.xrange(keys.updates))
        assert r.xlen(keys.updates) < 300
        assert sizes < 1.3 * 1024 * 1024  # about the budget (trimming is approximate)
    finally:
        await w.redis.aclose()


def test_hiredis_packing_gives_the_bytes_redis_py_would() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.connection import Connection

    from worker.packing import pack_with_hiredis

    client = Redis()
    assert pack_with_hiredis(client)
    packing = client.connection_pool.connection_class()
    plain = Connection()
    for command in [("SET", "k", b"v"), ("HSET", "h", "f", 1, "g", 2.5, "é", b"\x00\xff"),
                    ("EVALSHA", "a" * 40, 2, "k1", "k2", 0.1 + 0.2, -5, 2**70),
                    ("CONFIG GET", "maxmemory"), (b"CLIENT SETINFO", "LIB-NAME", "x"),
                    ("RPUSH", b"l", memoryview(b"m"), bytearray(b"b"))]:
        assert b"".join(packing.pack_command(*command)) == \
            b"".join(plain.pack_command(*command))
