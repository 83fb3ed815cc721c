"""Realtime training-run monitor: the domain, the trainer SDK and the CLI."""

from __future__ import annotations

from monitor import compiled

__version__ = "0.1.0"

compiled.choose()  # before any module of the pure core is imported (monitor/compiled.py)
