"""The composition: the ``monitor`` command line and what it starts (``up``, the embedded Redis
and its data directory, the demo trainers). It imports the core, the worker and the gateway;
nothing imports it."""

from __future__ import annotations

from monitor.cli.main import main

__all__ = ["main"]
