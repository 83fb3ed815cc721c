"""Which event ids were already applied to a job, exactly, at a cost per event that does not
grow with their number (docs/events.md, Event ids)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_ABOVE = 64  # numbers past a run's mark kept in the fold state; more go to the stored set


@dataclass(slots=True, init=False)
class Run:
    """What is known of the SDK ids ``<uid>:<n>`` of one run: every number up to ``mark`` was
    applied, and so were those in ``above``; those in the stored set are at most ``spilled``."""

    mark: int
    above: set[int]
    spilled: int

    # (Here and in SeenIds, __init__ is written out: compiled, the one @dataclass generates
    # still runs as Python, at several times the cost, for every new job.)
    def __init__(self, mark: int = 0, above: set[int] | None = None, spilled: int = 0) -> None:
        self.mark = mark
        self.above = above if above is not None else set()
        self.spilled = spilled


@dataclass(slots=True, init=False)
class SeenIds:
    """The event ids applied to one job, exactly, at a cost per event that does not grow with
    how many were applied.

    Ids of the SDK's form (a run uid, a colon, a counter from 1) are kept as a :class:`Run`:
    a mark, and a few numbers that came early. Every other id (of any other form, or a number
    past a long gap) belongs in the job's stored set (``Keys.seen``), which this state does
    not carry, so a job's fold state stays small however many such ids it has seen. The
    worker asks the stored set about the ids of a batch that may be there
    (:meth:`may_be_stored`) before folding it, hands in the answer (:meth:`know`), and
    writes :meth:`take_added` with the commit.
    """

    runs: dict[str, Run]
    known: set[str]  # in the stored set, or added since
    added: list[str]  # applied, not yet handed to a commit

    def __init__(self, runs: dict[str, Run] | None = None, known: set[str] | None = None,
                 added: list[str] | None = None) -> None:
        self.runs = runs if runs is not None else {}
        self.known = known if known is not None else set()
        self.added = added if added is not None else []

    def add(self, event_id: str) -> bool:
        """Record ``event_id``; False if it was already applied."""
        uid, n = _sdk_form(event_id)
        if n is None:
            return self._store(event_id)
        run = self.runs.get(uid)
        if run is None:
            run = self.runs[uid] = Run()
        if n <= run.mark or n in run.above or event_id in self.known:
            return False
        if n == run.mark + 1:
            run.mark = n
            while run.mark + 1 in run.above:
                run.mark += 1
                run.above.remove(run.mark)
        elif len(run.above) < MAX_ABOVE:
            run.above.add(n)
        else:  # a long gap: the stored set takes it
            run.spilled = max(run.spilled, n)
            return self._store(event_id)
        return True

    def _store(self, event_id: str) -> bool:
        if event_id in self.known:
            return False
        self.known.add(event_id)
        self.added.append(event_id)
        return True

    def may_be_stored(self, event_id: str) -> bool:
        """Must the stored set be asked about ``event_id`` before it is folded? (Not for a
        run's numbers that this state decides alone.)"""
        if event_id in self.known:
            return False
        uid, n = _sdk_form(event_id)
        if n is None:
            return True
        run = self.runs.get(uid)
        return run is not None and run.mark < n <= run.spilled and n not in run.above

    def know(self, stored: Iterable[str]) -> None:
        """These ids are in the stored set."""
        self.known.update(stored)

    def take_added(self) -> list[str]:
        """The ids to add to the stored set with the next commit; forgets what it knew of
        the stored set (the next batch asks again)."""
        added, self.added = self.added, []
        self.known.clear()
        return added

    def to_json(self) -> dict[str, Any]:
        return {"runs": {uid: [run.mark, sorted(run.above), run.spilled]
                         for uid, run in self.runs.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeenIds:
        seen = cls()
        for uid, (mark, above, *spilled) in data["runs"].items():
            kept = sorted(above)[:MAX_ABOVE]
            run = seen.runs[uid] = Run(mark, set(kept), spilled[0] if spilled else 0)
            for n in sorted(above)[MAX_ABOVE:]:  # stored before the bound existed
                seen.added.append(f"{uid}:{n}")
                run.spilled = n
        seen.added.extend(data.get("other", ()))  # likewise: ids of other forms
        seen.known.update(seen.added)
        return seen


def _sdk_form(event_id: str) -> tuple[str, int | None]:
    """``("run", 7)`` for ``"run:7"``; ``(event_id, None)`` for an id of any other form."""
    uid, colon, number = event_id.rpartition(":")
    if not colon or not number.isdigit() or not number.isascii() or number[0] == "0":
        return event_id, None
    return uid, int(number)
