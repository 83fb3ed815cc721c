"""The worker's position in the stream: the batch read ahead, the commit in flight, the applied id.

In a backlog the worker and Redis work at the same time: before sending a commit it reads the
next batch and loads the stored jobs that batch touches (Redis, with no commit of this worker
to run, answers at once), then folds that batch while Redis runs the commit, and sends the
next commit only once the previous one has answered. So at most one commit is in flight and at
most one batch is read ahead, and :class:`Pipeline` holds both. A failed commit makes the
worker start again from what is committed (:meth:`Pipeline.drop`, then
:meth:`Pipeline.restart`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from monitor.histograms import COMMIT
from monitor.rules import parse_pos
from monitor.settings import WorkerSettings
from worker.batch import Commit, Decoded, Entry, decode
from worker.lease import Lease
from worker.store import Store

log = logging.getLogger("monitor.worker")

# What a batch may raise that is not about Redis or the lease: a defect to isolate, not retry.
BUG = (ArithmeticError, LookupError, TypeError, ValueError, AssertionError)
PROGRESS_EVERY = 10.0  # seconds between progress lines


class CommitFailed(Exception):
    """A batch's commit, left running while the next batch was folded, failed (a defect).
    The worker starts again from what is committed, where it applies batches one at a time
    and so isolates the entry at fault."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries as read from the consumer group, and decoded."""

    entries: list[Entry]
    items: list[Decoded]
    loaded: bool = False  # the stored jobs and groups it touches are on the board already

    @classmethod
    def of(cls, entries: list[Entry]) -> Batch:
        return cls(entries, decode(entries))


@dataclass
class InFlight:
    """A commit sent to Redis and not yet answered."""

    task: asyncio.Task[str | None]
    sent: asyncio.Event  # set once the transaction is written to Redis
    expected: str  # the applied id it starts from
    update_size: int | None  # bytes of its update, if it has one
    applied: int  # events it applies
    stored_ids: dict[str, list[str]]  # event ids it adds to stored sets, by key
    sent_at: float = 0.0  # monotonic


