"""Where the views connect: ``MEMGUARD_VIEW_URLS``.

Redis replicates pub/sub messages and keyspace writes, and a replica delivers them to its own
subscribers and tracking clients: the primary does no fan-out for them. So a fleet's views can
be spread over replicas while every script and write goes to the primary, and one Redis core
no longer writes to every process. Unset, the views follow ``REDIS_URL`` as they always did.

Each process's view starts at a server drawn at random, so a fleet spreads evenly. A connection
that fails moves the view on to the next server: a dead replica, one cut off from its primary
(no message within the liveness bound), one that lags (``Watcher.check_lag``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from memguard.config.target import Target

SENTINEL = "sentinel"  # MEMGUARD_VIEW_URLS=sentinel: the replicas Sentinel reports
PRIMARY = "primary"  # where a view connects when Sentinel reports no replica
MAX_VIEW_URLS = 64


def parse_view_urls(raw: str) -> tuple[str, ...]:
    """``sentinel``, or replica URLs (``redis://``/``rediss://``), comma-separated."""
    if raw.strip().lower() == SENTINEL:
        return (SENTINEL,)
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    if len(urls) > MAX_VIEW_URLS:
        raise ValueError(f"at most {MAX_VIEW_URLS} URLs, got {len(urls)}")
    for i, url in enumerate(urls, 1):
        try:
            target = Target.parse(url)
        except ValueError as exc:
            raise ValueError(f"URL {i}: {exc}") from None
        if target.kind != "single":
            raise ValueError(f"URL {i}: each must be one server (redis:// or rediss://), a replica")
    return urls


def check_with(view_urls: tuple[str, ...], redis_url: str) -> str | None:
    """What is wrong with these view URLs beside this REDIS_URL, if anything."""
    if not view_urls:
        return None
    scheme = redis_url.partition("://")[0]
    if scheme.endswith("+cluster"):
        return "views on replicas are not supported with a Redis Cluster REDIS_URL"
    if view_urls == (SENTINEL,) and not scheme.endswith("+sentinel"):
        return "'sentinel' needs a Sentinel REDIS_URL (redis+sentinel:// or rediss+sentinel://)"
    return None


@dataclass(frozen=True)
class ViewServers:
    """The servers a process's view may connect to, and which one at a given index."""

    primary: Target
    urls: tuple[str, ...]

    def servers(self) -> list[str]:
        """The candidates now: the listed URLs, or the replicas the sentinels report healthy (as
        ``host:port``). With none, a view connects to the primary."""
        if self.urls != (SENTINEL,):
            return list(self.urls)
        replicas: Sequence[tuple[Any, Any]] = self.primary.sentinels.discover_slaves(self.primary.service)
        return sorted(f"{_text(host)}:{_text(port)}" for host, port in replicas)

    def connection(self, index: int, **options: Any) -> tuple[str, int, redis.Connection]:
        """The ``index``-th server (modulo their number), how many there are, and an unpooled
        connection to it. A watcher starts at an index of its own, drawn at random (so a fleet
        spreads evenly), and moves on by one at each failure."""
        server, of = self._pick(index)
        if server == PRIMARY:
            return server, of, self.primary.connection(**options)
        if self.urls != (SENTINEL,):
            return server, of, Target.parse(server).connection(**options)
        host, _, port = server.rpartition(":")
        return server, of, self.primary.server_connection(host, int(port), **options)

    def aclient(self, index: int, **options: Any) -> tuple[str, int, redis.asyncio.Redis]:
        """``connection``'s asyncio form: a client whose pool makes the connection."""
        server, of = self._pick(index)
        if server == PRIMARY:
            return server, of, self.primary.aclient(**options)
        if self.urls != (SENTINEL,):
            return server, of, redis.asyncio.Redis.from_url(server, **options)
        host, _, port = server.rpartition(":")
        return server, of, self.primary.server_aclient(host, int(port), **options)

    def _pick(self, index: int) -> tuple[str, int]:
        """The ``index``-th server and how many there are; the primary when there is none."""
        servers = self.servers()
        return (servers[index % len(servers)], len(servers)) if servers else (PRIMARY, 1)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

