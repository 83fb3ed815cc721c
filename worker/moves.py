"""With partitions (docs/scale-out.md): what a partition's worker does with an entry that is
not simply its own to apply. Pure: the worker looks up what this needs before the fold.

- An entry forwarded by another partition or by the ingress router carries ``src``, its
  source and position there. A source forwards in its own order and forwards again after a
  crash, so an entry at or before the position already applied from that source is skipped:
  forwarding is at least once, applying exactly once.
- A job that moved away (a tombstone here) has its entries relayed to where it went.
- An event that names a model of another partition, for a job that has not named its model
  here, moves the job there: the fold stops before it, and the worker hands the job over (its
  state and that event in one entry) before it goes on.
- Such an event for a job routed here for good (a publisher named another model first) is
  applied without its model name: the route decides which naming came first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Final

import msgspec

from monitor.decoded import Event
from monitor.partitions import Partitioning
from monitor.rules import Board, Pos

if TYPE_CHECKING:
    from worker.batch import Decoded, Folded


class Kind(Enum):
    APPLY = "apply"
    SKIP = "skip"  # forwarded again after a crash: applied already
    RELAY = "relay"  # its job lives in another partition
    MOVE = "move"  # its job must move to another partition first


APPLY, SKIP, RELAY, MOVE = Kind.APPLY, Kind.SKIP, Kind.RELAY, Kind.MOVE


class Decision:
    """What to do with one entry. (A plain class, one per entry a diverter decides on:
    compiled, a frozen dataclass's generated ``__init__`` would run as Python;
    docs/scale-out.md.)"""

    __slots__ = ("event", "kind", "partition")

    def __init__(self, kind: Kind, event: Event | None = None, partition: int = -1) -> None:
        self.kind: Final = kind
        self.event: Final = event  # what to apply (APPLY)
        self.partition: Final = partition  # where to (RELAY, MOVE)


def source_name(index: int) -> str:
    return f"p{index}"


ROUTER = "in"  # the ingress router's source name
MODELS_KEPT = 4096  # model names whose partition a diverter remembers


@dataclass
class Diverter:
    """One partition's view of moves: positions applied per source, jobs that moved away,
    and the routes of the jobs that might move (looked up before each fold)."""

    part: Partitioning
    index: int
    marks: dict[str, Pos] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    routes: dict[str, tuple[int, bool] | None] = field(default_factory=dict)
    _here: dict[str, bool] = field(default_factory=dict)  # model name -> is it this partition's

    @property
    def name(self) -> str:
        return source_name(self.index)

    def elsewhere(self, event: Event) -> bool:
        """Does ``event`` name a model of another partition?"""
        model = event.model_name
        if model is None:
            return False
        here = self._here.get(model)
        if here is None:  # (a CRC of the name: worth keeping, as every event asks)
            if len(self._here) >= MODELS_KEPT:
                self._here.clear()
            here = self._here[model] = self.part.of_model(model) == self.index
        return not here

    def diverts(self, item: Decoded) -> bool:
        """Might :meth:`decide` do anything but apply ``item`` as it is? Always True for a
        forwarded entry (:meth:`passed` must see it); the cheap test the fold runs first."""
        event = item.event
        return item.src is not None or (event is not None and (
            event.job_id in self.moved or (item.handoff is None and self.elsewhere(event))))

    def route_lookups(self, items: list[Decoded]) -> list[str]:
        """The jobs whose route :meth:`decide` needs for these items."""
        return sorted({item.event.job_id for item in items
                       if item.event is not None and item.event.job_id not in self.moved
                       and self.elsewhere(item.event)})

    def decide(self, board: Board, item: Decoded) -> Decision:
        if item.src is not None and item.src[1] <= self.marks.get(item.src[0], (0, 0)):
            return Decision(SKIP)
        event = item.event
        if event is None:
            return Decision(APPLY)
        if (to := self.moved.get(event.job_id)) is not None:
            return Decision(RELAY, partition=to)
        if item.handoff is None and self.elsewhere(event):
            job = board.jobs.get(event.job_id)
            if job is None or job.model_name is None:
                route = self.routes.get(event.job_id)
                if route is not None and not route[1]:  # final
                    if route[0] != self.index:
                        return Decision(RELAY, partition=route[0])
                    return Decision(APPLY, msgspec.structs.replace(event, model_name=None))
                return Decision(MOVE, partition=self.part.of_model(event.model_name))
        return Decision(APPLY, event)

    def passed(self, item: Decoded, folded: Folded) -> None:
        """``item`` is dealt with in ``folded`` (applied, relayed or skipped)."""
        if item.src is not None:
            source, pos = item.src
            if pos > self.marks.get(source, (0, 0)):
                self.marks[source] = pos
                folded.marks[source] = f"{pos[0]}-{pos[1]}"

    def forward(self, item: Decoded, **extra: bytes) -> dict[str, bytes]:
        """The fields of ``item`` sent on from here."""
        return {"data": item.raw, "src": f"{self.name}|{item.entry_id}".encode(), **extra}
