"""The metric history of a job (docs/state.md, Metric history): the first points exactly, then
downsampled, never unbounded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EXACT = 1000  # the first points, kept exactly
LIMIT = 2000  # past this length the part after the first EXACT points is halved


def thin(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Halve the points after the first :data:`EXACT`, keeping the last and the best one.

    The best point is the first with the lowest ``eval_loss`` in the list, so the result
    depends on the points alone and not on how they were batched.
    """
    evals = [(p["eval_loss"], i) for i, p in enumerate(points) if p.get("eval_loss") is not None]
    best = min(evals)[1] if evals else -1
    last = len(points) - 1
    return points[:EXACT] + [
        p for i, p in enumerate(points[EXACT:], EXACT)
        if (i - EXACT) % 2 == 0 or i == last or i == best
    ]


def extend(points: list[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append ``new`` one point at a time, thinning whenever the history passes :data:`LIMIT`."""
    out = list(points)
    for point in new:
        out.append(point)
        if len(out) > LIMIT:
            out = thin(out)
    return out


def needs_rewrite(length: int, added: int) -> bool:
    """Will appending ``added`` points to a history of ``length`` thin it?"""
    return length + added > LIMIT
