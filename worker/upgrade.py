"""What a worker changes in state written by a version before 2026-12-07, when it takes the
lease, before applying anything (docs/state.md, What is stored):

- each job's fold state moves from ``<prefix>folds`` into its value in ``<prefix>jobs``
  (monitor/records.py), and ``<prefix>folds`` goes;
- the ``<prefix>group:<model>`` sets go: a model's jobs are those of its two order sets;
- the liveness index ``<prefix>alive`` goes: the advisor keeps each running job's second
  itself, from the fold states and ``<prefix>heard``.

Every step is written fenced, as a commit is (the lease held, nothing committed past
``applied``), and each is idempotent: ``<prefix>folds`` goes last, so an upgrade cut short is
simply done again by the next holder of the lease."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from monitor.keys import model_field
from monitor.records import record, split
from monitor.redistools import text

if TYPE_CHECKING:
    from worker.lease import Lease
    from worker.resp import Command
    from worker.store import Store

log = logging.getLogger("monitor.worker")

CHUNK = 2000  # jobs per HSCAN round trip and per fenced write
PROGRESS_EVERY = 5.0  # seconds between progress lines


async def upgrade(store: Store, lease: Lease, applied: str) -> None:
    """Merge the fold states into ``<prefix>jobs`` and drop the group sets and the liveness
    index, if a version before 2026-12-07 left them; nothing otherwise (one EXISTS)."""
    keys = store.keys
    if not await store.redis.exists(keys.folds, keys.alive):
        return
    await store.write_fenced(lease, applied, [("DEL", keys.alive)])
    # Each model's set; and the unnamed group's, which also held the jobs handed over to
    # other partitions (older versions left them there) after its row may have gone.
    fields = sorted({model_field(None), *(text(f) for f in await store.redis.hkeys(keys.models))})
    for at in range(0, len(fields), CHUNK):
        await store.write_fenced(lease, applied, [
            ("DEL", *(keys.group(field) for field in fields[at : at + CHUNK]))])
    if not await store.redis.exists(keys.folds):  # no job yet
        log.info("%s and the group sets are gone", keys.alive)
        return
    total = await store.redis.hlen(keys.folds)
    log.info("moving the fold states of %s jobs into %s", f"{total:,}", keys.jobs)
    done, cursor, said = 0, 0, time.monotonic()
    while True:
        reply: Any = await store.redis.hscan(keys.folds, cursor, count=CHUNK)
        cursor, folds = int(reply[0]), reply[1]
        if folds:
            ids = list(folds)
            commands: list[Command] = []
            merged: list[bytes] = []
            publics: list[Any] = await store.redis.hmget(keys.jobs, ids)
            for job_id, raw in zip(ids, publics):
                if raw is not None and split(raw)[1] is None:
                    merged += (job_id, record(raw, folds[job_id]))
            if merged:
                commands.append(("HSET", keys.jobs, *merged))
            commands.append(("HDEL", keys.folds, *ids))
            await store.write_fenced(lease, applied, commands)
            done += len(ids)
        if time.monotonic() - said >= PROGRESS_EVERY:
            log.info("moved %s of %s fold states", f"{done:,}", f"{total:,}")
            said = time.monotonic()
        if cursor == 0 and not await store.redis.exists(keys.folds):
            break
    log.info("moved %s fold states into %s; %s, the group sets and %s are gone",
             f"{done:,}", keys.jobs, keys.folds, keys.alive)
