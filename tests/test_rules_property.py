"""Property: the incremental fold equals a from-scratch recomputation, whatever the order."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.decoded import Event, event_of
from monitor.rules import Board
from tests.helpers import pos_of, ts_of
from tests.reference import reference_models, reference_views
from worker.batch import board_view

JOBS = ["a", "b", "c", "d"]
MODELS = [None, None, None, "org/m1", "/x/huggingface_models/Org-m2/snap"]  # None often: jobs named late move groups
LOSSES = [0.0, 0.1, 0.2, 0.21, 0.25, 0.3, 1.5, 1e25, 3.4e38]  # few: ties are common; some huge
STEPS = [None, 0, 1, 5, 10]
EPOCHS = [None, 0.0, 1.0, 1.5]

FORECASTS = [
    {"at_step": 5, "horizon_step": 10, "best_p10": 0.1, "best_p50": 0.2, "best_p90": 0.3,
     "p_beat_best": 0.5, "verdict": "may_win", "gpu_hours_left": None},
    {"at_step": 10, "horizon_step": 10, "best_p10": 0.2, "best_p50": 0.2, "best_p90": 0.2,
     "p_beat_best": None, "verdict": "leading", "gpu_hours_left": 1.5},
]

common = {
    "job_id": st.sampled_from(JOBS),
    "model_name": st.sampled_from(MODELS),
    "ts": st.one_of(st.none(), st.sampled_from([1.0, 2.0, 3.0, 4.0])),
    "event_id": st.one_of(st.none(), st.sampled_from(["u:1", "u:2", "u:3", "v:1", "free"])),
}
optional_loss = st.one_of(st.none(), st.sampled_from(LOSSES))

event_dicts = st.one_of(
    st.fixed_dictionaries({"type": st.just("job_started"), **common},
                          optional={"total_epochs": st.integers(1, 5),
                                    "name": st.sampled_from(["x", "y"]),
                                    "gpu_count": st.integers(0, 2),
                                    "autostop": st.booleans()}),
    st.fixed_dictionaries({"type": st.just("metrics"), **common,
                           "loss": optional_loss, "eval_loss": st.sampled_from(LOSSES),
                           "step": st.sampled_from(STEPS), "epoch": st.sampled_from(EPOCHS)}),
    st.fixed_dictionaries({"type": st.just("metrics"), **common, "loss": st.sampled_from(LOSSES),
                           "step": st.sampled_from(STEPS)}),
    st.fixed_dictionaries({"type": st.just("checkpoint"), **common,
                           "path": st.sampled_from(["ck-1", "ck-2", "ck-3"]),
                           "step": st.sampled_from(STEPS), "epoch": st.sampled_from(EPOCHS),
                           "eval_loss": optional_loss}),
    st.fixed_dictionaries({"type": st.just("job_finished"), **common,
                           "status": st.sampled_from(["completed", "failed", "cancelled",
                                                      "stopped"]),
                           "final_loss": optional_loss}),
    st.fixed_dictionaries({"type": st.sampled_from(["job_archived", "job_restored"]), **common}),
    st.fixed_dictionaries({"type": st.just("job_forecast"), **common,
                           "forecast": st.sampled_from(FORECASTS)}),
    st.fixed_dictionaries({"type": st.just("job_stop_requested"), **common,
                           "by": st.sampled_from(["user", "forecast"]),
                           "reason": st.sampled_from([None, "why"])}),
    st.fixed_dictionaries({"type": st.just("job_heartbeat"), **common}),
    st.fixed_dictionaries({"type": st.just("job_stale"), **common,
                           "last_seen": st.sampled_from([999.0, 1000.0005, 1000.002, 1e9])}),
)


def _clean(d: dict[str, Any]) -> Event:
    return event_of({k: v for k, v in d.items() if v is not None})


@st.composite
def deliveries(draw: st.DrawFn) -> list[Event]:
    """Events as a trainer wrote them, then delivered shuffled and with re-sent copies."""
    events = [_clean(d) for d in draw(st.lists(event_dicts, min_size=1, max_size=30))]
    copies = draw(st.lists(st.sampled_from(range(len(events))), max_size=6))
    delivered = events + [events[i] for i in copies]
    return draw(st.permutations(delivered))


@settings(max_examples=500, deadline=None)
@given(deliveries())
def test_incremental_equals_from_scratch_after_every_event(events: list[Event]) -> None:
    board = Board()
    stream = []
    views: dict[str, dict[str, Any]] = {}
    summaries: dict[str | None, dict[str, Any]] = {}
    for i, event in enumerate(events):
        pos = pos_of(i)
        stream.append((pos, ts_of(event, pos), event))
        change = board.apply(event, pos, ts_of(event, pos))

        expected = reference_views(stream)
        actual = {job_id: board.view(job_id) for job_id in board.jobs}
        assert actual == expected
        # The worker's JSON of each view (spliced onto the stored state's) is the view:
        # same fields, same order, same values (its bytes may spell an exponent as 1e16,
        # where orjson writes 1e+16).
        for job_id in board.jobs:
            sent = orjson.loads(board_view(board, job_id, None))
            assert list(sent.items()) == list(board.view(job_id).items())
        # Every view that changed is in the change set (what the worker pushes).
        moved = {j for j, v in actual.items() if views.get(j) != v}
        assert moved <= set(change.jobs)
        views = actual
        # Likewise every model row that changed, appeared or went away.
        now = {m: g.summary() for m, g in board.groups.items()}
        assert now == reference_models(views)
        assert {m for m in now.keys() | summaries.keys()
                if now.get(m) != summaries.get(m)} <= set(change.models)
        summaries = now


ORDER_FREE = ("best_eval_loss", "best_step", "best_epoch", "best_checkpoint_path",
              "created_at", "updated_at", "loss", "eval_loss", "total_epochs", "gpu_count")


@settings(max_examples=200, deadline=None)
@given(st.lists(event_dicts, min_size=1, max_size=30), st.randoms())
def test_what_spec_does_not_call_latest_does_not_depend_on_arrival_order(
        dicts: list[dict[str, Any]], random: Any) -> None:
    # Distinct steps (so no two observations tie on their key), no event ids (deduplication
    # keeps whichever copy comes first), one job_started (the latest one wins).
    events, started = [], False
    for i, d in enumerate(dicts):
        if d["type"] == "job_started":
            if started:
                continue
            started = True
        fields = {**d, "event_id": None}
        if "step" in d:
            fields["step"] = i
        events.append(_clean(fields))
    shuffled = list(events)
    random.shuffle(shuffled)
    first, second = Board(), Board()
    for i, (x, y) in enumerate(zip(events, shuffled)):
        first.apply(x, pos_of(i), ts_of(x, pos_of(0)))
        second.apply(y, pos_of(i), ts_of(y, pos_of(0)))
    for job_id, job in first.jobs.items():
        other = second.jobs[job_id]
        assert {f: getattr(job, f) for f in ORDER_FREE} == {f: getattr(other, f) for f in ORDER_FREE}
