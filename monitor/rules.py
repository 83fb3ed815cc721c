"""The pure fold of events into state (docs/state.md), in the order data flows: an event folds
into its job; the job's best eval loss places it in its model group, whose best run it may
become; each job's view then says how it stands against that best (delta, tier) and by which
clean name; the board holds them all and says what each event changed.

No I/O and no clock: every function takes state and an event (with its stream position and
time) and returns the new state and what changed. The worker wraps this with Redis; the
tests drive it directly. Which event ids were already applied is :mod:`monitor.seen`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Final

import msgspec
from sortedcontainers import SortedList

from monitor.decoded import (
    Checkpoint,
    Event,
    JobArchived,
    JobFinished,
    JobForecast,
    JobHeartbeat,
    JobRestored,
    JobStale,
    JobStarted,
    JobStopRequested,
    Metrics,
    as_dict,
)
from monitor.jobjson import PUBLIC_FIELDS, FoldState, PublicState, ViewExtras, to_dict, to_json
from monitor.limits import RUNNING
from monitor.seen import SeenIds

UNKNOWN_MODEL = "Unknown Model"

Pos = tuple[int, int]
"""A stream entry id ``<ms>-<seq>`` as numbers: the order events were written in."""

ObsKey = tuple[bool, int, bool, float, int, int]
"""Order of observations: (has step, step, has epoch, epoch, ms, seq); a missing part is lowest."""

RankKey = tuple[float, float, str]
"""A candidate's place in its group: (best_eval_loss, created_at, job_id); smallest is best."""


def parse_pos(entry_id: str | bytes) -> Pos:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq) if seq else 0


def parse_positions(entry_ids: list[str]) -> list[Pos]:
    """:func:`parse_pos` of each of ``entry_ids`` (str). Ids in a row from one millisecond
    (a busy stream has dozens) parse its digits once: int() of them was 2% of the worker."""
    out = []
    last_ms: str | None = None
    ms = 0
    for entry_id in entry_ids:
        ms_text, _, seq = entry_id.partition("-")
        if ms_text != last_ms:
            last_ms, ms = ms_text, int(ms_text)
        out.append((ms, int(seq) if seq else 0))  # (of a str: compiled, a direct parse)
    return out


def obs_key(step: int | None, epoch: float | None, pos: Pos) -> ObsKey:
    return (step is not None, step or 0, epoch is not None, float(epoch or 0.0), pos[0], pos[1])


# --- One job: its state, and how an event changes it ------------------------------------------


@dataclass(slots=True)
class Ckpt:
    step: int | None
    epoch: float | None
    path: str
    eval_loss: float | None
    key: ObsKey  # where it stands among the observations (its stream position included)


