"""Which worker may apply events: a token in Redis with a time to live.

Only the holder reads (the read is fenced by the token, see :mod:`worker.store`) and commits
(the commit watches the token). A standby polls; when the holder dies its lease runs out and
the standby takes over, so one worker applies events at a time.
"""

from __future__ import annotations

import secrets
import time

from redis.asyncio import Redis

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
        self._renewed = 0.0
        self.generation = 0  # counts fresh acquisitions: a new one means "recover first"
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take the lease, or keep it when already held; False when another worker has it."""
        now = time.monotonic()
        if self._renewed and now - self._renewed < self.ttl_ms / 3000:
            return True  # renewed recently enough
        if self._renewed and await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
            self._renewed = now
            return True
        self._renewed = 0.0
        if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self._renewed = now
            self.generation += 1
            return True
        return False

    def forget(self) -> None:
        """Stop believing we hold it (after a failed commit); the next :meth:`hold` checks."""
        self._renewed = 0.0

    async def release(self) -> None:
        """Give the lease up at once so a standby need not wait for it to run out."""
        self._renewed = 0.0
        await self._release(keys=[self.key], args=[self.token])
