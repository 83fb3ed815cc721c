"""``/ws?windows=1`` (docs/websocket.md, Windows): a summary of the models, then the windows and
jobs the client asks for, and of each update only what concerns them.

Each update is routed as the hub hands it out, into the client's own message (so a client's
queue holds what it will be sent, not every update). A request's reply takes its place in the
queue when the request comes; updates that come while it is answered wait as they came and are
routed after it, in order, and :class:`web.watching.Watching` drops what is older than it.
One task sends, in queue order.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
from starlette.websockets import WebSocket

from monitor.keys import EVERYONE, Everyone
from monitor.limits import MAX_MODEL_NAME
from monitor.rules import parse_pos
from web.gateway import Gateway
from web.hub import ROUTED, Reply, Shared, Subscriber
from web.partitioned import PartitionedReader, cursor
from web.watching import MAX_HELD, MAX_WATCHED, MAX_WINDOWS, Changes, Watching
from web.windows import (
    MAX_LIMIT,
    BadWindow,
    Filters,
    Key,
    WindowReader,
    decode_cursor,
)

WINDOW_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
JOB_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
DEFAULT_LIMIT = 100
MAX_WATCH_IDS = 100


def parsed(text: str, body: bool = False) -> tuple[Changes, list[dict[str, Any]]]:
    """An update's views, indexed, and its model rows: parsed once however many clients route
    it (the hub hands every subscriber the same :class:`web.hub.Shared` text, which keeps
    them until the last client has routed it: one update of a big model can weigh
    megabytes). ``body``: the text is what follows an update's opening brace (with
    partitions the hub hands out the body, web.partitioned)."""
    if isinstance(text, Shared) and text.derived is not None:
        derived: tuple[Changes, list[dict[str, Any]]] = text.derived
        return derived
    update = orjson.loads("{" + text if body else str(text))  # orjson takes no subclass
    derived = (Changes(update["jobs"]), update.get("models", []))
    if isinstance(text, Shared):
        text.derived = derived
    return derived


class NotIndexed(Exception):
    """The order sets are not built yet (a worker builds them once, after an upgrade)."""


def error_message(asked: str | None, detail: str) -> str:
    return orjson.dumps({"type": "error", "id": asked, "detail": detail}).decode()


def end_of(end: Key | None) -> dict[str, Any] | None:
    """A window's end as the client sees it: the place in the order it covers up to."""
    return None if end is None else {"created_at": -end[0], "id": end[1]}


