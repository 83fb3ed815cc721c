"""Liveness (docs/stopping.md, Liveness): a commit says in ``<prefix>heard`` which running jobs'
arrival second changed, and only then; a stale job is said again only once heard again; the
advisor keeps each running job's second in memory, from the stored fold states and from
``<prefix>heard``, and finds a job silent once its second ended before the cutoff; the stale
view shows the job's own last arrival."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
import redis

from monitor.keys import Keys
from monitor.records import record
from monitor.rules import Board, JobState
from monitor.settings import AdvisorSettings, WorkerSettings
from tests.gateway_helpers import run_until_applied
from tests.redis_cluster import LocalCluster, flush
from tests.test_order_index import publish, scenario
from worker.advisor import Advisor
from worker.batch import Commit, alive_moved, alive_score, build_commit, decode, fold
from worker.consumer import Worker
from worker.writes import writes

pytestmark = pytest.mark.timeout(60)

K = Keys("t:")
T = 2_000_000_000_000  # an arrival in ms, on a whole second

STARTED = {"type": "job_started", "job_id": "a", "model_name": "m"}
METRICS = {"type": "metrics", "job_id": "a", "loss": 1.0}
BEAT = {"type": "job_heartbeat", "job_id": "a"}


def _commits(batches: list[list[tuple[int, dict[str, Any]]]]) -> list[Commit]:
    """The commit of each batch of (arrival in ms, event), folded on one board."""
    board = Board()
    out = []
    for batch in batches:
        items = decode([(f"{ms}-{i}", {b"data": orjson.dumps(event)})
                        for i, (ms, event) in enumerate(batch)])
        out.append(build_commit(board, fold(board, items), K, {}))
    return out


def _heard(commit: Commit) -> list[tuple[Any, ...]]:
    return [c for c in writes(K, commit, updates_keep=10, dead_keep=10) if K.heard in c]


def test_a_commit_says_a_jobs_second_only_when_the_second_changes() -> None:
    commits = _commits([
        [(T + 400, STARTED)],
        [(T + 999, METRICS)],  # the same second: nothing
        [(T + 1000, BEAT)],  # a heartbeat in the next one
        [(T + 1500, METRICS), (T + 2001, METRICS)],  # the batch's last second
        [(T + 2500, {"type": "job_finished", "job_id": "a", "status": "completed"})],
    ])
    assert [c.alive for c in commits] == [{"a": T}, {}, {"a": T + 1000}, {"a": T + 2000}, {}]
    assert [c.gone for c in commits] == [[], [], [], [], ["a"]]
    assert _heard(commits[0]) == [
        ("XADD", K.heard, "MAXLEN", "~", 10, "*", "jobs", b'{"a":%d}' % T)]
    assert _heard(commits[1]) == [] and _heard(commits[4]) == []


def test_a_stale_job_is_said_again_once_heard_again() -> None:
    found = {"type": "job_stale", "job_id": "a", "last_seen": T / 1000 + 5}
    commits = _commits([[(T + 400, STARTED)], [(T + 10_000, found)],
                        [(T + 11_000, {"type": "job_archived", "job_id": "a"})],
                        [(T + 20_500, BEAT)]])
    assert [c.alive for c in commits] == [{"a": T}, {}, {}, {"a": T + 20_000}]


def test_a_job_read_back_from_redis_keeps_its_second() -> None:
    board = Board()
    first = decode([(f"{T + 100}-0", {b"data": orjson.dumps(STARTED)})])
    build_commit(board, fold(board, first), K, {})
    job = board.jobs.pop("a")  # put out of memory, then read back as stored
    board.load([JobState.restore(job.public(), job.private())])
    same_second = decode([(f"{T + 900}-0", {b"data": orjson.dumps(METRICS)})])
    assert build_commit(board, fold(board, same_second), K, {}).alive == {}
    later = decode([(f"{T + 1100}-0", {b"data": orjson.dumps(METRICS)})])
    assert build_commit(board, fold(board, later), K, {}).alive == {"a": T + 1000}


@pytest.mark.parametrize(("before", "after", "moved"), [
    (None, 5.5, True), (5.0, 5.999, False), (5.999, 6.0, True), (5.5, 7.25, True),
])
def test_the_second_moves_when_its_whole_part_does(before: float | None, after: float,
                                                   moved: bool) -> None:
    assert alive_moved(before, after) is moved
    assert alive_score(after) == int(after) * 1000


def _running(job_id: str, stale: bool = False) -> dict[str, Any]:
    return {"id": job_id, "status": "running", "stale": stale, "model_name": "m"}


async def test_the_advisor_finds_a_job_once_its_second_ended_before_the_cutoff(
        redis_url: str, keys: Keys, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    advisor = Advisor(AdvisorSettings(redis_url=redis_url, prefix=keys.prefix,
                                      stale_after=100.0))

    async def now() -> tuple[int, int]:
        return 1000, 500_000  # Redis's clock: 1000.5 s, so the cutoff is 900.5 s

    monkeypatch.setattr(advisor.redis, "time", now)
    seconds = {
        "silent": 899_000,  # its last arrival was before 900 s
        "this-second": 900_000,  # it may have arrived at 900.7 s: not yet
        "stale-already": 1_000,
        "finished": 1_000,
    }
    advisor.heard = dict(seconds)
    advisor.jobs = {job_id: _running(job_id, stale=job_id == "stale-already")
                    for job_id in seconds}
    advisor.jobs["finished"]["status"] = "completed"
    await advisor.find_stale()
    await advisor.find_stale()  # found once, not again
    written = [orjson.loads(fields[b"data"]) for _, fields in r.xrange(keys.events)]
    assert written == [{"type": "job_stale", "job_id": "silent", "last_seen": 900.5}]
    assert set(advisor.flagged) == {"silent"}
    assert "finished" not in advisor.heard  # an ended job heard of is forgotten
    board = Board()  # the worker applies the finding: the advisor forgets it
    fold(board, decode([(f"{T}-0", {b"data": orjson.dumps({**STARTED, "job_id": "silent"})})]))
    advisor._take({**board.view("silent"), "stale": True})
    assert set(advisor.flagged) == set()
    await advisor.redis.aclose()


async def test_the_advisor_knows_each_running_jobs_second_from_redis(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """From the stored fold states when it starts, then from ``<prefix>heard``: the same
    seconds as the worker's own states, for every running job and no other."""
    events = scenario(random.Random(4), 20)
    settings = WorkerSettings(redis_url=redis_url, prefix=keys.prefix, batch_size=5)
    half = len(events) // 2
    publish(r, keys, events[:half])
    await run_until_applied(Worker(settings), r, keys, half)
    advisor = Advisor(AdvisorSettings(redis_url=redis_url, prefix=keys.prefix))
    try:
        await advisor._snapshot()
        r.delete(keys.lease)
        publish(r, keys, events[half:])
        await run_until_applied(Worker(settings), r, keys, len(events))
        while True:  # everything committed is read
            before = advisor.version, advisor.heard_version
            await advisor._follow()
            if (advisor.version, advisor.heard_version) == before:
                break
        worker = Worker(settings)
        stored = await worker.store.load_jobs([k.decode() for k in r.hkeys(keys.jobs)])
        await worker.redis.aclose()
        running = {job_id: alive_score(job.alive_at) for job_id, job in stored.items()
                   if job.status == "running" and job.alive_at is not None}
        assert running and len(running) < len(stored)
        assert {j: s for j, s in advisor.heard.items()
                if advisor.jobs[j]["status"] == "running"} == running
        assert set(advisor.heard) == set(running)  # those that ended were forgotten
    finally:
        await advisor.redis.aclose()


