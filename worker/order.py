"""The order sets (docs/state.md, What is stored): each job is in one of ``order(False)`` and
``order(True)`` by its ``archived``, and in one of the two of its model group, scored
``-created_at``, so that the gateway reads windows of the job list newest first without
holding every job.

A commit writes them only when something that decides them changed in its batch (a new job,
``created_at``, ``archived``, the model, a job taken in or moved away), not on every metric:
:func:`reorder` compares a job's place as stored with its place now. State older than the
sets gets them from ``<prefix>jobs`` when a worker takes the lease (:func:`backfill`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from monitor.keys import Keys
from monitor.records import public_state
from monitor.rules import JobState

if TYPE_CHECKING:
    from worker.batch import Commit
    from worker.lease import Lease
    from worker.store import Store

log = logging.getLogger("monitor.worker")

BACKFILL_CHUNK = 2000  # jobs per HSCAN round trip and per fenced write while indexing
PROGRESS_EVERY = 5.0  # seconds between progress lines of a long backfill


class Place:
    """What decides a job's place in the order sets. (A plain class: compiled, one costs a
    sixth of a NamedTuple, and a batch makes two for each job it touches.)"""

    __slots__ = ("archived", "created_at", "model_name")

    def __init__(self, model_name: str | None, archived: bool, created_at: float) -> None:
        self.model_name: Final = model_name
        self.archived: Final = archived
        self.created_at: Final = created_at

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Place) and self.model_name == other.model_name
                and self.archived == other.archived and self.created_at == other.created_at)

    def __repr__(self) -> str:
        return f"Place({self.model_name!r}, {self.archived!r}, {self.created_at!r})"

    def holds(self, job: JobState) -> bool:
        """Is ``job`` at this place now? (The common case, a metric or a heartbeat, asked
        without making the job's place to compare.)"""
        return (self.model_name == job.model_name and self.archived == job.archived
                and self.created_at == job.created_at)


def place_of(job: JobState) -> Place:
    return Place(job.model_name, job.archived, job.created_at)


def place_of_public(public: dict[str, Any]) -> Place:
    """The place of a stored job state (``<prefix>jobs``)."""
    return Place(public.get("model_name"), bool(public.get("archived")), public["created_at"])


def reorder(commit: Commit, keys: Keys, job_id: str, before: Place | None,
            after: Place | None) -> None:
    """Add to ``commit`` what takes ``job_id`` from its place ``before`` (None: not in the
    sets) to ``after`` (None: out of them, as when it moves away)."""
    if before == after:
        return  # the common case: a metric, a heartbeat
    old = _sets(keys, before)
    new = _sets(keys, after)
    # The score as Redis gets it, formatted once for both sets: by orjson, in a tenth of
    # what ``repr`` costs (the shortest form that reads back as the same float, as repr's;
    # a few tiny numbers are spelled otherwise, ``0.00001`` for ``1e-05``).
    score = score_of(after) if after is not None else b""
    for was, now in zip(old, new):
        if was is not None and was != now:
            commit.order_remove.setdefault(was, []).append(job_id)
        if now is not None:
            assert after is not None
            if was != now or before is None or before.created_at != after.created_at:
                commit.order_add.setdefault(now, []).extend((score, job_id))


def score_of(place: Place) -> bytes:
    """A job's score in the order sets, as sent: ``-created_at`` (newest first)."""
    return orjson.dumps(-place.created_at)


def _sets(keys: Keys, place: Place | None) -> tuple[str | None, str | None]:
    """The two sets a job at ``place`` is in: every model's, and its model group's."""
    if place is None:
        return None, None
    # (Built each time: two f-strings, the model's part remembered by model_field. A
    # functools.lru_cache here cost 4 times as much, hashing the frozen Keys in Python.)
    return keys.order(place.archived), keys.order(place.archived, place.model_name)


def index_chunk(keys: Keys, publics: list[bytes]) -> dict[str, list[Any]]:
    """ZADD arguments (set -> score, id, ...) that put these stored job states in their
    sets."""
    out: dict[str, list[Any]] = {}
    for raw in publics:
        public = public_state(raw)
        place = place_of_public(public)
        for key in _sets(keys, place):
            assert key is not None
            out.setdefault(key, []).extend((score_of(place), public["id"]))
    return out


async def backfill(store: Store, lease: Lease, applied: str) -> None:
    """Build the order sets from ``<prefix>jobs`` unless ``<prefix>order:built`` says they
    are complete; called after taking the lease, before applying anything.

    Each chunk is written fenced, as a commit is (the lease held, nothing committed past
    ``applied``): a worker that lost its lease midway cannot put a job back where a newer
    commit took it out. ZADD is idempotent and the marker is set last, so a backfill cut
    short is simply done again whole by the next holder of the lease."""
    keys = store.keys
    if await store.redis.exists(keys.order_built):
        return
    total = await store.redis.hlen(keys.jobs)
    if total:
        log.info("indexing %d jobs into the order sets", total)
    done, cursor = 0, 0
    said = time.monotonic()
    while True:
        cursor, publics = await store.scan_jobs(cursor, BACKFILL_CHUNK)
        if publics:
            await store.write_fenced(
                lease, applied, [("ZADD", key, *args)
                                 for key, args in index_chunk(keys, publics).items()])
        done += len(publics)
        if time.monotonic() - said >= PROGRESS_EVERY:
            log.info("indexed %s of %s jobs", f"{done:,}", f"{total:,}")
            said = time.monotonic()
        if cursor == 0:
            break
    await store.write_fenced(lease, applied, [("SET", keys.order_built, "1")])
    if total:
        log.info("indexed %s jobs: the order sets are complete", f"{done:,}")
