"""The store's plain commands on its other keys: the audit trail, the notify lock and the fleet's
index of hold ends. What ``ops/`` and the index ask of the store, instead of reaching through its
client; the transitions stay Lua scripts (``memguard.store.scripts``)."""

from __future__ import annotations

from typing import Any

import redis


class Plain:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client  # decodes responses: keys, ids and values are text

    def kind(self, key: str) -> str:
        """The Redis type at ``key`` (``none`` when there is no key)."""
        return str(self._client.type(key))

    def expiry_ms(self, key: str) -> int:
        return int(self._client.pttl(key))

    def remove(self, key: str) -> None:
        self._client.delete(key)

    def lock(self, key: str, timeout: float) -> Any:
        """redis-py's ``Lock`` at ``key`` (its owner checked by its own scripts)."""
        return self._client.lock(key, timeout=timeout)

    def append(self, key: str, fields: dict[Any, Any], maxlen: int) -> None:
        """One entry at the end of the stream ``key``, the stream capped near ``maxlen``."""
        self._client.xadd(key, fields, maxlen=maxlen, approximate=True)

    def newest(self, key: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """The stream's newest ``count`` entries, newest first."""
        return self._client.xrevrange(key, count=count)  # type: ignore[return-value]

    def time_ms(self) -> int:
        secs, micros = self._client.time()
        return int(secs) * 1000 + int(micros) // 1000

    def scored_until(self, key: str, score: int, limit: int) -> list[str]:
        """The sorted set's members scored at most ``score``, lowest first."""
        return [str(m) for m in self._client.zrangebyscore(key, "-inf", score, start=0, num=limit)]

    def lowest(self, key: str, limit: int) -> list[str]:
        return [str(m) for m in self._client.zrange(key, 0, limit - 1)]

    def unscore(self, key: str, *members: str) -> None:
        self._client.zrem(key, *members)
