"""The gateway's server: uvicorn configured from the gateway settings, the same for
``monitor gateway`` and ``monitor up``, and the check that it can listen at all."""

from __future__ import annotations

import logging
import socket

import uvicorn

from monitor.errors import PortInUse
from monitor.settings import GatewaySettings
from web.app import create_app
from web.security import MAX_REQUEST_HEAD, RedactTokens
from web.ws import MAX_CLIENT_MESSAGE


def check_port(host: str, port: int) -> None:
    """Fail early and plainly if the gateway could not listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortInUse(f"cannot listen on {host}:{port} ({e.strerror}); another program "
                            "has it: choose another with --port / MONITOR_PORT") from None


def gateway_server(settings: GatewaySettings) -> uvicorn.Server:
    """The gateway as a uvicorn server (it handles Ctrl-C and SIGTERM itself)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        ws_ping_interval=settings.ws_ping, ws_ping_timeout=settings.ws_ping,
        ws_per_message_deflate=settings.ws_deflate, ws_max_size=MAX_CLIENT_MESSAGE,
        log_level=settings.log_level.lower(),
        ws="websockets-sansio", timeout_graceful_shutdown=5,
        # A request head (line and headers) is read whole up to this size, so a very long URL
        # gets the gateway's 414 instead of a reset: past h11's default of 16 KiB it answers
        # 400 and closes while the client is still sending, and the client sees a reset.
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
    )
    return uvicorn.Server(config)
