"""The pure parts of partitions (docs/scale-out.md): the routing rule, what a partition's
worker does with each entry, a job taken off and put on a board, and ``/ws`` cursors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from monitor.partitions import UNNAMED, Partitioning, Routes, parse_route, route_value
from monitor.rules import Board, JobState
from tests.helpers import ev
from web.partitioned import cursor, parse_cursor
from worker.batch import Decoded, Folded, decode, fold
from worker.moves import APPLY, MOVE, RELAY, SKIP, Diverter

PART = Partitioning("t:", 4)


def model_in(partition: int, other_than: str | None = "") -> str:
    """A model name of ``partition``."""
    for i in range(1000):
        name = f"org/model-{i}"
        if PART.of_model(name) == partition and name != other_than:
            return name
    raise AssertionError("no such model")


def item(event: dict[str, Any], entry_id: str = "5-0", src: str | None = None) -> Decoded:
    fields = {b"data": orjson.dumps(event)}
    if src is not None:
        fields[b"src"] = src.encode()
    return decode([(entry_id, fields)])[0]


def test_keys_stay_as_they_were_with_one_partition_and_share_a_tag_with_several() -> None:
    assert Partitioning("monitor:").keys(0).jobs == "monitor:jobs"
    assert Partitioning("monitor:").ingress == Partitioning("monitor:").keys(0).events
    assert PART.keys(2).jobs == "t:{2}:jobs"
    assert PART.keys(2).metrics("a") == "t:{2}:metrics:a"
    assert PART.ingress == "t:events"
    # On a cluster even one partition keeps its keys under a tag (one slot per commit).
    assert Partitioning("t:", 1, cluster=True).keys(0).events == "t:{0}:events"


def test_a_model_always_lives_in_the_same_partition() -> None:
    assert PART.of_model("org/a") == PART.of_model("org/a")
    assert {PART.of_model(f"m{i}") for i in range(100)} == {0, 1, 2, 3}
    assert PART.unnamed == PART.of_model(None)
    assert Partitioning("t:").of_model("anything") == 0


def test_routes_the_first_event_of_a_job_decides_its_claim() -> None:
    routes = Routes(PART)
    named = model_in(1)
    claims = routes.claims([("a", True, UNNAMED), ("a", True, named),
                            ("b", True, named), ("c", False, named)])
    assert claims == {"a": route_value(PART.unnamed, True), "b": "1",
                      "c": route_value(PART.unnamed, True)}  # a refused event names nothing
    assert parse_route("?3") == (3, True) and parse_route(b"2") == (2, False)
    routes.put("b", "1")
    assert routes.get("b") == 1
    assert routes.claims([("b", True, UNNAMED)]) == {}  # known: nothing to claim


def test_a_partition_skips_what_a_source_forwarded_again() -> None:
    divert = Diverter(PART, 0)
    board = Board()
    first = item({"type": "metrics", "job_id": "a", "loss": 1.0}, "7-0", "in|10-0")
    assert divert.decide(board, first).kind is APPLY
    folded = Folded(last_id="7-0")
    divert.passed(first, folded)
    assert folded.marks == {"in": "10-0"}
    again = item({"type": "metrics", "job_id": "a", "loss": 1.0}, "8-0", "in|10-0")
    assert divert.decide(board, again).kind is SKIP
    later = item({"type": "metrics", "job_id": "a", "loss": 1.0}, "9-0", "in|11-0")
    assert divert.decide(board, later).kind is APPLY
    other_source = item({"type": "metrics", "job_id": "a", "loss": 1.0}, "9-1", "p3|2-0")
    assert divert.decide(board, other_source).kind is APPLY


def test_an_unnamed_job_naming_a_model_of_another_partition_moves_there() -> None:
    here = PART.unnamed
    there = (here + 1) % 4
    divert = Diverter(PART, here)
    board = Board()
    fold(board, [item({"type": "metrics", "job_id": "a", "loss": 1.0}, "1-0")])
    naming = item({"type": "job_started", "job_id": "a", "model_name": model_in(there)})
    decision = divert.decide(board, naming)
    assert (decision.kind, decision.partition) == (MOVE, there)
    # The fold ends before it; what came before is folded.
    folded = fold(board, [item({"type": "metrics", "job_id": "a", "loss": 0.5}, "2-0"),
                          naming], divert)
    assert folded.stopped_at == 1 and folded.last_id == "2-0"
    # A job that moved away: its entries go after it.
    divert.moved["a"] = there
    decision = divert.decide(board, item({"type": "metrics", "job_id": "a", "loss": 1.0}))
    assert (decision.kind, decision.partition) == (RELAY, there)


def test_a_naming_that_lost_the_race_for_the_route_is_applied_without_its_model() -> None:
    here = 2
    divert = Diverter(PART, here)
    board = Board()
    other = model_in(3)
    event = item({"type": "metrics", "job_id": "a", "model_name": other, "loss": 1.0})
    divert.routes = {"a": (here, False)}  # another publisher named a model of here first
    decision = divert.decide(board, event)
    assert decision.kind is APPLY and decision.event is not None
    assert decision.event.model_name is None
    divert.routes = {"a": (1, False)}  # routed elsewhere for good
    assert divert.decide(board, event).kind is RELAY
    # A job named here already keeps its model: nothing moves.
    fold(board, [item({"type": "job_started", "job_id": "b", "model_name": model_in(here)})])
    assert divert.decide(board, item({"type": "metrics", "job_id": "b", "model_name": other,
                                      "loss": 1.0})).kind is APPLY


def test_the_folds_quick_test_passes_only_entries_applied_as_they_are() -> None:
    """``Diverter.diverts`` lets the fold skip :meth:`decide` for most entries: it may say
    False only where decide would apply the entry's own event and no mark moves."""
    here = 1
    divert = Diverter(PART, here)
    board = Board()
    fold(board, [item({"type": "job_started", "job_id": "named", "model_name": model_in(here)}),
                 item({"type": "metrics", "job_id": "unnamed", "loss": 1.0})])
    divert.moved["gone"] = 3
    divert.routes = {"unnamed": (here, False)}
    handoff = {b"handoff": orjson.dumps({"public": {}, "private": {}})}
    entries = []
    for job in ("named", "unnamed", "gone", "new"):
        for model in (None, model_in(here), model_in(0), model_in(2)):
            event = orjson.dumps({"type": "metrics", "job_id": job, "model_name": model,
                                  "loss": 1.0})
            entries += [("3-0", {b"data": event}), ("3-0", {b"data": event, **handoff}),
                        ("3-0", {b"data": event, b"src": b"p0|4-0"})]
    entries += [("3-0", {b"data": b"{}"}), ("3-0", None)]
    quick = 0
    for entry in decode(entries):
        if divert.diverts(entry):
            continue
        quick += 1
        decision = divert.decide(board, entry)
        assert (decision.kind, decision.event) == (APPLY, entry.event), entry
        assert entry.src is None
    assert 0 < quick < len(entries)


