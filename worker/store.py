"""The worker's Redis I/O: fenced reads, loading state, one transaction per commit, acks."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from monitor.keys import GROUP, Keys
from monitor.rules import JobState
from worker.batch import Commit, Entry
from worker.lease import Lease

# Read from the consumer group only while holding the lease, atomically: a worker that lost
# its lease can never take entries out from under the one that holds it now.
_FENCED_READ = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4],
                  'STREAMS', KEYS[2], ARGV[5])
"""


# Forget consumers that hold nothing, only while holding the lease and atomically with the
# check: a consumer emptied here cannot be reading at the same moment.
_DROP_IDLE_CONSUMERS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local dropped = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[2], ARGV[2])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[3] and info['pending'] == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[2], ARGV[2], info['name'])
    dropped = dropped + 1
  end
end
return dropped
"""
LOAD_CHUNK = 2000  # jobs per read while loading, so the lease renews between chunks


class LeaseLost(Exception):
    """Another worker holds the lease, or committed since we last read: stop and re-check."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """Reads and writes of one worker process, under ``keys``."""

    def __init__(self, redis: Redis, keys: Keys, consumer: str) -> None:
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self._read = redis.register_script(_FENCED_READ)
        self._drop_idle = redis.register_script(_DROP_IDLE_CONSUMERS)

    async def ensure_group(self) -> None:
        """Create the stream and the consumer group (from the start) if missing."""
        try:
            await self.redis.xgroup_create(self.keys.events, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read(self, token: str, after: str, count: int) -> list[Entry]:
        """Entries after ``after`` ('>' for new ones, an id for our pending ones)."""
        reply = await self._read(keys=[self.keys.lease, self.keys.events],
                                 args=[token, GROUP, self.consumer, count, after])
        if reply == -1:
            raise LeaseLost("lease is held by another worker")
        if not reply:
            return []
        entries = reply[0][1]
        out: list[Entry] = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2])) if flat else None
            out.append((_text(entry_id), fields))
        return out

    async def wait(self, after: str, block_ms: int) -> str | None:
        """Block until an entry newer than ``after`` exists; its id, or None on time-out."""
        reply: Any = await self.redis.xread({self.keys.events: after}, count=1, block=block_ms)
        if not reply:
            return None
        return _text(reply[0][1][-1][0])

    async def adopt_pending(self, token: str) -> None:
        """Claim every entry other consumers read but did not acknowledge, then forget the
        consumers left with nothing (one is left behind by every worker that ever ran)."""
        cursor = "0-0"
        while True:
            reply = await self.redis.xautoclaim(self.keys.events, GROUP, self.consumer,
                                                min_idle_time=0, start_id=cursor, count=1000)
            cursor = _text(reply[0])
            if cursor == "0-0":
                break
        dropped = await self._drop_idle(keys=[self.keys.lease, self.keys.events],
                                        args=[token, GROUP, self.consumer])
        if dropped == -1:
            raise LeaseLost("lease lost while adopting pending entries")

    async def applied(self) -> str:
        """The id of the last entry whose effects are committed ("0-0" before the first)."""
        value = await self.redis.get(self.keys.applied)
        return _text(value) if value is not None else "0-0"

    async def load_jobs(self, job_ids: list[str]) -> dict[str, JobState]:
        """The stored jobs among ``job_ids`` (missing ones are left out)."""
        out = {}
        for start in range(0, len(job_ids), LOAD_CHUNK):
            chunk = job_ids[start : start + LOAD_CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(self.keys.jobs, chunk)
                pipe.hmget(self.keys.folds, chunk)
                publics, privates = await pipe.execute()
            for job_id, public, private in zip(chunk, publics, privates):
                if public is not None and private is not None:
                    out[job_id] = JobState.restore(orjson.loads(public), orjson.loads(private))
        return out

    async def group_members(self, models: list[str | None]) -> dict[str | None, set[str]]:
        """The job ids of each model group."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.smembers(self.keys.group(model))
            replies = await pipe.execute()
        return {model: {_text(m) for m in members} for model, members in zip(models, replies)}

    async def histories(self, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The stored metric points of each job."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.lrange(self.keys.metrics(job_id), 0, -1)
            replies = await pipe.execute()
        return {job_id: [orjson.loads(p) for p in points]
                for job_id, points in zip(job_ids, replies)}

    async def commit(self, commit: Commit, lease: Lease, expected: str, *,
                     updates_keep: int, dead_keep: int) -> str | None:
        """Write ``commit`` in one transaction, if nobody else committed since ``expected``;
        returns the update's version (entry id) if any.

        The applied id is the guard: a commit must start where the last one ended, so two
        workers can never both apply the same entries, whatever their leases say. (The lease
        only keeps a standby from doing work that would be thrown away.)
        """
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(k.applied)
                holder, applied = await pipe.mget(k.lease, k.applied)
                if not lease.held or holder is None or _text(holder) != lease.token:
                    raise LeaseLost("lease expired or taken over before commit")
                if (_text(applied) if applied is not None else "0-0") != expected:
                    raise LeaseLost(f"another worker committed past {expected}")
                pipe.multi()  # type: ignore[no-untyped-call]
                _queue_writes(pipe, k, commit, updates_keep=updates_keep, dead_keep=dead_keep)
                replies = await pipe.execute()
            except WatchError:
                raise LeaseLost("lease or applied id changed during commit") from None
        if commit.update is None:
            return None
        return _text(replies[-1])  # the updates XADD is queued last

    async def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self.redis.xack(self.keys.events, GROUP, *entry_ids)

    async def trim(self, applied: str) -> None:
        """Drop applied entries from the events stream (never one that is not applied)."""
        await self.redis.xtrim(self.keys.events, minid=applied, approximate=True)


def _queue_writes(pipe: Any, k: Keys, c: Commit, *, updates_keep: int, dead_keep: int) -> None:
    """Queue the commands of one commit, the XADD to ``<prefix>updates`` last."""
    if c.jobs:
        pipe.hset(k.jobs, mapping=c.jobs)
        pipe.hset(k.folds, mapping=c.folds)
    if c.configs:
        pipe.hset(k.configs, mapping=c.configs)
    if c.models:
        pipe.hset(k.models, mapping=c.models)
    if c.models_gone:
        pipe.hdel(k.models, *c.models_gone)
    for key, ids in c.group_remove.items():
        pipe.srem(key, *ids)
    for key, ids in c.group_add.items():
        pipe.sadd(key, *ids)
    for key, points in c.replace.items():
        pipe.delete(key)
        pipe.rpush(key, *points)
    for key, points in c.append.items():
        pipe.rpush(key, *points)
    for dead in c.dead:
        pipe.xadd(k.dead, dead, maxlen=dead_keep, approximate=True)
    for name, n in c.counts.items():
        if n:
            pipe.hincrby(k.stats, name, n)
    pipe.set(k.applied, c.applied)
    if c.update is not None:  # last, so its index is known
        pipe.xadd(k.updates, {"data": c.update}, maxlen=updates_keep, approximate=True)
