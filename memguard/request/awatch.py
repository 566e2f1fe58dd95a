"""The watcher's protocol on an asyncio event loop: many views in one process.

``Watcher.follow_steps`` is what a live connection does (re-read, take pushed messages, send the
heartbeat when the channel is quiet, end when nothing arrived within the liveness bound). The
thread's driver runs it on a blocking connection; ``run`` here runs the very same steps on a
``redis.asyncio`` connection, so the fleet benchmark (``bench/fleet.py``) holds thousands of
real views in a few processes without re-implementing any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from memguard.config.target import connection_name
from memguard.domain import events
from memguard.request.watch import QUIET, Listen, Watcher
from memguard.store.keys import CHANGES_CHANNEL
from memguard.store.steps import Step, arun

Perform = Callable[[Step], Awaitable[Any]]


async def run(watcher: Watcher, perform: Perform | None = None) -> None:
    """Keep ``watcher``'s view on the running loop until it is stopped: connect, follow, and on a
    failure drop the view and reconnect with the thread's back-off. ``perform`` runs the store's
    steps (re-reads, the heartbeat); default: the store's asyncio executor."""
    backoff = 0.1
    while not watcher.stopped:
        try:
            await follow(watcher, await connect(watcher), perform or watcher.state.aperform)
            backoff = 0.1
        except (redis.RedisError, OSError) as exc:
            if watcher.take_planned():
                continue
            watcher.current = None
            watcher.placement.moved()
            watcher.hooks.emit(events.GuardTrouble("redis_error", "watch", type(exc).__name__))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


async def connect(watcher: Watcher) -> redis.asyncio.Connection:
    """An asyncio connection with the watcher's handshake done (one server; RESP2)."""
    options: dict[str, Any] = dict(client_name=connection_name("view"), decode_responses=True, protocol=2)
    servers = watcher.state.settings.view_servers
    if servers is None:
        client = watcher.state.settings.redis_target.aclient(**options)
    else:
        watcher.placement.server, of, client = servers.aclient(watcher.placement.index, **options)
    conn = client.connection_pool.make_connection()
    await conn.connect()
    if servers is not None:
        await conn.send_command("PUBSUB", "NUMSUB", CHANGES_CHANNEL)
        watcher.spread(int((await conn.read_response())[1]), of)
    await conn.send_command("CLIENT", "ID")
    tracking, subscribe = watcher.handshake(await conn.read_response())
    await conn.send_command(*tracking)
    replies = [await conn.read_response()]
    await conn.send_command(*subscribe)
    replies += [await conn.read_response() for _ in range(len(subscribe) - 1)]
    watcher.check_handshake(replies)
    return conn


async def follow(watcher: Watcher, conn: redis.asyncio.Connection, perform: Perform) -> None:
    """Run ``watcher.follow_steps`` on ``conn`` until the watcher stops or the connection fails."""

    async def step(step: Any) -> Any:
        if isinstance(step, Listen):
            message = await conn.read_response(timeout=step.timeout, disconnect_on_error=False)
            return QUIET if message is None else message  # None: the wait ended quietly
        return await perform(step)

    try:
        await arun(watcher.follow_steps(), step)
    finally:
        watcher.current = None
        with contextlib.suppress(redis.RedisError, OSError):
            await conn.disconnect()