class Pipeline:
    """Reads batches and sends commits for one worker process, one commit in flight at most."""

    def __init__(self, store: Store, lease: Lease, settings: WorkerSettings) -> None:
        self.store = store
        self.lease = lease
        self.settings = settings
        self.applied = "0-0"  # where the next commit starts: where the one in flight ends
        self.last_seen = "0-0"  # the newest entry id known to be in the stream
        # The last read came back short: wait for a newer entry before reading again (at a
        # trainer's pace, that saves a read that would return nothing after every batch).
        self.caught_up = False
        self._ahead: Batch | None = None
        self._in_flight: InFlight | None = None
        # Kept across restarts: what this process's commits applied, and added to updates.
        self.applied_total = 0
        self._progress = (time.monotonic(), 0)
        self._durations: list[float] = []  # of commits answered, for the next commit's stats
        self._update_sizes: deque[tuple[str, int]] = deque()  # what we added to updates
        self._update_bytes = 0

    def restart(self, applied: str) -> None:
        """Read and commit from ``applied``, the committed id (nothing is in flight)."""
        self.applied = self.last_seen = applied
        self.caught_up = False

    def drop(self) -> list[asyncio.Task[Any]]:
        """Forget the batch being read ahead and the commit in flight. A commit lands whole or
        not at all, and the recovery that follows rewinds the consumer group to what is
        committed, so it finds every entry again. Returns the cancelled tasks, for a caller
        that must let them end before closing the connection."""
        tasks: list[asyncio.Task[Any]] = []
        if self._in_flight is not None:
            tasks.append(self._in_flight.task)
        self._ahead = self._in_flight = None
        for task in tasks:
            task.cancel()
            task.add_done_callback(_retrieve)  # its error, if any, is not news
        return tasks

    async def read(self) -> Batch | None:
        """The next batch: the one read ahead, else the next new entries, after waiting for
        one when caught up. None: no new entry came within ``block``."""
        if self._ahead is not None:
            batch, self._ahead = self._ahead, None
        else:
            if self.caught_up:
                seen = await self.store.wait(self.last_seen, int(self.settings.block * 1000))
                if seen is None:
                    return None
                self.saw(seen)
            batch = await self._read()
        self.caught_up = len(batch.entries) < self.settings.batch_size
        return batch

    async def _read(self) -> Batch:
        entries = await self.store.read(self.lease.token, self.settings.batch_size)
        return Batch.of(entries)

    def saw(self, entry_id: str) -> None:
        """``entry_id`` is in the stream: a wait for new entries waits for a newer one."""
        if parse_pos(entry_id) > parse_pos(self.last_seen):
            self.last_seen = entry_id

    @property
    def stored_ids_in_flight(self) -> dict[str, list[str]]:
        """The event ids the commit in flight adds to stored sets, by key (it may not have
        landed yet)."""
        return self._in_flight.stored_ids if self._in_flight is not None else {}

    async def commit(self, commit: Commit) -> None:
        """Send ``commit`` once the one before has landed, and wait for it. A defect it raises
        is the caller's to isolate."""
        await self.settle()  # this commit starts where the previous one ends
        in_flight = self._send(commit)
        await self._landed(in_flight, await self._answer(in_flight))

    async def commit_reading_ahead(self, commit: Commit,
                                   prepare: Callable[[Batch], Awaitable[Batch]]) -> None:
        """In a backlog: once the commit before has landed, read the next batch, let
        ``prepare`` load the stored jobs it touches (it returns the batch, marked ``loaded``),
        then send ``commit`` and return while it runs; the next batch is folded meanwhile,
        and :meth:`settle` waits for the commit only before the next one is sent. (When the
        batch comes back not loaded, this waits for the commit.)

        The read and the lookup go first because Redis answers them at once, having no
        commit of this worker to run: sent after the commit, they would wait for the whole
        commit to run, and the worker with them (a tenth of its time at 100,000 jobs)."""
        await self.settle()  # this commit starts where the previous one ends
        # Kept before it is prepared: if preparing raises, the next turn folds it all the same.
        self._ahead = await self._read()
        self._ahead = await prepare(self._ahead)
        self._in_flight = self._send(commit)
        if not self._ahead.loaded:  # not prepared: its fold loads after this commit landed
            await self.settle()
            return
        # Until Redis has the whole transaction: the commit sends it after the reply to its
        # WATCH, and the fold that follows does not give the event loop a turn.
        await _sent(self._in_flight)

    def _send(self, commit: Commit) -> InFlight:
        if self._durations:  # the commits before this one: observed with it
            COMMIT.observe(commit.observed, self._durations)
            self._durations = []
        sent = asyncio.Event()
        task = asyncio.create_task(self.store.commit(
            commit, self.lease, self.applied, updates_keep=self.settings.updates_keep,
            dead_keep=self.settings.dead_keep, sent=sent))
        update_size = len(commit.update) if commit.update is not None else None
        in_flight = InFlight(task, sent, self.applied, update_size,
                             commit.counts.get("applied", 0), commit.seen_add, time.monotonic())
        self.applied = commit.applied
        return in_flight

    async def settle(self) -> None:
        """Wait for the commit in flight, if any. Its batch is gone by now, so a defect it
        raises cannot be isolated here: it is :class:`CommitFailed`."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        try:
            version = await self._answer(in_flight)
        except BUG as e:
            raise CommitFailed(f"a commit failed: {type(e).__name__}: {e}") from e
        await self._landed(in_flight, version)

    async def finish(self) -> None:
        """Wait for the commit in flight, if any, whatever it gives: what it committed stands,
        and what it did not is found again by the recovery."""
        try:
            await self.settle()
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("a commit left running failed: %r", e)

    async def _answer(self, in_flight: InFlight) -> str | None:
        """The commit's reply; when it fails, the next commit starts where it would have."""
        try:
            version = await in_flight.task
        except BaseException:
            self.applied = in_flight.expected
            raise
        self._durations.append(time.monotonic() - in_flight.sent_at)
        return version

    async def _landed(self, in_flight: InFlight, version: str | None) -> None:
        if version is not None and in_flight.update_size is not None:
            await self._bound_updates(version, in_flight.update_size)
        self.applied_total += in_flight.applied
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
        await self.store.trim_updates(self._update_sizes[0][0])

    def _log_progress(self) -> None:
        since, count = self._progress
        now = time.monotonic()
        if now - since >= PROGRESS_EVERY:
            n = self.applied_total - count
            log.info("applied %d events in %.0fs (%.0f/s)", n, now - since, n / (now - since))
            self._progress = (now, self.applied_total)


async def _sent(in_flight: InFlight) -> None:
    """Wait until Redis has the whole commit, or the commit ended without sending it."""
    sent = asyncio.ensure_future(in_flight.sent.wait())
    try:
        await asyncio.wait((sent, in_flight.task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sent.cancel()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.debug("a dropped background task had failed: %r", error)
