"""Which job states the worker keeps in memory between batches.

A job's full state (about 3 KB) is needed only while events touch it; a model group needs of
each job only what ranking needs (``Group``). So the worker keeps the states of the jobs
touched most recently, up to ``limit``, and reads a job's state back from Redis when an event
touches it again. Jobs that still change (running jobs, sending events) stay among the most
recent; finished ones drift out.

A job touched by the last batch is never put out: that batch's commit may still be in
flight, and reading the job back before it lands would read an older state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import orjson

from monitor.decoded import Event
from monitor.records import split
from monitor.rules import Board, JobState


class HotJobs:
    """The jobs whose state is on the board, least recently touched first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.turn = 0  # one per batch loaded (or job moved): at most one commit each
        self._touched: OrderedDict[str, int] = OrderedDict()  # job id -> turn last touched

    def __len__(self) -> int:
        return len(self._touched)

    def next_turn(self) -> None:
        self.turn += 1

    def touch(self, job_ids: Iterable[str]) -> None:
        """These jobs' states are on the board and used in this turn."""
        touched, turn = self._touched, self.turn
        for job_id in job_ids:
            last = touched.get(job_id)
            if last is None:
                touched[job_id] = turn  # new: it goes last
            elif last != turn:  # (touched in this turn already: among the last, as needed)
                touched[job_id] = turn
                touched.move_to_end(job_id)

    def coldest(self) -> list[str]:
        """The jobs to take off the board now: the least recently touched beyond ``limit``,
        none touched in this turn or the last."""
        out = []
        touched = self._touched
        while len(touched) > self.limit:
            job_id, turn = next(iter(touched.items()))
            if turn >= self.turn - 1:
                break
            touched.popitem(last=False)
            out.append(job_id)
        return out


# What the worker does with them around each batch (worker.consumer's ``_load``), here to
# run compiled with the rest of the hot path: run as Python, these loops over the batch's
# events and jobs took about 5% of the worker's CPU at 100,000 jobs (py-spy).


def make_room(board: Board, hot: HotJobs, events: list[Event]) -> list[str]:
    """Start the turn of a batch of ``events``: take the coldest states off ``board`` past
    the limit (never one these events touch), and say which of the jobs they touch have no
    state on it, to read from Redis."""
    hot.next_turn()
    touched = {e.job_id for e in events}
    jobs = board.jobs
    hot.touch([job_id for job_id in touched if job_id in jobs])
    for job_id in hot.coldest():
        board.cool(job_id)
    return [job_id for job_id in touched if job_id not in jobs]


def groups_touched(board: Board, staged: dict[str, JobState],
                   events: list[Event]) -> set[str | None]:
    """The model groups ``events`` may touch, their jobs' states on ``board`` or read into
    ``staged``: a job's model, or for a job that names none yet the unnamed group and the
    model the event names."""
    models: set[str | None] = set()
    jobs = board.jobs
    for event in events:
        job = jobs.get(event.job_id) or staged.get(event.job_id)
        if job is not None and job.model_name is not None:
            models.add(job.model_name)
        else:  # may still be named by this very event
            models.add(None)
            if event.model_name is not None:
                models.add(event.model_name)
    return models


def restored(job_ids: list[str], values: list[bytes | None]) -> dict[str, JobState]:
    """The states of the stored jobs among ``job_ids``, from their values in ``<prefix>jobs``
    (None: not stored, left out)."""
    out = {}
    for job_id, raw in zip(job_ids, values):
        if raw is not None:
            public, fold = split(raw)
            if fold is not None:  # (always, once worker.upgrade merged older states)
                out[job_id] = JobState.restore(orjson.loads(public), orjson.loads(fold))
    return out


def warm(board: Board, hot: HotJobs, staged: dict[str, JobState]) -> None:
    """Put the states read from Redis on ``board``, as touched in this turn."""
    for job in staged.values():
        board.warm(job)
    hot.touch(staged)
