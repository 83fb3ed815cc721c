"""The worker's Redis I/O: fenced reads, loading state, one atomic transaction per commit.

Reads and commits are fenced with WATCH: the worker watches the lease (and for a commit the
applied id), checks that it holds the lease (and that nobody committed since it read), then
sends the command in MULTI/EXEC, which Redis refuses to run if a watched key changed
meanwhile. So a worker that lost its lease can never take entries out from under the one
that holds it now, nor commit over it. (Lua scripts did this before; a commit's thousands
of arguments passing through Lua cost Redis more than the writes themselves.) The
transaction is sent and read by :mod:`worker.fenced`, not redis-py's pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from monitor.keys import GROUP, Keys
from monitor.partitions import Partitioning, parse_route, route_value
from monitor.records import public_state
from monitor.redistools import node_client, text
from monitor.rules import JobState, RankKey, stored_rank
from worker.batch import Commit, Entry, entries_read
from worker.fenced import fenced
from worker.hot import restored
from worker.lease import Lease
from worker.resp import Command
from worker.writes import writes

# After taking the lease: point the consumer group back at the applied id, so that the
# entries read after it (by a worker that died, or by this one before a failed commit) are
# delivered again, and forget every consumer (entries are read with NOACK, so a consumer holds
# nothing; the pending entries left by a version that acknowledged go with theirs). Returns
# the group's last entry read before.
# - Only while holding the lease, and atomically with the check: no other worker reads at the
#   same moment. The lease is written again (same token, same time to live), so that a read
#   this process sent before, WATCHing the lease, can no longer run after the rewind.
# - A missing stream is NOGROUP, as XREADGROUP says it: the worker creates the group again.
# - Redis 7 counts the entries a group has read, and its lag comes from that count: SETID is
#   told the count at the applied id (what it was, less the entries after it read since),
#   unless an entry there was deleted (then Redis would not know either).
_REWIND = """
local function pos(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(a, b)
  local ams, aseq = pos(a)
  local bms, bseq = pos(b)
  return ams > bms or (ams == bms and aseq > bseq)
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NOGROUP the events stream is gone')
end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
local applied, delivered, read = ARGV[3], ARGV[3], false
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  if info['name'] == ARGV[2] then
    delivered, read = info['last-delivered-id'], info['entries-read']
  end
end
local setid = {'XGROUP', 'SETID', KEYS[2], ARGV[2], applied}
if type(read) == 'number' and not after(applied, delivered) then
  local stream = redis.call('XINFO', 'STREAM', KEYS[2])
  local deleted = '0-0'
  for i = 1, #stream, 2 do
    if stream[i] == 'max-deleted-entry-id' then deleted = stream[i + 1] end
  end
  if not after(deleted, applied) then
    local since, start = 0, '(' .. applied
    while true do
      local entries = redis.call('XRANGE', KEYS[2], start, delivered, 'COUNT', 1000)
      since = since + #entries
      if #entries < 1000 then break end
      start = '(' .. entries[#entries][1]
    end
    if read >= since then
      table.insert(setid, 'ENTRIESREAD')
      table.insert(setid, read - since)
    end
  end
end
redis.call(unpack(setid))
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[2], ARGV[2])) do
  for i = 1, #consumer, 2 do
    if consumer[i] == 'name' then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[2], ARGV[2], consumer[i + 1])
    end
  end
