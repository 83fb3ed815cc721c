"""Which worker may apply events: a token in Redis with a time to live.

Only the holder reads (the read is fenced by the token, see :mod:`worker.store`) and commits
(the commit script checks the token before it writes). A standby polls; when the holder dies its lease runs out and
the standby takes over, so one worker applies events at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from monitor.redistools import UNREACHABLE

log = logging.getLogger("monitor.worker")

RENEWAL_FAILED: tuple[type[Exception], ...] = (*UNREACHABLE, ResponseError)
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """A lease on ``key`` held by this process under a random token."""

    def __init__(self, redis: Redis, key: str, ttl: float, owner: str) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token = f"{owner}:{secrets.token_hex(8)}"
        self.held = False
        self.generation = 0  # counts fresh acquisitions: a new one means "recover first"
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take the lease unless held already; False when another worker has it."""
        if not self.held and await self.redis.set(self.key, self.token, nx=True,
                                                  px=self.ttl_ms):
            self.held = True
            self.generation += 1
        return self.held

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Renew the lease every third of its time to live while held, also in the middle of
        a long batch; a failed renewal means another worker may have it now."""
        while not stop.is_set():
            if self.held:
                try:
                    renewed = await self._renew(keys=[self.key], args=[self.token, self.ttl_ms])
                except RENEWAL_FAILED as e:
                    # ResponseError: e.g. BUSY while a long script runs. Treat it as a failed
                    # renewal (the commit then re-checks) rather than let this task die.
                    log.debug("lease renewal failed: %s", e)
                    renewed = False
                if not renewed and self.held:
                    log.warning("lost the lease (not renewed in time)")
                    self.held = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_ms / 3000)

    def forget(self) -> None:
        """Stop believing we hold it (after a failed commit); :meth:`hold` asks again."""
        self.held = False

    async def release(self) -> None:
        """Give the lease up at once so a standby need not wait for it to run out."""
        self.held = False
        await self._release(keys=[self.key], args=[self.token])
