"""The advisor: follows the committed changes (``<prefix>updates``), forecasts each running job
when its basis moves (a new eval observation, a new best elsewhere in its group) and writes
the forecast as a ``job_forecast`` event into ``<prefix>events``, which the worker folds into
the job's view like any other event (docs/insights.md#the-advisor).

So a forecast reaches ``/api/jobs``, ``/ws`` and the page with the fold's guarantees, and the
fold never waits for a forecast. Nothing here must survive a crash: the advisor's state is
derived, and a restarted advisor reads the committed state and forecasts every running job
again. A forecast equal to the one a view has is not written, and the fold ignores one that
changes nothing, so a restart neither doubles nor loses one.

Bounded CPU: changes to a job within ``advisor_debounce`` seconds are taken together, at most
one forecast per job is in flight, forecasts run in a thread one batch at a time, and after
each batch the advisor rests so that they use at most ``advisor_cpu`` of one core.

Two more duties, written the same way as events (docs/stopping.md): with ``autostop``, a stop
request for a job told ``cannot_win`` twice in a row; and, every few seconds, a ``job_stale``
for each running job that nothing arrived from for ``stale_after`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ResponseError

from monitor.advice import (
    Basis,
    Rivals,
    advise,
    autostop_reason,
    basis,
    slim,
    wants_forecast,
)
from monitor.keys import Keys
from monitor.records import split
from monitor.redistools import UNREACHABLE, backoff, connect, heal, text
from monitor.rules import parse_pos
from monitor.settings import AdvisorSettings
from worker.store import histories

log = logging.getLogger("monitor.advisor")

BATCH = 64  # jobs forecast per turn (their histories read in one round trip)
READ_COUNT = 500  # updates read per call
BLOCK_MS = 500


class Resync(Exception):
    """Redis came back empty, or the updates stream is gone: start afresh."""


class Trimmed(Resync):
    """Updates the advisor had not read were trimmed: read the committed state again."""


@dataclass
class Counters:
    """What the advisor did, for logs and the benchmark."""

    forecasts: int = 0  # computed
    written: int = 0  # differed from the view's, so written as events
    stops: int = 0  # auto-stop requests written
    stale: int = 0  # stale findings written
    cpu_seconds: float = 0.0  # thread CPU time spent computing them
    snapshots: int = 0
    recent_cpu: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))  # each, s


class Advisor:
    """One advisor process's state: the running jobs as the last update left them, their
    groups' rankings, and which jobs are due for a forecast."""

    def __init__(self, settings: AdvisorSettings, index: int = 0) -> None:
        self.settings = settings
        # With partitions, one advisor per partition (its groups are all there), each with
        # its share of the CPU budget.
        part = settings.partitioning
        self.keys = part.keys(index)
        self.announced = Keys(settings.prefix).advisor
        self.cpu_share = settings.advisor_cpu / part.count
        self.redis = connect(settings.redis_url, settings.redis_cluster)
        self.counters = Counters()
        self._forget()
        self._woken = asyncio.Event()

    def _forget(self) -> None:
        """Forget everything: the next turn reads the committed state and forecasts every
        running job again."""
        self.done: dict[str, Basis] = {}  # the basis of each job's last forecast
        self._forget_views()

    def _forget_views(self) -> None:
        """Forget the views but not the bases of the forecasts made: after a snapshot, only
        the jobs whose basis moved meanwhile are forecast again."""
        self.version: str | None = None  # the last update taken in; None: read a snapshot
        self.heard_version = "0-0"  # the last entry of <prefix>heard taken in
        self.heard: dict[str, int] = {}  # running job -> the second of its last arrival, ms
        self.jobs: dict[str, dict[str, Any]] = {}
        self.rivals = Rivals()
        self.members: dict[str | None, set[str]] = {}  # running jobs by model
        self.due: dict[str, float] = {}  # job id -> when its forecast is due (monotonic)
        self.flagged: dict[str, float] = {}  # job id -> the silence already reported stale

    async def run(self, stop: asyncio.Event) -> None:
        """Follow updates and forecast until ``stop`` is set; survives Redis going away."""
        forecaster = asyncio.create_task(self._forecast_loop(stop), name="forecasts")
        watcher = asyncio.create_task(self._liveness_loop(stop), name="liveness")
        delay = 0.1
        try:
            while not stop.is_set():
                try:
                    if self.version is None:
                        await self._snapshot()
                    await self._follow()
                    delay = 0.1
                except Trimmed as e:
                    log.warning("reading the committed state again: %s", e)
                    self._forget_views()
                except Resync as e:
                    log.warning("reading the committed state again: %s", e)
                    self._forget()
                except UNREACHABLE as e:
                    log.warning("Redis unreachable (%s); retrying in %.1fs", e, delay)
                    self._forget()
                    await _sleep(stop, delay)
                    await heal(self.redis)
                    delay = backoff(delay)
        finally:
            stop.set()
            self._woken.set()
            await forecaster
            await watcher
            await self.redis.aclose()
            c = self.counters
            log.info("advisor stopped: %d forecasts computed (%.1f ms of CPU each on "
                     "average), %d written; %d stop requests, %d stale findings; %d snapshots",
                     c.forecasts, 1000 * c.cpu_seconds / max(c.forecasts, 1), c.written,
                     c.stops, c.stale, c.snapshots)

    # --- Following the committed state ------------------------------------------------------

    async def _snapshot(self) -> None:
        """Every stored job and the version they are at, read atomically; the second of each
        running job's last arrival from its fold state. A running job whose state does not
        say (written by a version before 2026-12-07, not yet upgraded by a worker) counts as
        heard now: found stale ``stale_after`` later unless heard, and the worker shows its
        true last arrival then."""
        now: Any = await self.redis.time()  # (apart: TIME has no key, so no cluster slot)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.jobs)
            pipe.xrevrange(self.keys.updates, count=1)
            pipe.xrevrange(self.keys.heard, count=1)
            stored, last, heard = await pipe.execute()
        self.counters.snapshots += 1
        self.version = text(last[0][0]) if last else "0-0"
        self.heard_version = text(heard[0][0]) if heard else "0-0"
        for raw in stored.values():
            public, fold = split(raw)
            job = orjson.loads(public)
            if job["status"] == "running" and not job["stale"]:
                alive_at = orjson.loads(fold).get("alive_at") if fold is not None else None
                self.heard[job["id"]] = int(alive_at if alive_at is not None else now[0]) * 1000
            self._take(job)
        log.info("advisor follows %d jobs from update %s", len(self.jobs), self.version)

    async def _follow(self) -> None:
        """Take in the updates after the last one taken in."""
        assert self.version is not None
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_stream(k.updates)
            pipe.xinfo_stream(k.heard)
            pipe.xread({k.heard: self.heard_version, k.updates: self.version},
                       count=READ_COUNT, block=BLOCK_MS)
            info, heard_info, reply = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(info, ResponseError):
            if self.version != "0-0":
                raise Resync("the updates stream is gone")
        elif self._missed(info, self.version):
            raise Trimmed(f"updates after {self.version} were trimmed before they were read")
        if not isinstance(heard_info, ResponseError) and self._missed(heard_info,
                                                                      self.heard_version):
            raise Trimmed(f"{k.heard} after {self.heard_version} was trimmed before it was "
                          f"read")
        for stream, entries in reply or []:
            if text(stream) == k.heard:  # (read first: a job's end comes after its arrivals)
                for entry_id, fields in entries:
                    self.heard_version = text(entry_id)
                    for job_id, second in orjson.loads(fields[b"jobs"]).items():
                        known = self.jobs.get(job_id)
                        if not second:  # moved to another partition
                            self.heard.pop(job_id, None)
                        elif known is None or known["status"] == "running":
                            self.heard[job_id] = second
                        # (else it ended: an entry read late, the streams are read
                        # separately, 500 entries at a time each)
                continue
            for entry_id, fields in entries:
                self.version = text(entry_id)
                data = fields.get(b"data")
                if data is not None:
                    for view in orjson.loads(data)["jobs"]:
                        self._take(view)

    def _missed(self, info: Any, version: str) -> bool:
        if version == "0-0":
            return False
        mine = parse_pos(version)
        if parse_pos(text(info["last-generated-id"])) < mine:
            raise Resync("the updates stream is younger than what was read: Redis came back "
                         "empty")
        # Trimming drops the oldest first: once the entry after ours may be gone, resync
        # rather than miss it.
        first = info.get("first-entry")
        return first is not None and parse_pos(text(first[0])) > mine

    def _take(self, view: dict[str, Any]) -> None:
        """A job's new view: keep it, re-rank its group, and mark what must be forecast."""
        job = slim(view)
        job_id, model = job["id"], job["model_name"]
        before = self.jobs.get(job_id)
        self.jobs[job_id] = job
        if job["stale"] or job["status"] != "running":
            self.flagged.pop(job_id, None)  # its finding landed, or it ended: not asked again
            if job["status"] != "running":
                self.heard.pop(job_id, None)
        if before is not None and before["model_name"] != model:
            self.members.get(before["model_name"], set()).discard(job_id)
        if wants_forecast(job):
            self.members.setdefault(model, set()).add(job_id)
        else:
            self.members.get(model, set()).discard(job_id)
            self.done.pop(job_id, None)
            self.due.pop(job_id, None)
        moved = self.rivals.place(job)
        if before is not None and before["model_name"] != model:
            self._check_group(before["model_name"])
        if moved:
            self._check_group(model)
        else:
            self._check(job_id)

    def _check_group(self, model: str | None) -> None:
        for job_id in list(self.members.get(model, ())):
            self._check(job_id)

    def _check(self, job_id: str) -> None:
        """Mark ``job_id`` due when its basis moved since its last forecast."""
        job = self.jobs[job_id]
        if not wants_forecast(job):
            return
        now = basis(job, self.rivals.other_best(job_id, job["model_name"]))
        if self.done.get(job_id) != now and job_id not in self.due:
            self.due[job_id] = time.monotonic() + self.settings.advisor_debounce
            self._woken.set()

    # --- Forecasting -------------------------------------------------------------------------

    async def _forecast_loop(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            ready = self._ready()
            if not ready:
                await self._wait_for_due(stop)
                continue
            try:
                spent = await self.forecast(ready)
                delay = 0.1
            except UNREACHABLE as e:
                log.warning("could not forecast (%s); retrying in %.1fs", e, delay)
                for job_id in ready:
                    self.due.setdefault(job_id, time.monotonic())
                await _sleep(stop, delay)
                delay = backoff(delay)
                continue
            share = self.cpu_share
            if share < 1:
                await _sleep(stop, spent * (1 / share - 1))

    def _ready(self) -> list[str]:
        now = time.monotonic()
        ready = [job_id for job_id, at in self.due.items() if at <= now][:BATCH]
        for job_id in ready:
            del self.due[job_id]
        return ready

    async def _wait_for_due(self, stop: asyncio.Event) -> None:
        self._woken.clear()
        soonest = min(self.due.values(), default=None)
        timeout = 1.0 if soonest is None else max(0.0, soonest - time.monotonic())
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except TimeoutError:
            pass

    async def forecast(self, job_ids: list[str]) -> float:
        """Forecast ``job_ids`` now and write the forecasts that differ from their views';
        returns the CPU seconds the forecasts took."""
        jobs = {job_id: dict(self.jobs[job_id]) for job_id in job_ids
                if job_id in self.jobs and wants_forecast(self.jobs[job_id])}
        bases = {job_id: basis(job, self.rivals.other_best(job_id, job["model_name"]))
                 for job_id, job in jobs.items()}
        points = await histories(self.redis, self.keys, list(jobs))
        said, spent = await asyncio.to_thread(self._compute, jobs, bases, points)
        self.counters.forecasts += len(jobs)
        self.counters.cpu_seconds += spent
        events = []
        for job_id, forecast in said.items():
            self.done[job_id] = bases[job_id]
            current = self.jobs.get(job_id)
            if forecast is None or (current is not None and current["forecast"] == forecast):
                continue
            events.append({"type": "job_forecast", "job_id": job_id, "forecast": forecast})
            self.counters.written += 1
            if self.settings.autostop and current is not None:
                why = autostop_reason(current, current["forecast"], forecast,
                                      self.settings.stop_below)
                if why is not None:
                    events.append({"type": "job_stop_requested", "job_id": job_id,
                                   "by": "forecast", "reason": why})
                    self.counters.stops += 1
        await self._write(events)
        return spent

    async def _write(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self.keys.events, {"data": orjson.dumps(event)})
            await pipe.execute()

    # --- Liveness ----------------------------------------------------------------------------

    async def _liveness_loop(self, stop: asyncio.Event) -> None:
        every = min(10.0, max(0.25, self.settings.stale_after / 4))
        while not stop.is_set():
            try:
                await self.announce(ttl=3 * every + 1)
                if self.version is not None:
                    await self.find_stale()
            except UNREACHABLE as e:
                log.warning("could not look for stale jobs (%s)", e)
            await _sleep(stop, every)

    async def announce(self, ttl: float) -> None:
        """Say that an advisor runs, and how it is set (``GET /api/advisor``; the page offers
        "Stop all that can't win" only when auto-stop is off)."""
        s = self.settings
        await self.redis.set(self.announced, orjson.dumps(
            {"autostop": s.autostop, "stop_below": s.stop_below, "stale_after": s.stale_after}),
            px=round(ttl * 1000))

    async def find_stale(self) -> None:
        """Report the running jobs that nothing arrived from for ``stale_after`` seconds
        (by Redis's clock, the one arrival times are on). :attr:`heard` holds the second of
        each running job's last arrival, so a job whose second ended before the cutoff is
        silent; the ``job_stale`` says nothing arrived after the cutoff, and the worker,
        which knows the last arrival to the millisecond, shows that as ``last_seen``. (A
        look goes over every running job in memory: about 10 ms for 100,000 of them.)"""
        now: Any = await self.redis.time()
        cutoff = now[0] + now[1] / 1e6 - self.settings.stale_after
        bound = (cutoff - 1) * 1000
        events = []
        ended = []
        for job_id, second in self.heard.items():
            if second > bound or self.flagged.get(job_id) == second:
                continue
            job = self.jobs.get(job_id)
            if job is not None and job["status"] != "running":
                ended.append(job_id)  # heard of before its view arrived: forget it now
                continue
            if job is None or job["stale"]:
                continue
            self.flagged[job_id] = second
            events.append({"type": "job_stale", "job_id": job_id, "last_seen": cutoff})
        for job_id in ended:
            del self.heard[job_id]
        self.counters.stale += len(events)
        await self._write(events)

    def _compute(self, jobs: dict[str, dict[str, Any]], bases: dict[str, Basis],
                 points: dict[str, list[dict[str, Any]]]
                 ) -> tuple[dict[str, dict[str, Any] | None], float]:
        said = {}
        spent = 0.0
        for job_id, job in jobs.items():
            started = time.thread_time()
            try:
                said[job_id] = advise(job, points[job_id], bases[job_id].other_best,
                                      self.settings.stop_below)
            except (ArithmeticError, ValueError):  # a defect: say so, keep the rest going
                log.exception("could not forecast job %s", job_id)
                said[job_id] = None
            took = time.thread_time() - started
            self.counters.recent_cpu.append(took)
            spent += took
        return said, spent


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run_advisor(settings: AdvisorSettings, stop: asyncio.Event) -> None:
    """Run one advisor until ``stop`` is set (what ``monitor advisor`` does); with
    partitions, one per partition in this process."""
    count = settings.partitions
    log.info("advisor on %s, prefix %r%s", settings.redis_url, settings.prefix,
             f", {count} partitions" if count > 1 else "")
    await asyncio.gather(*(Advisor(settings, i).run(stop) for i in range(count)))