end
return delivered
"""
LOAD_CHUNK = 2000  # jobs per read while loading, so the lease renews between chunks
RANK_READ = 20_000  # jobs per round trip while reading what groups rank (~10 MB of states)
WATCH_TRIES = 5  # a renewal of our own lease between WATCH and EXEC aborts it: try again


class LeaseLost(Exception):
    """Another worker holds the lease, or committed since we last read: stop and re-check."""



class Store:
    """Reads and writes of one worker process, under ``keys``."""

    def __init__(self, redis: Redis, keys: Keys, consumer: str,
                 part: Partitioning | None = None, index: int = 0) -> None:
        self.redis = redis
        self.keys = keys
        self.part = part or Partitioning(keys.prefix)
        self.index = index
        self._nodes: dict[str, Redis] = {}  # on a cluster: a plain client per node
        self.consumer = consumer
        self._rewind = redis.register_script(_REWIND)

    async def ensure_group(self) -> None:
        """Create the stream and the consumer group (from the start) if missing."""
        try:
            await self.redis.xgroup_create(self.keys.events, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read(self, token: str, count: int) -> list[Entry]:
        """The next ``count`` entries the consumer group has not delivered yet.

        Read with NOACK: the group keeps no pending entry list. What is applied is the
        applied id's business alone (committed with each batch), and after taking the lease
        :meth:`rewind` delivers again whatever was read after it. (A pending entry list cost
        Redis 1.1-1.5 µs per event to build, and 0.45-0.55 µs more for the XACK that emptied
        it: 15-30% of Redis's work per event, for a record the applied id already keeps.)"""
        k = self.keys

        def ours(values: list[Any]) -> None:
            if text(values[0] or b"") != token:
                raise LeaseLost("lease is held by another worker")

        node = await node_client(self.redis, k.lease, self._nodes)
        command = ("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count, "NOACK",
                   "STREAMS", k.events, ">")
        for _ in range(WATCH_TRIES):
            try:
                (reply,) = await fenced(node, (k.lease,), ours, [command])
                break
            except WatchError:
                continue  # a renewal of ours touched the lease: look again
        else:
            raise LeaseLost("the lease kept changing while reading")
        if isinstance(reply, Exception):
            raise reply
        if not reply:
            return []
        # {stream: entries} (RESP3) or [[stream, entries]] (RESP2), where each entry is
        # [id, [field, value, ...]], or [id, None] once deleted from the stream
        ((_, entries),) = reply.items() if isinstance(reply, dict) else reply
        return entries_read(entries)

    async def wait(self, after: str, block_ms: int) -> str | None:
        """Block until an entry newer than ``after`` exists; its id, or None on time-out."""
        # At least 1 ms: BLOCK 0 would wait forever (a --block under a millisecond rounds to 0).
        reply: Any = await self.redis.xread({self.keys.events: after}, count=1,
                                            block=max(1, block_ms))
        if not reply:
            return None
        return text(reply[0][1][-1][0])

    async def rewind(self, token: str, applied: str) -> str:
        """After taking the lease: deliver again every entry after ``applied`` (the committed
        id), and delete every consumer (XREADGROUP makes ours again). Returns the last entry
        read before (so the entries after ``applied`` up to it were read and not committed)."""
        delivered = await self._rewind(keys=[self.keys.lease, self.keys.events],
                                       args=[token, GROUP, applied])
        if delivered == -1:
            raise LeaseLost("lease lost while rewinding the consumer group")
        return text(delivered)

    async def applied(self) -> str:
        """The id of the last entry whose effects are committed ("0-0" before the first)."""
        value = await self.redis.get(self.keys.applied)
        return text(value) if value is not None else "0-0"

    async def _job_values(self, job_ids: list[str], per_trip: int = LOAD_CHUNK
                          ) -> AsyncIterator[tuple[list[str], list[bytes | None]]]:
        """``job_ids`` a chunk at a time, with their values in ``<prefix>jobs`` (None: not
        stored): at most :data:`LOAD_CHUNK` fields per HMGET and ``per_trip`` jobs per round
        trip (the lease renews between round trips)."""
        for start in range(0, len(job_ids), per_trip):
            trip = job_ids[start : start + per_trip]
            async with self.redis.pipeline(transaction=False) as pipe:
                for at in range(0, len(trip), LOAD_CHUNK):
                    pipe.hmget(self.keys.jobs, trip[at : at + LOAD_CHUNK])
                replies = await pipe.execute()
            for at, values in zip(range(0, len(trip), LOAD_CHUNK), replies, strict=True):
                yield trip[at : at + LOAD_CHUNK], values

    async def load_jobs(self, job_ids: list[str]) -> dict[str, JobState]:
        """The stored jobs among ``job_ids`` (missing ones are left out)."""
        out = {}
        async for chunk, values in self._job_values(job_ids):
            out.update(restored(chunk, values))
        return out

    async def group_members(self, models: list[str | None]) -> dict[str | None, set[str]]:
        """The job ids of each model group: its two order sets (archived or not)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zrange(self.keys.order(False, model), 0, -1)
                pipe.zrange(self.keys.order(True, model), 0, -1)
            replies = await pipe.execute()
        return {model: {text(m) for m in (*replies[2 * i], *replies[2 * i + 1])}
                for i, model in enumerate(models)}

    async def rankings(self, models: list[str | None]
                       ) -> dict[str | None, list[tuple[str, bool, RankKey | None]]]:
        """What each model group needs of its stored jobs (see :func:`stored_rank`), read
        from their public states a round trip of :data:`RANK_READ` at a time; the states
        are not kept."""
        members = await self.group_members(models)
        out: dict[str | None, list[tuple[str, bool, RankKey | None]]] = {m: [] for m in models}
        model_of = {job_id: model for model in models for job_id in members[model]}
        async for chunk, values in self._job_values(list(model_of), RANK_READ):
            for job_id, raw in zip(chunk, values, strict=True):
                if raw is not None:
                    out[model_of[job_id]].append((job_id,
                                                  *stored_rank(job_id, public_state(raw))))
        return out

    async def publics(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored public states of these jobs (missing ones are left out)."""
        return {job_id: public_state(raw) async for chunk, values in self._job_values(job_ids)
                for job_id, raw in zip(chunk, values, strict=True) if raw is not None}

    async def stored_ids(self, lookups: dict[str, list[str]]) -> dict[str, set[str]]:
        """Which of these event ids each job's stored set holds."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, event_ids in lookups.items():
                pipe.smismember(self.keys.seen(job_id), event_ids)
            replies = await pipe.execute()
        return {job_id: {i for i, there in zip(event_ids, reply) if there}
                for (job_id, event_ids), reply in zip(lookups.items(), replies)}

    async def histories(self, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The stored metric points of each job."""
        return await histories(self.redis, self.keys, job_ids)

    async def commit(self, commit: Commit, lease: Lease, expected: str, *,
                     updates_keep: int, dead_keep: int, sent: asyncio.Event | None = None
                     ) -> str | None:
        """Write ``commit`` atomically, if we hold the lease and nobody else committed since
        ``expected``; returns the update's version (entry id) if any. ``sent`` is set once
        the transaction is written to Redis's socket.

        The applied id is the guard: a commit must start where the last one ended, so two
        workers can never both apply the same entries, whatever their leases say. (The lease
        only keeps a standby from doing work that would be thrown away.) The events stream is
        trimmed up to the new applied id in the same step.
        """
        if not lease.held:
            raise LeaseLost("lease expired before commit")
        if commit.outgoing:  # before the commit: forwarded at least once (worker.moves)
            await self.send_out(commit.outgoing)
        reply = await self._transaction(commit, lease, expected, updates_keep=updates_keep,
                                        dead_keep=dead_keep, sent=sent)
        await self._finalise(commit)
        return reply

    async def _finalise(self, commit: Commit) -> None:
        finalise = dict(commit.finalise)
        if commit.named and self.part.split and self.index == self.part.unnamed:
            # Provisional routes point here: the jobs that named a model of this partition
            # stay, for good.
            finalise.update(dict.fromkeys(commit.named, self.index))
        await self.finalise_routes(finalise)

    async def _transaction(self, commit: Commit, lease: Lease, expected: str, *,
                           updates_keep: int, dead_keep: int,
                           sent: asyncio.Event | None = None) -> str | None:
        """The commit in one MULTI/EXEC, fenced by WATCH on the lease and the applied id.
        As with MULTI/EXEC always, a failing command does not stop the others, so the
        applied id still moves with what was written and nothing is applied twice; the first
        error is raised after."""
        k = self.keys
        commands = writes(k, commit, updates_keep=updates_keep, dead_keep=dead_keep)
        update_at = len(commands) - 1  # the XADD to updates, when there is one, is last
        commands.append(("XTRIM", k.events, "MINID", "~", commit.applied))
        replies = await self.write_fenced(lease, expected, commands, sent)
        return text(replies[update_at]) if commit.update is not None else None

    async def write_fenced(self, lease: Lease, expected: str, commands: list[Command],
                           sent: asyncio.Event | None = None) -> list[Any]:
        """Run ``commands`` in one MULTI/EXEC if we hold the lease and the applied id is
        still ``expected`` (WATCHed, so neither can change before EXEC); their replies. An
        error reply of one of them is raised once all ran. ``sent``: see :func:`fenced`."""
        k = self.keys

        def fence(values: list[Any]) -> None:
            token, applied = values
            if token is None or text(token) != lease.token:
                raise LeaseLost("lease expired or taken over before commit")
            if (text(applied) if applied is not None else "0-0") != expected:
                raise LeaseLost(f"another worker committed past {expected}")

        node = await node_client(self.redis, k.lease, self._nodes)
        for _ in range(WATCH_TRIES):
            try:
                replies = await fenced(node, (k.lease, k.applied), fence, commands, sent)
            except WatchError:
                continue  # a lease renewal touched it: look again
            for command, reply in zip(commands, replies):
                if isinstance(reply, Exception):
                    reply.add_note(f"(the commit's {command[0]!r} on {command[1]!r})")
                    raise reply
            return replies
        raise LeaseLost("the lease or the applied id kept changing during the commit")

    async def scan_jobs(self, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """One HSCAN step over ``<prefix>jobs``: the next cursor (0 at the end) and the
        stored job states it gave (a job may come twice; none is missed)."""
        reply: Any = await self.redis.hscan(self.keys.jobs, cursor, count=count)
        after, found = reply
        return int(after), list(found.values())

    async def send_out(self, outgoing: list[tuple[int, dict[str, bytes]]]) -> None:
        """Append entries to other partitions' streams, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, fields in outgoing:
                pipe.xadd(self.part.keys(partition).events, fields)  # type: ignore[arg-type]
            await pipe.execute()

    async def partition_state(self) -> tuple[dict[str, str], dict[str, int]]:
        """The positions applied per source, and the jobs that moved away (worker.moves)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.marks)
            pipe.hgetall(self.keys.moved)
            marks, moved = await pipe.execute()
        return ({text(s): text(v) for s, v in marks.items()},
                {text(j): int(v) for j, v in moved.items()})

    async def routes(self, job_ids: list[str]) -> dict[str, tuple[int, bool] | None]:
        if not job_ids:
            return {}
        values = await self.redis.hmget(self.part.routes, job_ids)
        return {job_id: parse_route(v) if v is not None else None
                for job_id, v in zip(job_ids, values)}

    async def finalise_routes(self, routes: dict[str, int]) -> None:
        """Make routes final (only a partition's worker changes a route once claimed)."""
        if routes:
            await self.redis.hset(self.part.routes,
                                  mapping={j: route_value(p, False) for j, p in routes.items()})

    async def job_extras(self, job_id: str) -> tuple[Any, list[dict[str, Any]], list[str]]:
        """A job's config, metric history and stored event ids (for a handoff)."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(k.configs, job_id)
            pipe.lrange(k.metrics(job_id), 0, -1)
            pipe.smembers(k.seen(job_id))
            config, points, seen = await pipe.execute()
        return (orjson.loads(config) if config is not None else None,
                [orjson.loads(p) for p in points], sorted(text(i) for i in seen))

    async def close(self) -> None:
        """Close the clients of cluster nodes (the main client is the caller's)."""
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()

    async def trim_updates(self, oldest: str) -> None:
        """Drop the updates older than ``oldest`` (an entry id) from ``<prefix>updates``."""
        await self.redis.xtrim(self.keys.updates, minid=oldest, approximate=True)


async def histories(redis: Redis, keys: Keys, job_ids: list[str]
                    ) -> dict[str, list[dict[str, Any]]]:
    """The stored metric points of each job, in arrival order, in one round trip."""
    if not job_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.lrange(keys.metrics(job_id), 0, -1)
        replies = await pipe.execute()
    return {job_id: [orjson.loads(p) for p in points] for job_id, points in zip(job_ids, replies)}
