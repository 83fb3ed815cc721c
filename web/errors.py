"""One JSON error shape for every error answer: ``{"detail": str, "status": int, "errors": [...]}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from monitor.redistools import UNREACHABLE, heal
from web.gateway import gateway_of
from web.responses import JSON

log = logging.getLogger("monitor.gateway")


class ApiError(Exception):
    """An answer other than success, with a one-line ``detail``."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = headers


def error_response(status: int, detail: str, errors: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSON:
    return JSON({"detail": detail, "status": status, "errors": errors or []},
                          status_code=status, headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("query", "ids")`` -> ``query.ids``; ``("body", 3, "loss")`` -> ``body[3].loss``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_errors(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line detail naming the first bad field, and every error as ``{loc, msg}``."""
    items: list[dict[str, Any]] = [{"loc": list(e["loc"]), "msg": str(e["msg"])}
                                   for e in errors]
    loc, msg = items[0]["loc"], items[0]["msg"]
    detail = f"{field_path(loc)}: {msg}" if loc else msg
    if len(items) > 1:
        detail += f" (and {len(items) - 1} more)"
    return detail, items


def install(app: FastAPI) -> None:
    """Route every error through :func:`error_response`."""

    async def api_error(_: Request, exc: Exception) -> JSON:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.detail, exc.errors, exc.headers)

    async def http_error(_: Request, exc: Exception) -> JSON:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    async def invalid(_: Request, exc: Exception) -> JSON:
        assert isinstance(exc, RequestValidationError)
        detail, items = validation_errors(list(exc.errors()))
        return error_response(422, detail, items)

    async def redis_away(request: Request, exc: Exception) -> JSON:
        log.warning("Redis unreachable during %s %s: %s", request.method, request.url.path, exc)
        gw = gateway_of(request)
        for client in (gw.redis, gw.reader.redis):
            await heal(client)  # a cluster client learns where the slots went
        return error_response(503, "Redis is unreachable; try again shortly",
                              headers={"Retry-After": "1"})

    async def crashed(request: Request, exc: Exception) -> JSON:
        log.exception("error in %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the gateway's log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    for kind in UNREACHABLE:
        if kind is not OSError:
            app.add_exception_handler(kind, redis_away)
    app.add_exception_handler(Exception, crashed)
