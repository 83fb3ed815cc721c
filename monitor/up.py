"""``monitor up``: everything for one machine in one process. The worker and the gateway share
one event loop; the demo trainers (``--demo``) run in threads; Redis is the configured one,
else an embedded ``redis-server`` child that keeps its data in the data directory (or nothing,
``--ephemeral``) and stops with us."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading

import uvicorn

from monitor.embedded import embedded_redis
from monitor.errors import PortInUse
from monitor.settings import GatewaySettings, UpSettings, WorkerSettings, part
from web.app import create_app
from web.security import RedactTokens
from web.ws import MAX_CLIENT_MESSAGE
from worker.consumer import Worker

log = logging.getLogger("monitor.up")


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


def server(settings: GatewaySettings) -> uvicorn.Server:
    """The gateway as a uvicorn server (it handles Ctrl-C and SIGTERM itself)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        ws_ping_interval=settings.ws_ping, ws_ping_timeout=settings.ws_ping,
        ws_per_message_deflate=settings.ws_deflate, ws_max_size=MAX_CLIENT_MESSAGE,
        log_level=settings.log_level.lower(),
        ws="websockets-sansio", timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def run_up(settings: UpSettings) -> int:
    """Run until Ctrl-C or SIGTERM; leaves no child process behind."""
    check_port(settings.host, settings.port)
    # uvicorn takes the first Ctrl-C or SIGTERM to shut the gateway down, then raises it
    # again; with these handlers that second raise lets us finish stopping the rest.
    previous = {sig: signal.signal(sig, _stopping) for sig in (signal.SIGINT, signal.SIGTERM)}
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [signal.signal(s, h) for s, h in previous.items()])
        url = settings.redis_url
        if url is None:
            embedded = stack.enter_context(embedded_redis(settings.persistent_dir))
            url = embedded.url
            print(f"monitor: {embedded.describe()}", flush=True)
        else:
            print("monitor: Redis from MONITOR_REDIS_URL (it keeps the data; --data-dir and "
                  "--ephemeral do not apply)", flush=True)
        page = f"http://{'127.0.0.1' if settings.host == '0.0.0.0' else settings.host}:" \
               f"{settings.port}/"
        print(f"monitor: dashboard at {page}", flush=True)
        print(f"monitor: trainers publish with MONITOR_REDIS_URL={url}", flush=True)
        asyncio.run(_serve(settings, url))
    print("monitor: stopped", file=sys.stderr, flush=True)
    return 0


def _stopping(signum: int, frame: object) -> None:
    log.info("stopping (signal %d)", signum)


async def _serve(settings: UpSettings, url: str) -> None:
    stop = asyncio.Event()
    worker = Worker(part(settings, WorkerSettings, redis_url=url))
    worker_task = asyncio.create_task(worker.run(stop), name="worker")
    demo_stop = threading.Event()
    demo = _start_demo(settings, url, demo_stop) if settings.demo else None
    try:
        await server(part(settings, GatewaySettings, redis_url=url)).serve()
    finally:
        demo_stop.set()
        stop.set()
        await worker_task
        if demo is not None:
            await asyncio.to_thread(demo.join, 10)


def _start_demo(settings: UpSettings, url: str, stop: threading.Event) -> threading.Thread:
    from monitor.demo import DemoOptions, run_demo

    options = DemoOptions(redis_url=url, prefix=settings.prefix, step_seconds=0.1, loop=True)
    thread = threading.Thread(target=run_demo, args=(options, stop), name="demo", daemon=True)
    thread.start()
    return thread
