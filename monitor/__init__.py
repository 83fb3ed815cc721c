"""Realtime training-run monitor: the domain, the trainer SDK and the CLI."""

from __future__ import annotations

__version__ = "0.1.0"
