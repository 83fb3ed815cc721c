"""One batch of stream entries, folded into the board and turned into one commit. Pure: no I/O.

The worker reads entries, :func:`decode` validates them, the worker loads the jobs and groups
they touch, :func:`fold` applies them, and :func:`build_commit` says what to write in one
Redis transaction: job and model state, metric points, the changed views for
``<prefix>updates``, refused entries for ``<prefix>dead``, and the id of the last entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from monitor import history
from monitor.decoded import Event, JobHeartbeat, parse_event
from monitor.events import BadEvent
from monitor.jobjson import to_json
from monitor.keys import Keys, model_field
from monitor.records import record
from monitor.rules import (
    Board,
    Group,
    JobState,
    Pos,
    parse_pos,
    parse_positions,
    shows_public_and_extras,
)
from worker.moves import MOVE, RELAY, SKIP, Diverter
from worker.order import Place, place_of, reorder

log = logging.getLogger("monitor.worker")

DEAD_DATA_BYTES = 4096
# orjson.dumps bound once: compiled, each ``orjson.dumps(...)`` looks the name up in the
# module first, and a batch calls it four times for every job it touches.
dumps: Final = orjson.dumps

Entry = tuple[str, dict[bytes, bytes] | None]
"""A stream entry as read: its id and fields (None when it was deleted from the stream)."""


class Decoded:
    """One entry after validation: an event to apply, or the reason it is refused. (A plain
    class, one per entry: compiled, one costs a sixth of a NamedTuple.)"""

    __slots__ = ("entry_id", "event", "handoff", "pos", "raw", "reason", "src")

    def __init__(self, entry_id: str, pos: Pos, event: Event | None, raw: bytes,
                 reason: str | None = None, src: tuple[str, Pos] | None = None,
                 handoff: dict[str, Any] | None = None) -> None:
        self.entry_id: Final = entry_id
        self.pos: Final = pos
        self.event: Final = event
        self.raw: Final = raw
        self.reason: Final = reason
        # With partitions (docs/scale-out.md): where a forwarded entry comes from (its source
        # and its position there), and the job a handoff brings along.
        self.src: Final = src
        self.handoff: Final = handoff

    def __repr__(self) -> str:
        return (f"Decoded({self.entry_id!r}, {type(self.event).__name__}, "
                f"reason={self.reason!r}, src={self.src!r})")

    @property
    def ts(self) -> float:
        """The event's time: its ``ts``, else the stream entry's time."""
        assert self.event is not None
        return self.event.ts if self.event.ts is not None else self.pos[0] / 1000


def entries_read(entries: list[Any]) -> list[Entry]:
    """Entries as XREADGROUP gives them: ``[id, [field, value, ...]]``, or ``[id, None]``
    once deleted from the stream. (Compiled with the rest: it runs for every entry read.)"""
    out: list[Entry] = []
    for entry in entries:
        raw_id: bytes = entry[0]
        flat: list[bytes] | None = entry[1]
        entry_id = raw_id.decode("ascii")
        if not flat:
            out.append((entry_id, None))
        elif len(flat) == 2:  # the usual case: one field, data
            out.append((entry_id, {flat[0]: flat[1]}))
        else:
            out.append((entry_id, dict(zip(flat[::2], flat[1::2]))))
    return out


def decode(entries: list[Entry]) -> list[Decoded]:
    """Validate each entry; a bad one is kept with its reason (it goes to ``<prefix>dead``)."""
    out = []
    for (entry_id, fields), pos in zip(entries, parse_positions([e[0] for e in entries])):
        raw = (fields or {}).get(b"data")
        if raw is None:
            reason = "entry has no data field" if fields else "entry was deleted from the stream"
            out.append(Decoded(entry_id, pos, None, b"", reason))
            continue
        assert fields is not None
        # Workers write src and handoff: an entry with a malformed one is refused (keeping a
        # well-formed src, so that the position in its source still moves past it).
        try:
            src = _source(fields.get(b"src"))
        except ValueError as e:
            out.append(Decoded(entry_id, pos, None, raw, str(e)))
            continue
        try:
            handoff = _handoff(fields.get(b"handoff"))
        except (TypeError, ValueError) as e:
            out.append(Decoded(entry_id, pos, None, raw, str(e), src))
            continue
        try:
            out.append(Decoded(entry_id, pos, parse_event(raw), raw, None, src, handoff))
        except BadEvent as e:
            out.append(Decoded(entry_id, pos, None, raw, e.reason, src))
    return out


def events_of(items: list[Decoded]) -> list[Event]:
    """The events of ``items`` that are not refused."""
    return [item.event for item in items if item.event is not None]


def after(items: list[Decoded], pos: Pos) -> list[Decoded]:
    """The items past ``pos`` (items are in stream order: those after the first past it)."""
    for at, item in enumerate(items):
        if item.pos > pos:
            return items[at:] if at else items
    return []


def _source(value: bytes | None) -> tuple[str, Pos] | None:
    """``<source>|<entry id>`` of a forwarded entry (see :mod:`worker.moves`)."""
    if value is None:
        return None
    try:
        source, _, entry_id = value.decode().partition("|")
        return source, parse_pos(entry_id)
    except ValueError:
        raise ValueError(f"field src is not <source>|<entry id>: {value[:100]!r}") from None


def _handoff(value: bytes | None) -> dict[str, Any] | None:
    """The job state a handoff brings along (see :mod:`worker.moves`)."""
    if value is None:
        return None
    try:
        handoff = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ValueError("field handoff is not JSON") from None
    if not isinstance(handoff, dict):
        raise TypeError("field handoff is not a JSON object")
    return handoff


@dataclass
class Folded:
    """What a batch did to the board."""

    last_id: str
    jobs: set[str] = field(default_factory=set)  # jobs whose state changed (store them)
    views: dict[str, None] = field(default_factory=dict)  # jobs whose view changed, in order
    models: set[str | None] = field(default_factory=set)
    points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each job as stored when this batch first touched it (None: not stored here yet): what
    # its order sets are as far as Redis knows.
    stored_as: dict[str, Place | None] = field(default_factory=dict)
    # And its ``alive_at`` then: the second ``<prefix>heard`` last said of it.
    alive_as: dict[str, float | None] = field(default_factory=dict)
    dead: list[Decoded] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    heartbeats: int = 0  # applied, but counted apart: they are not the trainer's data
    # With partitions (worker.moves): entries sent on to another partition, the position
    # reached in each source, handed-over jobs taken in, jobs that named their model here.
    outgoing: list[tuple[int, dict[str, bytes]]] = field(default_factory=list)
    marks: dict[str, str] = field(default_factory=dict)
    adopted: dict[str, dict[str, Any]] = field(default_factory=dict)
    named: list[str] = field(default_factory=list)
    stopped_at: int | None = None  # a job must move before this item: the fold ends there


def poisoned(item: Decoded, error: Exception) -> Decoded:
    """``item`` refused because applying it failed (a defect, logged where it was caught)."""
    reason = f"internal error: {type(error).__name__}: {error}".replace("\n", " ")
    return Decoded(item.entry_id, item.pos, None, item.raw, reason[:500])


def refuse(folded: Folded, item: Decoded, reason: str) -> None:
    """The one way an entry is refused: logged with context, then dead-lettered."""
    log.warning("refused entry %s: %s", item.entry_id, reason)
    folded.dead.append(Decoded(item.entry_id, item.pos, None, item.raw, reason))


def fold(board: Board, items: list[Decoded], divert: Diverter | None = None) -> Folded:
    """Apply ``items`` in order. The board holds every stored job the items touch.
    ``divert`` (with partitions) sends some items on instead, and ends the fold before an
    item that moves its job to another partition (``stopped_at``)."""
    folded = Folded(last_id=items[-1].entry_id)
    for at, item in enumerate(items):
        event = item.event
        if divert is not None and divert.diverts(item):
            decision = divert.decide(board, item)
            if decision.kind is MOVE:
                folded.stopped_at = at
                folded.last_id = items[at - 1].entry_id if at else ""
                break
            divert.passed(item, folded)
            if decision.kind is SKIP:
                continue
            if decision.kind is RELAY:
                folded.outgoing.append((decision.partition, divert.forward(item)))
                continue
            event = decision.event
        if event is None:
            refuse(folded, item, item.reason or "invalid")
            continue
        before = board.jobs.get(event.job_id)
        if event.job_id not in folded.stored_as:  # first touch in this batch: as stored
            if before is None:
                folded.stored_as[event.job_id] = folded.alive_as[event.job_id] = None
            else:
                folded.stored_as[event.job_id] = place_of(before)
                folded.alive_as[event.job_id] = before.alive_at
        if item.handoff is not None:
            if before is None:
                board.adopt(JobState.restore(item.handoff["public"], item.handoff["private"]))
                folded.adopted[event.job_id] = item.handoff
            else:
                log.warning("job %s handed over again; keeping the state here", event.job_id)
        if divert is not None and event.model_name is not None and (
                before is None or before.model_name is None):
            folded.named.append(event.job_id)
        change = board.apply(event, item.pos, item.ts)
        if not change.job.applied:
            folded.duplicates += 1
            continue
        if type(event) is JobHeartbeat:
            folded.heartbeats += 1
        else:
            folded.applied += 1
        folded.jobs.add(event.job_id)
        views = folded.views
        for job_id in change.jobs:  # (not views.update(dict.fromkeys(...)): a Python call
            views[job_id] = None  # and a dict per event, 1% of the worker at 100,000 jobs)
        folded.models.update(change.models)
        if change.job.point is not None:
            folded.points.setdefault(event.job_id, []).append(change.job.point)
        if change.job.config is not None:
            folded.configs[event.job_id] = change.job.config
    return folded


def stored_id_lookups(board: Board, items: list[Decoded]) -> dict[str, list[str]]:
    """The event ids of ``items`` to ask each job's stored set about before folding them
    (see :class:`monitor.seen.SeenIds`), by job. A job not on the board has no stored set."""
    out: dict[str, list[str]] = {}
    for item in items:
        event = item.event
        if event is None or event.event_id is None:
            continue
        job = board.jobs.get(event.job_id)
        if job is not None and job.seen.may_be_stored(event.event_id):
            out.setdefault(event.job_id, []).append(event.event_id)
    return out


def rewrites(board: Board, folded: Folded) -> list[str]:
    """Jobs whose stored history must be read because this batch will thin it."""
    return [job_id for job_id, new in folded.points.items()
            if job_id not in folded.adopted
            and history.needs_rewrite(board.jobs[job_id].points, len(new))]


@dataclass
class Commit:
    """Everything one batch writes, in one transaction."""

    applied: str
    jobs: dict[str, bytes] = field(default_factory=dict)  # job -> public and fold state
    configs: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, bytes] = field(default_factory=dict)
    models_gone: list[str] = field(default_factory=list)
    order_add: dict[str, list[bytes | str]] = field(default_factory=dict)  # key -> score, id, ...
    order_remove: dict[str, list[str]] = field(default_factory=dict)
    append: dict[str, list[bytes]] = field(default_factory=dict)
    replace: dict[str, list[bytes]] = field(default_factory=dict)
    seen_add: dict[str, list[str]] = field(default_factory=dict)  # key -> event ids
    alive: dict[str, int] = field(default_factory=dict)  # running job -> alive_score
    gone: list[str] = field(default_factory=list)  # finished jobs: out of stops
    stops: dict[str, bytes] = field(default_factory=dict)  # running job -> its stop request
    update: bytes | None = None
    dead: list[dict[str, bytes | str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    observed: dict[str, int] = field(default_factory=dict)  # histograms (monitor.histograms)
    # With partitions (worker.moves).
    outgoing: list[tuple[int, dict[str, bytes]]] = field(default_factory=list)  # sent first
    marks: dict[str, str] = field(default_factory=dict)  # source -> last entry id applied
    removed: list[str] = field(default_factory=list)  # jobs that moved away
    moved_out: dict[str, str] = field(default_factory=dict)  # job -> the partition it went to
    named: list[str] = field(default_factory=list)  # jobs that named their model here
    finalise: dict[str, int] = field(default_factory=dict)  # routes to make final, after it


def alive_score(alive_at: float) -> int:
    """What ``<prefix>heard`` says of a running job: the second its last sign of life arrived
    in, in ms (docs/stopping.md, Liveness)."""
    return int(alive_at) * 1000


def alive_moved(before: float | None, after: float) -> bool:
    """Whether ``<prefix>heard`` must say the second of a job whose ``alive_at`` went from
    ``before`` (as stored; None: not there) to ``after``: only when the second does. A trainer
    writing many events a second costs a few bytes of the stream a second, not one write a
    batch. (A job found stale is not said again until heard: what arrives from it next is in
    a later second than its last.)"""
    return before is None or int(before) != int(after)


def take_over(commit: Commit, keys: Keys, job_id: str, handoff: dict[str, Any]) -> None:
    """Write what a handed-over job brings besides its state: config and stored event ids
    (its metric history is written with the job's new points)."""
    if handoff.get("config") is not None:
        commit.configs[job_id] = dumps(handoff["config"])
    if handoff.get("seen"):
        commit.seen_add.setdefault(keys.seen(job_id), []).extend(handoff["seen"])


def update_data(views: list[bytes], rows: list[bytes]) -> bytes:
    """An entry of ``<prefix>updates``: ``{"jobs": views, "models": rows}``, from JSON
    already serialized (the rows are those written to ``<prefix>models``). ``jobs`` comes
    first: readers slice the body. (Joined in one piece: the entry is about 500 bytes per
    event, and each ``+`` of it would copy it all again.)"""
    return b"".join((b'{"jobs":[', b",".join(views), b'],"models":[', b",".join(rows), b"]}"))


def board_view(board: Board, job_id: str, stored: bytes | None) -> bytes:
    """The view of a job on the board, as JSON; ``stored``: its public state as JSON, when
    at hand. (Mostly that JSON with the view's fields spliced on: cheaper than building
    and serializing the view, for every job a batch touches.)"""
    job = board.jobs[job_id]
    if not shows_public_and_extras(job.status, job.forecast):
        return dumps(board.view(job_id))
    if stored is None:
        stored = job.public_json()
    extras = to_json(job.extras(board.best_of(job.model_name)))
    return stored[:-1] + b"," + extras[1:]


def cold_views(board: Board, folded: Folded) -> list[str]:
    """Jobs whose view changed but whose state is not on the board (a new best moved their
    delta): their stored public states make their views."""
    return [job_id for job_id in folded.views if job_id not in board.jobs]


def build_commit(board: Board, folded: Folded, keys: Keys,
                 histories: dict[str, list[dict[str, Any]]],
                 cold: dict[str, dict[str, Any]] | None = None) -> Commit:
    """The writes for ``folded``; ``histories`` holds the stored points of :func:`rewrites`,
    ``cold`` the stored public states of :func:`cold_views` (given away: they become views)."""
    commit = Commit(applied=folded.last_id)
    publics: dict[str, bytes] = {}  # job -> its public state as JSON
    for job_id in folded.jobs:
        job = board.jobs[job_id]
        new_points = folded.points.get(job_id)
        handoff = folded.adopted.get(job_id)
        if handoff is not None:
            take_over(commit, keys, job_id, handoff)
        stored = handoff["points"] if handoff is not None else histories.get(job_id)
        if stored is not None:
            points = history.extend(stored, new_points or [])
            commit.replace[keys.metrics(job_id)] = [dumps(p) for p in points]
            job.points = len(points)
        elif new_points:
            commit.append[keys.metrics(job_id)] = [dumps(p) for p in new_points]
            job.points += len(new_points)
        public = publics[job_id] = job.public_json()
        commit.jobs[job_id] = record(public, job.private_json())
        if added := job.seen.take_added():
            commit.seen_add.setdefault(keys.seen(job_id), []).extend(added)
        if job.finished:
            commit.gone.append(job_id)
        else:
            if (not job.stale and job.alive_at is not None
                    and alive_moved(folded.alive_as[job_id], job.alive_at)):
                commit.alive[job_id] = alive_score(job.alive_at)
            if job.stop_requested is not None:
                commit.stops[job_id] = dumps(job.stop_requested)
        before = folded.stored_as[job_id]
        if before is None or not before.holds(job):
            reorder(commit, keys, job_id, before, place_of(job))
    for job_id, config in folded.configs.items():
        commit.configs[job_id] = dumps(config)
    rows = []
    for model in folded.models:
        group = board.groups.get(model)
        if group is None:
            commit.models_gone.append(model_field(model))
            rows.append(dumps(Group(model).summary()))  # no jobs here any more: 0s
        else:
            row = commit.models[model_field(model)] = dumps(group.summary())
            rows.append(row)
    if folded.views or rows:
        views = [board_view(board, job_id, publics.get(job_id)) if job_id in board.jobs
                 else dumps(board.view_stored((cold or {})[job_id]))
                 for job_id in folded.views]
        commit.update = update_data(views, rows)
    for item in folded.dead:
        commit.dead.append({"id": item.entry_id, "data": item.raw[:DEAD_DATA_BYTES],
                            "reason": item.reason or "invalid"})
    commit.outgoing = folded.outgoing
    for source, entry_id in folded.marks.items():
        commit.marks[source] = entry_id
    commit.named = folded.named
    commit.counts = {"applied": folded.applied, "duplicates": folded.duplicates,
                     "heartbeats": folded.heartbeats, "dead": len(folded.dead)}
    return commit
