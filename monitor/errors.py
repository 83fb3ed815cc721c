"""Errors a command reports as one line and a non-zero exit, instead of a traceback."""

from __future__ import annotations


class StartError(RuntimeError):
    """Something a command needs could not be set up; the message says what to do."""


class PortInUse(StartError):
    """The gateway cannot listen on its port."""


class EmbeddedRedisError(StartError):
    """No embedded Redis server could be started."""


class DataDirError(StartError):
    """The data directory of the embedded Redis is in use, unreadable or cannot be created."""