@dataclass(slots=True, init=False)
class JobState:
    """Everything the worker keeps for one job: the public fields and what the fold needs."""

    id: str
    created_at: float
    updated_at: float
    model_name: str | None
    name: str | None
    status: str
    archived: bool
    epoch: float | None  # of the latest observation
    step: int | None
    loss: float | None
    eval_loss: float | None
    best_eval_loss: float | None
    best_epoch: float | None
    best_step: int | None
    best_checkpoint_path: str | None
    total_epochs: int | None
    total_steps: int | None
    finished_at: float | None
    gpu_count: int | None
    error: str | None
    eval_count: int  # eval observations applied (an advisor recomputes on each new one)
    forecast: dict[str, Any] | None  # the advisor's latest, shown while running
    autostop: bool | None  # False: never stopped by the forecast
    stop_requested: dict[str, Any] | None  # the first request: {at, by, reason}
    stale: bool  # running, but no event or heartbeat arrived for a while
    last_seen: float | None  # when stale: the arrival of its last event or heartbeat
    # Private to the fold.
    latest_key: ObsKey | None  # of the latest observation, loss or eval loss
    loss_key: ObsKey | None
    eval_key: ObsKey | None
    best_key: ObsKey | None
    given_final_loss: float | None
    given_final_eval_loss: float | None
    ckpts: list[Ckpt]
    seen: SeenIds
    points: int  # length of the stored metric history; kept by the worker, not the fold
    alive_at: float | None  # arrival of its last trainer event or heartbeat

    def __init__(self, id: str, created_at: float, updated_at: float, *,
                 model_name: str | None = None, name: str | None = None, status: str = RUNNING,
                 archived: bool = False, epoch: float | None = None, step: int | None = None,
                 loss: float | None = None, eval_loss: float | None = None,
                 best_eval_loss: float | None = None, best_epoch: float | None = None,
                 best_step: int | None = None, best_checkpoint_path: str | None = None,
                 total_epochs: int | None = None, total_steps: int | None = None,
                 finished_at: float | None = None, gpu_count: int | None = None,
                 error: str | None = None, eval_count: int = 0,
                 forecast: dict[str, Any] | None = None, autostop: bool | None = None,
                 stop_requested: dict[str, Any] | None = None, stale: bool = False,
                 last_seen: float | None = None, latest_key: ObsKey | None = None,
                 loss_key: ObsKey | None = None, eval_key: ObsKey | None = None,
                 best_key: ObsKey | None = None, given_final_loss: float | None = None,
                 given_final_eval_loss: float | None = None, ckpts: list[Ckpt] | None = None,
                 seen: SeenIds | None = None, points: int = 0,
                 alive_at: float | None = None) -> None:
        # Written out, not generated by @dataclass: compiled, a generated __init__ still runs
        # as Python (16,600 instructions for a new job, against 1,265 for this one), and
        # every new job and every job loaded back from Redis makes one.
        self.id = id
        self.created_at = created_at
        self.updated_at = updated_at
        self.model_name = model_name
        self.name = name
        self.status = status
        self.archived = archived
        self.epoch = epoch
        self.step = step
        self.loss = loss
        self.eval_loss = eval_loss
        self.best_eval_loss = best_eval_loss
        self.best_epoch = best_epoch
        self.best_step = best_step
        self.best_checkpoint_path = best_checkpoint_path
        self.total_epochs = total_epochs
        self.total_steps = total_steps
        self.finished_at = finished_at
        self.gpu_count = gpu_count
        self.error = error
        self.eval_count = eval_count
        self.forecast = forecast
        self.autostop = autostop
        self.stop_requested = stop_requested
        self.stale = stale
        self.last_seen = last_seen
        self.latest_key = latest_key
        self.loss_key = loss_key
        self.eval_key = eval_key
        self.best_key = best_key
        self.given_final_loss = given_final_loss
        self.given_final_eval_loss = given_final_eval_loss
        self.ckpts = ckpts if ckpts is not None else []
        self.seen = seen if seen is not None else SeenIds()
        self.points = points
        self.alive_at = alive_at

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    @property
    def rank_key(self) -> RankKey | None:
        return rank_key(self.id, self.archived, self.best_eval_loss, self.created_at)

    @property
    def standing(self) -> tuple[str | None, bool, float | None, float]:
        """What decides its group and its rank there: model name, archived, best eval loss,
        created at (equal standings, equal :attr:`rank_key`). Not its place in the list's
        order, which its model, ``archived`` and ``created_at`` decide (docs/state.md)."""
        return self.model_name, self.archived, self.best_eval_loss, self.created_at

    def public(self) -> dict[str, Any]:
        """The job state (docs/state.md, Job state) without ``config``, as stored for readers:
        the fields of ``PUBLIC_FIELDS``, ``model_display`` last."""
        return to_dict(self.public_struct())

    def public_json(self) -> bytes:
        """:meth:`public` as JSON, as stored (written from the struct: no dict is made)."""
        return to_json(self.public_struct())

    def public_struct(self) -> msgspec.Struct:
        """:meth:`public` as a ``PublicState`` (monitor.jobjson). A final loss is the one
        ``job_finished`` gave, else the job's latest; None while it runs."""
        finished = self.status != RUNNING
        given_loss, given_eval = self.given_final_loss, self.given_final_eval_loss
        return PublicState(
            self.id, self.model_name, self.name, self.status, self.archived, self.epoch,
            self.step, self.loss, self.eval_loss, self.best_eval_loss, self.best_epoch,
            self.best_step, self.best_checkpoint_path,
            None if not finished else (given_loss if given_loss is not None else self.loss),
            None if not finished else (given_eval if given_eval is not None
                                        else self.eval_loss),
            self.total_epochs, self.total_steps, self.created_at, self.updated_at,
            self.finished_at, self.gpu_count, self.error, self.eval_count, self.forecast,
            self.autostop, self.stop_requested, self.stale, self.last_seen,
            model_display(self.model_name))

    def extras(self, best: tuple[str, float] | None) -> msgspec.Struct:
        """:func:`view_extras` of :meth:`public`, as a ``ViewExtras`` (monitor.jobjson), read
        from the job itself (no dict lookups: this runs for every view a batch sends)."""
        hours = None if self.gpu_count is None else hours_used(
            self.gpu_count, self.created_at, self.updated_at, self.finished_at)
        return extras(self.id, self.archived, self.best_eval_loss, hours, best)

    def private(self) -> dict[str, Any]:
        """What the fold needs beyond :meth:`public` to go on after a restart."""
        return to_dict(self.private_struct())

    def private_json(self) -> bytes:
        """:meth:`private` as JSON, as stored (written from the struct: no dict is made)."""
        return to_json(self.private_struct())

    def private_struct(self) -> msgspec.Struct:
        """:meth:`private` as a ``FoldState`` (monitor.jobjson)."""
        return FoldState(
            self.latest_key, self.loss_key, self.eval_key, self.best_key,
            self.given_final_loss, self.given_final_eval_loss,
            [[c.step, c.epoch, c.path, c.eval_loss, c.key] for c in self.ckpts],
            self.seen.to_json(), self.points, self.alive_at)

    @classmethod
    def restore(cls, public: dict[str, Any], private: dict[str, Any]) -> JobState:
        """The inverse of :meth:`public` and :meth:`private`."""
        fields = {k: v for k, v in public.items() if k in _STORED_PUBLIC}
        return cls(
            **fields,
            latest_key=_key(private.get("latest_key")),  # absent: stored before it existed
            loss_key=_key(private["loss_key"]),
            eval_key=_key(private["eval_key"]),
            best_key=_key(private["best_key"]),
            given_final_loss=private["given_final_loss"],
            given_final_eval_loss=private["given_final_eval_loss"],
            ckpts=[Ckpt(step, epoch, path, value, _key(key))  # type: ignore[arg-type]
                   for step, epoch, path, value, key in private["ckpts"]],
            seen=SeenIds.from_json(private["seen"]),
            points=private["points"],
            alive_at=private.get("alive_at"),
        )


