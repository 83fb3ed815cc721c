"""The commands of one commit (worker.batch's ``Commit``), in the order they run in its
MULTI/EXEC; worker.store sends them. Compiled with the pure core (monitor/compiled.py): a
commit has several arguments per event."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

import orjson

from monitor.keys import Keys
from worker.batch import Commit
from worker.resp import Command


def writes(k: Keys, c: Commit, *, updates_keep: int, dead_keep: int) -> list[Command]:
    """The commands of one commit, the XADD to ``<prefix>updates`` last."""
    out: list[Command] = []
    if c.jobs:
        out.append(("HSET", k.jobs, *_pairs(c.jobs)))
    if c.configs:
        out.append(("HSET", k.configs, *_pairs(c.configs)))
    if c.models:
        out.append(("HSET", k.models, *_pairs(c.models)))
    if c.models_gone:
        out.append(("HDEL", k.models, *c.models_gone))
    for key, ids in c.order_remove.items():
        out.append(("ZREM", key, *ids))
    for key, scored in c.order_add.items():
        out.append(("ZADD", key, *scored))
    for key, points in c.replace.items():
        out.append(("DEL", key))
        if points:
            out.append(("RPUSH", key, *points))
    for key, points in c.append.items():
        out.append(("RPUSH", key, *points))
    for key, event_ids in c.seen_add.items():
        out.append(("SADD", key, *event_ids))
    if c.alive or c.removed:  # the advisor's liveness (0: gone to another partition)
        heard = c.alive | dict.fromkeys(c.removed, 0) if c.removed else c.alive
        out.append(("XADD", k.heard, "MAXLEN", "~", updates_keep, "*", "jobs",
                    orjson.dumps(heard)))
    if c.stops:
        out.append(("HSET", k.stops, *_pairs(c.stops)))
    if c.gone:
        out.append(("HDEL", k.stops, *c.gone))
    for dead in c.dead:
        out.append(("XADD", k.dead, "MAXLEN", "~", dead_keep, "*", *_pairs(dead)))
    for name, n in c.counts.items():
        if n:
            out.append(("HINCRBY", k.stats, name, n))
    for name, n in c.observed.items():
        out.append(("HINCRBY", k.ops, name, n))
    if c.removed:  # moved to another partition (worker.moves)
        out.append(("HDEL", k.jobs, *c.removed))
        out.append(("HDEL", k.configs, *c.removed))
        out.append(("HDEL", k.stops, *c.removed))
        out.append(("DEL", *(k.metrics(job_id) for job_id in c.removed)))
        out.append(("DEL", *(k.seen(job_id) for job_id in c.removed)))
    if c.moved_out:
        out.append(("HSET", k.moved, *_pairs(c.moved_out)))
    if c.marks:
        out.append(("HSET", k.marks, *_pairs(c.marks)))
    out.append(("SET", k.applied, c.applied))
    if c.update is not None:  # last of the writes
        out.append(("XADD", k.updates, "MAXLEN", "~", updates_keep, "*", "data", c.update))
    return out


def _pairs(mapping: Mapping[Any, Any]) -> list[Any]:
    """``{a: 1, b: 2}`` -> ``[a, 1, b, 2]``: a mapping as a command's arguments."""
    return list(chain.from_iterable(mapping.items()))
