"""What one gateway process holds: its settings, Redis client, state reader and fan-out hub."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from monitor.keys import Keys
from monitor.settings import GatewaySettings
from web.hub import Hub
from web.state import StateReader


@dataclass
class Gateway:
    settings: GatewaySettings
    redis: Redis
    keys: Keys
    reader: StateReader
    hub: Hub

    @classmethod
    def build(cls, settings: GatewaySettings, redis: Redis | None = None) -> Gateway:
        client = redis if redis is not None else Redis.from_url(settings.redis_url)
        keys = Keys(settings.prefix)
        return cls(settings, client, keys, StateReader(client, keys),
                   Hub(client, keys, settings.ws_queue))
