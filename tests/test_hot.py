"""A worker that keeps only a few job states in memory (``hot_jobs``) writes exactly what one
keeping every state writes: the states it put out are read back when an event touches them,
and the views a new best moves are made from the stored states of the others, never from a
state older than the commit still in flight."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest
import redis

from monitor.keys import Keys
from monitor.rules import Board, JobState, stored_rank
from monitor.settings import WorkerSettings
from tests.gateway_helpers import run_until_applied
from tests.helpers import ev, fold
from tests.test_order_index import scenario
from worker.consumer import Worker
from worker.hot import HotJobs, groups_touched, make_room, warm

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("limit, turns, expected", [
    # turns: the jobs touched in each turn, in order; expected: what coldest() gives after.
    (2, [["a", "b", "c"]], []),  # all touched this turn
    (2, [["a", "b", "c"], []], []),  # ... or the last (its commit may be in flight)
    (2, [["a", "b", "c"], [], []], ["a"]),
    (1, [["a", "b"], ["c"], [], ["b"]], ["a", "c"]),  # b touched again: the most recent
    (5, [["a", "b", "c"], [], []], []),  # within the limit
])
def test_the_coldest_jobs_beyond_the_limit_go_never_those_of_the_last_two_turns(
        limit: int, turns: list[list[str]], expected: list[str]) -> None:
    hot = HotJobs(limit)
    for touched in turns:
        hot.next_turn()
        hot.touch(touched)
    assert hot.coldest() == expected


def test_a_batch_makes_room_then_reads_the_states_it_touches_that_are_not_in_memory() -> None:
    board = Board()
    board.load(fold([ev("job_started", j, model_name="m", ts=1.0) for j in "abc"]).jobs.values())
    hot = HotJobs(1)
    for turn in (["a", "b"], ["c"], []):  # a then b then c: a is the coldest
        hot.next_turn()
        hot.touch(turn)
    events = [ev("metrics", "c", loss=1.0, ts=2.0), ev("metrics", "d", loss=1.0, ts=2.0),
              ev("job_started", "e", model_name="n", ts=2.0)]
    assert sorted(make_room(board, hot, events)) == ["d", "e"]
    assert sorted(board.jobs) == ["c"]  # a and b went; c is touched by this batch
    staged = {"d": fold([ev("metrics", "d", model_name="o", loss=1.0, ts=1.0)]).jobs["d"]}
    assert groups_touched(board, staged, events) == {"m", "o", None, "n"}
    warm(board, hot, staged)
    assert sorted(board.jobs) == ["c", "d"]
    hot.next_turn()
    hot.next_turn()
    assert hot.coldest() == ["c"]  # c touched two turns ago; d now the most recent


@pytest.mark.parametrize("left_out", [(), ("stale", "last_seen", "eval_count", "autostop"),
                                      ("model_display",)])
def test_the_view_of_a_job_not_in_memory_is_the_view_of_it_restored(
        left_out: tuple[str, ...]) -> None:
    """From its stored public state, as old as it may be (fields it predates left out)."""
    folded = fold([ev("job_started", "a", model_name="org/m", ts=1.0),
                   ev("metrics", "a", eval_loss=0.5, ts=2.0),
                   ev("job_started", "b", model_name="org/m", ts=3.0, name="b"),
                   ev("metrics", "b", eval_loss=0.7, step=5, ts=4.0),
                   ev("job_finished", "b", status="completed", final_loss=0.3, ts=5.0)])
    stored = {j: ({k: v for k, v in job.public().items() if k not in left_out},
                  job.private()) for j, job in folded.jobs.items()}
    hot = Board()
    hot.load(JobState.restore(*stored[j]) for j in "ab")
    cold = Board()
    cold.load_group("org/m", [(j, *stored_rank(j, stored[j][0])) for j in "ab"])
    view = cold.view_stored(dict(stored["b"][0]))
    assert view == hot.view("b") and list(view) == list(hot.view("b"))
    assert (view["delta_pct"], view["final_loss"]) == (pytest.approx(40.0), 0.3)


def snapshot(r: redis.Redis, keys: Keys, jobs: list[str]) -> dict[str, Any]:
    """Everything the worker committed, comparable across prefixes; each update as its views
    and rows by id and model."""
    def zset(key: str) -> list[tuple[bytes, float]]:
        return r.zrange(key, 0, -1, withscores=True)

    updates = []
    for _, fields in r.xrange(keys.updates):
        update = orjson.loads(fields[b"data"])
        updates.append(({v["id"]: v for v in update["jobs"]},
                        {orjson.dumps(row["model_name"]): row for row in update["models"]}))
    models = [orjson.loads(m) for m in r.hkeys(keys.models)]
    return {
        "jobs": r.hgetall(keys.jobs),
        "configs": r.hgetall(keys.configs), "models": r.hgetall(keys.models),
        "metrics": {j: r.lrange(keys.metrics(j), 0, -1) for j in jobs},
        "order": {repr((a, m)): zset(keys.order(a, m)) for a in (False, True)
                  for m in [*models, None]} | {str(a): zset(keys.order(a)) for a in (False, True)},
        "heard": [orjson.loads(f[b"jobs"]) for _, f in r.xrange(keys.heard)], "stats": r.hgetall(keys.stats), "updates": updates,
    }


async def test_a_worker_keeping_two_job_states_writes_what_one_keeping_all_writes(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    rng = random.Random(23)
    events = scenario(rng, 60)
    events += [{"type": "metrics", "job_id": f"job-{rng.randrange(60)}", "step": 100 + i,
                "eval_loss": round(rng.uniform(0.05, 1.5), 3), "ts": 2000.0 + i}
               for i in range(300)]  # new bests in groups whose other jobs are cold
    events += [{"type": "job_archived", "job_id": f"job-{j}"} for j in range(0, 60, 7)]
    job_ids = sorted({e["job_id"] for e in events})
    snapshots = []
    for hot_jobs in (1_000_000, 2):
        run_keys = Keys(f"{keys.prefix}{hot_jobs}:")
        with r.pipeline(transaction=False) as pipe:  # the same entry ids: the same times
            for i, event in enumerate(events):
                pipe.xadd(run_keys.events, {"data": orjson.dumps(event)},
                          id=f"{1_700_000_000_000 + i}-0")
            pipe.execute()
        worker = Worker(WorkerSettings(redis_url=redis_url, prefix=run_keys.prefix,
                                       batch_size=7, block=0.05, hot_jobs=hot_jobs))
        async def slow(*args: Any, commit: Any = worker.store.commit,
                       **kwargs: Any) -> str | None:
            await asyncio.sleep(0.01)  # the next batch is folded meanwhile
            return await commit(*args, **kwargs)

        worker.store.commit = slow  # type: ignore[method-assign]
        await run_until_applied(worker, r, run_keys, len(events),
                                counted=("applied", "duplicates"))
        held = len(worker.board.jobs)
        counted = sum(len(g.members) for g in worker.board.groups.values())
        snapshots.append(snapshot(r, run_keys, job_ids))
        assert counted == len(job_ids)
        if hot_jobs == 2:
            assert held <= 2 + 2 * 7  # the limit, or the jobs of the last two batches
    everything, few = snapshots
    assert len(everything["updates"]) > 50
    assert few == everything
