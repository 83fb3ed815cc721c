"""SPEC section 10: the optional token, and the Origin check of ``/ws``."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from monitor.settings import GatewaySettings

COOKIE = "monitor_token"


def presented_token(conn: HTTPConnection, *, query: bool) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, the page's cookie, or (for
    ``/ws``, where browsers cannot set headers) the ``token`` query parameter."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if query and (token := conn.query_params.get("token")):
        return token
    return conn.cookies.get(COOKIE)


def token_ok(settings: GatewaySettings, conn: HTTPConnection, *, query: bool = False) -> bool:
    if settings.token is None:
        return True
    given = presented_token(conn, query=query)
    return given is not None and secrets.compare_digest(given.encode(), settings.token.encode())


def origin_ok(settings: GatewaySettings, conn: HTTPConnection) -> bool:
    """A browser may open ``/ws`` only from the server's own origin or an allowed one."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True  # not a browser: the token (if any) is what protects it
    origin = origin.rstrip("/")
    allowed = settings.origins
    if "*" in allowed or origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == conn.headers.get("host", "").lower()
