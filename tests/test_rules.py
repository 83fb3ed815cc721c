"""The rules of docs/state.md, one table row per rule and edge case."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.decoded import Event
from monitor.rules import (
    PUBLIC_FIELDS,
    TIERS,
    Board,
    JobState,
    delta_pct,
    exact_tier,
    model_display,
    parse_pos,
    parse_positions,
    shown,
    tier,
)
from monitor.seen import MAX_ABOVE, Run, SeenIds
from tests.helpers import ev, fold, pos_of, ts_of

Q = "Qwen/Qwen2.5-7B-Instruct"


# --- Section 6: clean model names ------------------------------------------------------------

@pytest.mark.parametrize(("model_name", "display"), [
    ("/data/huggingface_models/Qwen-Qwen3-1.7B/snapshots/x", "Qwen/Qwen3-1.7B"),
    ("huggingface_models/Qwen-Qwen3-1.7B", "Qwen/Qwen3-1.7B"),
    ("/srv/huggingface_models/gpt2/snapshots/abc", "gpt2"),  # no hyphen: the segment as is
    ("/srv/huggingface_models/meta-llama-Llama-3.2-3B", "meta/llama-Llama-3.2-3B"),  # first hyphen
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("/models/org/Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B"),
    ("/models/org/Qwen/Qwen2.5-7B/", "Qwen/Qwen2.5-7B"),  # empty segments do not count
    ("/gpt2", "gpt2"),
    ("gpt2", "gpt2"),
    ("", ""),
    (None, "Unknown Model"),
])
def test_model_display(model_name: str | None, display: str) -> None:
    assert model_display(model_name) == display


# --- Section 5: delta and tier ---------------------------------------------------------------

@pytest.mark.parametrize(("value", "best", "expected"), [
    (0.3456, 0.2345, 47.377398720682315),  # the original design's example
    (0.2701, 0.2345, 15.181236673773995),
    (0.2345, 0.2345, 0.0),
    (-1.0, -2.0, 50.0),  # |best|: a negative loss still gives a positive delta
    (0.3, 0.0, None),  # best 0: no delta
])
def test_delta_pct(value: float, best: float, expected: float | None) -> None:
    assert delta_pct(value, best) == expected


@pytest.mark.parametrize(("delta", "shown_text", "expected_tier"), [
    (47.377398720682315, "47.4", "red"),  # the original's "47.3%" was a rounding slip
    (15.181236673773995, "15.2", "orange"),
    (25.1, "25.1", "red"),
    (25.06, "25.1", "red"),  # shown as 25.1, so red
    (25.04, "25.0", "orange"),
    (25.0, "25.0", "orange"),
    (10.06, "10.1", "orange"),
    (10.0, "10.0", "yellow"),
    (10.04, "10.0", "yellow"),
    (5.06, "5.1", "yellow"),
    (5.05, "5.0", None),  # 5.05 is 5.04999... in binary; JS toFixed(1) shows 5.0 too
    (5.0, "5.0", None),
    (4.99, "5.0", None),
    (0.0, "0.0", None),
    (None, None, None),
])
def test_tier_follows_the_shown_value(delta: float | None, shown_text: str | None,
                                      expected_tier: str | None) -> None:
    if delta is not None:
        assert str(shown(delta)) == shown_text
    assert tier(delta) == expected_tier


def _around(x: float, steps: int) -> list[float]:
    """``x`` and the ``steps`` floats on each side of it."""
    out, up, down = [x], x, x
    for _ in range(steps):
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        out += [up, down]
    return out


EDGE_CASES = [d for bound, _ in TIERS for edge in (bound + 0.05, bound + 0.05 - 1e-9,
                                                   bound + 0.05 + 1e-9, bound + 0.0500000001)
              for d in _around(edge, 40)]


def test_tier_at_every_edge_is_the_exact_one() -> None:
    """The float shortcut of tier() gives what the exact shown value gives, float by float
    around each edge b + 0.05 and around the ends of the band where it defers."""
    assert [tier(d) for d in EDGE_CASES] == [exact_tier(d) for d in EDGE_CASES]
    assert {tier(d) for d in EDGE_CASES} == {"red", "orange", "yellow", None}


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_tier_is_the_exact_one_for_any_delta(delta: float) -> None:
    assert tier(delta) == exact_tier(delta)


# --- Sections 4 and 5 on whole event sequences ------------------------------------------------

def started(job: str, model: str | None = Q, ts: float | None = None, **kw: Any) -> Event:
    fields: dict[str, Any] = {"model_name": model, **kw}
    if ts is not None:
        fields["ts"] = ts
    return ev("job_started", job, **fields)


def evals(job: str, value: float, **kw: Any) -> Event:
    return ev("metrics", job, eval_loss=value, **kw)


CASES: list[tuple[str, list[Event], dict[str, dict[str, Any]]]] = [
    ("single job in its group is best",
     [started("a"), evals("a", 0.5)],
     {"a": {"is_best": True, "delta_pct": None, "tier": None, "best_eval_loss": 0.5}}),
    ("no job with a loss: no trophy",
     [started("a"), started("b"), ev("metrics", "a", loss=0.9), ev("metrics", "b", loss=0.8)],
     {"a": {"is_best": False, "best_eval_loss": None, "delta_pct": None, "loss": 0.9},
      "b": {"is_best": False, "best_eval_loss": None, "delta_pct": None}}),
    ("tie on best eval loss: first created wins",
     [started("b", ts=20.0), started("a", ts=30.0), evals("a", 0.3), evals("b", 0.3)],
     {"b": {"is_best": True}, "a": {"is_best": False, "delta_pct": 0.0, "tier": None}}),
    ("tie on best eval loss and creation time: smaller job id wins",
     [started("b", ts=20.0), started("a", ts=20.0), evals("b", 0.3, ts=21.0),
      evals("a", 0.3, ts=21.0)],
     {"a": {"is_best": True}, "b": {"is_best": False, "delta_pct": 0.0}}),
    ("a failed job with the best checkpoint is best",
     [started("a"), evals("a", 0.2), ev("job_finished", "a", status="failed", error="OOM"),
      started("b"), evals("b", 0.3), ev("job_finished", "b", status="completed")],
     {"a": {"is_best": True, "status": "failed", "error": "OOM"},
      "b": {"is_best": False, "delta_pct": pytest.approx(50.0), "tier": "red"}}),
    ("a running job competes",
     [started("a"), evals("a", 0.2), started("b"), evals("b", 0.21),
      ev("job_finished", "b", status="completed")],
     {"a": {"is_best": True, "status": "running"},
      "b": {"delta_pct": pytest.approx(5.0), "tier": None}}),
    ("the original design's worked example",
     [started("a"), evals("a", 0.2345), started("b"), evals("b", 0.3456), started("c"),
      evals("c", 0.2701)],
     {"a": {"is_best": True, "delta_pct": None},
      "b": {"delta_pct": 47.377398720682315, "tier": "red"},
      "c": {"delta_pct": 15.181236673773995, "tier": "orange"}}),
    ("archiving the best: the next one becomes best, every delta changes",
     [started("a"), evals("a", 0.2), started("b"), evals("b", 0.25), started("c"),
      evals("c", 0.3), ev("job_archived", "a")],
     {"a": {"is_best": False, "archived": True, "delta_pct": None, "tier": None},
      "b": {"is_best": True, "delta_pct": None},
      "c": {"delta_pct": pytest.approx(20.0), "tier": "orange"}}),
    ("restoring it makes it best again",
     [started("a"), evals("a", 0.2), started("b"), evals("b", 0.25), started("c"),
      evals("c", 0.3), ev("job_archived", "a"), ev("job_restored", "a")],
     {"a": {"is_best": True, "archived": False},
      "b": {"delta_pct": pytest.approx(25.0), "tier": "orange"},
      "c": {"delta_pct": pytest.approx(50.0), "tier": "red"}}),
    ("best eval loss of 0: no deltas",
     [started("a"), evals("a", 0.0), started("b"), evals("b", 0.3)],
     {"a": {"is_best": True}, "b": {"is_best": False, "delta_pct": None, "tier": None}}),
    ("groups are exact model names; null is its own group",
     [started("a", "Qwen/Qwen2.5-7B"), evals("a", 0.5), started("b"), evals("b", 0.9),
      ev("metrics", "c", eval_loss=0.7), ev("metrics", "d", eval_loss=0.1)],
     {"a": {"is_best": True}, "b": {"is_best": True},
      "c": {"model_name": None, "model_display": "Unknown Model", "is_best": False,
            "delta_pct": pytest.approx(600.0)},
      "d": {"is_best": True}}),
    ("events before job_started create the job",
     [ev("metrics", "a", step=10, loss=0.7, eval_loss=0.8),
      ev("checkpoint", "a", path="checkpoint-10", step=10),
      started("a", total_epochs=3, name="lr=1e-4", gpu_count=2)],
     {"a": {"status": "running", "model_name": Q, "total_epochs": 3, "name": "lr=1e-4",
            "gpu_count": 2, "loss": 0.7, "best_eval_loss": 0.8,
            "best_checkpoint_path": "checkpoint-10"}}),
    ("a duplicated event_id is applied once",
     [started("a"), ev("metrics", "a", loss=0.5, step=1, event_id="u:1"),
      ev("job_archived", "a", event_id="x"), ev("job_restored", "a", event_id="y"),
      ev("job_archived", "a", event_id="x")],  # a replay of the archive: ignored
     {"a": {"archived": False, "loss": 0.5}}),
    ("event_ids are per job",
     [started("a"), started("b"), ev("job_archived", "a", event_id="x"),
      ev("job_archived", "b", event_id="x")],
     {"a": {"archived": True}, "b": {"archived": True}}),
    ("out-of-order steps: latest is the highest step",
     [started("a"), ev("metrics", "a", step=20, loss=0.5, eval_loss=0.6),
      ev("metrics", "a", step=10, loss=0.9, eval_loss=0.95)],
     {"a": {"loss": 0.5, "eval_loss": 0.6, "best_eval_loss": 0.6, "best_step": 20}}),
    ("a missing step counts lower than any step",
     [started("a"), ev("metrics", "a", step=5, loss=0.5),
      ev("metrics", "a", loss=0.1, epoch=9.0)],
     {"a": {"loss": 0.5}}),
    ("same step: the higher epoch, then the later entry, is latest",
     [started("a"), ev("metrics", "a", step=5, epoch=2.0, loss=0.3),
      ev("metrics", "a", step=5, epoch=1.0, loss=0.4), ev("metrics", "b", loss=0.9),
      ev("metrics", "b", loss=0.8)],
     {"a": {"loss": 0.3}, "b": {"loss": 0.8}}),
    ("equal best eval losses: the observation with the smallest key",
     [started("a"), evals("a", 0.3, step=10, epoch=2.0), evals("a", 0.3, step=5, epoch=1.0)],
     {"a": {"best_step": 5, "best_epoch": 1.0, "eval_loss": 0.3}}),
    ("a checkpoint's eval_loss is an eval observation",
     [started("a"), evals("a", 0.5, step=100),
      ev("checkpoint", "a", path="checkpoint-200", step=200, eval_loss=0.4)],
     {"a": {"best_eval_loss": 0.4, "eval_loss": 0.4, "best_step": 200,
            "best_checkpoint_path": "checkpoint-200"}}),
    ("best checkpoint: same step",
     [started("a"), ev("checkpoint", "a", path="checkpoint-100", step=100, epoch=1.0),
      evals("a", 0.4, step=200, epoch=2.0),
      ev("checkpoint", "a", path="checkpoint-200", step=200, epoch=2.0),
      evals("a", 0.5, step=300, epoch=3.0),
      ev("checkpoint", "a", path="checkpoint-300", step=300, epoch=3.0)],
     {"a": {"best_checkpoint_path": "checkpoint-200", "best_epoch": 2.0, "best_step": 200}}),
    ("best checkpoint: same epoch when a step is missing",
     [started("a"), evals("a", 0.4, epoch=2.0), ev("checkpoint", "a", path="ckpt-e2", epoch=2.0,
                                                   step=999)],
     {"a": {"best_checkpoint_path": "ckpt-e2"}}),
    ("best checkpoint: a step on both sides must match",
     [started("a"), evals("a", 0.4, epoch=2.0, step=10),
      ev("checkpoint", "a", path="other", epoch=2.0, step=11)],
     {"a": {"best_checkpoint_path": None}}),
    ("best checkpoint: the checkpoint that carried the best eval loss wins",
     [started("a"), evals("a", 0.4, step=100),
      ev("checkpoint", "a", path="first", step=100),
      ev("checkpoint", "a", path="carried", step=100, eval_loss=0.4)],
     {"a": {"best_checkpoint_path": "carried", "best_eval_loss": 0.4}}),
    ("best checkpoint: none taken there",
     [started("a"), evals("a", 0.4, step=100)],
     {"a": {"best_checkpoint_path": None}}),
    ("status: the first job_finished decides",
     [started("a"), ev("job_finished", "a", status="failed", error="boom", ts=50.0),
      ev("job_finished", "a", status="completed", ts=60.0)],
     {"a": {"status": "failed", "error": "boom", "finished_at": 50.0}}),
    ("final losses are null while running",
     [started("a"), ev("metrics", "a", loss=0.5, eval_loss=0.6)],
     {"a": {"final_loss": None, "final_eval_loss": None}}),
    ("final losses: the job_finished values, else the latest",
     [started("a"), ev("metrics", "a", step=1, loss=0.5, eval_loss=0.6),
      ev("job_finished", "a", status="completed", final_loss=0.45)],
     {"a": {"final_loss": 0.45, "final_eval_loss": 0.6}}),
    ("a metric after the finish still updates the final losses",
     [started("a"), ev("metrics", "a", step=1, loss=0.5),
      ev("job_finished", "a", status="completed"), ev("metrics", "a", step=2, loss=0.4)],
     {"a": {"final_loss": 0.4, "loss": 0.4, "status": "completed"}}),
    ("the model is fixed by the first event that names one",
     [ev("metrics", "a", loss=1.0), started("a", "first/model"),
      ev("metrics", "a", model_name="second/model", loss=0.9)],
     {"a": {"model_name": "first/model", "model_display": "first/model"}}),
    ("the latest job_started restates the run",
     [started("a", total_epochs=3, name="x"), started("a", total_epochs=5)],
     {"a": {"total_epochs": 5, "name": "x"}}),
    ("total_steps: from the latest job_started that gives it",
     [started("a", total_steps=300), started("a", total_epochs=5), started("a")],
     {"a": {"total_steps": 300, "total_epochs": 5}}),
    ("epoch and step: where the latest observation was, not the best one",
     [started("a"), evals("a", 0.3, step=200, epoch=2.0), evals("a", 0.5, step=400, epoch=4.0)],
     {"a": {"epoch": 4.0, "step": 400, "best_epoch": 2.0, "best_step": 200}}),
    ("epoch and step: a late-arriving earlier step does not move them back",
     [started("a"), ev("metrics", "a", loss=0.5, step=400, epoch=4.0),
      ev("metrics", "a", loss=0.6, step=300, epoch=3.0)],
     {"a": {"epoch": 4.0, "step": 400, "loss": 0.5}}),
    ("epoch and step: a checkpoint is an observation too",
     [started("a"), ev("metrics", "a", loss=0.5, step=400, epoch=4.0),
      ev("checkpoint", "a", path="checkpoint-500", step=500, epoch=5.0)],
     {"a": {"epoch": 5.0, "step": 500}}),
    ("epoch and step: an observation without a step counts lower than one with",
     [started("a"), ev("metrics", "a", loss=0.5, step=10, epoch=1.0),
      ev("metrics", "a", loss=0.4, epoch=2.0)],
     {"a": {"epoch": 1.0, "step": 10, "loss": 0.5}}),
    ("epoch and step: null before any observation",
     [started("a")],
     {"a": {"epoch": None, "step": None}}),
    ("created_at is the earliest event time, updated_at the latest",
     [ev("metrics", "a", loss=1.0, ts=50.0), started("a", ts=40.0),
      ev("metrics", "a", loss=0.9, ts=45.0)],
     {"a": {"created_at": 40.0, "updated_at": 50.0}}),
]


@pytest.mark.parametrize(("events", "expected"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_job_views(events: list[Event], expected: dict[str, dict[str, Any]]) -> None:
    board = fold(events)
    for job_id, fields in expected.items():
        view = board.view(job_id)
        assert {k: view[k] for k in fields} == fields, job_id


def test_the_public_state_has_every_public_field_and_restores_to_the_same_job() -> None:
    board = fold([started("a"), evals("a", 0.3), ev("job_finished", "a", status="completed")])
    job = board.jobs["a"]
    public = job.public()
    assert sorted(public) == sorted(PUBLIC_FIELDS)
    assert list(public)[-1] == "model_display"
    assert public["final_eval_loss"] == 0.3 and public["model_display"] == Q
    assert JobState.restore(public, job.private()) == job

def test_each_public_field_holds_its_own_value_and_the_json_is_the_dict() -> None:
    """The struct behind the public state is filled by position: a field given another's
    value would show here (each field holds a value no other holds)."""
    values: dict[str, Any] = {
        "id": "a", "model_name": "m", "name": "n", "status": "completed", "archived": True,
        "epoch": 1.5, "step": 11, "loss": 2.5, "eval_loss": 3.5, "best_eval_loss": 4.5,
        "best_epoch": 5.5, "best_step": 12, "best_checkpoint_path": "p", "total_epochs": 13,
        "total_steps": 14, "created_at": 6.5, "updated_at": 7.5, "finished_at": 8.5,
        "gpu_count": 15, "error": "e", "eval_count": 16, "forecast": {"f": 1},
        "autostop": None, "stop_requested": {"s": 2}, "stale": False, "last_seen": 9.5}
    job = JobState(**values, given_final_loss=0.25, given_final_eval_loss=0.75)
    public = job.public()
    assert public == {**values, "final_loss": 0.25, "final_eval_loss": 0.75,
                      "model_display": "m"}
    assert list(public) == [f for f in PUBLIC_FIELDS if f != "model_display"] + [
        "model_display"]
    assert job.public_json() == orjson.dumps(public)


def test_a_new_job_state_takes_every_field_with_its_default() -> None:
    job = JobState(id="a", created_at=1.0, updated_at=2.0)
    for cls in (JobState, SeenIds, Run):  # each __init__ is written out: it takes every field
        params = inspect.signature(cls.__init__).parameters
        if "kwargs" not in params:  # from source (compiled, a method shows no signature)
            assert list(params)[1:] == [f.name for f in dataclasses.fields(cls)], cls
    assert (job.status, job.archived, job.eval_count, job.stale, job.points) == (
        "running", False, 0, False, 0)
    assert job.ckpts == [] and job.seen.to_json() == SeenIds().to_json()
    other = JobState(id="b", created_at=1.0, updated_at=2.0)
    assert job.ckpts is not other.ckpts and job.seen is not other.seen
    assert all(getattr(job, f.name) is None for f in dataclasses.fields(JobState)
               if f.name not in {"id", "created_at", "updated_at", "status", "archived",
                                 "eval_count", "stale", "ckpts", "seen", "points"})


def test_model_summaries() -> None:
    board = fold([started("a"), evals("a", 0.3), started("b"), evals("b", 0.2),
                  started("c"), ev("job_archived", "b"), ev("metrics", "d", loss=1.0)])
    assert board.groups[Q].summary() == {
        "model_name": Q, "model_display": Q, "job_count": 2, "archived_count": 1,
        "best_job_id": "a", "best_eval_loss": 0.3,
    }
    assert board.groups[None].summary() == {
        "model_name": None, "model_display": "Unknown Model", "job_count": 1,
        "archived_count": 0, "best_job_id": None, "best_eval_loss": None,
    }


def _apply(board: Board, event: Event, i: int) -> set[str]:
    pos = pos_of(i)
    return set(board.apply(event, pos, ts_of(event, pos)).jobs)


def test_a_new_non_best_loss_changes_one_view() -> None:
    events = [started(j) for j in "abcde"] + [evals(j, 0.2 + i / 10) for i, j in enumerate("abcde")]
    board = fold(events)
    assert _apply(board, evals("e", 0.55), 100) == {"e"}
    assert _apply(board, ev("metrics", "c", loss=0.1), 101) == {"c"}


def test_a_new_best_changes_every_view_of_its_group() -> None:
    events = [started(j) for j in "abcde"] + [evals(j, 0.2 + i / 10) for i, j in enumerate("abcde")]
    events += [started("z", "other/model"), evals("z", 0.9)]
    board = fold(events)
    assert _apply(board, evals("d", 0.1), 100) == set("abcde")  # not z: another group
    assert _apply(board, evals("d", 0.05), 101) == set("abcde")  # same best, new value


def test_a_job_named_later_moves_out_of_the_unknown_group() -> None:
    board = fold([ev("metrics", "a", eval_loss=0.1), ev("metrics", "b", eval_loss=0.2),
                  started("c"), evals("c", 0.3)])
    assert _apply(board, ev("metrics", "a", model_name=Q, loss=1.0), 100) == {"a", "b", "c"}
    assert board.view("b")["is_best"] is True
    assert board.view("a")["is_best"] is True
    assert board.view("c")["tier"] == "red"
    assert set(board.groups[None].members) == {"b"}


def test_a_duplicate_changes_nothing() -> None:
    board = fold([started("a"), ev("metrics", "a", loss=0.5, event_id="r:1")])
    change = board.apply(ev("metrics", "a", loss=0.1, event_id="r:1"), pos_of(9), 9.0)
    assert not change.job.applied and not change.jobs
    assert board.view("a")["loss"] == 0.5


@pytest.mark.parametrize(("ids", "duplicates"), [
    (["r:1", "r:2", "r:3", "r:2"], [False, False, False, True]),
    (["r:3", "r:1", "r:2", "r:3", "r:1"], [False, False, False, True, True]),
    (["r:01", "r:1", "r:01"], [False, False, True]),  # "01" is not "1"
    (["r:0", "r:0", "x", "x", "a:b:1", "a:b:1", "a:c:1"], [False, True, False, True, False,
                                                            True, False]),
])
def test_seen_ids_are_exact(ids: list[str], duplicates: list[bool]) -> None:
    seen = SeenIds()
    assert [not seen.add(i) for i in ids] == duplicates
    stored = seen.take_added()  # what the commit writes to the job's stored set
    again = SeenIds.from_json(seen.to_json())
    again.know(i for i in ids if again.may_be_stored(i) and i in stored)
    assert all(not again.add(i) for i in ids)


def test_seen_ids_stay_compact_for_sdk_ids() -> None:
    seen = SeenIds()
    for n in [*range(1, 5000), 5001, 5000]:
        seen.add(f"run:{n}")
    assert seen.to_json() == {"runs": {"run": [5001, [], 0]}}
    assert seen.take_added() == []


def test_other_ids_go_to_the_stored_set_not_the_fold_state() -> None:
    seen = SeenIds()
    for n in range(60_000):
        assert seen.add(f"9f1c-{n}")
    assert seen.to_json() == {"runs": {}}
    assert len(seen.take_added()) == 60_000
    assert seen.may_be_stored("9f1c-7")  # the worker asks Redis, then says what it found
    seen.know(["9f1c-7"])
    assert not seen.add("9f1c-7")
    assert seen.add("9f1c-new") and seen.take_added() == ["9f1c-new"]


def test_sdk_ids_past_a_long_gap_go_to_the_stored_set() -> None:
    seen = SeenIds()
    assert all(seen.add(f"r:{n}") for n in range(2, 2 + MAX_ABOVE + 3))  # r:1 never came
    assert seen.to_json() == {"runs": {"r": [0, list(range(2, 2 + MAX_ABOVE)), 2 + MAX_ABOVE + 2]}}
    spilled = [f"r:{n}" for n in range(2 + MAX_ABOVE, 2 + MAX_ABOVE + 3)]
    assert seen.take_added() == spilled
    asked = [i for i in (f"r:{n}" for n in range(1, 2 + MAX_ABOVE + 9)) if seen.may_be_stored(i)]
    assert asked == ["r:1", *spilled]  # numbers the fold state holds are never looked up
    seen.know(spilled)
    assert [seen.add(i) for i in spilled] == [False] * 3
    assert seen.add("r:1") and seen.to_json()["runs"]["r"][0] == 1 + MAX_ABOVE


def test_seen_ids_stored_before_the_stored_set_move_into_it() -> None:
    old = {"runs": {"r": [3, list(range(5, 5 + MAX_ABOVE + 2))]}, "other": ["x", "y"]}
    seen = SeenIds.from_json(old)
    assert seen.to_json() == {"runs": {"r": [3, list(range(5, 5 + MAX_ABOVE)), 6 + MAX_ABOVE]}}
    assert not seen.add("x") and not seen.add(f"r:{6 + MAX_ABOVE}") and not seen.add("r:2")
    assert seen.take_added() == [f"r:{5 + MAX_ABOVE}", f"r:{6 + MAX_ABOVE}", "x", "y"]


def test_a_job_stored_before_epoch_and_step_existed_restores_and_catches_up() -> None:
    job = fold([started("a"), evals("a", 0.3, step=200, epoch=2.0)]).jobs["a"]
    public = {k: v for k, v in job.public().items() if k not in ("epoch", "step")}
    private = {k: v for k, v in job.private().items() if k != "latest_key"}
    restored = JobState.restore(public, private)
    assert (restored.epoch, restored.step) == (None, None)
    restored_board = Board()
    restored_board.load([restored])
    restored_board.apply(evals("a", 0.4, step=300, epoch=3.0), pos_of(5), 5.0)
    assert (restored.epoch, restored.step, restored.best_step) == (3.0, 300, 200)


# --- Stopping and liveness (docs/stopping.md) --------------------------------------------------

# Each event at position i arrives at 1,000 s + i ms (tests.helpers.pos_of).
@pytest.mark.parametrize(("events", "expected"), [
    ([ev("job_started"), ev("job_stop_requested", by="user", reason="why", ts=5.0),
      ev("job_stop_requested", by="forecast", ts=6.0)],
     {"stop_requested": {"at": 5.0, "by": "user", "reason": "why"}}),  # the first wins
    ([ev("job_started"), ev("job_finished", status="completed"),
      ev("job_stop_requested", by="user")],
     {"stop_requested": None, "status": "completed"}),  # too late: it had ended
    ([ev("job_started"), ev("job_stop_requested", by="forecast"),
      ev("job_finished", status="stopped")],
     {"stop_requested": {"at": 1000.001, "by": "forecast", "reason": None},
      "status": "stopped"}),  # kept after the end
    ([ev("job_started"), ev("job_stale", last_seen=1000.0)],
     {"stale": True, "last_seen": 1000.0}),
    ([ev("job_started"), ev("metrics", loss=1.0), ev("job_stale", last_seen=1005.0)],
     {"stale": True, "last_seen": 1000.001}),  # the view says its own last arrival
    ([ev("job_started"), ev("job_heartbeat"), ev("job_stale", last_seen=1000.0)],
     {"stale": False, "last_seen": None}),  # a heartbeat arrived after what it saw
    ([ev("job_started"), ev("job_stale", last_seen=1000.0), ev("job_heartbeat")],
     {"stale": False, "last_seen": None}),  # heard again
    ([ev("job_started"), ev("job_stale", last_seen=1000.0), ev("metrics", loss=1.0)],
     {"stale": False, "last_seen": None, "loss": 1.0}),
    ([ev("job_started"), ev("job_stale", last_seen=1000.0), ev("job_archived")],
     {"stale": True, "last_seen": 1000.0}),  # archiving is no sign of life
    ([ev("job_started"), ev("job_stale", last_seen=1000.0),
      ev("job_finished", status="failed")],
     {"stale": False, "last_seen": None, "status": "failed"}),
    ([ev("job_started", ts=7.0), ev("job_heartbeat"), ev("job_stop_requested", by="user")],
     {"created_at": 7.0, "updated_at": 7.0}),  # neither moves the job's times
])
def test_stop_requests_and_liveness(events: list[Event], expected: dict[str, Any]) -> None:
    view = fold(events).view("a")
    assert {k: view[k] for k in expected} == expected


def test_a_heartbeat_changes_no_view_unless_it_ends_a_stale_spell() -> None:
    board = fold([ev("job_started")])
    quiet = board.apply(ev("job_heartbeat"), pos_of(1), 1000.001)
    assert quiet.job.applied and quiet.jobs == frozenset()
    board.apply(ev("job_stale", last_seen=1000.001), pos_of(2), 1000.002)
    heard = board.apply(ev("job_heartbeat"), pos_of(3), 1000.003)
    assert set(heard.jobs) == {"a"} and board.jobs["a"].stale is False


@pytest.mark.parametrize("kind", [
    ev("job_heartbeat", "nobody"), ev("job_stale", "nobody", last_seen=1.0),
    ev("job_stop_requested", "nobody", by="user"),
])
def test_signals_and_requests_create_no_job(kind: Event) -> None:
    assert fold([kind]).jobs == {}


@pytest.mark.parametrize(("entry_id", "pos"), [
    ("1700000000000-3", (1700000000000, 3)), (b"1700000000000-3", (1700000000000, 3)),
    ("5", (5, 0)), ("5-", (5, 0)), ("0-0", (0, 0)),
    ("123456789012345678901234-99", (123456789012345678901234, 99)),
])
def test_an_entry_id_is_read_as_its_two_numbers(entry_id: str | bytes, pos: tuple[int, int]
                                                ) -> None:
    assert parse_pos(entry_id) == pos


@pytest.mark.parametrize("entry_id", ["", "-5", "5-x", "a-1", "5-1-2", "1.5-0"])
def test_anything_else_is_not_an_entry_id(entry_id: str) -> None:
    with pytest.raises(ValueError):
        parse_pos(entry_id)
    with pytest.raises(ValueError):
        parse_positions(["7-0", "7-1", entry_id])


def test_many_ids_read_as_each_alone_those_of_one_millisecond_included() -> None:
    ids = ["5-0", "5-1", "5-2", "6-0", "5-3", "1700000000000-7", "1700000000000-8", "9", "9-"]
    assert parse_positions(ids) == [parse_pos(i) for i in ids]
    assert parse_positions([]) == []
