"""The worker loop: hold the lease, read a batch, fold it, commit and acknowledge it.

Crash safety comes from the order of things. A batch's effects, the id of its last entry, the
acknowledgement of its entries and the trimming of the stream are one atomic Lua call, which
checks the lease and the committed id first. (Only a batch applied one entry at a time, after a
failure, is acknowledged after its commits.) After a crash the next holder of the lease
re-reads every unacknowledged entry: those at or before the committed id are acknowledged
without being applied again, the rest are applied. So each entry is applied exactly once,
whenever the process dies.

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
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from monitor.events import Event
from monitor.keys import Keys
from monitor.redistools import backoff
from monitor.rules import Board, parse_pos
from monitor.settings import WorkerSettings
from worker.batch import (
    Commit,
    Decoded,
    Entry,
    build_commit,
    fold,
    poisoned,
    rewrites,
    stored_id_lookups,
)
from worker.lease import Lease
from worker.packing import pack_with_hiredis
from worker.pipeline import BUG, Batch, CommitFailed, Pipeline
from worker.store import LeaseLost, Store

log = logging.getLogger("monitor.worker")

# How a batch's commit is sent: waited for (Pipeline.commit), or left running while the next
# batch is read ahead (Pipeline.commit_reading_ahead). Both take the entry ids to acknowledge.
Send = Callable[[Commit, list[str]], Awaitable[None]]


class Worker:
    """One worker process's loop; several may run, one applies events at a time."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        # No silent retries: a command retried after its reply was lost could skip a batch.
        # A failed call resets the worker, which then recovers from what is committed.
        self.redis = Redis.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0))
        pack_with_hiredis(self.redis)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.store = Store(self.redis, self.keys, self.name)
        self.lease = Lease(self.redis, self.keys.lease, settings.lease_ttl, self.name)
        self.pipeline = Pipeline(self.store, self.lease, settings)
        self.generation = -1  # the lease generation recovered for; -1: recover before reading
        self.board = Board()  # every stored job and model group loaded so far
        self.loaded_groups: set[str | None] = set()

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
                except ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    # Redis came back empty, or someone deleted the stream: start afresh.
                    log.warning("the consumer group is gone (%s); creating it again", e)
                    ready = False
                    self.lease.forget()
                    self._reset()
                except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                    log.warning("Redis unreachable (%s); retrying in %.1fs", e, delay)
                    ready = False
                    self.lease.forget()
                    self._reset()
                    await _sleep(stop, delay)
                    delay = backoff(delay)
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
        except (RedisConnectionError, RedisTimeoutError, OSError):
            pass  # it runs out by itself after lease_ttl
        finally:
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
            await self._apply(batch, self.pipeline.commit_reading_ahead)

    async def _begin_turn(self, stop: asyncio.Event | None) -> Batch | None:
        """Hold the lease (else stand by), recover after taking it, and read the next batch.
        None: nothing to apply this turn."""
        if not await self.lease.hold():
            await self._stand_by(stop)
            return None
        if not self.leading:
            await self._recover()
        return await self.pipeline.read()

    async def _stand_by(self, stop: asyncio.Event | None) -> None:
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
        """After taking the lease: adopt unacknowledged entries and finish them first."""
        await self.pipeline.finish()  # so that the applied id read below is final
        self._reset()
        self.pipeline.restart(await self.store.applied())
        await self.store.adopt_pending(self.lease.token)
        cursor = "0"
        while entries := await self.store.read(self.lease.token, cursor,
                                               self.settings.batch_size):
            await self._process(entries)
            cursor = entries[-1][0]
        self.generation = self.lease.generation
        log.info("worker %s is applying events (committed up to %s)", self.name,
                 self.pipeline.applied)

    async def _process(self, entries: list[Entry]) -> None:
        """Apply ``entries`` and wait for their commit (see :meth:`_apply`)."""
        await self._apply(Batch.of(entries), self.pipeline.commit)

    async def _apply(self, batch: Batch, send: Send) -> None:
        """Apply the entries not yet committed and ``send`` their commit, acknowledging all of
        them and trimming the stream in the same atomic step when the batch applies whole."""
        done = parse_pos(self.pipeline.applied)
        fresh = [item for item in batch.items if item.pos > done]
        if not fresh:
            await self._acknowledge(batch)
        else:
            try:
                await send(await self._fold(fresh), batch.ids)
            except BUG:
                # Some entry makes the fold or the commit fail (a bug): find it, refuse it, and
                # go on with the rest, rather than stopping every model's updates for good.
                log.exception("a batch failed; applying its entries one at a time")
                await self._apply_one_at_a_time(fresh)
                await self._acknowledge(batch)
        self.pipeline.saw(batch.entries[-1][0])

    async def _apply_one_at_a_time(self, items: list[Decoded]) -> None:
        """Commit each item on its own, refusing one that fails as poisoned."""
        await self.pipeline.settle()  # the batch before: reloading must see its writes
        self._forget_state()
        for item in items:
            try:
                await self.pipeline.commit(await self._fold([item]))
            except BUG as e:
                log.exception("could not apply entry %s", item.entry_id)
                self._forget_state()
                await self.pipeline.commit(await self._fold([poisoned(item, e)]))

    async def _acknowledge(self, batch: Batch) -> None:
        """Acknowledge ``batch`` and trim the stream apart from a commit, once every entry in
        it is committed: only now, as an entry acknowledged before its commit could be lost."""
        await self.store.ack(batch.ids)
        await self.store.trim(self.pipeline.applied)

    async def _fold(self, items: list[Decoded]) -> Commit:
        """Fold ``items`` into the board and build their commit.

        Folding while the previous commit runs is safe: that commit wrote only jobs and
        groups already on the board, which :meth:`_load` never reads again. Only a history
        about to be thinned is read back, so its points must have landed first."""
        await self._load([item.event for item in items if item.event is not None])
        await self._know_stored_ids(items)
        folded = fold(self.board, items)
        to_read = rewrites(self.board, folded)
        if to_read:
            await self.pipeline.settle()  # the points about to be read back must have landed
        histories = await self.store.histories(to_read) if to_read else {}
        return build_commit(self.board, folded, self.keys, histories)

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
        """Bring every stored job and whole model group these events touch onto the board."""
        board = self.board
        unknown = list({e.job_id for e in events if e.job_id not in board.jobs})
        staged = await self.store.load_jobs(unknown)
        models: set[str | None] = set()
        for event in events:
            job = board.jobs.get(event.job_id) or staged.get(event.job_id)
            if job is not None and job.model_name is not None:
                models.add(job.model_name)
            else:  # may still be named by this very event
                models.add(None)
                if event.model_name is not None:
                    models.add(event.model_name)
        needed = [m for m in models if m not in self.loaded_groups]
        if not needed:
            return
        members = await self.store.group_members(needed)
        missing = [job_id for ids in members.values() for job_id in ids
                   if job_id not in staged and job_id not in board.jobs]
        staged.update(await self.store.load_jobs(missing))
        for model in needed:
            board.load(staged[job_id] for job_id in members[model] if job_id in staged)
            self.loaded_groups.add(model)


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
    """Run one worker until ``stop`` is set (what ``monitor worker`` does)."""
    # The worker keeps many small long-lived objects; default collection thresholds make the
    # collector rescan them constantly (a third of the CPU at 100,000 jobs).
    gc.set_threshold(50_000, 20, 100)
    worker = Worker(settings)
    log.info("worker %s on %s, prefix %r", worker.name, settings.redis_url, settings.prefix)
    await worker.run(stop)
