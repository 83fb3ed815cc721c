"""The REST API (docs/rest.md)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from monitor.decoded import parse_event
from monitor.events import BadEvent, event_adapter
from monitor.insights import model_insights
from monitor.keys import EVERYONE
from monitor.limits import MAX_MODEL_NAME
from web import partitioned
from web.compare import MAX_IDS, MIN_IDS, build_comparison, selection_best, to_csv
from web.errors import ApiError, validation_errors
from web.gateway import Gateway, gateway_of
from web.responses import JSON
from web.schemas import (
    Accepted,
    AdvisorState,
    Comparison,
    Error,
    Insights,
    JobDetail,
    JobList,
    JobMetrics,
    JobPage,
    ModelRow,
    StopRequest,
    WhoAmI,
)
from web.security import origin_allowed, origin_ok, token_ok
from web.windows import (
    DEFAULT_PAGE,
    MAX_PAGE,
    MAX_Q,
    BadWindow,
    Filters,
    WindowReader,
    decode_cursor,
)

MAX_EVENTS = 1000
MAX_BODY_BYTES = 16 * 1024 * 1024


def require_token(request: Request) -> None:
    settings = gateway_of(request).settings
    if not token_ok(settings, request):
        raise ApiError(401, "missing or wrong token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": "Bearer"})
    if request.method not in ("GET", "HEAD", "OPTIONS") and not origin_ok(settings, request):
        # A page on another site must not archive runs or write events from the user's browser.
        raise ApiError(403, "cross-site request refused (Origin not allowed)")


GW = Annotated[Gateway, Depends(gateway_of)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Error, "description": "unknown job"}}
router = APIRouter(prefix="/api", dependencies=[Depends(require_token)],
                   responses={401: {"model": Error, "description": "missing or wrong token"},
                              503: {"model": Error, "description": "Redis is unreachable"}})


@router.get("/whoami", response_model=WhoAmI,
            summary="Whether a page at this origin may open /ws through this address")
async def whoami(
    request: Request, gw: GW,
    origin: Annotated[str | None, Query(max_length=2048,
                                        description="the page's location.origin")] = None,
) -> Response:
    """Browsers hide why a WebSocket handshake was refused; a page that cannot connect asks
    here, with its own origin, and can say so instead of "unreachable"."""
    allowed = origin is None or origin_allowed(gw.settings, origin, request)
    return JSON({"origin": origin, "origin_allowed": allowed})


@router.get("/advisor", response_model=AdvisorState,
            summary="Whether an advisor runs, and whether it stops runs that cannot win")
async def advisor(gw: GW) -> Response:
    raw = await gw.redis.get(gw.keys.advisor)
    if raw is None:
        return JSON({"running": False, "autostop": False, "stop_below": None,
                     "stale_after": None})
    return JSON({"running": True, **orjson.loads(raw)})


@router.get("/insights", response_model=Insights,
            responses={404: {"model": Error, "description": "unknown model"}},
            summary="One model's cost, Pareto front, seed noise and hyperparameter effects")
async def insights(
    gw: GW,
    model: Annotated[str | None, Query(max_length=512, description=(
        "the exact model_name; omitted: the jobs that never named a model"))] = None,
) -> Response:
    found = await gw.reader.model_jobs(model)
    if found is None:
        raise ApiError(404, f"unknown model {model!r}")
    row, views = found
    return JSON(model_insights(row["model_name"], row["model_display"], views))


def unknown(job_id: str) -> ApiError:
    return ApiError(404, f"unknown job {job_id!r}")


@router.get("/jobs", response_model=JobList | JobPage,
            responses={413: {"model": Error, "description": "too many jobs for one answer"}},
            summary="Every job, newest first; or a page of them (limit, cursor, filters)")
async def list_jobs(
    gw: GW, include_archived: bool = False,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE)] = None,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    model: Annotated[str | None, Query(max_length=MAX_MODEL_NAME,
                                       description="the exact model_name")] = None,
    unnamed: Annotated[bool, Query(description="the jobs that never named a model")] = False,
    status: Annotated[Literal["running", "completed", "failed", "stopped"] | None,
                      Query()] = None,
    q: Annotated[str | None, Query(max_length=MAX_Q)] = None,
) -> Response:
    """docs/rest.md: without ``limit`` and ``cursor``, every job (up to a bound); else a page."""
    if model is not None and unnamed:
        raise ApiError(422, "give model or unnamed=true, not both")
    filters = Filters.of(include_archived, None if unnamed else EVERYONE if model is None
                         else model, status, q)
    windows = gw.windows
    if limit is None and cursor is None:
        if not filters.selective and filters.model is EVERYONE:
            return await whole_list(gw, filters)
        await must_be_indexed(windows)
        # filtered: every match, when the jobs to read are within the bound
        count = await windows.count(filters)
        if count > gw.settings.api_jobs_max:
            raise too_many(count, gw)
        page = await windows.page(filters, None, count + 1, budget=count + 1)
        return JSON({"version": partitioned.cursor(page.versions), "jobs": page.views})
    await must_be_indexed(windows)
    try:
        after = decode_cursor(cursor, filters) if cursor is not None else None
    except BadWindow as e:
        raise ApiError(422, str(e)) from e
    page = await windows.page(filters, after, limit or DEFAULT_PAGE)
    return JSON({"version": partitioned.cursor(page.versions), "jobs": page.views,
                 "next": page.next_cursor(filters), "total": page.total})


async def must_be_indexed(windows: WindowReader) -> None:
    if not await windows.indexed():
        raise ApiError(503, "the worker is indexing the jobs (once, after an upgrade: "
                            "docs/state.md); try again in a few seconds")


async def whole_list(gw: Gateway, filters: Filters) -> Response:
    """Today's answer, every job, while there are at most ``api_jobs_max`` of them (while the
    order sets are still being built they count fewer: the answer is whole anyway)."""
    count = await gw.windows.count(filters)
    if count > gw.settings.api_jobs_max:
        raise too_many(count, gw)
    snapshot = await gw.reader.snapshot()
    body = snapshot.listing_all if filters.archived else snapshot.listing
    return Response(body, media_type="application/json")


def too_many(count: int, gw: Gateway) -> ApiError:
    return ApiError(413, f"{count:,} jobs are more than one answer holds (MONITOR_API_JOBS_MAX="
                         f"{gw.settings.api_jobs_max:,}): ask for pages with ?limit= and "
                         "?cursor= (docs/rest.md)")


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=NOT_FOUND,
            summary="One job, with its config")
async def get_job(job_id: str, gw: GW) -> Response:
    view = await gw.reader.job(job_id)
    if view is None:
        raise unknown(job_id)
    return JSON(view)


@router.get("/jobs/{job_id}/metrics", response_model=JobMetrics, responses=NOT_FOUND,
            summary="A job's metric history, in training order")
async def get_metrics(job_id: str, gw: GW) -> Response:
    if not await gw.reader.exists(job_id):
        raise unknown(job_id)
    return JSON({"job_id": job_id, "points": await gw.reader.metrics(job_id)})


@router.get("/models", response_model=list[ModelRow], summary="Each model and its best run")
async def list_models(gw: GW) -> Response:
    return JSON(await gw.reader.models())


def parse_ids(ids: str) -> list[str]:
    wanted = [part.strip() for part in ids.split(",") if part.strip()]
    problem = None
    if not MIN_IDS <= len(wanted) <= MAX_IDS:
        problem = f"give {MIN_IDS} to {MAX_IDS} job ids, got {len(wanted)}"
    elif len(set(wanted)) != len(wanted):
        problem = "each job id at most once"
    if problem:
        raise ApiError(422, f"query.ids: {problem}", [{"loc": ["query", "ids"], "msg": problem}])
    return wanted


@router.get("/compare", response_model=Comparison, responses=NOT_FOUND,
            summary="Compare 2 to 5 runs; format=csv or json downloads it")
async def compare(
    gw: GW,
    ids: Annotated[str, Query(description="2 to 5 job ids, comma-separated, in column order")],
    format: Annotated[Literal["csv", "json"] | None,
                      Query(description="download as a file")] = None,
) -> Response:
    wanted = parse_ids(ids)
    views = await gw.reader.views(wanted)
    missing = [job_id for job_id, view in zip(wanted, views) if view is None]
    if missing:
        raise unknown(missing[0])
    found = [v for v in views if v is not None]
    best = selection_best(found)
    group = await gw.reader.model_jobs(best["model_name"]) if best is not None else None
    comparison = build_comparison(found, group[1] if group is not None else None)
    if format is None:
        return JSON(comparison)
    name = f"comparison-{time.strftime('%Y%m%d-%H%M%S')}.{format}"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format == "csv":
        return Response(to_csv(comparison), media_type="text/csv; charset=utf-8",
                        headers=disposition)
    return Response(orjson.dumps(comparison, option=orjson.OPT_INDENT_2),
                    media_type="application/json", headers=disposition)


async def _mark(gw: Gateway, job_id: str, kind: str, **fields: Any) -> Response:
    if not await gw.reader.exists(job_id):
        raise unknown(job_id)
    return await _write(gw, {"type": kind, "job_id": job_id, **fields})


async def _write(gw: Gateway, event: dict[str, Any]) -> Response:
    event["ts"] = time.time()
    await gw.publish_about(event["job_id"], orjson.dumps(event))
    return JSON({"accepted": 1}, status_code=202)


async def _running(gw: Gateway, job_id: str) -> dict[str, Any]:
    """The view of a running job; 404 when unknown, 409 when it has ended."""
    views = await gw.reader.views([job_id])
    view = views[0]
    if view is None:
        raise unknown(job_id)
    if view["status"] != "running":
        raise ApiError(409, f"job {job_id!r} is not running (it is {view['status']})")
    return view


NOT_RUNNING: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND, 409: {"model": Error, "description": "the job is not running"}}


@router.post("/jobs/{job_id}/stop", status_code=202, response_model=Accepted,
             responses=NOT_RUNNING,
             summary="Ask the trainer to stop a running run (docs/stopping.md)")
async def stop(job_id: str, gw: GW, body: StopRequest | None = None) -> Response:
    await _running(gw, job_id)
    reason = body.reason if body is not None else None
    return await _write(gw, {"type": "job_stop_requested", "job_id": job_id, "by": "user",
                             "reason": reason})


@router.post("/jobs/{job_id}/abandon", status_code=202, response_model=Accepted,
             responses=NOT_RUNNING,
             summary="End a running run whose trainer is gone, as failed (docs/stopping.md)")
async def abandon(job_id: str, gw: GW) -> Response:
    view = await _running(gw, job_id)
    since = view["last_seen"] if view.get("last_seen") is not None else view["updated_at"]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    return await _write(gw, {"type": "job_finished", "job_id": job_id, "status": "failed",
                             "error": f"abandoned: no signal since {when}"})


@router.post("/jobs/{job_id}/archive", status_code=202, response_model=Accepted,
             responses=NOT_FOUND, summary="Archive a run (applied by the worker, pushed live)")
async def archive(job_id: str, gw: GW) -> Response:
    return await _mark(gw, job_id, "job_archived")


@router.post("/jobs/{job_id}/restore", status_code=202, response_model=Accepted,
             responses=NOT_FOUND, summary="Restore an archived run")
async def restore(job_id: str, gw: GW) -> Response:
    return await _mark(gw, job_id, "job_restored")


DERIVED_TYPES = ("job_forecast", "job_stale")  # the monitor derives these (docs/events.md)


def validate_events(body: Any) -> list[bytes]:
    """The events of a request body (one object or a list), each checked exactly as the
    worker will check it; all or nothing. Returns what to append, one JSON text each."""
    many = isinstance(body, list)
    items = body if many else [body]
    if not many and not isinstance(body, dict):
        raise ApiError(422, "body: send one event object or a list of events",
                       [{"loc": ["body"], "msg": "not an object or a list"}])
    if not 1 <= len(items) <= MAX_EVENTS:
        msg = f"{len(items)} events; send 1 to {MAX_EVENTS}"
        raise ApiError(422, f"body: {msg}", [{"loc": ["body"], "msg": msg}])
    errors: list[dict[str, Any]] = []
    out = []
    for index, item in enumerate(items):
        where: list[Any] = ["body", index] if many else ["body"]
        if isinstance(item, dict) and item.get("type") in DERIVED_TYPES:
            errors.append({"loc": [*where, "type"],
                           "msg": f"{item['type']} is written by the monitor, not sent to it"})
            continue
        try:
            # Field by field first: Python's JSON reader takes NaN, which must be named.
            event_adapter.validate_python(item)
            data = orjson.dumps(item)  # what the worker will read; > 64-bit ints fail here
            parse_event(data)  # and the worker's own check of those bytes (size limits)
            out.append(data)
        except ValidationError as e:
            tag = item.get("type") if isinstance(item, dict) else None
            for error in e.errors(include_url=False):
                loc = list(error["loc"])
                if loc and loc[0] == tag:
                    loc = loc[1:]  # the union's tag: the event type, not a field
                errors.append({"loc": [*where, *loc], "msg": error["msg"]})
        except (orjson.JSONEncodeError, BadEvent) as e:
            errors.append({"loc": where, "msg": getattr(e, "reason", str(e))})
    if errors:
        detail, items_out = validation_errors(errors)
        raise ApiError(422, detail, items_out)
    return out


@router.post("/events", status_code=202, response_model=Accepted,
             responses={413: {"model": Error}, 415: {"model": Error}, 422: {"model": Error}},
             summary="Append one event or a list of up to 1,000 (all or nothing)")
async def post_events(request: Request, gw: GW) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # Also what keeps a plain HTML form on another site from posting here.
        raise ApiError(415, "send the events as Content-Type: application/json")
    raw = await read_capped(request, MAX_BODY_BYTES)
    async with gw.parsing:  # one body at a time, off the event loop: others keep being served
        events = await anyio.to_thread.run_sync(parse_events, raw)
    await gw.publish(events)
    return JSON({"accepted": len(events)}, status_code=202)


def parse_events(raw: bytes) -> list[bytes]:
    """The events of a request body, checked as :func:`validate_events` checks them."""
    try:
        # NaN and Infinity parse here, to be refused by name in validate_events; so do integers
        # past 64 bits (orjson would read them as floats), to be refused as the worker would.
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        msg = str(e) if not isinstance(e, RecursionError) else "nested too deeply"
        raise ApiError(422, f"body: invalid JSON: {msg}", [{"loc": ["body"], "msg": msg}]) \
            from None
    return validate_events(body)


class BodyShape:
    """Counts, chunk by chunk as a body arrives, what parsing it would build: objects and
    arrays, and commas (about one per value). An upper bound (brackets and commas inside
    strings count too) that refuses a body of millions of tiny values before it is parsed,
    where its size alone would let it through."""

    MAX_CONTAINERS = 100_000  # 100 per event of a full batch
    MAX_COMMAS = 1_000_000

    def __init__(self) -> None:
        self.containers = 0
        self.commas = 0

    def feed(self, chunk: bytes) -> None:
        self.containers += chunk.count(b"{") + chunk.count(b"[")
        self.commas += chunk.count(b",")
        if self.containers > self.MAX_CONTAINERS:
            raise ApiError(413, f"body holds more than {self.MAX_CONTAINERS} objects and "
                                f"arrays; send at most {MAX_EVENTS} events")
        if self.commas > self.MAX_COMMAS:
            raise ApiError(413, f"body holds more than {self.MAX_COMMAS} values; send at most "
                                f"{MAX_EVENTS} events")


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing one over ``limit`` bytes or of a shape no batch of events
    has (see :class:`BodyShape`) without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body is {declared} bytes, at most {limit}")
    chunks, size, shape = [], 0, BodyShape()
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over {limit} bytes")
        shape.feed(chunk)
        chunks.append(chunk)
    return b"".join(chunks)
