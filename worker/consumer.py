"""The worker loop: hold the lease, read a batch, fold it, commit it.

Crash safety comes from the order of things. A batch's effects, the id of its last entry
(the applied id) and the trimming of the stream up to it are one atomic transaction, fenced
by the lease and the applied id (see :mod:`worker.store`). Entries are read without a pending
entry list: after taking the lease, a worker rewinds the consumer group to the applied id, so
whatever was read after it and not committed, by a worker that died or by this one, is read
again, and an entry at or before it is never applied again. So each entry is applied exactly
once, whenever the process dies.

One turn has named steps: recover (after taking the lease), read, fold, commit, settle. In a
backlog :meth:`Worker.run` overlaps them, folding one batch while Redis runs the commit of the
one before (see :mod:`worker.pipeline`); :meth:`Worker.step` does one turn and waits for its
commit."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from monitor import compiled
from monitor.decoded import Event
from monitor.errors import StartError
from monitor.histograms import BATCH_SIZE, EVENT_AGE
from monitor.partitions import Partitioning
from monitor.redistools import UNREACHABLE, backoff, connect, heal
from monitor.rules import Board, parse_pos
from monitor.settings import WorkerSettings
from worker.batch import (
    Commit,
    Decoded,
    Folded,
    after,
    build_commit,
    cold_views,
    events_of,
    fold,
    poisoned,
    rewrites,
    stored_id_lookups,
)
from worker.fleet import Fleet
from worker.hot import HotJobs, groups_touched, make_room, warm
from worker.lease import Lease
from worker.moves import Diverter
from worker.order import backfill, place_of, reorder
from worker.packing import pack_with_hiredis
from worker.pipeline import BUG, Batch, CommitFailed, Pipeline
from worker.router import IngressRouter
from worker.store import LeaseLost, Store
from worker.upgrade import upgrade

log = logging.getLogger("monitor.worker")

# How a batch's commit is sent: waited for (Pipeline.commit), or, after the next batch is read
# and prepared, left running while that batch is folded (Worker._commit_reading_ahead).
Send = Callable[[Commit], Awaitable[None]]


class Worker:
    """One worker process's loop; several may run, one applies events at a time."""

    def __init__(self, settings: WorkerSettings, index: int = 0,
                 fleet: Fleet | None = None) -> None:
        self.settings = settings
        self.part = settings.partitioning
        self.index = index
        self.keys = self.part.keys(index)
        self.fleet = fleet
        # No silent retries: a command retried after its reply was lost could skip a batch.
        # A failed call resets the worker, which then recovers from what is committed.
        self.redis = connect(settings.redis_url, settings.redis_cluster,
                             retry=Retry(NoBackoff(), 0))
        if not settings.redis_cluster:
            pack_with_hiredis(self.redis)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.store = Store(self.redis, self.keys, self.name, self.part, index)
        # With partitions: forwarded entries, relays and moves (worker.moves).
        self.divert = Diverter(self.part, index) if self.part.split else None
        self.lease = Lease(self.redis, self.keys.lease, settings.lease_ttl, self.name)
        self.pipeline = Pipeline(self.store, self.lease, settings)
        self.generation = -1  # the lease generation recovered for; -1: recover before reading
        # Every model group loaded so far, by what ranking needs of each job, and the states
        # of the jobs touched most recently (worker.hot).
        self.board = Board()
        self.loaded_groups: set[str | None] = set()
        self.hot = HotJobs(settings.hot_jobs)

    @property
    def leading(self) -> bool:
        return self.generation == self.lease.generation and self.generation > 0

    def _reset(self) -> None:
        """Forget everything cached; the next step recovers from the committed state."""
        self.pipeline.drop()
        self._forget_state()
        self.generation = -1

    def _forget_state(self) -> None:
        self.board = Board()
        self.loaded_groups = set()
        self.hot = HotJobs(self.settings.hot_jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Apply events until ``stop`` is set; survives Redis going away and coming back."""
        delay = 0.1
        ready = False
        # Renewed until the last commit has answered, which may be after ``stop``.
        released = asyncio.Event()
        keep_alive = asyncio.create_task(self.lease.keep_alive(released), name="lease")
        try:
            while not stop.is_set():
                try:
                    if not ready:
                        await self.store.ensure_group()
                        ready = True
                    await self._overlapped_step(stop)
                    delay = 0.1
                except LeaseLost as e:
                    log.warning("stopped applying: %s", e)
                    self.lease.forget()
                    self._reset()
                except CommitFailed as e:
                    log.error("%s; starting again from what is committed", e)
                    self._reset()
                except UNREACHABLE as e:
                    log.warning("Redis unreachable (%s); retrying in %.1fs", e, delay)
                    ready = False
                    self.lease.forget()
                    self._reset()
                    await _sleep(stop, delay)
                    await heal(self.redis)
                    delay = backoff(delay)
                except ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    # Redis came back empty, or someone deleted the stream: start afresh.
                    log.warning("the consumer group is gone (%s); creating it again", e)
                    ready = False
                    self.lease.forget()
                    self._reset()
        finally:
            try:
                await self.pipeline.finish()
            finally:
                stop.set()  # for whoever else waits on it, when run() ends by an error
                released.set()
                await keep_alive
                await self._release()

    async def _release(self) -> None:
        dropped = self.pipeline.drop()
        try:
            await asyncio.gather(*dropped, return_exceptions=True)
            await self.lease.release()
        except UNREACHABLE:
            pass  # it runs out by itself after lease_ttl
        finally:
            await self.store.close()
            await self.redis.aclose()

    async def step(self, stop: asyncio.Event | None = None) -> None:
        """One turn: take or keep the lease, then apply one batch or wait for one. The batch
        is committed when this returns."""
        batch = await self._begin_turn(stop)
        if batch is not None:
            await self._apply_and_settle(batch)

    async def _overlapped_step(self, stop: asyncio.Event) -> None:
        """One turn of :meth:`run`: as :meth:`step`, but when more entries are waiting the
        next batch is read ahead and this batch's commit may still be running when this
        returns. The next turn folds its batch meanwhile, and waits for that commit only
        before sending its own."""
        batch = await self._begin_turn(stop)
        if batch is None:
            return
        if self.pipeline.caught_up:
            await self._apply_and_settle(batch)
        else:
            await self._apply(batch, self._commit_reading_ahead)

    async def _commit_reading_ahead(self, commit: Commit) -> None:
        """Send ``commit`` once the next batch is read and prepared (see :meth:`_prefetch`)."""
        await self.pipeline.commit_reading_ahead(commit, self._prefetch)

    async def _prefetch(self, batch: Batch) -> Batch:
        """Load the stored jobs and model groups ``batch`` touches, before the commit of the
        batch before it is sent. Safe: that commit writes only jobs that stay on the board
        for this batch (worker.hot) and groups loaded already, which are not read again.
        If loading fails (a defect), the batch is returned as it was: folding it loads again
        and isolates the entry at fault, and the commit before is not redone."""
        try:
            await self._load(events_of(batch.items))
        except BUG:
            log.exception("could not load what the next batch touches; trying again when "
                          "it is folded")
            return batch
        return replace(batch, loaded=True)

    async def _begin_turn(self, stop: asyncio.Event | None) -> Batch | None:
        """Hold the lease (else stand by), recover after taking it, and read the next batch.
        None: nothing to apply this turn."""
        if self.fleet is not None and self.lease.held and self.fleet.must_give(self.index):
            await self._give_up()
        if (self.fleet is not None and not self.lease.held
                and not self.fleet.may_take(self.index)) or not await self.lease.hold():
            await self._stand_by(stop)
            return None
        if self.fleet is not None:
            self.fleet.holding(self.index, True)
        if not self.leading:
            await self._recover()
        return await self.pipeline.read()

    async def _give_up(self) -> None:
        """Hand this partition to a worker with fewer (the fleet has grown)."""
        log.info("partition %d: handing it over to a worker with fewer partitions", self.index)
        await self.pipeline.finish()
        self._reset()
        await self.lease.release()
        if self.fleet is not None:
            self.fleet.holding(self.index, False)

    async def _stand_by(self, stop: asyncio.Event | None) -> None:
        if self.fleet is not None:
            self.fleet.holding(self.index, False)
        if self.generation != -1:
            log.info("another worker holds the lease; standing by")
            self._reset()
        await _sleep(stop, min(0.25, self.settings.lease_ttl / 4))

    async def _apply_and_settle(self, batch: Batch) -> None:
        """Apply ``batch``, and return once nothing is in flight any more."""
        if batch.entries:
            await self._apply(batch, self.pipeline.commit)
        await self.pipeline.settle()  # nothing more to fold: no reason to leave it running

    async def _recover(self) -> None:
        """After taking the lease: read again from the applied id, and apply first what was
        read and not committed."""
        await self.pipeline.finish()  # so that the applied id read below is final
        self._reset()
        self.pipeline.restart(applied := await self.store.applied())
        await self.redis.hincrby(self.keys.ops, "lease_takeovers", 1)
        await self._restore_moves()
        read_before = await self.store.rewind(self.lease.token, applied)
        await upgrade(self.store, self.lease, applied)
        await backfill(self.store, self.lease, applied)
        # What was read and not committed, one batch at a time and each commit waited for:
        # if a commit failed (CommitFailed), this is where the entry at fault is isolated.
        while parse_pos(self.pipeline.applied) < parse_pos(read_before):
            entries = await self.store.read(self.lease.token, self.settings.batch_size)
            if not entries:
                break
            await self._apply(Batch.of(entries), self.pipeline.commit)
        self.generation = self.lease.generation
        log.info("worker %s is applying events%s (committed up to %s)", self.name,
                 f" of partition {self.index}" if self.part.split else "",
                 self.pipeline.applied)

    async def _apply(self, batch: Batch, send: Send) -> None:
        """Apply the entries not yet committed and ``send`` their commit (after a rewind to
        the applied id, every entry read is one)."""
        done = parse_pos(self.pipeline.applied)
        fresh = after(batch.items, done)
        if fresh:
            try:
                commit, rest = await self._fold(fresh, loaded=batch.loaded)
                if not rest:
                    assert commit is not None
                    await send(commit)
                else:  # a job moves: commit up to it, move it, go on (worker.moves)
                    await self._commit_moving(commit, rest)
            except BUG:
                # Some entry makes the fold or the commit fail (a bug): find it, refuse it, and
                # go on with the rest, rather than stopping every model's updates for good.
                log.exception("a batch failed; applying its entries one at a time")
                await self._apply_one_at_a_time(fresh)
        self.pipeline.saw(batch.entries[-1][0])

    async def _apply_one_at_a_time(self, items: list[Decoded]) -> None:
        """Commit each item on its own, refusing one that fails as poisoned."""
        await self.pipeline.settle()  # the batch before: reloading must see its writes
        await self._start_over()
        for item in items:
            try:
                await self._commit_moving(*await self._fold([item]))
            except BUG as e:
                log.exception("could not apply entry %s", item.entry_id)
                await self._start_over()
                await self._commit_moving(*await self._fold([poisoned(item, e)]))

    async def _start_over(self) -> None:
        """Forget what a fold that failed did, nothing being in flight: the board, and with
        partitions the positions it passed in each source (else the items it passed would
        be skipped as applied already)."""
        self._forget_state()
        await self._restore_moves()

    async def _restore_moves(self) -> None:
        """With partitions: the committed positions applied per source, and the jobs that
        moved away (worker.moves)."""
        if self.divert is not None:
            marks, moved = await self.store.partition_state()
            self.divert.marks = {source: parse_pos(at) for source, at in marks.items()}
            self.divert.moved = moved

    async def _commit_moving(self, commit: Commit | None, rest: list[Decoded]) -> None:
        """Commit ``commit``, then move the job of ``rest[0]`` and apply the rest the same
        way, each commit waited for."""
        while True:
            if commit is not None:
                await self.pipeline.commit(commit)
            if not rest:
                return
            await self._move(rest[0])
            if len(rest) == 1:
                return
            commit, rest = await self._fold(rest[1:])

    async def _move(self, item: Decoded) -> None:
        """Hand ``item``'s job over to the partition of the model ``item`` names, with
        ``item`` itself, and leave a tombstone here (docs/scale-out.md, Moves)."""
        assert self.divert is not None and item.event is not None
        assert item.event.model_name is not None
        to = self.part.of_model(item.event.model_name)
        job_id = item.event.job_id
        await self.pipeline.settle()  # what it wrote is part of the handoff
        await self._load([item.event])
        folded = Folded(last_id=item.entry_id)
        self.divert.passed(item, folded)
        job = self.board.jobs.get(job_id)
        extra = {}
        if job is not None:
            config, points, seen = await self.store.job_extras(job_id)
            extra["handoff"] = orjson.dumps({"public": job.public(), "private": job.private(),
                                             "config": config, "points": points,
                                             "seen": seen})
            change = self.board.remove(job_id)
            folded.views.update(dict.fromkeys(change.jobs))
            folded.models.update(change.models)
        folded.outgoing.append((to, self.divert.forward(item, **extra)))
        commit = await self._build_commit(folded, {})
        if job is not None:
            commit.removed.append(job_id)
            reorder(commit, self.keys, job_id, place_of(job), None)
        commit.moved_out[job_id] = str(to)
        commit.finalise[job_id] = to
        await self.pipeline.commit(commit)
        self.divert.moved[job_id] = to
        log.info("job %s named model %r: moved to partition %d", job_id,
                 item.event.model_name, to)

    async def _fold(self, items: list[Decoded], loaded: bool = False
                    ) -> tuple[Commit | None, list[Decoded]]:
        """Fold ``items`` into the board and build their commit; with partitions the fold
        may stop before an item whose job must move first, returned with the items after
        it (the commit is None when that is the first). ``loaded``: what they touch is on
        the board already (:meth:`_prefetch`).

        Folding while the previous commit runs is safe: that commit wrote only groups
        already on the board, which :meth:`_load` never reads again, and jobs of the last
        batch, whose states stay on the board for this one (worker.hot). Only a history
        about to be thinned is read back, so its points must have landed first."""
        if not loaded:
            await self._load(events_of(items))
        await self._know_stored_ids(items)
        if self.divert is not None:
            self.divert.routes = await self.store.routes(self.divert.route_lookups(items))
        folded = fold(self.board, items, self.divert)
        rest = items[folded.stopped_at:] if folded.stopped_at is not None else []
        if folded.stopped_at == 0:
            return None, rest
        to_read = rewrites(self.board, folded)
        if to_read:
            await self.pipeline.settle()  # the points about to be read back must have landed
        histories = await self.store.histories(to_read) if to_read else {}
        self.hot.touch(folded.jobs)
        commit = await self._build_commit(folded, histories)
        now = time.time()
        BATCH_SIZE.observe(commit.observed, [folded.applied + folded.heartbeats])
        EVENT_AGE.observe(commit.observed, [max(0.0, now - item.pos[0] / 1000)
                                          for item in items[:len(items) - len(rest)]])
        return commit, rest

    async def _build_commit(self, folded: Folded,
                            histories: dict[str, list[dict[str, Any]]]) -> Commit:
        """:func:`build_commit`, with the stored states of the jobs whose view changed but
        whose state is not on the board. (Those were not touched by the commit that may be
        in flight, so what Redis has of them is final.)"""
        cold = cold_views(self.board, folded)
        stored = await self.store.publics(cold) if cold else {}
        return build_commit(self.board, folded, self.keys, histories, stored)

    async def _know_stored_ids(self, items: list[Decoded]) -> None:
        """Tell the board which event ids of ``items`` its jobs' stored sets hold: those
        Redis has, and those of the commit in flight, which may not have landed yet."""
        lookups = stored_id_lookups(self.board, items)
        if not lookups:
            return
        found = await self.store.stored_ids(lookups)
        flying = self.pipeline.stored_ids_in_flight
        for job_id, event_ids in lookups.items():
            stored = found[job_id]
            if sent := flying.get(self.keys.seen(job_id)):
                stored |= set(event_ids).intersection(sent)
            self.board.jobs[job_id].seen.know(stored)

    async def _load(self, events: list[Event]) -> None:
        """Bring the state of every stored job these events touch onto the board, and their
        model groups (what ranking needs of each of their jobs); first take the states of
        the jobs touched least recently off it, past ``hot_jobs``."""
        staged = await self.store.load_jobs(make_room(self.board, self.hot, events))
        needed = [m for m in groups_touched(self.board, staged, events)
                  if m not in self.loaded_groups]
        if needed:
            rankings = await self.store.rankings(needed)
            for model in needed:
                self.board.load_group(model, rankings[model])
                self.loaded_groups.add(model)
        warm(self.board, self.hot, staged)


async def _sleep(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep, waking early when ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run_worker(settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Run one worker until ``stop`` is set (what ``monitor worker`` does): with partitions,
    one loop per partition (taking this process's share of them) and the ingress router."""
    # The worker keeps many small long-lived objects; default collection thresholds make the
    # collector rescan them constantly (a third of the CPU at 100,000 jobs).
    gc.set_threshold(50_000, 20, 100)
    log.info("the pure core runs %s", "compiled" if compiled.in_use() else "from source, slower")
    part = settings.partitioning
    if not part.split:
        worker = Worker(settings)
        log.info("worker %s on %s, prefix %r", worker.name, settings.redis_url,
                 settings.prefix)
        await worker.run(stop)
        return
    shared = connect(settings.redis_url, settings.redis_cluster, retry=Retry(NoBackoff(), 0))
    try:
        await declare_partitions(shared, part)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        fleet = Fleet(shared, part, name, settings.lease_ttl)
        workers = [Worker(settings, i, fleet) for i in range(part.count)]
        router = IngressRouter(settings, shared, name)
        log.info("worker %s on %s, prefix %r, %d partitions", name, settings.redis_url,
                 settings.prefix, part.count)
        await asyncio.gather(fleet.run(stop), router.run(stop), *(w.run(stop) for w in workers))
    finally:
        await shared.aclose()


class PartitionsMismatch(StartError):
    """This process was started with another partition count than the deployment's."""


async def declare_partitions(redis: Redis, part: Partitioning) -> None:
    """Record the partition count on first start; refuse another one later (models would be
    looked for in the wrong partitions)."""
    if part.split:
        await redis.set(part.declared, part.count, nx=True)  # one on a cluster too
    stored = await redis.get(part.declared)
    if stored is not None and int(stored) != part.count:
        raise PartitionsMismatch(
            f"this deployment (prefix {part.prefix!r}) has {int(stored)} partitions, not "
            f"{part.count}: set MONITOR_PARTITIONS={int(stored)} (docs/scale-out.md)")
