"""A from-scratch recomputation of the job state and best runs of docs/state.md, written
independently of the incremental fold in ``monitor.rules``: for each job it reads all its
events at once and takes minima and maxima directly. Tests compare the two. (It borrows only the leaf formulas
``delta_pct``, ``tier`` and ``model_display``, which test_rules pins with tables.)"""

from __future__ import annotations

from typing import Any

from monitor.decoded import (
    Checkpoint,
    Event,
    JobArchived,
    JobFinished,
    JobForecast,
    JobRestored,
    JobStale,
    JobStarted,
    JobStopRequested,
    Metrics,
    as_dict,
)
from monitor.rules import DERIVED, Pos, delta_pct, model_display, tier


def _key(step: int | None, epoch: float | None, pos: Pos) -> tuple[Any, ...]:
    return (step is not None, step or 0, epoch is not None, float(epoch or 0), pos)


def reference_views(stream: list[tuple[Pos, float, Event]]) -> dict[str, dict[str, Any]]:
    """Every job's view from the whole stream of (position, time, event), in stream order."""
    per_job: dict[str, list[tuple[Pos, float, Event]]] = {}
    for pos, ts, event in sorted(stream, key=lambda x: x[0]):
        if isinstance(event, DERIVED) and event.job_id not in per_job:
            continue  # only the trainer's own events create a job
        per_job.setdefault(event.job_id, []).append((pos, ts, event))
    states = {job_id: _job(job_id, _dedup(events)) for job_id, events in per_job.items()}

    best: dict[str | None, tuple[float, float, str]] = {}
    for s in states.values():
        if not s["archived"] and s["best_eval_loss"] is not None:
            key = (s["best_eval_loss"], s["created_at"], s["id"])
            if s["model_name"] not in best or key < best[s["model_name"]]:
                best[s["model_name"]] = key
    views = {}
    for job_id, s in states.items():
        group_best = best.get(s["model_name"])
        is_best = group_best is not None and group_best[2] == job_id
        candidate = not s["archived"] and s["best_eval_loss"] is not None
        delta = (delta_pct(s["best_eval_loss"], group_best[0])
                 if group_best is not None and candidate and not is_best else None)
        end = s["finished_at"] if s["finished_at"] is not None else s["updated_at"]
        hours = (None if s["gpu_count"] is None
                 else float(s["gpu_count"] * max(0.0, end - s["created_at"]) / 3600))
        views[job_id] = {**s, "is_best": is_best, "delta_pct": delta, "tier": tier(delta),
                         "gpu_hours": hours,
                         "forecast": s["forecast"] if s["status"] == "running" else None}
    return views


def _dedup(events: list[tuple[Pos, float, Event]]) -> list[tuple[Pos, float, Event]]:
    seen: set[str] = set()
    out = []
    for item in events:
        event_id = item[2].event_id
        if event_id is not None:
            if event_id in seen:
                continue
            seen.add(event_id)
        out.append(item)
    return out


