"""Windows of the job list, read from the ``order`` sets without holding every job
(docs/websocket.md, Windows; docs/rest.md, Pages of jobs).

The list's order is newest ``created_at`` first, ties by the smaller id: the order of the
``order`` sorted sets (score ``-created_at``, then member). A page is read per partition by
one script, atomically with the version it is at, and the partitions' pages are merged.
Filters that no set answers (``status``, ``q``) are applied to the jobs read, in chunks, up to
a budget per page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from monitor.keys import EVERYONE, Everyone, model_field
from monitor.partitions import Partitioning
from monitor.records import public_state
from monitor.redistools import text
from monitor.rules import job_view
from web.partitioned import merge_model_rows
from web.state import NO_VERSION, StateReader, best_runs, list_key

MAX_LIMIT = 500  # jobs in one window reply (REST pages: MAX_PAGE)
MAX_PAGE = 1000
DEFAULT_PAGE = 100
SCAN_BUDGET = 20_000  # jobs read per reply when a filter is not answered by a set
CHUNK = 1000  # jobs read per round trip while filtering
MAX_Q = 256
STATUSES = ("running", "completed", "failed", "stopped")

Key = tuple[float, str]  # a place in the order: (-created_at, id)

# KEYS: jobs, updates, then the sorted sets to read. ARGV: after-score ('' from the top),
# after-id, count. Returns the updates stream's last id, then per set: its size, whether it
# has more after what is returned, and the entries as id, score, stored job (or false).
# Where the cursor's job is no longer in a set, the place after it is found by binary search
# among the entries of its score, comparing ids byte by byte (Redis's order; Lua's own string
# comparison follows the server's locale).
_PAGE = """
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local count = tonumber(ARGV[3])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = {last[1] and last[1][1] or '0-0'}
for k = 3, #KEYS do
  local key = KEYS[k]
  local start = 0
  if ARGV[1] ~= '' then
    local own = redis.call('ZSCORE', key, ARGV[2])
    if own and tonumber(own) == tonumber(ARGV[1]) then
      start = redis.call('ZRANK', key, ARGV[2]) + 1
    else
      local lo = redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[1])
      local hi = lo + redis.call('ZCOUNT', key, ARGV[1], ARGV[1])
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if before(ARGV[2], redis.call('ZRANGE', key, mid, mid)[1]) then
          hi = mid
        else
          lo = mid + 1
        end
      end
      start = lo
    end
  end
  local size = redis.call('ZCARD', key)
  local got = redis.call('ZRANGE', key, start, start + count - 1, 'WITHSCORES')
  local ids = {}
  for i = 1, #got, 2 do ids[#ids + 1] = got[i] end
  local stored = {}
  for i = 1, #ids, 500 do  -- unpack has a limit: HMGET a part at a time
    local part = redis.call('HMGET', KEYS[1], unpack(ids, i, math.min(i + 499, #ids)))
    for j = 1, #part do stored[#stored + 1] = part[j] end
  end
  local entries = {}
  for i = 1, #ids do
    entries[#entries + 1] = ids[i]
    entries[#entries + 1] = got[2 * i]
    entries[#entries + 1] = stored[i]
  end
  out[#out + 1] = size
  out[#out + 1] = (start + #ids < size) and 1 or 0
  out[#out + 1] = entries
end
return out
"""


class BadWindow(ValueError):
    """A window or page asked with a bad field; the message says which and why."""


@dataclass(frozen=True)
class Filters:
    """What a window selects (docs/websocket.md, Windows)."""

    archived: bool = False  # include archived jobs
    model: str | None | Everyone = EVERYONE  # None: the jobs that never named a model
    status: str | None = None
    q: str = ""  # lower case, stripped

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise BadWindow(f"status must be one of {', '.join(STATUSES)}")
        if len(self.q) > MAX_Q:
            raise BadWindow(f"q is longer than {MAX_Q} characters")

    @classmethod
    def of(cls, archived: bool = False, model: str | None | Everyone = EVERYONE,
           status: str | None = None, q: str | None = None) -> Filters:
        return cls(archived, model, status or None, (q or "").strip().lower())

    @property
    def selective(self) -> bool:
        """Some jobs the sets hold are left out by reading them."""
        return self.status is not None or bool(self.q)

    def sets(self) -> list[tuple[bool, str | None | Everyone]]:
        """The ``order`` sets to read: (archived, model)."""
        kinds = (False, True) if self.archived else (False,)
        return [(archived, self.model) for archived in kinds]

    def matches(self, job: dict[str, Any]) -> bool:
        """Whether a job's view (or stored state) belongs to the window, as the page tells."""
        if job["archived"] and not self.archived:
            return False
        if not isinstance(self.model, Everyone) and job["model_name"] != self.model:
            return False
        if self.status is not None and job["status"] != self.status:
            return False
        q = self.q
        return not q or (
            q in job["id"].lower()
            or (job["name"] is not None and q in job["name"].lower())
            or q in job["model_display"].lower()
            or (job["model_name"] is not None and q in job["model_name"].lower()))

    def fingerprint(self) -> str:
        """A short digest, so a cursor is only taken back with the filters it came from."""
        model = "*" if isinstance(self.model, Everyone) else model_field(self.model)
        raw = orjson.dumps([self.archived, model, self.status, self.q])
        return hashlib.blake2b(raw, digest_size=6).hexdigest()


def encode_cursor(key: Key, filters: Filters) -> str:
    raw = orjson.dumps([key[0], key[1], filters.fingerprint()])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, filters: Filters) -> Key:
    """The place a cursor stands for; :class:`BadWindow` when it is not one of ``filters``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, job_id, digest = orjson.loads(raw)
    except (ValueError, TypeError) as e:
        raise BadWindow("cursor is not one this server gave") from e
    if not (isinstance(score, float | int) and isinstance(job_id, str)) or \
            digest != filters.fingerprint():
        raise BadWindow("cursor is not one this server gave for these filters")
    return (float(score), job_id)


@dataclass
class Page:
    """What a window reply or a REST page holds."""

    views: list[dict[str, Any]]
    versions: list[str]  # per partition, the version the last read was at
    read_at: dict[str, list[str]]  # job id -> the versions its view was read at
    end: Key | None  # the place up to which the window now covers; None: the list's end
    total: int | None

    def next_cursor(self, filters: Filters) -> str | None:
        return None if self.end is None else encode_cursor(self.end, filters)


@dataclass
class Summary:
    """The first message of a windowed client: model rows and counts, no jobs."""

    models: list[dict[str, Any]]
    versions: list[str]
    jobs: int
    archived: int


@dataclass
class _Read:
    """One round of reads over every partition, merged."""

    entries: list[tuple[Key, int, dict[str, Any]]] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    more: bool = False  # some set has entries after those merged
    reached: Key | None = None  # every set with more was read at least this far
    total: int = 0


class WindowReader:
    """Reads pages of the list over every partition's ``order`` sets."""

    def __init__(self, readers: list[StateReader], part: Partitioning | None) -> None:
        self.readers = readers
        self.part = part
        self._scripts: list[AsyncScript] = [r.redis.register_script(_PAGE) for r in readers]

    async def summary(self) -> Summary:
        """Every model row and the number of jobs, archived and not, each partition read
        atomically with its version."""
        found: list[list[dict[str, Any]]] = []
        out = Summary([], [], 0, 0)
        for reader in self.readers:
            keys = reader.keys
            async with reader.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.models)
                pipe.xrevrange(keys.updates, count=1)
                pipe.zcard(keys.order(False))
                pipe.zcard(keys.order(True))
                models, last, live, archived = await pipe.execute()
            out.versions.append(text(last[0][0]) if last else NO_VERSION)
            out.jobs += int(live)
            out.archived += int(archived)
            found.append([orjson.loads(raw) for raw in models.values()])
        out.models = merge_model_rows(found, self.part)
        return out

    async def indexed(self) -> bool:
        """Whether every partition's order sets hold its jobs: built, or no job yet (a worker
        builds them once, when it first takes the lease after an upgrade)."""
        for reader in self.readers:
            async with reader.redis.pipeline(transaction=False) as pipe:
                pipe.exists(reader.keys.order_built)
                pipe.hlen(reader.keys.jobs)
                built, jobs = await pipe.execute()
            if not built and jobs:
                return False
        return True

    async def count(self, filters: Filters) -> int:
        """How many jobs the ``order`` sets that ``filters`` read hold (before ``status`` and
        ``q`` leave some out)."""
        sizes = await asyncio.gather(*(r.redis.zcard(r.keys.order(archived, model))
                                       for r in self.readers
                                       for archived, model in filters.sets()))
        return sum(int(size) for size in sizes)

    async def page(self, filters: Filters, after: Key | None, limit: int,
                   budget: int = SCAN_BUDGET) -> Page:
        """Up to ``limit`` jobs after ``after`` (None: from the top) that ``filters`` select."""
        taken: list[tuple[Key, int, dict[str, Any]]] = []
        read_at: dict[str, list[str]] = {}  # also: the jobs taken (a job moving between two
        scanned = 0                          # reads may be read twice)
        total: int | None = None
        versions: list[str] = []
        end: Key | None = None
        while True:
            want = min(CHUNK, budget - scanned) if filters.selective else limit - len(taken)
            got = await self._read(filters, after, max(want, 1))
            versions = got.versions
            if total is None and not filters.selective:
                total = got.total
            full = False
            at = -1
            for at, (key, index, job) in enumerate(got.entries):
                after = key  # read up to here
                scanned += 1
                if filters.matches(job) and job["id"] not in read_at:
                    taken.append((key, index, job))
                    read_at[job["id"]] = got.versions
                    if len(taken) == limit:
                        full = True
                        break
            if not got.more and at == len(got.entries) - 1:
                end = None  # nothing follows what was read
                break
            if not got.entries and got.reached is not None:
                after = got.reached  # nothing usable read (unstored): go on past it
                scanned += max(want, 1)
            if full or scanned >= budget:
                end = after
                break
        views = await self._views(taken)
        return Page(views, versions, read_at, end, total)

    async def _read(self, filters: Filters, after: Key | None, count: int) -> _Read:
        """The first ``count`` jobs after ``after`` in every partition's sets, merged."""
        parts = await asyncio.gather(*(self._read_one(i, filters, after, count)
                                       for i in range(len(self.readers))))
        out = _Read()
        chosen: dict[str, tuple[Key, int, dict[str, Any]]] = {}
        for index, (version, size, more, reached, entries) in enumerate(parts):
            out.versions.append(version)
            out.total += size
            out.more = out.more or more
            if reached is not None and (out.reached is None or reached < out.reached):
                out.reached = reached
            for key, job in entries:
                other = chosen.get(job["id"])
                # a moving job is in two partitions for a moment: its model's wins
                if other is None or (self.part is not None
                                     and self.part.of_model(job["model_name"]) == index):
                    chosen[job["id"]] = (key, index, job)
        out.entries = sorted(chosen.values(), key=lambda e: e[0])
        if len(out.entries) > count:  # past the first `count` another set may hold more
            del out.entries[count:]
            out.more = True
        return out

    async def _read_one(self, index: int, filters: Filters, after: Key | None, count: int
                        ) -> tuple[str, int, bool, Key | None,
                                   list[tuple[Key, dict[str, Any]]]]:
        reader = self.readers[index]
        keys = reader.keys
        names = [keys.order(archived, model) for archived, model in filters.sets()]
        score = "" if after is None else repr(after[0])
        job_id = "" if after is None else after[1]
        reply: Any = await self._scripts[index](
            keys=[keys.jobs, keys.updates, *names], args=[score, job_id, count])
        version = text(reply[0])
        size, more = 0, False
        entries: list[tuple[Key, dict[str, Any]]] = []
        reached: Key | None = None  # the last entry read of a set that has more
        for at in range(1, len(reply), 3):
            size += int(reply[at])
            flat = reply[at + 2]
            if reply[at + 1]:
                more = True
                last = (float(flat[-2]), text(flat[-3])) if flat else None
                if last is not None and (reached is None or last < reached):
                    reached = last
            for i in range(0, len(flat), 3):
                key = (float(flat[i + 1]), text(flat[i]))
                if (after is not None and key <= after) or not flat[i + 2]:
                    continue  # not after the cursor (never, but cheap to be sure), or unstored
                entries.append((key, public_state(flat[i + 2])))
        return version, size, more, reached, entries

    async def jobs(self, ids: list[str], where: list[int]
                   ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """The views of ``ids`` (each in partition ``where[i]``; unknown ones left out), and
        the versions each was read at (its partition's; the others' are not read)."""
        taken: list[tuple[Key, int, dict[str, Any]]] = []
        read_at: dict[str, list[str]] = {}
        for index in sorted(set(where)):
            reader = self.readers[index]
            wanted = [i for i, w in zip(ids, where) if w == index]
            async with reader.redis.pipeline(transaction=True) as pipe:
                pipe.hmget(reader.keys.jobs, wanted)
                pipe.xrevrange(reader.keys.updates, count=1)
                raws, last = await pipe.execute()
            versions = [NO_VERSION] * len(self.readers)
            versions[index] = text(last[0][0]) if last else NO_VERSION
            for raw in raws:
                if raw is not None:
                    job = public_state(raw)
                    taken.append((list_key(job), index, job))
                    read_at[job["id"]] = versions
        return await self._views(taken), read_at

    async def _views(self, taken: list[tuple[Key, int, dict[str, Any]]]
                     ) -> list[dict[str, Any]]:
        """Views of stored jobs, with their models' rows read after them: at least as new,
        so a delta is never older than the job it is of."""
        by_part: dict[int, set[str]] = {}
        for _, index, job in taken:
            by_part.setdefault(index, set()).add(model_field(job["model_name"]))
        best: dict[int, dict[str, tuple[str, float]]] = {}
        for index, fields in by_part.items():
            wanted = sorted(fields)
            rows: list[Any] = await self.readers[index].redis.hmget(
                self.readers[index].keys.models, wanted)
            best[index] = best_runs({f.encode(): row for f, row in zip(wanted, rows)
                                     if row is not None})
        return [job_view(job, best[index].get(model_field(job["model_name"])), consume=True)
                for _, index, job in taken]