_DERIVED = {"model_display", "final_loss", "final_eval_loss"}
_STORED_PUBLIC = set(PUBLIC_FIELDS) - _DERIVED


def _key(value: Sequence[Any] | None) -> ObsKey | None:
    if value is None:
        return None
    has_step, step, has_epoch, epoch, ms, seq = value
    return (has_step, step, has_epoch, float(epoch), ms, seq)


def _matches(ckpt: Ckpt, step: int | None, epoch: float | None) -> bool:
    """Was ``ckpt`` taken where (step, epoch) was observed? Same step if both carry one, else same epoch."""
    if ckpt.step is not None and step is not None:
        return ckpt.step == step
    return ckpt.epoch is not None and epoch is not None and ckpt.epoch == epoch


def best_checkpoint(job: JobState) -> str | None:
    """The checkpoint kept where the best eval loss was observed (docs/state.md, Job state).

    When the best observation is itself a checkpoint, that one. Otherwise, among the
    checkpoints taken there, those that carried the best eval loss come first; then the
    smallest observation key (the earliest written, when step and epoch are equal).
    """
    if job.best_key is None:
        return None
    for ckpt in job.ckpts:
        if ckpt.key == job.best_key:
            return ckpt.path
    matching = [c for c in job.ckpts if _matches(c, job.best_step, job.best_epoch)]
    carriers = [c for c in matching if c.eval_loss == job.best_eval_loss]
    chosen = min(carriers or matching, key=lambda c: c.key, default=None)
    return chosen.path if chosen is not None else None


def _observe(job: JobState, key: ObsKey, step: int | None, epoch: float | None) -> None:
    """Where the job is: the step and epoch of its latest observation."""
    if job.latest_key is None or key > job.latest_key:
        job.latest_key, job.step, job.epoch = key, step, epoch