def _job(job_id: str, all_events: list[tuple[Pos, float, Event]]) -> dict[str, Any]:
    forecasts = [as_dict(e.forecast) for _, _, e in all_events if isinstance(e, JobForecast)]
    stale, last_seen = _liveness(all_events)
    events = [item for item in all_events if not isinstance(item[2], DERIVED)]
    named = [e.model_name for _, _, e in events if e.model_name is not None]
    model = named[0] if named else None
    finishes = [(ts, e) for _, ts, e in events if isinstance(e, JobFinished)]
    first_finish = finishes[0] if finishes else None
    marks = [isinstance(e, JobArchived) for _, _, e in events
             if isinstance(e, JobArchived | JobRestored)]
    losses = [(_key(e.step, e.epoch, p), e.loss) for p, _, e in events
              if isinstance(e, Metrics) and e.loss is not None]
    observations = [(e.eval_loss, _key(e.step, e.epoch, p), e.step, e.epoch,
                     e.path if isinstance(e, Checkpoint) else None)
                    for p, _, e in events
                    if isinstance(e, Metrics | Checkpoint) and e.eval_loss is not None]
    latest_loss = max(losses)[1] if losses else None
    where = [(_key(e.step, e.epoch, p), e.step, e.epoch) for p, _, e in events
             if isinstance(e, Metrics | Checkpoint)]
    latest_where = max(where, key=lambda w: w[0]) if where else (None, None, None)
    latest_eval = max(observations, key=lambda o: o[1])[0] if observations else None
    best = min(observations, key=lambda o: (o[0], o[1])) if observations else None

    path = None
    if best is not None and best[4] is not None:
        path = best[4]  # the best observation is a checkpoint
    elif best is not None:
        def matches(c: Checkpoint) -> bool:
            if c.step is not None and best[2] is not None:
                return c.step == best[2]
            return c.epoch is not None and best[3] is not None and c.epoch == best[3]
        ckpts = [(e.eval_loss != best[0], _key(e.step, e.epoch, p), e.path)
                 for p, _, e in events if isinstance(e, Checkpoint) and matches(e)]
        path = min(ckpts)[2] if ckpts else None

    def started_field(name: str) -> Any:
        given = [getattr(e, name) for _, _, e in events
                 if isinstance(e, JobStarted) and getattr(e, name) is not None]
        return given[-1] if given else None

    finished = first_finish is not None
    finish = first_finish[1] if first_finish else None
    assert finish is None or isinstance(finish, JobFinished)
    return {
        "id": job_id,
        "model_name": model,
        "model_display": model_display(model),
        "name": started_field("name"),
        "status": finish.status if finish else "running",
        "archived": marks[-1] if marks else False,
        "epoch": latest_where[2],
        "step": latest_where[1],
        "loss": latest_loss,
        "eval_loss": latest_eval,
        "best_eval_loss": best[0] if best else None,
        "best_epoch": best[3] if best else None,
        "best_step": best[2] if best else None,
        "best_checkpoint_path": path,
        "final_loss": (finish.final_loss if finish and finish.final_loss is not None
                       else latest_loss) if finished else None,
        "final_eval_loss": (finish.final_eval_loss if finish and finish.final_eval_loss is not None
                            else latest_eval) if finished else None,
        "total_epochs": started_field("total_epochs"),
        "total_steps": started_field("total_steps"),
        "created_at": min(ts for _, ts, _ in events),
        "updated_at": max(ts for _, ts, _ in events),
        "finished_at": first_finish[0] if first_finish else None,
        "gpu_count": started_field("gpu_count"),
        "error": finish.error if finish else None,
        "eval_count": len(observations),
        "forecast": forecasts[-1] if forecasts else None,
        "autostop": started_field("autostop"),
        "stop_requested": _first_stop(all_events),
        "stale": stale,
        "last_seen": last_seen,
    }


def _first_stop(events: list[tuple[Pos, float, Event]]) -> dict[str, Any] | None:
    """The first stop request in stream order before the job finished."""
    for _, ts, e in events:
        if isinstance(e, JobFinished):
            return None
        if isinstance(e, JobStopRequested):
            return {"at": ts, "by": e.by, "reason": e.reason}
    return None


def _liveness(events: list[tuple[Pos, float, Event]]) -> tuple[bool, float | None]:
    """Whether the job is stale after these events, and since when (its last arrival, else
    what the finding saw): a stale finding holds while the job runs and nothing has arrived
    after what the finding saw."""
    alive: float | None = None
    stale, last_seen, finished = False, None, False
    for pos, _, e in events:
        if isinstance(e, JobStale):
            if not finished and not stale and (alive is None or alive <= e.last_seen):
                stale, last_seen = True, (alive if alive is not None else e.last_seen)
        elif not isinstance(e, JobForecast | JobStopRequested | JobArchived | JobRestored):
            arrival = pos[0] / 1000
            alive = arrival if alive is None else max(alive, arrival)
            stale, last_seen = False, None
            finished = finished or isinstance(e, JobFinished)
    return stale, last_seen


def reference_models(views: dict[str, dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    """``GET /api/models`` rows from the reference views."""
    out: dict[str | None, dict[str, Any]] = {}
    for v in views.values():
        row = out.setdefault(v["model_name"], {
            "model_name": v["model_name"], "model_display": v["model_display"],
            "job_count": 0, "archived_count": 0, "best_job_id": None, "best_eval_loss": None,
        })
        row["archived_count" if v["archived"] else "job_count"] += 1
        if v["is_best"]:
            row["best_job_id"], row["best_eval_loss"] = v["id"], v["best_eval_loss"]
    return out