def test_a_job_taken_off_a_board_moves_its_groups_best() -> None:
    board = Board()
    fold(board, [item({"type": "metrics", "job_id": "a", "eval_loss": 1.0}, "1-0"),
                 item({"type": "metrics", "job_id": "b", "eval_loss": 2.0}, "2-0")])
    assert board.view("b")["delta_pct"] == 100.0
    change = board.remove("a")
    assert change.jobs == frozenset({"b"}) and change.models == frozenset({None})
    assert board.view("b")["is_best"] and "a" not in board.jobs
    moved = JobState.restore(*_stored(Board(), "a", 0.5))
    change = board.adopt(moved)
    assert change.jobs == frozenset({"a", "b"})
    assert board.view("a")["is_best"] and board.view("b")["delta_pct"] == 300.0


def _stored(board: Board, job_id: str, value: float) -> tuple[dict[str, Any], dict[str, Any]]:
    board.apply(ev("metrics", job_id, eval_loss=value), (1, 0), 1.0)
    job = board.jobs[job_id]
    return job.public(), job.private()


@pytest.mark.parametrize("text, count, expected", [
    ("1-0.2-3", 2, ["1-0", "2-3"]),
    ("1-0", 1, ["1-0"]),
    ("1-0.2-3", 3, None),
    ("1-0.x", 2, None),
    ("", 1, None),
])
def test_cursors(text: str, count: int, expected: list[str] | None) -> None:
    assert parse_cursor(text, count) == expected
    if expected is not None:
        assert cursor(expected) == text


def test_an_entry_with_a_malformed_handoff_is_refused_and_keeps_its_source() -> None:
    fields = {b"data": orjson.dumps({"type": "metrics", "job_id": "a", "loss": 1.0}),
              b"src": b"p1|5-0", b"handoff": b"[1]"}
    (refused,) = decode([("9-0", fields)])
    assert (refused.event, refused.reason, refused.src) == (
        None, "field handoff is not a JSON object", ("p1", (5, 0)))
