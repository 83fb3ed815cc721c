"""How the worker stores a job in ``<prefix>jobs`` (docs/state.md, What is stored): its public
state as JSON, then a newline, then its fold state as JSON. Compact JSON never holds a raw
newline, so the first one ends the public part.

One field per job instead of a hash each: a new job costs Redis one hash entry fewer (every
entry of a hash of 100,000 jobs is a dictionary insert it grows and rehashes into), and the
worker reads a job back in one field. Readers of the public state take the part before the
newline (:func:`public_json`); a value without one is a public state alone (as a job written
before the fold state moved in, until its worker merges them: worker.upgrade)."""

from __future__ import annotations

from typing import Any

import orjson

SEPARATOR = b"\n"


def record(public: bytes, fold: bytes) -> bytes:
    """The stored value of a job: ``public`` and ``fold`` state, both JSON."""
    return public + SEPARATOR + fold


def public_json(raw: bytes) -> bytes:
    """The public state (JSON) of a stored value."""
    end = raw.find(SEPARATOR)
    return raw if end < 0 else raw[:end]


def public_state(raw: bytes) -> dict[str, Any]:
    """The public state of a stored value, parsed."""
    state: dict[str, Any] = orjson.loads(public_json(raw))
    return state


def split(raw: bytes) -> tuple[bytes, bytes | None]:
    """The public and fold state (JSON) of a stored value; no fold state: None."""
    public, found, fold = raw.partition(SEPARATOR)
    return public, (fold if found else None)