def _observe_eval(job: JobState, value: float, key: ObsKey, step: int | None,
                  epoch: float | None) -> None:
    job.eval_count += 1
    if job.eval_key is None or key > job.eval_key:
        job.eval_loss, job.eval_key = value, key
    best, best_key = job.best_eval_loss, job.best_key
    if best is None or value < best or (value == best and best_key is not None and key < best_key):
        job.best_eval_loss, job.best_key = value, key
        job.best_step, job.best_epoch = step, epoch


def new_job(job_id: str, ts: float) -> JobState:
    """A job as its first event creates it."""
    return JobState(id=job_id, created_at=ts, updated_at=ts)


def is_candidate(archived: bool, best_eval_loss: float | None) -> bool:
    """May a job be its group's best run (docs/state.md, Best run)? Not archived, with a best
    eval loss."""
    return not archived and best_eval_loss is not None


def rank_key(job_id: str, archived: bool, best_eval_loss: float | None,
             created_at: float) -> RankKey | None:
    """A job's place among its group's candidates; None when it is not one."""
    if not is_candidate(archived, best_eval_loss):
        return None
    assert best_eval_loss is not None
    return (best_eval_loss, created_at, job_id)


class JobChange:
    """What applying one event to one job did.

    (This and :class:`Change`, one made per event, are plain classes: compiled, one costs a
    sixth of a NamedTuple, whose ``__new__`` runs as Python.)"""

    __slots__ = ("applied", "config", "point", "quiet")

    def __init__(self, applied: bool, point: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None, quiet: bool = False) -> None:
        self.applied: Final = applied  # False for a duplicate event_id
        self.point: Final = point  # a metric history point to append
        self.config: Final = config  # a new config to store
        self.quiet: Final = quiet  # only the fold's own state changed, not the view


DUPLICATE = JobChange(applied=False)
QUIET = JobChange(applied=True, quiet=True)
DERIVED = (JobForecast, JobHeartbeat, JobStale, JobStopRequested)  # never create a job


def _signal(job: JobState, arrival: float) -> bool:
    """The trainer gave a sign of life (an event or a heartbeat) that arrived at ``arrival``;
    True when that ends a stale spell (the view changes)."""
    job.alive_at = arrival if job.alive_at is None else max(job.alive_at, arrival)
    if not job.stale:
        return False
    job.stale, job.last_seen = False, None
    return True


def _apply_signal(job: JobState, event: JobHeartbeat | JobStale, arrival: float) -> JobChange:
    """Liveness (docs/stopping.md, Liveness): a heartbeat, or the advisor's finding that
    nothing arrived from the job after ``last_seen``, which holds only if that is so. The
    view's ``last_seen`` is the job's own last arrival where it is known."""
    if isinstance(event, JobHeartbeat):
        return JobChange(applied=True) if _signal(job, arrival) else QUIET
    if job.finished or job.stale or (job.alive_at is not None and job.alive_at > event.last_seen):
        return DUPLICATE
    job.stale = True
    job.last_seen = job.alive_at if job.alive_at is not None else event.last_seen
    return JobChange(applied=True)


