"""The watcher's protocol on an asyncio event loop: many views in one process, for the drill's
crowd and the fleet benchmark.

``Watcher.connect_steps`` and ``Watcher.follow_steps`` are the protocol (the handshake; re-read,
take pushed messages, send the heartbeat when the channel is quiet, end when nothing arrived
within the liveness bound), and ``following``, ``followed`` and ``lost`` what a driver does
around them. The thread's driver runs them on a blocking connection; this one runs the very
same steps on a ``redis.asyncio`` connection, so thousands of real views fit in a few processes
without re-implementing any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from memguard.config.target import connection_name
from memguard.request.watch import QUIET, VIEW_OPTIONS, Listen, Send, Watcher
from memguard.store.steps import Step, arun

Perform = Callable[[Step], Awaitable[Any]]


async def run(watcher: Watcher, perform: Perform | None = None) -> None:
    """Keep ``watcher``'s views on the running loop until it is stopped: connect, follow, and on a
    failure reconnect with the thread's back-off. ``perform`` runs the store's steps (re-reads,
    the heartbeat); default: the store's asyncio executor."""
    backoff = 0.1
    while not watcher.stopped:
        try:
            await follow(watcher, perform or watcher.state.aperform)
            backoff = 0.1
        except (redis.RedisError, OSError) as exc:
            if watcher.lost(exc):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)


async def connect(watcher: Watcher) -> redis.asyncio.Connection:
    """An asyncio connection with the watcher's handshake done."""
    options: dict[str, Any] = dict(VIEW_OPTIONS, client_name=connection_name("view"))
    servers, of = watcher.state.settings.view_servers, None
    if servers is None:
        client = watcher.state.settings.redis_target.aclient(**options)
    else:
        watcher.placement.server, of, client = servers.aclient(watcher.placement.index, **options)
    conn = client.connection_pool.make_connection()
    await conn.connect()

    async def send(step: Send) -> Any:
        await conn.send_command(*step.command)
        if step.replies is None:
            return await conn.read_response()
        return [await conn.read_response() for _ in range(step.replies)]

    await arun(watcher.connect_steps(of), send)
    return conn


async def follow(watcher: Watcher, perform: Perform) -> None:
    """Connect, then run ``watcher.follow_steps`` until the watcher stops or the connection fails."""
    watcher.following()
    conn = await connect(watcher)

    async def step(step: Any) -> Any:
        if isinstance(step, Listen):
            message = await conn.read_response(timeout=step.timeout, disconnect_on_error=False)
            return QUIET if message is None else message  # None: the wait ended quietly
        return await perform(step)

    try:
        await arun(watcher.follow_steps(), step)
    finally:
        watcher.followed()
        with contextlib.suppress(redis.RedisError, OSError):
            await conn.disconnect()