class WindowedClient:
    """One ``/ws?windows=1`` connection: two tasks of web.ws, :meth:`updates` (the only one
    that sends) and :meth:`requests`."""

    def __init__(self, websocket: WebSocket, gw: Gateway, subscriber: Subscriber,
                 send: Any) -> None:
        self.websocket = websocket
        self.gw = gw
        self.subscriber = subscriber
        self._send = send  # web.ws.send, which notes the send for the watchdog and /metrics
        part = gw.settings.partitioning
        self.split = part.split
        self.part = part if part.split else None
        self.reader: WindowReader = gw.windows
        self.watching = Watching(len(self.reader.readers))
        self.versions: list[str] = []
        self.started = anyio.Event()  # the first summary is sent

    async def send_text(self, text: str) -> None:
        await self._send(self.websocket, self.subscriber, text)

    def version(self) -> str:
        return cursor(self.versions)

    async def summary(self) -> None:
        """Send a summary; every window and watch starts over, and updates routed from now
        on are newer than it."""
        generation = self.subscriber.generation
        found = await self.reader.summary()
        if generation != self.subscriber.generation:
            return  # fell behind meanwhile: the next summary follows
        self.versions = list(found.versions)
        self.watching.start_over([parse_pos(v) for v in found.versions])
        self.subscriber.restarting = False
        await self.send_text(orjson.dumps({
            "type": "summary", "version": self.version(), "models": found.models,
            "jobs": found.jobs, "archived": found.archived}).decode())

    # --- The two halves of a connection ------------------------------------------------------

    async def updates(self, resync: Callable[[WebSocket, Subscriber], Awaitable[bool]]
                      ) -> None:
        """Send the summary, then in queue order what of each update concerns the client and
        the replies to its requests, until it goes. ``resync`` is called when its queue
        overflowed: False to go on (with a fresh summary), True when it closed the client as
        too slow."""
        subscriber = self.subscriber
        await self.ensure_indexed()
        subscriber.start_routing(self.route)  # what came before: routed after the summary
        await self.summary()
        self.started.set()
        while True:
            item = await subscriber.next()
            if isinstance(item, str):  # RESYNC
                if await resync(self.websocket, subscriber):
                    return
                await self.summary()
            elif isinstance(item, Reply):
                await item.ready.wait()
                if item.text is not None:
                    await self.send_text(item.text)
            elif item[0] is ROUTED:
                await self.send_text(item[1])
            elif (text := subscriber.route_queued(item)) is not None:  # queued as it came
                await self.send_text(text)

    async def requests(self) -> None:
        """Answer the client's messages, after the first summary, until it goes away. Each
        reply takes its place in the queue when the request comes, and updates wait as they
        came until it is answered."""
        await self.started.wait()
        subscriber = self.subscriber
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = (message.get("bytes") or b"").decode("utf-8", "replace")
            reply = Reply()
            if not subscriber.put_reply(reply):
                continue  # too far behind: a summary is on its way, and the client asks again
            subscriber.requesting += 1
            text = None
            try:
                text = await self.answer(raw, subscriber.generation)
            finally:
                subscriber.requesting -= 1
                reply.fill(text)

    async def ensure_indexed(self) -> None:
        """Windows read the order sets: while a worker still builds them (once, after an
        upgrade), close with 1013 so the client comes back."""
        if not await self.reader.indexed():
            raise NotIndexed

    # --- Requests ----------------------------------------------------------------------------

    async def answer(self, raw: str, generation: int) -> str | None:
        """The reply to one message (None: none). What it read is taken in only if the
        client did not start over meanwhile (``generation``)."""
        request: Any = None
        try:
            request = orjson.loads(raw)
            if not isinstance(request, dict):
                raise BadWindow("a message is a JSON object")
            kind = request.get("type")
            if kind == "window":
                return await self.window(request, generation)
            if kind == "close":
                self.watching.close(_window_id(request))
                return None
            if kind == "watch":
                return await self.watch(_ids(request), generation)
            if kind == "unwatch":
                self.watching.unwatch(_ids(request))
                return None
            raise BadWindow("type must be window, close, watch or unwatch")
        except orjson.JSONDecodeError:
            return error_message(None, "not JSON")
        except BadWindow as e:
            asked = request.get("id") if isinstance(request, dict) else None
            return error_message(asked if isinstance(asked, str) else None, str(e))

    async def window(self, request: dict[str, Any], generation: int) -> str | None:
        window_id = _window_id(request)
        filters = _filters(request)
        limit = request.get("limit", DEFAULT_LIMIT)
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise BadWindow(f"limit must be an integer from 1 to {MAX_LIMIT}")
        given = request.get("cursor")
        after: Key | None = None
        if given is not None:
            if not isinstance(given, str):
                raise BadWindow("cursor must be a string or null")
            held = self.watching.windows.get(window_id)
            if held is None:
                raise BadWindow(f"no window {window_id!r} to go on with: start it with "
                                "cursor null")
            if held.filters != filters:
                raise BadWindow("a later page takes the filters of the window's first")
            after = decode_cursor(given, filters)
        elif window_id not in self.watching.windows and \
                len(self.watching.windows) >= MAX_WINDOWS:
            raise BadWindow(f"at most {MAX_WINDOWS} windows")
        if self.watching.held() >= MAX_HELD:
            raise BadWindow(f"at most {MAX_HELD:,} jobs held: close a window or start it "
                            "again")
        page = await self.reader.page(filters, after, limit)
        if generation != self.subscriber.generation:
            return None  # started over meanwhile: the client asks again
        self.watching.took_page(window_id, filters, given is None, page.views, page.end,
                                self._read_at(page.read_at))
        return orjson.dumps({"type": "window", "id": window_id, "version": self.version(),
                             "jobs": page.views, "next": page.next_cursor(filters),
                             "end": end_of(page.end), "total": page.total}).decode()

    async def watch(self, ids: list[str], generation: int) -> str | None:
        fresh = [i for i in ids if i not in self.watching.watched]
        if len(self.watching.watched) + len(fresh) > MAX_WATCHED:
            raise BadWindow(f"at most {MAX_WATCHED} watched jobs")
        views, read_at = await self._jobs(ids)
        if generation != self.subscriber.generation:
            return None
        self.watching.watch(views, self._read_at(read_at))
        return orjson.dumps({"type": "jobs", "version": self.version(),
                             "jobs": views}).decode()

    async def _jobs(self, ids: list[str]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """The views of ``ids`` (unknown ones left out), each with the versions it was read at."""
        reader = self.gw.reader
        if not isinstance(reader, PartitionedReader):
            return await self.reader.jobs(ids, [0] * len(ids))
        where = await reader.locate(ids)
        views, read_at = await self.reader.jobs(ids, where)
        missing = [i for i in ids if i not in read_at]
        if missing:  # moving, or unknown: where its tombstone says
            found, more = await self.reader.jobs(
                missing, [await reader.partition_of(i) for i in missing])
            views += found
            read_at.update(more)
        return views, read_at

    @staticmethod
    def _read_at(read_at: dict[str, list[str]]) -> dict[str, list[Any]]:
        return {job_id: [parse_pos(v) for v in versions] for job_id, versions in read_at.items()}

    # --- Updates -----------------------------------------------------------------------------

    def route(self, item: tuple[Any, ...]) -> str | None:
        """What of one update concerns this client, as the message to send (None: nothing).
        Called in the updates' order (web.hub.Subscriber)."""
        if self.split:
            index, version, body = item
            update = parsed(body, body=True)
        else:
            index, (version, message) = 0, item
            update = parsed(message)
        pos = parse_pos(version)
        if pos <= parse_pos(self.versions[index]):
            return None  # older than what the client was sent
        self.versions[index] = version
        changes, models = update
        views = self.watching.route(index, pos, changes)
        rows = self.watching.rows(index, pos, models)
        if self.part is not None:  # a model's row from its own partition only (the summary's)
            rows = [row for row in rows if self.part.of_model(row["model_name"]) == index]
        if not views and not rows:
            return None
        return orjson.dumps({"type": "update", "version": self.version(), "jobs": views,
                             "models": rows}).decode()


def _window_id(request: dict[str, Any]) -> str:
    window_id = request.get("id")
    if not isinstance(window_id, str) or not WINDOW_ID.fullmatch(window_id):
        raise BadWindow("id must be 1 to 64 of A-Z a-z 0-9 . _ : -")
    return window_id


def _ids(request: dict[str, Any]) -> list[str]:
    ids = request.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_WATCH_IDS or not all(
            isinstance(i, str) and JOB_ID.fullmatch(i) for i in ids):
        raise BadWindow(f"ids must be a list of 1 to {MAX_WATCH_IDS} job ids")
    return list(dict.fromkeys(ids))


def _filters(request: dict[str, Any]) -> Filters:
    archived = request.get("archived", False)
    if not isinstance(archived, bool):
        raise BadWindow("archived must be true or false")
    model: str | None | Everyone = EVERYONE
    if "model" in request:
        model = request["model"]
        if model is not None and (not isinstance(model, str) or len(model) > MAX_MODEL_NAME):
            raise BadWindow(f"model must be a model name (at most {MAX_MODEL_NAME} "
                            "characters) or null")
    status, q = request.get("status"), request.get("q")
    if status is not None and not isinstance(status, str):
        raise BadWindow("status must be a string or null")
    if q is not None and not isinstance(q, str):
        raise BadWindow("q must be a string or null")
    return Filters.of(archived, model, status, q)