def apply_to_job(job: JobState, event: Event, pos: Pos, ts: float) -> JobChange:
    """Fold one event into ``job`` (in place): the rules of docs/state.md, Job state.

    (Events, :mod:`monitor.decoded`'s structs, are told apart by ``type(event) is``: the
    cheapest test, and this runs for every event.)"""
    event_id = event.event_id
    if event_id is not None and not job.seen.add(event_id):
        return DUPLICATE
    # Derived events and requests, not the trainer's observations: no times, no model.
    if type(event) is JobForecast:
        forecast = as_dict(event.forecast)
        if forecast == job.forecast:
            return DUPLICATE
        job.forecast = forecast
        return JobChange(applied=True)
    if type(event) is JobHeartbeat or type(event) is JobStale:
        return _apply_signal(job, event, pos[0] / 1000)
    if type(event) is JobStopRequested:
        if job.finished or job.stop_requested is not None:  # the first request wins
            return DUPLICATE
        job.stop_requested = {"at": ts, "by": event.by, "reason": event.reason}
        return JobChange(applied=True)
    if type(event) is not JobArchived and type(event) is not JobRestored:
        _signal(job, pos[0] / 1000)
    if job.model_name is None:
        job.model_name = event.model_name
    job.created_at = min(job.created_at, ts)
    job.updated_at = max(job.updated_at, ts)

    if type(event) is Metrics:
        # Each field read once: compiled, reading a msgspec struct's field is Python's
        # generic attribute lookup (about 170 instructions), and most events are metrics.
        step, epoch, loss, eval_loss = event.step, event.epoch, event.loss, event.eval_loss
        key = obs_key(step, epoch, pos)
        _observe(job, key, step, epoch)
        if loss is not None and (job.loss_key is None or key > job.loss_key):
            job.loss, job.loss_key = loss, key
        if eval_loss is not None:
            _observe_eval(job, eval_loss, key, step, epoch)
            job.best_checkpoint_path = best_checkpoint(job)
        point: dict[str, Any] = {"step": step, "epoch": epoch, "loss": loss,
                                 "eval_loss": eval_loss, "ts": ts}
        if event.extra is not None:
            point["extra"] = event.extra
        return JobChange(applied=True, point=point)
    if type(event) is Checkpoint:
        key = obs_key(event.step, event.epoch, pos)
        _observe(job, key, event.step, event.epoch)
        job.ckpts.append(Ckpt(event.step, event.epoch, event.path, event.eval_loss, key))
        if event.eval_loss is not None:
            _observe_eval(job, event.eval_loss, key, event.step, event.epoch)
        job.best_checkpoint_path = best_checkpoint(job)
    elif type(event) is JobStarted:
        # A restarted trainer restates its run: the latest job_started wins, field by field.
        if event.total_epochs is not None:
            job.total_epochs = event.total_epochs
        if event.name is not None:
            job.name = event.name
        if event.gpu_count is not None:
            job.gpu_count = event.gpu_count
        if event.total_steps is not None:
            job.total_steps = event.total_steps
        if event.autostop is not None:
            job.autostop = event.autostop
        return JobChange(applied=True, config=event.config)
    elif type(event) is JobFinished:
        if not job.finished:  # the first job_finished in stream order decides
            job.status = event.status
            job.finished_at = ts
            job.stale, job.last_seen = False, None
            job.error = event.error
            job.given_final_loss = event.final_loss
            job.given_final_eval_loss = event.final_eval_loss
    elif type(event) is JobArchived:
        job.archived = True
    elif type(event) is JobRestored:
        job.archived = False
    return JobChange(applied=True)


# --- A model group: its jobs ranked, and its best run -----------------------------------------


@dataclass(slots=True)
class Group:
    """The jobs of one ``model_name`` and their ranking by best eval loss."""

    model_name: str | None
    members: set[str] = field(default_factory=set)
    ranking: SortedList = field(default_factory=SortedList)  # RankKeys of the candidates
    archived: int = 0
    best: RankKey | None = None  # ranking[0], kept at hand: every event of the group asks

    def summary(self) -> dict[str, Any]:
        """One row of ``GET /api/models``."""
        best = self.best
        return {
            "model_name": self.model_name,
            "model_display": model_display(self.model_name),
            "job_count": len(self.members) - self.archived,
            "archived_count": self.archived,
            "best_job_id": best[2] if best else None,
            "best_eval_loss": best[0] if best else None,
        }

    def add(self, job: JobState) -> None:
        self.enter(job.id, job.archived, job.rank_key)

    def enter(self, job_id: str, archived: bool, key: RankKey | None) -> None:
        """Count a job in, by what the group needs of it (its state may stay in storage)."""
        self.members.add(job_id)
        self.archived += archived
        if key is not None:
            self.ranking.add(key)
            if self.best is None or key < self.best:
                self.best = key

    def remove(self, job_id: str, archived: bool, key: RankKey | None) -> None:
        self.members.discard(job_id)
        self.archived -= archived
        if key is not None:
            self.ranking.remove(key)
            if key == self.best:
                self.best = self.ranking[0] if self.ranking else None


