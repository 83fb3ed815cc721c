"""The FastAPI gateway: REST (docs/rest.md), ``/ws`` (docs/websocket.md), health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import FileResponse

from monitor import __version__
from monitor.events import event_adapter
from monitor.settings import LOOPBACK_NAMES, GatewaySettings, is_loopback
from web import api, errors, metrics
from web.gateway import Gateway
from web.mlflow import api as mlflow_api
from web.responses import JSON
from web.schemas import Error, Health
from web.security import COOKIE, KnownHostsOnly, LongUrlsRefused, SecurityHeaders, token_ok
from web.ws import websocket_endpoint

STATIC = Path(__file__).parent / "static"
DESCRIPTION = """\
Live state of training runs: each model's best run (by best eval loss), how much worse the
others are, comparisons and archiving. Trainers write events to the Redis stream (or to
`POST /api/events`); `/ws` pushes every change."""


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway application for ``settings``."""
    gw = Gateway.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reader = asyncio.create_task(gw.hub.run(), name="updates-reader")
        try:
            yield
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await gw.close()

    app = FastAPI(title="Training-run monitor", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, default_response_class=JSON)
    app.state.gateway = gw
    errors.install(app)
    if is_loopback(settings.host) or settings.hosts:
        # Refuse requests addressed to other names (DNS rebinding): on loopback only this
        # machine's names, elsewhere the names the deployment gave, and loopback ones for
        # health checks on the machine itself.
        origins = (urlsplit(o).hostname or "" for o in settings.origins if o != "*")
        hosts = {*LOOPBACK_NAMES, *settings.hosts, *origins}
        app.add_middleware(KnownHostsOnly, allowed=frozenset(hosts))
    app.add_middleware(LongUrlsRefused)
    app.add_middleware(SecurityHeaders)
    app.include_router(api.router)
    app.include_router(mlflow_api.router)
    app.add_api_websocket_route("/ws", websocket_endpoint)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Error}},
             summary="Redis reachable, and the worker's lag")
    async def healthz() -> Response:
        return JSON(await gw.reader.health())

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        body = metrics.render(await gw.reader.stats_each(), await gw.reader.health(),
                              len(gw.hub.subscribers), gw.counters)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        """The dashboard. ``/?token=...`` stores the token in a cookie the page's calls use."""
        answer = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
        token = request.query_params.get("token")
        if token is not None and settings.token is not None and token_ok(settings, request,
                                                                          query=True):
            answer.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                              secure=request.url.scheme == "https")
        return answer

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the event schema as the body of ``POST /api/events``."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    events = event_adapter.json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(events.pop("$defs", {}))
    components["Event"] = events
    body = {"oneOf": [{"$ref": "#/components/schemas/Event"},
                      {"type": "array", "items": {"$ref": "#/components/schemas/Event"},
                       "minItems": 1, "maxItems": api.MAX_EVENTS}]}
    schema["paths"]["/api/events"]["post"]["requestBody"] = {
        "required": True, "content": {"application/json": {"schema": body}}}
    app.openapi_schema = schema
    return schema
