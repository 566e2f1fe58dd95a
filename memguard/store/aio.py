"""memguard's Redis for asyncio callers: ``redis.asyncio`` clients, one per event loop.

A ``redis.asyncio`` client belongs to the loop it first ran on, and an application may run
several loops (one per thread, or ``asyncio.run`` more than once), so each loop gets its
own client and registered scripts on first use. They perform the same steps as the blocking
client (``memguard.store.steps``): the scripts and the snapshot read. On a Redis Cluster those
steps run on the blocking client in a worker thread instead, which keeps the loop free too.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import redis.asyncio

from memguard.config.settings import Settings
from memguard.config.target import connection_name
from memguard.store import scripts
from memguard.store.keys import Keys
from memguard.store.steps import ReadSnapshot, Script, Step, Via


class AsyncRedis:
    def __init__(self, settings: Settings, keys: Keys, blocking_perform: Callable[[Step], Any],
                 snapshot_commands: Callable[[Any], None], shared: AsyncRedis | None = None) -> None:
        self.settings = settings
        self.shared = shared  # a named guard's: the default's clients, one per event loop
        self.keys = keys
        self.blocking_perform = blocking_perform
        self.snapshot_commands = snapshot_commands
        self._generation = 0
        self._closing: set[asyncio.Task[Any]] = set()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[
            int, redis.asyncio.Redis, dict[str, Any]]] = weakref.WeakKeyDictionary()

    def reset(self) -> None:
        """The master moved: every loop makes a new client (asking the sentinels) on its next step."""
        self._generation += 1

    async def perform(self, step: Step) -> Any:
        if isinstance(step, Via):
            return await step.store.aperform(step.step)
        if self.settings.redis_target.kind == "cluster":
            return await asyncio.to_thread(self.blocking_perform, step)
        client, registered = self._for_running_loop()
        return await self._on(client, registered, step)

    async def _on(self, client: Any, registered: dict[str, Any], step: Step) -> Any:
        """One step on ``client``, scripts by ``registered``: ``State._on``, awaited."""
        if isinstance(step, Script):
            spec = scripts.SPECS[step.name]
            reply = await registered[step.name](keys=spec.key_names(self.keys),
                                                args=scripts.encode_args(step.name, step.args))
            return scripts.decode_reply(reply)
        if isinstance(step, ReadSnapshot):
            pipe = client.pipeline(transaction=False)
            self.snapshot_commands(pipe)
            return await pipe.execute()
        raise TypeError(f"{type(self).__name__} cannot perform {step!r}")

    def _for_running_loop(self) -> tuple[redis.asyncio.Redis, dict[str, Any]]:
        if self.shared is not None:
            return self.shared._for_running_loop()
        loop = asyncio.get_running_loop()
        entry = self._per_loop.get(loop)
        if entry is None or entry[0] != self._generation:
            if entry is not None:  # closed in the background; kept referenced until done
                task = loop.create_task(entry[1].aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            timeout = self.settings.redis_timeout_ms / 1000.0
            client = self.settings.redis_target.aclient(
                client_name=connection_name("async"), decode_responses=True, socket_timeout=timeout,
                socket_connect_timeout=timeout)
            registered = {name: client.register_script(source) for name, source in scripts.sources().items()}
            entry = self._per_loop[loop] = (self._generation, client, registered)
        return entry[1], entry[2]