def stored_rank(job_id: str, public: dict[str, Any]) -> tuple[bool, RankKey | None]:
    """What a group needs of a stored job (its :meth:`JobState.public`): whether it is
    archived, and its :attr:`JobState.rank_key`."""
    archived = bool(public["archived"])
    return archived, rank_key(job_id, archived, public["best_eval_loss"], public["created_at"])


# --- What a reader sees: the view, delta, tier, clean name ------------------------------------


def job_view(public: dict[str, Any], best: tuple[str, float] | None, *,
             consume: bool = False) -> dict[str, Any]:
    """A job view (docs/state.md, Views): the public state plus ``is_best``, ``delta_pct``,
    ``tier`` and ``gpu_hours``; its ``forecast`` only while the job is running.

    ``best`` is the group's best run as (job id, best eval loss), or None. ``consume``:
    ``public`` is the caller's to give away, and becomes the view (no copy).
    """
    view = public if consume else dict(public)
    view.update(view_extras(public, best))
    view["forecast"] = public.get("forecast") if public["status"] == RUNNING else None
    view.setdefault("eval_count", 0)  # stored before it was counted
    return view


def view_extras(public: dict[str, Any], best: tuple[str, float] | None) -> dict[str, Any]:
    """What a view adds to the public state, in the view's order: ``is_best``, ``delta_pct``,
    ``tier``, ``gpu_hours`` (see :func:`job_view`)."""
    return to_dict(extras(public["id"], public["archived"], public["best_eval_loss"],
                          gpu_hours(public), best))


def extras(job_id: str, archived: bool, best_eval_loss: float | None, hours: float | None,
           best: tuple[str, float] | None) -> msgspec.Struct:
    """:func:`view_extras` of a job with these fields, and ``gpu_hours`` ``hours``, as a
    ``ViewExtras`` (monitor.jobjson)."""
    is_best = best is not None and best[0] == job_id
    delta = None
    if best is not None and not is_best and is_candidate(archived, best_eval_loss):
        assert best_eval_loss is not None
        delta = delta_pct(best_eval_loss, best[1])
    return ViewExtras(is_best, delta, tier(delta), hours)


def shows_public_and_extras(status: str, forecast: dict[str, Any] | None) -> bool:
    """Is the view of a job with this status and forecast its :meth:`JobState.public` state
    with :func:`view_extras` after it, nothing changed (a running job's forecast shows; a
    finished one's is hidden)?"""
    return status == RUNNING or forecast is None


def gpu_hours(public: dict[str, Any]) -> float | None:
    """GPU-hours a job has used: ``gpu_count`` times its time from ``created_at`` to its end
    (``finished_at`` once finished, else ``updated_at``); None without ``gpu_count``."""
    count = public.get("gpu_count")
    if count is None:
        return None
    return hours_used(count, public["created_at"], public["updated_at"], public["finished_at"])


def hours_used(gpu_count: int, created_at: float, updated_at: float,
               finished_at: float | None) -> float:
    """:func:`gpu_hours` of a job with these fields and a ``gpu_count``."""
    end = finished_at if finished_at is not None else updated_at
    return float(gpu_count * max(0.0, end - created_at) / 3600)


def delta_pct(best_eval_loss: float, best: float) -> float | None:
    """How much worse than the group's best, in percent; None when the best is 0 (or the
    ratio is too large for a float)."""
    if best == 0:
        return None
    delta = (best_eval_loss - best) / abs(best) * 100
    return delta if math.isfinite(delta) else None


_EXACT = Context(prec=400, Emax=400, Emin=-400)  # room for any finite float, to 0.1


def shown(delta: float) -> Decimal:
    """``delta`` rounded to one decimal exactly as the page shows it (JS ``toFixed(1)``)."""
    return Decimal(delta).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP, context=_EXACT)


TIERS = ((25, "red"), (10, "orange"), (5, "yellow"))  # shown above the bound: the colour
_EDGES = tuple((bound + 0.05, colour) for bound, colour in TIERS)  # see tier()
_NEAR = 1e-9  # far wider than a float's error at these sizes (about 4e-15)


