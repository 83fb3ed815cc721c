"""The optional token, the Origin and Host checks, and the headers every answer carries."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor.settings import GatewaySettings
from web.errors import error_response

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


def basic_password_ok(settings: GatewaySettings, conn: HTTPConnection) -> bool:
    """Does the request carry the token as the password of HTTP basic auth (any user name)?
    What clients that only speak basic auth send (MLflow's ``MLFLOW_TRACKING_PASSWORD``)."""
    if settings.token is None:
        return True
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    _, colon, password = decoded.partition(":")
    return bool(colon) and secrets.compare_digest(password.encode(), settings.token.encode())


_HTTP_SCHEME = {"ws": "http", "wss": "https"}


def origin_ok(settings: GatewaySettings, conn: HTTPConnection) -> bool:
    """A browser may open ``/ws`` (or write) only from the server's own origin, scheme and
    host and port alike, or from an allowed one."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True  # not a browser: the token (if any) is what protects it
    return origin_allowed(settings, origin, conn)


def origin_allowed(settings: GatewaySettings, origin: str, conn: HTTPConnection) -> bool:
    """Would a browser page at ``origin`` be let in through ``conn``'s address?"""
    origin = origin.rstrip("/")
    allowed = settings.origins
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    scheme = conn.url.scheme
    return (parts.scheme == _HTTP_SCHEME.get(scheme, scheme)
            and parts.netloc.lower() == conn.headers.get("host", "").lower())


class RedactTokens(logging.Filter):
    """Keep ``?token=...`` out of the access log (the query string is logged whole)."""

    PATTERN = re.compile(r"(token=)[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", a) if isinstance(a, str) else a
                                for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1***", record.msg)
        return True


class KnownHostsOnly:
    """Answer only requests addressed to an allowed host name: a page on another site that
    rebinds its own name to this server's address still sends its own name as ``Host``."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = HTTPConnection(scope).headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]").lower() not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                names = " or ".join(sorted(self.allowed - {"::1"}))
                answer = error_response(400, f"unknown host {host!r}; open this server as "
                                             f"{names} (MONITOR_ALLOWED_HOSTS)")
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


MAX_URL = 16 * 1024  # a longer path and query string is refused with 414
MAX_REQUEST_HEAD = 256 * 1024  # what the server reads of a request's line and headers


class LongUrlsRefused:
    """414 for a URL over MAX_URL: no route takes one (2 to 5 job ids, a version, a token)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["path"]) + len(scope["query_string"]) > MAX_URL:
            answer = error_response(414, f"the URL is over {MAX_URL} bytes")
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


# The page loads nothing from elsewhere and runs no inline code; no other site may frame it
# (its archive and stop buttons must not be clickable through a disguise).
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
OTHER_POLICY = "frame-ancestors 'none'"  # /docs loads its viewer from a CDN
_COMMON_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                   (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """Adds the page's Content-Security-Policy, and to every answer the headers that keep it
    out of frames, stop content sniffing and keep ``?token=`` out of referrers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        policy = PAGE_POLICY if path == "/" or path.startswith("/static/") else OTHER_POLICY
        extra = [(b"content-security-policy", policy.encode()), *_COMMON_HEADERS]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
