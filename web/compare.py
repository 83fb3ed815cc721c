"""The comparison of 2 to 5 runs (docs/rest.md, Comparison): table rows, recommendation, CSV.

Pure. Each table row carries a machine ``key`` (what the page keys behaviour on) and a display
``label`` (what people and the CSV read).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from monitor.insights import significance
from monitor.rules import delta_pct, shown, tier

MIN_IDS, MAX_IDS = 2, 5


def _epoch_text(view: dict[str, Any], epoch: float | None = None) -> str | None:
    """``"5/12"``: an epoch (the best checkpoint's, unless given) out of the run's epochs."""
    epoch = view["best_epoch"] if epoch is None else epoch
    if epoch is None:
        return None
    text = str(int(epoch)) if float(epoch).is_integer() else f"{epoch:.2f}".rstrip("0")
    return f"{text}/{view['total_epochs']}" if view["total_epochs"] is not None else text


def _progress_text(view: dict[str, Any]) -> str | None:
    """Where a run is, from its latest observation: ``"epoch 4/5, step 400"``."""
    parts = []
    if view["epoch"] is not None:
        parts.append(f"epoch {_epoch_text(view, view['epoch'])}")
    if view["step"] is not None:
        parts.append(f"step {view['step']}")
    return ", ".join(parts) or None


def selection_best(views: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The lowest best eval loss among the selection (archived too); a tie goes to the older
    run, then to the smaller id, as for the best run of a model."""
    scored = [v for v in views if v["best_eval_loss"] is not None]
    if not scored:
        return None
    return min(scored, key=lambda v: (v["best_eval_loss"], v["created_at"], v["id"]))


UNKNOWN = {"verdict": "unknown", "p_value": None, "method": None}


def _significance(view: dict[str, Any], best: dict[str, Any] | None,
                  model_views: list[dict[str, Any]]) -> dict[str, Any]:
    """Is ``view`` worse than the selection's best by more than seed noise? Measured against
    the best run's model only: runs of other models (or without a loss) are ``unknown``."""
    if (best is None or view["best_eval_loss"] is None
            or view["model_name"] != best["model_name"]):
        return {"job_id": view["id"], **UNKNOWN}
    return significance(view, best, model_views)


def build_comparison(views: list[dict[str, Any]],
                     model_views: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The comparison of ``views``, in the order the user asked for them. ``model_views``: the
    jobs (with configs) of the best run's model, whose replicates measure seed noise."""
    best = selection_best(views)
    best_value = best["best_eval_loss"] if best else None
    deltas = [
        delta_pct(v["best_eval_loss"], best_value)
        if best_value is not None and v is not best and v["best_eval_loss"] is not None
        else None
        for v in views
    ]
    tiers = [tier(d) for d in deltas]

    def row(key: str, label: str, values: list[Any], best_cell: Any = None) -> dict[str, Any]:
        return {"key": key, "label": label, "values": values, "best": best_cell}

    rows = [
        row("model", "Model", [v["model_display"] for v in views]),
        row("job_id", "Job ID", [v["id"] for v in views]),
        row("status", "Status", [v["status"] for v in views]),
        {**row("best_eval_loss", "Best Eval Loss", [v["best_eval_loss"] for v in views],
               best_value),
         "deltas": deltas, "tiers": tiers},
        row("final_loss", "Final Training Loss",
            [v["final_loss"] if v["final_loss"] is not None else v["loss"] for v in views]),
        row("final_eval_loss", "Final Eval Loss",
            [v["final_eval_loss"] if v["final_eval_loss"] is not None else v["eval_loss"]
             for v in views]),
        row("best_checkpoint_epoch", "Best Checkpoint Epoch", [_epoch_text(v) for v in views],
            _epoch_text(best) if best else None),
        row("checkpoint_path", "Checkpoint Path", [v["best_checkpoint_path"] for v in views],
            best["best_checkpoint_path"] if best else None),
        row("progress", "Progress", [_progress_text(v) for v in views]),
    ]
    verdicts = [_significance(v, best, model_views or []) for v in views if v is not best]
    others = [
        {"job_id": v["id"], "run_number": i + 1, "delta_pct": deltas[i], "tier": tiers[i],
         "consider_archiving": tiers[i] == "red",
         "verdict": next(s["verdict"] for s in verdicts if s["job_id"] == v["id"])}
        for i, v in enumerate(views) if v is not best
    ]
    recommendation = {
        "best_job_id": best["id"] if best else None,
        "run_number": views.index(best) + 1 if best else None,
        "model_display": best["model_display"] if best else None,
        "best_eval_loss": best_value,
        "best_epoch": best["best_epoch"] if best else None,
        "total_epochs": best["total_epochs"] if best else None,
        "checkpoint_path": best["best_checkpoint_path"] if best else None,
        "others": others,
    }
    return {"jobs": views, "best_job_id": best["id"] if best else None, "rows": rows,
            "recommendation": recommendation, "significance": verdicts}


def _cell(value: Any) -> str:
    """A table value as CSV text (see :func:`guard`)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


FORMULA = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def guard(text: str) -> str:
    """A cell a spreadsheet would run as a formula (``=cmd|...``, ``-9-9``, ``+150% worse``)
    gets a leading apostrophe; plain numbers (``-0.1234``, ``+15.2``) stay numbers."""
    if text[:1] in FORMULA and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def to_csv(comparison: dict[str, Any]) -> str:
    """The comparison table as CSV: one row per metric, one column per run, then the best.
    Every cell goes through :func:`guard`, whoever wrote it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    def row(*cells: str) -> None:
        writer.writerow([guard(cell) for cell in cells])

    count = len(comparison["jobs"])
    row("Metric", *(f"Run #{i + 1}" for i in range(count)), "Best Value")
    for table_row in comparison["rows"]:
        row(table_row["label"], *(_cell(v) for v in table_row["values"]),
            _cell(table_row["best"]))
        if "deltas" in table_row:
            row("Delta vs Best (%)",
                *("" if d is None else f"+{shown(d)}" for d in table_row["deltas"]), "")
    recommendation = comparison["recommendation"]
    if recommendation["best_job_id"] is not None:
        row()
        row("Recommendation", f"Run #{recommendation['run_number']}",
            _cell(recommendation["best_job_id"]), _cell(recommendation["checkpoint_path"]))
        for other in recommendation["others"]:
            if other["consider_archiving"]:
                row("Consider archiving", f"Run #{other['run_number']}", other["job_id"],
                    f"{shown(other['delta_pct'])}% worse")  # as the page's badge says
    return out.getvalue()