def tier(delta: float | None) -> str | None:
    """Colour of a delta, decided on the shown value so colour and text always agree.

    A shown value is above a bound b exactly when the delta is at least b + 0.05 (one
    decimal, half up). Only a delta within a hair of such an edge needs the exact decimal
    value (:func:`shown`); any other compares as a float. (This runs for every candidate's
    view a batch writes, and :func:`shown` costs 1 µs.)"""
    if delta is None:
        return None
    for edge, colour in _EDGES:
        if abs(delta - edge) < _NEAR:
            return exact_tier(delta)
        if delta > edge:
            return colour
    return None


def exact_tier(delta: float) -> str | None:
    """:func:`tier` from the exact shown value, for any delta."""
    value = shown(delta)
    return next((colour for bound, colour in TIERS if value > bound), None)


DISPLAYS_KEPT = 4096  # model names model_display remembers
_displays: dict[str | None, str] = {}


def model_display(model_name: str | None) -> str:
    """The clean name a person reads: ``.../huggingface_models/Qwen-Qwen3-1.7B/...`` -> ``Qwen/Qwen3-1.7B``.
    (Remembered in a dict: every public state asks, and an lru_cache's call costs more.)"""
    display = _displays.get(model_name)
    if display is None:
        if len(_displays) >= DISPLAYS_KEPT:
            _displays.clear()
        display = _displays[model_name] = _display(model_name)
    return display


def _display(model_name: str | None) -> str:
    if model_name is None:
        return UNKNOWN_MODEL
    marker = "huggingface_models/"
    if marker in model_name:
        segment = model_name.split(marker, 1)[1].split("/", 1)[0]
        return segment.replace("-", "/", 1)
    if "/" in model_name:
        parts = [p for p in model_name.split("/") if p]
        return "/".join(parts[-2:])
    return model_name


# --- The board: every job and group, and what one event changed -------------------------------


NOTHING: frozenset[Any] = frozenset()


class Change:
    """What one event changed on the board."""

    __slots__ = ("job", "jobs", "models")

    def __init__(self, job: JobChange, jobs: tuple[str] | frozenset[str] = NOTHING,
                 models: frozenset[str | None] = NOTHING) -> None:
        self.job: Final = job
        self.jobs: Final = jobs  # jobs whose view changed (just one: a tuple, cheaper to make)
        self.models: Final = models  # model groups whose summary changed


