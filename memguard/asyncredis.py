"""memguard's Redis for asyncio callers: ``redis.asyncio`` clients, one per event loop.

A ``redis.asyncio`` client belongs to the loop it first ran on, and an application may run
several loops (one per thread, or ``asyncio.run`` more than once), so each loop gets its
own client and registered scripts on first use. They perform the same steps as the blocking
client (``memguard.steps``): the scripts and the snapshot read. On a Redis Cluster those
steps run on the blocking client in a worker thread instead, which keeps the loop free too.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

import redis.asyncio

from memguard.steps import ReadSnapshot, Script, Step

if TYPE_CHECKING:
    from memguard.state import State


class AsyncRedis:
    def __init__(self, state: State, sources: dict[str, str]) -> None:
        self.state = state
        self.sources = sources
        self._generation = 0
        self._closing: set[asyncio.Task[Any]] = set()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[
            int, redis.asyncio.Redis, dict[str, Any]]] = weakref.WeakKeyDictionary()

    def reset(self) -> None:
        """The master moved: every loop makes a new client (asking the sentinels) on its next step."""
        self._generation += 1

    async def perform(self, step: Step) -> Any:
        if self.state.settings.redis_target.kind == "cluster":
            return await asyncio.to_thread(self.state.perform, step)
        client, scripts = self._for_running_loop()
        if isinstance(step, Script):
            return await scripts[step.name](keys=self.state.keys.for_scripts,
                                            args=[self.state.channel, *step.args])
        if isinstance(step, ReadSnapshot):
            pipe = client.pipeline(transaction=False)
            self.state.snapshot_commands(pipe)
            return await pipe.execute()
        raise TypeError(f"AsyncRedis cannot perform {step!r}")

    def _for_running_loop(self) -> tuple[redis.asyncio.Redis, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        entry = self._per_loop.get(loop)
        if entry is None or entry[0] != self._generation:
            if entry is not None:  # closed in the background; kept referenced until done
                task = loop.create_task(entry[1].aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            timeout = self.state.settings.redis_timeout_ms / 1000.0
            client = self.state.settings.redis_target.aclient(
                decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout)
            scripts = {name: client.register_script(source) for name, source in self.sources.items()}
            entry = self._per_loop[loop] = (self._generation, client, scripts)
        return entry[1], entry[2]
