"""The liveness index (docs/stopping.md, Liveness): a commit writes a running job's second to
``<prefix>alive`` only when that second changes and takes a stale job out until it is heard
again, the advisor finds a job silent once its second ended before the cutoff, and the stale
view shows the job's own last arrival."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from monitor.keys import Keys
from monitor.rules import Board, JobState
from monitor.settings import AdvisorSettings
from worker import advisor as advisor_module
from worker.advisor import Advisor
from worker.batch import Commit, alive_moved, alive_score, build_commit, decode, fold
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


def test_a_commit_writes_a_jobs_second_only_when_the_second_changes() -> None:
    commits = _commits([
        [(T + 400, STARTED)],
        [(T + 999, METRICS)],  # the same second: nothing
        [(T + 1000, BEAT)],  # a heartbeat in the next one
        [(T + 1500, METRICS), (T + 2001, METRICS)],  # the batch's last second
        [(T + 2500, {"type": "job_finished", "job_id": "a", "status": "completed"})],
    ])
    assert [c.alive for c in commits] == [{"a": T}, {}, {"a": T + 1000}, {"a": T + 2000}, {}]
    assert [c.gone for c in commits] == [[], [], [], [], ["a"]]


def test_a_stale_job_leaves_the_index_until_it_is_heard_again() -> None:
    found = {"type": "job_stale", "job_id": "a", "last_seen": T / 1000 + 5}
    commits = _commits([[(T + 400, STARTED)], [(T + 10_000, found)],
                        [(T + 11_000, {"type": "job_archived", "job_id": "a"})],
                        [(T + 20_500, BEAT)]])
    assert [(c.alive, c.silent) for c in commits] == [
        ({"a": T}, []), ({}, ["a"]), ({}, ["a"]), ({"a": T + 20_000}, [])]
    assert ("ZREM", K.alive, "a") in writes(K, commits[1], updates_keep=10, dead_keep=10)


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


async def test_the_advisor_finds_a_job_once_its_second_ended_before_the_cutoff(
        redis_url: str, keys: Keys, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    advisor = Advisor(AdvisorSettings(redis_url=redis_url, prefix=keys.prefix,
                                      stale_after=100.0))

    async def now() -> tuple[int, int]:
        return 1000, 500_000  # Redis's clock: 1000.5 s, so the cutoff is 900.5 s

    monkeypatch.setattr(advisor.redis, "time", now)
    scores = {
        "silent": 899_000,  # its last arrival was before 900 s
        "this-second": 900_000,  # it may have arrived at 900.7 s: not yet
        "exact-old": 899_400,  # an exact arrival, as stored before seconds: 899.4 s
        "exact-recent": 899_600,  # 899.6 s: silent too, found a second later (next look)
        **{f"stale-already-{i}": 1_000 + i for i in range(5)},  # as an older worker left them
    }
    r.zadd(keys.alive, scores)
    advisor.jobs = {job_id: {"status": "running", "stale": job_id.startswith("stale-already"),
                             "model_name": "m"} for job_id in scores}
    monkeypatch.setattr(advisor_module, "STALE_PAGE", 2)  # found past the first pages too
    await advisor.find_stale()
    await advisor.find_stale()  # found once, not again
    written = [orjson.loads(fields[b"data"]) for _, fields in r.xrange(keys.events)]
    assert written == [{"type": "job_stale", "job_id": job_id, "last_seen": 900.5}
                       for job_id in ("silent", "exact-old")]
    assert set(advisor.flagged) == {"silent", "exact-old"}
    board = Board()  # the worker applies the first finding: the advisor forgets it
    fold(board, decode([(f"{T}-0", {b"data": orjson.dumps({**STARTED, "job_id": "silent"})})]))
    advisor._take({**board.view("silent"), "stale": True})
    assert set(advisor.flagged) == {"exact-old"}
    await advisor.redis.aclose()
