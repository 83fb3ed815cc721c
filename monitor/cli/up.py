"""``monitor up``: everything for one machine in one process. The worker, the advisor and the
gateway share one event loop (the advisor's forecasts run in a thread); the demo trainers (``--demo``) run in threads; Redis is the configured one,
else an embedded ``redis-server`` child that keeps its data in the data directory (or nothing,
``--ephemeral``) and stops with us."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading

from monitor.cli.embedded import embedded_redis
from monitor.settings import AdvisorSettings, GatewaySettings, UpSettings, WorkerSettings, part
from web.server import check_port, gateway_server
from worker.advisor import run_advisor
from worker.consumer import run_worker

log = logging.getLogger("monitor.up")


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
    worker = run_worker(part(settings, WorkerSettings, redis_url=url), stop)
    worker_task = asyncio.create_task(worker, name="worker")
    advisor = run_advisor(part(settings, AdvisorSettings, redis_url=url), stop)
    advisor_task = asyncio.create_task(advisor, name="advisor")
    demo_stop = threading.Event()
    demo = _start_demo(settings, url, demo_stop) if settings.demo else None
    try:
        await gateway_server(part(settings, GatewaySettings, redis_url=url)).serve()
    finally:
        demo_stop.set()
        stop.set()
        await worker_task
        await advisor_task
        if demo is not None:
            await asyncio.to_thread(demo.join, 10)


def _start_demo(settings: UpSettings, url: str, stop: threading.Event) -> threading.Thread:
    from monitor.cli.demo import DemoOptions, run_demo

    # Eight epochs (an eval each) so a run has a forecast for most of its 16 s, not "too early".
    options = DemoOptions(redis_url=url, prefix=settings.prefix, epochs=8, step_seconds=0.1,
                          loop=True)
    thread = threading.Thread(target=run_demo, args=(options, stop), name="demo", daemon=True)
    thread.start()
    return thread
