"""The gateway's reads of the state the worker committed. Views are derived here, purely, from
the stored job states and each model's best run."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from monitor.keys import GROUP, Keys, model_field
from monitor.records import public_state
from monitor.redistools import text
from monitor.rules import job_view, parse_pos

NO_VERSION = "0-0"
# A resume replays the updates a client missed when that is cheaper than a snapshot; else it
# gets a snapshot. Replayed a page at a time, so a gateway holds one page per resuming client.
MAX_REPLAY = 1000
MAX_REPLAY_BYTES = 8 * 1024 * 1024
REPLAY_PAGE = 16
LAG_COUNT_MAX = 100_000  # on Redis 6.2 the lag is counted, up to this (past it: unknown)

# The number of entries of a stream after ARGV[1] (exclusive start) and up to ARGV[5] (an id;
# the end of the stream when absent), or -1 as soon as there are more than ARGV[2] or they
# weigh more than ARGV[3] bytes: read ARGV[4] at a time inside Redis, so neither side ever
# holds more than a page of them.
_COUNT_MISSED = """
local limit, budget, page = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n, bytes, start, stop = 0, 0, ARGV[1], ARGV[5] or '+'
while true do
  local entries = redis.call('XRANGE', KEYS[1], start, stop, 'COUNT', page)
  for _, entry in ipairs(entries) do
    n = n + 1
    local fields = entry[2]
    for i = 2, #fields, 2 do bytes = bytes + #fields[i] end
    if n > limit or bytes > budget then return -1 end
  end
  if #entries < page then return n end
  start = '(' .. entries[#entries][1]
end
"""



def list_key(job: dict[str, Any]) -> tuple[float, str]:
    """A job's place in the list's order: newest ``created_at`` first, ties by the smaller id
    (the order of the ``order`` sets, docs/state.md)."""
    return (-job["created_at"], job["id"])


def model_row_key(row: dict[str, Any]) -> tuple[str, str]:
    """Model rows are listed by clean name (case aside), then exact name."""
    return (row["model_display"].lower(), row["model_name"] or "")


def best_runs(models: dict[bytes, bytes]) -> dict[str, tuple[str, float]]:
    """Model field -> (best job id, its best eval loss), from the ``models`` hash."""
    best = {}
    for field, raw in models.items():
        row = orjson.loads(raw)
        if row["best_job_id"] is not None:
            best[text(field)] = (row["best_job_id"], row["best_eval_loss"])
    return best


def build_views(jobs: list[bytes], models: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The views of stored ``jobs`` (JSON), newest ``created_at`` first."""
    best = best_runs(models)
    views = []
    for raw in jobs:
        public = public_state(raw)
        views.append(job_view(public, best.get(model_field(public["model_name"]))))
    views.sort(key=list_key)
    return views


def kept_check(pipe: Any, stream: str, version: str) -> None:
    """Queue what :func:`is_kept` needs: trimming drops the oldest entries, so every entry
    after ``version`` is still there exactly when ``version`` itself is (or, for "0-0",
    when nothing was ever dropped)."""
    if version == NO_VERSION:
        pipe.xlen(stream)
        pipe.xinfo_stream(stream)
    else:
        pipe.xrange(stream, min=version, max=version)


def is_kept(version: str, *replies: Any) -> bool:
    if version != NO_VERSION:
        return not isinstance(replies[0], ResponseError) and bool(replies[0])
    length, info = replies
    if isinstance(info, ResponseError):
        return True  # no stream yet: nothing was dropped
    added = info.get("entries-added")  # Redis 6.2 does not count: a snapshot is always right
    return added is not None and int(added) == length


_VERSION = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_U64 = 2**64


def valid_version(version: str) -> bool:
    """Is ``version`` a stream entry id Redis would take (``<ms>-<seq>``, each a u64)?"""
    if not _VERSION.fullmatch(version):
        return False
    ms, seq = parse_pos(version)
    return ms < _U64 and seq < _U64


@dataclass(frozen=True)
class Snapshot:
    """Every job view at one version. Built once per version and shared by every client."""

    version: str
    views: list[dict[str, Any]]

    @cached_property
    def message(self) -> str:
        """The ``/ws`` snapshot message."""
        return orjson.dumps({"type": "snapshot", "version": self.version,
                             "jobs": self.views}).decode()

    @cached_property
    def listing(self) -> bytes:
        """``GET /api/jobs``: the jobs that are not archived."""
        return orjson.dumps({"version": self.version,
                             "jobs": [v for v in self.views if not v["archived"]]})

    @cached_property
    def listing_all(self) -> bytes:
        """``GET /api/jobs?include_archived=true``."""
        return orjson.dumps({"version": self.version, "jobs": self.views})


class StateReader:
    """Reads of one gateway process, under ``keys``."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._snapshot: Snapshot | None = None
        self._building = asyncio.Lock()
        self._count_missed = redis.register_script(_COUNT_MISSED)

    async def _version(self) -> str:
        last: Any = await self.redis.xrevrange(self.keys.updates, count=1)
        return text(last[0][0]) if last else NO_VERSION

    async def snapshot(self) -> Snapshot:
        """Every job view and the version they are at, read atomically (no update falls
        between the two). Reused while the version stands: every change of a view is an
        update, so the same version means the same views."""
        async with self._building:  # many clients at once: one build
            cached = self._snapshot
            if cached is not None and cached.version == await self._version():
                return cached
            k = self.keys
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.jobs)
                pipe.hgetall(k.models)
                pipe.xrevrange(k.updates, count=1)
                jobs, models, last = await pipe.execute()
            version = text(last[0][0]) if last else NO_VERSION
            self._snapshot = Snapshot(version, build_views(list(jobs.values()), models))
            return self._snapshot

    async def _with_models(self, raws: list[Any]) -> list[dict[str, Any]]:
        """Views of stored jobs, reading only their models' rows."""
        publics = [public_state(raw) for raw in raws]
        fields = sorted({model_field(p["model_name"]) for p in publics})
        rows: list[Any] = await self.redis.hmget(self.keys.models, fields) if fields else []
        best = best_runs({f.encode(): row for f, row in zip(fields, rows) if row is not None})
        return [job_view(p, best.get(model_field(p["model_name"]))) for p in publics]

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """One job view with its ``config``; None if unknown."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(k.jobs, job_id)
            pipe.hget(k.configs, job_id)
            raw, config = await pipe.execute()
        if raw is None:
            return None
        view = (await self._with_models([raw]))[0]
        view["config"] = orjson.loads(config) if config is not None else None
        return view

    async def views(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        """The views of ``job_ids``, in order; None for an unknown id."""
        raws: list[Any] = await self.redis.hmget(self.keys.jobs, job_ids)
        by_id = {v["id"]: v for v in await self._with_models([r for r in raws if r is not None])}
        return [by_id.get(job_id) for job_id in job_ids]

    async def model_jobs(self, model_name: str | None
                         ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """One model's row and the views of all its jobs, each with its ``config``; None for a
        model no job has."""
        k = self.keys
        field = model_field(model_name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(k.models, field)
            pipe.zrange(k.order(False, model_name), 0, -1)
            pipe.zrange(k.order(True, model_name), 0, -1)
            row, live, archived = await pipe.execute()
        if row is None:
            return None
        ids = sorted(text(m) for m in (*live, *archived))
        if not ids:
            return orjson.loads(row), []
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(k.jobs, ids)
            pipe.hmget(k.configs, ids)
            raws, configs = await pipe.execute()
        best = best_runs({field.encode(): row})
        views = []
        for raw, config in zip(raws, configs):
            if raw is not None:
                view = job_view(public_state(raw), best.get(field))
                view["config"] = orjson.loads(config) if config is not None else None
                views.append(view)
        return orjson.loads(row), views

    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.hexists(self.keys.jobs, job_id))

    async def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """A job's metric points, in training order (step, then epoch; missing counts lower)."""
        raw = await self.redis.lrange(self.keys.metrics(job_id), 0, -1)
        points = [orjson.loads(p) for p in raw]
        points.sort(key=lambda p: (p["step"] is not None, p["step"] or 0,
                                   p["epoch"] is not None, p["epoch"] or 0))
        return points

    async def models(self) -> list[dict[str, Any]]:
        """The model rows, by clean name."""
        rows = [orjson.loads(raw) for raw in (await self.redis.hgetall(self.keys.models)).values()]
        rows.sort(key=model_row_key)
        return rows

    async def missed(self, version: str) -> int | None:
        """How many updates came after ``version``, if a client may be sent them instead of a
        snapshot: all still kept, at most MAX_REPLAY of them and MAX_REPLAY_BYTES in all.
        None otherwise (or when the version is not one of this stream's). Counted inside
        Redis, so a resume from far back costs the gateway no more than a snapshot."""
        if not valid_version(version):
            return None
        async with self.redis.pipeline(transaction=True) as pipe:
            kept_check(pipe, self.keys.updates, version)
            await self._count_missed(keys=[self.keys.updates], client=pipe,
                                     args=[f"({version}", MAX_REPLAY, MAX_REPLAY_BYTES,
                                           REPLAY_PAGE])
            *check, count = await pipe.execute(raise_on_error=False)
        if isinstance(count, Exception):
            raise count
        if not is_kept(version, *check) or count < 0:
            return None
        return int(count)

    async def updates_page(self, after: str) -> list[tuple[str, bytes]] | None:
        """The next REPLAY_PAGE updates after ``after``, or None when some of them may no
        longer be kept (the caller then sends a fresh snapshot)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            kept_check(pipe, self.keys.updates, after)
            pipe.xrange(self.keys.updates, min=f"({after}", max="+", count=REPLAY_PAGE)
            *check, entries = await pipe.execute(raise_on_error=False)
        if not is_kept(after, *check):
            return None
        return [(text(entry_id), fields[b"data"]) for entry_id, fields in entries]

    async def health(self) -> dict[str, Any]:
        """Redis answers; how far behind the worker is: entries not read yet (lag), and read
        but not committed yet (pending: after the applied id, up to the group's last read)."""
        k = self.keys
        try:
            groups = await self.redis.xinfo_groups(k.events)
        except ResponseError:  # no stream yet
            groups = []
        group = next((g for g in groups if text(g["name"]) == GROUP), None)
        if group is None:
            backlog = await self.redis.xlen(k.events)
            return {"status": "ok", "redis": "ok", "worker_lag": backlog, "pending": 0}
        delivered = text(group["last-delivered-id"])
        lag = group.get("lag")
        if lag is None:  # Redis 6.2 (or 7 after an XDEL) does not say: count what is not read
            lag = await self._count_missed(
                keys=[k.events], args=[f"({delivered}", LAG_COUNT_MAX, 2**62, 1000])
        stored = await self.redis.get(k.applied)
        applied = text(stored) if stored is not None else "0-0"
        pending = 0
        if parse_pos(delivered) > parse_pos(applied):
            # (the batch read ahead and the commit in flight; after a worker died or stopped
            # with a batch read ahead, those entries until the next one takes over)
            pending = int(await self._count_missed(
                keys=[k.events], args=[f"({applied}", LAG_COUNT_MAX, 2**62, 1000, delivered]))
            if pending < 0:
                pending = LAG_COUNT_MAX  # counted up to this
        return {"status": "ok", "redis": "ok",
                "worker_lag": None if lag is None or int(lag) < 0 else int(lag),
                "pending": pending}

    async def count_after(self, stream: str, after: str) -> int:
        """Entries of ``stream`` after ``after``, counted up to LAG_COUNT_MAX (-1: more)."""
        return int(await self._count_missed(keys=[stream],
                                            args=[f"({after}", LAG_COUNT_MAX, 2**62, 1000]))

    async def stats_each(self) -> list[dict[str, int]]:
        """Each partition's counters, with those for operators: here the one."""
        return [await self.stats_and_ops()]

    async def stats_and_ops(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.stats)
            pipe.hgetall(self.keys.ops)
            stats, ops = await pipe.execute()
        return {text(name): int(value) for name, value in (*stats.items(), *ops.items())}

    async def stats(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.stats)
        return {text(name): int(value) for name, value in raw.items()}