async def test_a_running_job_stored_without_its_second_counts_as_heard_when_the_advisor_starts(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    """As a job written by a version before 2026-12-07 that no worker upgraded yet."""
    board = Board()
    fold(board, decode([(f"{T}-0", {b"data": orjson.dumps(STARTED)}),
                        (f"{T}-1", {b"data": orjson.dumps({**STARTED, "job_id": "b"})}),
                        (f"{T}-2", {b"data": orjson.dumps(
                            {"type": "job_finished", "job_id": "b", "status": "completed"})})]))
    for job_id in ("a", "b"):
        r.hset(keys.jobs, job_id, orjson.dumps(board.jobs[job_id].public()))
    advisor = Advisor(AdvisorSettings(redis_url=redis_url, prefix=keys.prefix))
    try:
        before = int(r.time()[0]) * 1000
        await advisor._snapshot()
        after = int(r.time()[0]) * 1000
    finally:
        await advisor.redis.aclose()
    assert list(advisor.heard) == ["a"] and before <= advisor.heard["a"] <= after


async def test_the_advisor_reads_its_partition_on_a_redis_cluster(
        redis_cluster: LocalCluster) -> None:
    """Every read of the snapshot and of the two streams stays in the partition's slot."""
    flush(redis_cluster)
    advisor = Advisor(AdvisorSettings(redis_url=redis_cluster.url, redis_cluster=True,
                                      prefix="alive:", partitions=2), index=1)
    board = Board()
    fold(board, decode([(f"{T + 300}-0", {b"data": orjson.dumps(STARTED)})]))
    job = board.jobs["a"]
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        client.hset(advisor.keys.jobs, "a", record(orjson.dumps(job.public()),
                                                   orjson.dumps(job.private())))
        await advisor._snapshot()
        assert advisor.heard == {"a": T}
        client.xadd(advisor.keys.heard, {"jobs": orjson.dumps({"a": T + 5000})})
        await advisor._follow()
        assert advisor.heard == {"a": T + 5000}
    finally:
        client.close()
        await advisor.redis.aclose()
