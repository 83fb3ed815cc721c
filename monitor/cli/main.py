"""``monitor``: thin command line. Parse, build settings, call library code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from monitor import __version__
from monitor.errors import StartError
from monitor.settings import (
    AdvisorSettings,
    CommonSettings,
    DemoSettings,
    GatewaySettings,
    SettingsError,
    UpSettings,
    WorkerSettings,
    add_arguments,
    configure_logging,
    load,
)

DESCRIPTION = """\
Realtime training-run monitor. Trainers write events to a Redis stream; the worker folds
them into each model's best run, deltas and colour tiers; the gateway pushes every change
to the dashboard.

Every setting is a flag or a MONITOR_* environment variable (the flag wins); an unknown or
malformed one is an error."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitor", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up", help="worker, gateway and page in one process (on an embedded Redis if none "
                   "is configured)",
        description="Run everything for one machine: the worker, the gateway and the page, "
                    "on MONITOR_REDIS_URL when set, else on an embedded redis-server it starts "
                    "and stops itself. Prints the page's URL and the Redis URL trainers should "
                    "use. --demo also runs simulated trainers. Ctrl-C or SIGTERM stops it all.")
    add_arguments(up, UpSettings)
    up.set_defaults(handler=_up, settings=UpSettings)

    worker = commands.add_parser(
        "worker", help="apply events from the stream to the committed state",
        description="Read <prefix>events with a consumer group, fold each batch into job and "
                    "per-model state, commit it with the changed views and the id of its "
                    "last entry (a restarted worker reads on from there). "
                    "Run two for a standby: one applies at a time (a lease in Redis).")
    add_arguments(worker, WorkerSettings)
    worker.set_defaults(handler=_worker, settings=WorkerSettings)

    advisor = commands.add_parser(
        "advisor", help="forecast every running job: can it still beat its model's best?",
        description="Follow the committed changes and forecast each running job's best eval "
                    "loss at its horizon, the probability that it beats its group's best, a "
                    "verdict (leading, too_early, cannot_win, may_win) and the GPU-hours "
                    "left, whenever it has a new eval point or its group's best moves. The "
                    "forecasts reach every view through the worker (docs/insights.md). "
                    "monitor up runs one; run one per deployment.")
    add_arguments(advisor, AdvisorSettings)
    advisor.set_defaults(handler=_advisor, settings=AdvisorSettings)

    gateway = commands.add_parser(
        "gateway", help="REST API and WebSocket push of the committed state",
        description="Serve the REST API (OpenAPI at /docs), /ws (a snapshot, then every "
                    "change as the worker commits it), /healthz and /metrics. Binds "
                    "127.0.0.1 unless told otherwise.")
    add_arguments(gateway, GatewaySettings)
    gateway.set_defaults(handler=_gateway, settings=GatewaySettings)

    demo = commands.add_parser(
        "demo", help="simulated trainers publishing realistic runs through the SDK",
        description="Several models, several fine-tuning runs each, with noisy decreasing "
                    "loss and eval-loss curves, a checkpoint per epoch, and some runs that "
                    "fail or are cancelled. Ctrl-C stops them (as cancelled).")
    add_arguments(demo, DemoSettings)
    demo.set_defaults(handler=_demo, settings=DemoSettings)

    schema = commands.add_parser("schema", help="print the JSON Schema of the events",
                                 description="Print the JSON Schema of one event of "
                                             "<prefix>events (docs/events.md).")
    schema.set_defaults(handler=_schema, settings=None)
    return parser


def _until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``run(stop)`` until Ctrl-C or SIGTERM sets ``stop``."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main())
    return 0


def _worker(settings: WorkerSettings) -> int:
    from worker.consumer import run_worker

    return _until_signalled(lambda stop: run_worker(settings, stop))


def _advisor(settings: AdvisorSettings) -> int:
    from worker.advisor import run_advisor

    return _until_signalled(lambda stop: run_advisor(settings, stop))


def _up(settings: UpSettings) -> int:
    from monitor.cli.up import run_up

    return run_up(settings)


def _gateway(settings: GatewaySettings) -> int:
    from web.server import check_port, gateway_server

    check_port(settings.host, settings.port)
    gateway_server(settings).run()
    return 0


def _demo(settings: DemoSettings) -> int:
    from monitor.cli.demo import DemoOptions, run_demo

    stop = threading.Event()
    _on_signals(lambda: stop.set())
    options = DemoOptions(
        redis_url=settings.redis_url, prefix=settings.prefix,
        runs_per_model=settings.runs_per_model, epochs=settings.epochs,
        steps_per_epoch=settings.steps_per_epoch, step_seconds=settings.step_seconds,
        seed=settings.seed, loop=settings.loop,
    )
    finished = run_demo(options, stop)
    print(f"demo: {finished} runs finished", file=sys.stderr)
    return 0


def _schema(_: Any) -> int:
    from monitor.events import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _on_signals(handler: Callable[[], None]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: handler())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monitor`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    settings: CommonSettings | None = None
    try:
        if args.settings is not None:
            flags = {k: v for k, v in vars(args).items() if k not in ("handler", "settings")}
            settings = load(args.settings, flags, os.environ)
            configure_logging(settings)
    except SettingsError as e:
        print(f"monitor {args.command}: error: {e}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(settings))
    except KeyboardInterrupt:
        return 130
    except StartError as e:
        print(f"monitor {args.command}: error: {e}", file=sys.stderr)
        return 1
