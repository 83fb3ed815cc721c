"""The worker loop: hold the lease, read a batch, fold it, commit and acknowledge it.

Crash safety comes from the order of things. A batch's effects, the id of its last entry, the
acknowledgement of its entries and the trimming of the stream are one atomic Lua call, which
checks the lease and the committed id first. (Only a batch applied one entry at a time, after a
failure, is acknowledged after its commits.) After a crash the next holder of the lease
re-reads every unacknowledged entry: those at or before the committed id are acknowledged
without being applied again, the rest are applied. So each entry is applied exactly once,
whenever the process dies.

In a backlog the worker and Redis work at the same time: it asks for the next batch just before
sending a commit, decodes and folds that batch while Redis runs the commit, and sends the next
commit only once the previous one has answered. A failed commit makes it start again from what
is committed."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

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
    Decoded,
    Entry,
    build_commit,
    decode,
    fold,
    poisoned,
    rewrites,
    stored_id_lookups,
)
from worker.lease import Lease
from worker.packing import pack_with_hiredis
from worker.store import LeaseLost, Store

log = logging.getLogger("monitor.worker")

# What a batch may raise that is not about Redis or the lease: a defect to isolate, not retry.
BUG = (ArithmeticError, LookupError, TypeError, ValueError, AssertionError)
PROGRESS_EVERY = 10.0  # seconds between progress lines

Batch = tuple[list[Entry], list[Decoded]]


class CommitFailed(Exception):
    """A batch's commit, left running while the next batch was folded, failed (a defect).
    The worker starts again from what is committed, where it applies batches one at a time
    and so isolates the entry at fault."""


@dataclass
class InFlight:
    """A commit sent to Redis and not yet answered."""

    task: asyncio.Task[str | None]
    expected: str  # the applied id it starts from
    update_size: int | None  # bytes of its update, if it has one
    applied: int  # events it applies
    stored_ids: dict[str, list[str]]  # event ids it adds to stored sets, by key


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
        self.applied_total = 0
        self._progress = (time.monotonic(), 0)
        self._update_sizes: deque[tuple[str, int]] = deque()  # what we added to updates
        self._update_bytes = 0
        self._ahead: asyncio.Task[Batch] | None = None  # the next batch, read while one commits
        self._committing: InFlight | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget everything cached; the next step re-reads the committed state."""
        self._drop_background()
        self._forget_state()
        self.applied = "0-0"
        self.last_seen = "0-0"
        self.generation = -1  # != lease.generation: recover before reading new entries
        # The last read came back short: wait for a newer entry before reading again (at a
        # trainer's pace, that saves a read that would return nothing after every batch).
        self.caught_up = False

    def _drop_background(self) -> None:
        """Forget the batch being read ahead and the commit in flight. What was read stays
        pending in the group, and a commit lands whole or not at all, so the recovery that
        follows a reset finds every entry again."""
        tasks = [self._ahead, self._committing.task if self._committing else None]
        self._ahead = self._committing = None
        for task in tasks:
            if task is not None:
                task.cancel()
                task.add_done_callback(_retrieve)  # its error, if any, is not news

    def _forget_state(self) -> None:
        self.board = Board()
        self.loaded_groups: set[str | None] = set()

    @property
    def leading(self) -> bool:
        return self.generation == self.lease.generation and self.generation > 0

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
                    await self.step(stop, overlap=True)
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
                await self._finish_commit()
            finally:
                stop.set()  # for whoever else waits on it, when run() ends by an error
                released.set()
                await keep_alive
                await self._release()

    async def _finish_commit(self) -> None:
        """Wait for the commit in flight, if any, whatever it gives: what it committed stands,
        and what it did not is found again by the recovery."""
        try:
            await self._settle()
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("a commit left running failed: %r", e)

    async def _release(self) -> None:
        ahead = self._ahead
        self._drop_background()
        try:
            if ahead is not None:
                await asyncio.gather(ahead, return_exceptions=True)
            await self.lease.release()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            pass  # it runs out by itself after lease_ttl
        finally:
            await self.redis.aclose()

    async def step(self, stop: asyncio.Event | None = None, overlap: bool = False) -> None:
        """One turn: take or keep the lease, then apply one batch or wait for one.

        With ``overlap``, when more entries are waiting, the next batch is read ahead and this
        batch's commit may still be running when this returns: the next step folds its batch
        meanwhile, and waits for that commit only before sending its own. (Without, nothing
        runs on after the return: the batch is committed.)
        """
        if not await self.lease.hold():
            if self.generation != -1:
                log.info("another worker holds the lease; standing by")
                self._reset()
            await _sleep(stop, min(0.25, self.settings.lease_ttl / 4))
            return
        if self.generation != self.lease.generation:
            await self._recover()
        items: list[Decoded] | None = None
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            entries, items = await ahead
        else:
            if self.caught_up:
                seen = await self.store.wait(self.last_seen, int(self.settings.block * 1000))
                if seen is None:
                    return
                if parse_pos(seen) > parse_pos(self.last_seen):
                    self.last_seen = seen
            entries = await self.store.read(self.lease.token, ">", self.settings.batch_size)
        self.caught_up = len(entries) < self.settings.batch_size
        if entries:
            await self._process(entries, items, overlap=overlap and not self.caught_up)
        if self.caught_up:
            await self._settle()  # nothing more to fold: no reason to leave it running

    async def _read_batch(self, token: str) -> Batch:
        entries = await self.store.read(token, ">", self.settings.batch_size)
        return entries, decode(entries)

    async def _recover(self) -> None:
        """After taking the lease: adopt unacknowledged entries and finish them first."""
        await self._finish_commit()  # so that the applied id read below is final
        self._reset()
        self.applied = await self.store.applied()
        self.last_seen = self.applied
        await self.store.adopt_pending(self.lease.token)
        cursor = "0"
        while entries := await self.store.read(self.lease.token, cursor,
                                               self.settings.batch_size):
            await self._process(entries)
            cursor = entries[-1][0]
        self.generation = self.lease.generation
        log.info("worker %s is applying events (committed up to %s)", self.name, self.applied)

    async def _process(self, entries: list[Entry], items: list[Decoded] | None = None,
                       overlap: bool = False) -> None:
        """Apply the entries not yet committed and commit them, acknowledging all of them and
        trimming the stream in the same atomic step when the batch applies whole. ``items``:
        the entries already decoded; ``overlap``: more are waiting (see :meth:`step`)."""
        done = parse_pos(self.applied)
        fresh = [item for item in (decode(entries) if items is None else items)
                 if item.pos > done]
        ids = [entry_id for entry_id, _ in entries]
        acknowledged = False
        if fresh:
            try:
                await self._apply(fresh, ack=ids, overlap=overlap)
                acknowledged = True
            except BUG:
                # Some entry makes the fold or the commit fail (a bug): find it, refuse it, and
                # go on with the rest, rather than stopping every model's updates for good.
                log.exception("a batch failed; applying its entries one at a time")
                await self._settle()  # the batch before: reloading must see its writes
                self._forget_state()
                for item in fresh:
                    try:
                        await self._apply([item])
                    except BUG as e:
                        log.exception("could not apply entry %s", item.entry_id)
                        self._forget_state()
                        await self._apply([poisoned(item, e)])
        if not acknowledged:
            # Only now: an entry acknowledged before its commit could be lost.
            await self.store.ack(ids)
            await self.store.trim(self.applied)
        last = entries[-1][0]
        if parse_pos(last) > parse_pos(self.last_seen):
            self.last_seen = last

    async def _apply(self, items: list[Decoded], ack: list[str] | None = None,
                     overlap: bool = False) -> None:
        """Fold ``items`` into the board and commit them in one atomic step (acknowledging
        ``ack`` with them). With ``overlap``, read the next batch ahead and return while the
        commit runs (:meth:`_settle` waits for it).

        Folding while the previous commit runs is safe: that commit wrote only jobs and
        groups already on the board, which :meth:`_load` never reads again. Only a history
        about to be thinned is read back, so its points must have landed first."""
        await self._load([item.event for item in items if item.event is not None])
        await self._know_stored_ids(items)
        folded = fold(self.board, items)
        to_read = rewrites(self.board, folded)
        if to_read:
            await self._settle()
        histories = await self.store.histories(to_read) if to_read else {}
        commit = build_commit(self.board, folded, self.keys, histories)
        await self._settle()  # this commit starts where the previous one ends
        if overlap:
            # Ask for the next batch just before the commit: Redis answers that read first, so
            # the worker decodes it while Redis runs the commit, instead of both taking turns.
            self._ahead = asyncio.create_task(self._read_batch(self.lease.token))
        task = asyncio.create_task(self.store.commit(
            commit, self.lease, self.applied, updates_keep=self.settings.updates_keep,
            dead_keep=self.settings.dead_keep, ack=ack))
        self._committing = InFlight(task, self.applied, len(commit.update)
                                    if commit.update is not None else None, folded.applied,
                                    commit.seen_add)
        self.applied = commit.applied
        if overlap:
            await asyncio.sleep(0)  # let it send the commit
        else:
            await self._settle(ours=True)

    async def _settle(self, ours: bool = False) -> None:
        """Wait for the commit in flight, if any. A defect it raises is the caller's to
        isolate when the commit is ``ours``, else (the batch before) :class:`CommitFailed`."""
        committing, self._committing = self._committing, None
        if committing is None:
            return
        try:
            version = await committing.task
        except BaseException as e:
            self.applied = committing.expected
            if isinstance(e, BUG) and not ours:
                raise CommitFailed(f"a commit failed: {type(e).__name__}: {e}") from e
            raise
        if version is not None and committing.update_size is not None:
            await self._bound_updates(version, committing.update_size)
        self.applied_total += committing.applied
        self._log_progress()

    async def _bound_updates(self, version: str, size: int) -> None:
        """Keep ``<prefix>updates`` within ``updates_mb`` too, not only ``updates_keep``
        entries: during a bulk load one commit's update can weigh a megabyte. (Sizes are known
        for what this process wrote; after a restart the entry bound alone applies at first.)"""
        self._update_sizes.append((version, size))
        self._update_bytes += size
        budget = self.settings.updates_mb * 1024 * 1024
        if self._update_bytes <= budget or len(self._update_sizes) < 2:
            return
        while self._update_bytes > budget and len(self._update_sizes) > 1:
            self._update_bytes -= self._update_sizes.popleft()[1]
        await self.redis.xtrim(self.keys.updates, minid=self._update_sizes[0][0],
                               approximate=True)

    async def _know_stored_ids(self, items: list[Decoded]) -> None:
        """Tell the board which event ids of ``items`` its jobs' stored sets hold: those
        Redis has, and those of the commit in flight, which may not have landed yet."""
        lookups = stored_id_lookups(self.board, items)
        if not lookups:
            return
        found = await self.store.stored_ids(lookups)
        flying = self._committing.stored_ids if self._committing is not None else {}
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

    def _log_progress(self) -> None:
        since, count = self._progress
        now = time.monotonic()
        if now - since >= PROGRESS_EVERY:
            n = self.applied_total - count
            log.info("applied %d events in %.0fs (%.0f/s)", n, now - since, n / (now - since))
            self._progress = (now, self.applied_total)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.debug("a dropped background task had failed: %r", error)


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