@dataclass
class Board:
    """Every job and model group, folded incrementally: the whole derived state.

    One event costs work in proportion to what it changes: a new best in a group of n jobs
    changes n views, a new non-best loss changes one.

    A group may count jobs whose state is not in ``jobs`` (the worker keeps only some in
    memory): it holds what ranking needs of each, and a job's state is put back with
    :meth:`warm` before an event touches it.
    """

    jobs: dict[str, JobState] = field(default_factory=dict)
    groups: dict[str | None, Group] = field(default_factory=dict)

    def group(self, model_name: str | None) -> Group:
        group = self.groups.get(model_name)
        if group is None:
            group = self.groups[model_name] = Group(model_name)
        return group

    def load(self, jobs: Iterable[JobState]) -> None:
        """Put jobs restored from storage on the board (their groups must be complete)."""
        for job in jobs:
            self.jobs[job.id] = job
            self.group(job.model_name).add(job)

    def load_group(self, model_name: str | None,
                   ranks: Iterable[tuple[str, bool, RankKey | None]]) -> None:
        """Put a stored group on the board by what it needs of each job: (job id, archived,
        rank key), as :func:`stored_rank` gives. Its jobs' states stay out until warmed."""
        assert model_name not in self.groups, f"group {model_name!r} is on the board already"
        group = self.group(model_name)
        keys = []
        for job_id, archived, key in ranks:
            group.members.add(job_id)
            group.archived += archived
            if key is not None:
                keys.append(key)
        group.ranking = SortedList(keys)  # sorted once, not one insertion at a time
        group.best = group.ranking[0] if keys else None

    def warm(self, job: JobState) -> None:
        """Put a stored job's state back on the board; its group is loaded and counts it."""
        self.jobs[job.id] = job

    def cool(self, job_id: str) -> None:
        """Take a job's state off the board, its group still counting it (it is stored)."""
        self.jobs.pop(job_id, None)

    def apply(self, event: Event, pos: Pos, ts: float) -> Change:
        """Fold one event; ``ts`` is the event's time (its ``ts``, else the entry's time)."""
        job = self.jobs.get(event.job_id)
        created = job is None
        if created and type(event) in DERIVED:
            return Change(DUPLICATE)  # nothing but the trainer's own events creates a job
        if job is None:
            job = self.jobs[event.job_id] = new_job(event.job_id, ts)
        before = job.standing

        change = apply_to_job(job, event, pos, ts)
        if not change.applied or change.quiet:
            return Change(change)

        if not created and job.standing == before:
            return Change(change, (job.id,))  # its place in the group is unchanged
        before_model, before_archived = before[0], before[1]
        before_key = rank_key(job.id, before_archived, before[2], before[3])

        changed_jobs = {job.id}
        changed_models: set[str | None] = set()
        group = self.group(job.model_name)
        if created:
            group_best = group.best
            changed_models.add(job.model_name)
        else:
            old = self.groups[before_model]
            old_best = old.best
            group_best = old_best if old is group else group.best
            old.remove(job.id, before_archived, before_key)
            if old is not group:
                if not old.members:
                    del self.groups[before_model]
                changed_models.update((before_model, job.model_name))
                self._best_moved(old, old_best, changed_jobs, changed_models)
            elif before_archived != job.archived:
                changed_models.add(job.model_name)
        group.add(job)
        self._best_moved(group, group_best, changed_jobs, changed_models)
        return Change(change, frozenset(changed_jobs), frozenset(changed_models))

    def adopt(self, job: JobState) -> Change:
        """Put a job handed over by another partition on the board (docs/scale-out.md)."""
        self.jobs[job.id] = job
        group = self.group(job.model_name)
        before = group.best
        group.add(job)
        changed_jobs, changed_models = {job.id}, {job.model_name}
        self._best_moved(group, before, changed_jobs, changed_models)
        return Change(JobChange(applied=True), frozenset(changed_jobs),
                      frozenset(changed_models))

    def remove(self, job_id: str) -> Change:
        """Take a job off the board, as when it moves to another partition; the jobs whose
        view that changes (its group's best may move) and the models."""
        job = self.jobs.pop(job_id)
        group = self.groups[job.model_name]
        before = group.best
        group.remove(job_id, job.archived, job.rank_key)
        changed_jobs: set[str] = set()
        changed_models = {job.model_name}
        if group.members:
            self._best_moved(group, before, changed_jobs, changed_models)
        else:
            del self.groups[job.model_name]
        changed_jobs.discard(job_id)
        return Change(JobChange(applied=True), frozenset(changed_jobs),
                      frozenset(changed_models))

    def _best_moved(self, group: Group, before: RankKey | None, jobs: set[str],
                    models: set[str | None]) -> None:
        """When a group's best run or its value changed, every candidate's delta moved."""
        after = group.best
        if _best_id_value(before) == _best_id_value(after):
            return
        models.add(group.model_name)
        jobs.update(key[2] for key in group.ranking)
        if before is not None:
            jobs.add(before[2])

    def view(self, job_id: str, public: dict[str, Any] | None = None) -> dict[str, Any]:
        """The current job view of one job. ``public``: its :meth:`JobState.public`, if at
        hand, which becomes the view (the caller gives it away)."""
        job = self.jobs[job_id]
        return job_view(public or job.public(), self.best_of(job.model_name), consume=True)

    def best_of(self, model_name: str | None) -> tuple[str, float] | None:
        """The group's best run as (job id, best eval loss), as views take it."""
        return _best_id_value(self.groups[model_name].best)

    def view_stored(self, public: dict[str, Any]) -> dict[str, Any]:
        """The view of a job whose state is not on the board, from its stored public state:
        the view :meth:`view` would give once the job is restored (a field stored before it
        existed gets its default, as :meth:`JobState.restore` gives it)."""
        filled = {name: public.get(name, blank) for name, blank in _BLANK_PUBLIC.items()}
        filled["model_display"] = model_display(filled["model_name"])
        best = self.groups[filled["model_name"]].best
        return job_view(filled, _best_id_value(best), consume=True)


_BLANK_PUBLIC = JobState(id="", created_at=0.0, updated_at=0.0).public()


def _best_id_value(key: RankKey | None) -> tuple[str, float] | None:
    return None if key is None else (key[2], key[0])
