"""Small helpers every Redis client of the project shares: the SDK's sender, the worker and
the gateway."""

from __future__ import annotations

RETRY_MAX = 5.0  # seconds at most between attempts while Redis is away


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients here are opened without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else value


def backoff(delay: float) -> float:
    """The wait after ``delay`` when Redis is still away: doubled, up to RETRY_MAX."""
    return min(delay * 2, RETRY_MAX)
