"""What one windowed ``/ws`` client watches, and which parts of an update it is sent. Pure.

A client is sent a job's change when it holds the job (a window or a watch gave it), or when
the job now enters one of its windows. A window or watch reply is read at a version per
partition; an update of a job at or before the version its copy was read at is older than
that copy, and is not sent (docs/websocket.md, Windows).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from monitor.keys import Everyone, model_field
from monitor.rules import Pos
from web.state import list_key
from web.windows import Filters, Key

MAX_WINDOWS = 16
MAX_WATCHED = 1000
MAX_HELD = 20_000  # jobs one client's windows may hold: its memory here is bounded


class Changes:
    """One update's views, indexed once for every client that routes it: by id, and in the
    list's order, over every model and per model."""

    def __init__(self, views: list[dict[str, Any]]) -> None:
        self.by_id = {view["id"]: view for view in views}
        ordered = sorted(((list_key(view), view) for view in self.by_id.values()),
                         key=lambda entry: entry[0])
        self._all = ([key for key, _ in ordered], [view for _, view in ordered])
        self._models: dict[str, tuple[list[Key], list[dict[str, Any]]]] = {}
        for key, view in ordered:
            keys, views_ = self._models.setdefault(model_field(view["model_name"]), ([], []))
            keys.append(key)
            views_.append(view)

    def within(self, model: str | None | Everyone, end: Key | None) -> list[dict[str, Any]]:
        """The views of ``model`` (or every model) that do not sort after ``end``."""
        keys, views = (self._all if isinstance(model, Everyone)
                       else self._models.get(model_field(model), ([], [])))
        return views if end is None else views[:bisect_right(keys, end)]


@dataclass
class Window:
    """A window's filters, how far down the list it covers, and the jobs it holds."""

    filters: Filters
    end: Key | None  # the place it covers up to; None: the end of the list
    ids: set[str] = field(default_factory=set)

    def covers(self, view: dict[str, Any]) -> bool:
        return (self.end is None or list_key(view) <= self.end) and self.filters.matches(view)


@dataclass
class Watching:
    """One client's windows and watched jobs, and the version each job's copy was read at."""

    partitions: int
    windows: dict[str, Window] = field(default_factory=dict)
    watched: set[str] = field(default_factory=set)
    read_at: dict[str, list[Pos]] = field(default_factory=dict)  # job id -> per partition
    summary_at: list[Pos] = field(default_factory=list)  # the model rows' version

    def start_over(self, summary_at: list[Pos]) -> None:
        """A new summary: nothing is held any more."""
        self.windows.clear()
        self.watched.clear()
        self.read_at.clear()
        self.summary_at = summary_at

    def _note(self, views: list[dict[str, Any]], read_at: dict[str, list[Pos]],
              taking: str | None = None) -> None:
        """Views a reply gave: what they were read at, and the windows they belong to now
        (as an update's views move them: a reply is newer than any update sent before it).
        ``taking``: the window whose page this is, which holds them already."""
        for view in views:
            self.read_at[view["id"]] = read_at[view["id"]]
            for window_id, window in self.windows.items():
                if window_id == taking:
                    continue
                if window.covers(view):
                    window.ids.add(view["id"])
                else:
                    window.ids.discard(view["id"])

    def took_page(self, window_id: str, filters: Filters, first: bool,
                  views: list[dict[str, Any]], end: Key | None,
                  read_at: dict[str, list[Pos]]) -> None:
        """A window's page was sent: the first (the window starts again) or the next."""
        if first:
            self.windows[window_id] = Window(filters, end)
            self._forget_unheld()  # what the window held before
        window = self.windows[window_id]
        window.end = end
        window.ids.update(view["id"] for view in views)
        self._note(views, read_at, taking=window_id)

    def held(self) -> int:
        """Jobs the client's windows hold (with repeats): what its memory here grows with."""
        return sum(len(window.ids) for window in self.windows.values())

    def close(self, window_id: str) -> None:
        self.windows.pop(window_id, None)
        self._forget_unheld()

    def watch(self, views: list[dict[str, Any]], read_at: dict[str, list[Pos]]) -> None:
        self.watched.update(view["id"] for view in views)
        self._note(views, read_at)

    def unwatch(self, ids: list[str]) -> None:
        self.watched.difference_update(ids)
        self._forget_unheld()

    def holds(self, job_id: str) -> bool:
        return job_id in self.watched or any(job_id in w.ids for w in self.windows.values())

    def _forget_unheld(self) -> None:
        for job_id in [j for j in self.read_at if not self.holds(j)]:
            del self.read_at[job_id]

    def route(self, index: int, pos: Pos, changes: Changes) -> list[dict[str, Any]]:
        """The views of an update (of partition ``index`` at ``pos``) to send; the windows
        follow them (a job that no longer belongs to a window leaves it, one that now does
        enters). Costs what the client holds and what falls within its windows, not the
        size of the update: a new best of a model of 5,000 runs moves 5,000 views."""
        out: dict[str, dict[str, Any]] = {}
        by_id = changes.by_id

        def fresh(job_id: str) -> bool:
            read = self.read_at.get(job_id)
            if read is None:
                return True
            if pos <= read[index]:
                return False  # the client's copy is newer
            del self.read_at[job_id]
            return True

        for job_id in self.watched & by_id.keys():
            if fresh(job_id):
                out[job_id] = by_id[job_id]
        for window in self.windows.values():
            for job_id in window.ids & by_id.keys():
                view = by_id[job_id]
                if job_id in out or fresh(job_id):
                    out[job_id] = view
                    if not window.covers(view):
                        window.ids.discard(job_id)
            for view in changes.within(window.filters.model, window.end):
                job_id = view["id"]
                if job_id not in window.ids and window.filters.matches(view) and (
                        job_id in out or fresh(job_id)):
                    window.ids.add(job_id)
                    out[job_id] = view
        return list(out.values())

    def rows(self, index: int, pos: Pos, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The model rows of an update to send: none older than the summary's."""
        return rows if not self.summary_at or pos > self.summary_at[index] else []
