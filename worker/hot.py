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
