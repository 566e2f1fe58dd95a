"""Following a Sentinel failover at once, not when the old master is finally demoted.

After ``SENTINEL FAILOVER`` (or a partition) the old master keeps taking writes until the
sentinels reconfigure it, which measured here ~9 s later. Connections made before the switch
keep writing there, and what they write is lost when it is demoted. Every sentinel announces
the switch on its ``+switch-master`` channel: this listener hears it from one sentinel, puts
that sentinel first (it knows the new master) and drops memguard's connections, which then
ask it for the new master on their next command.

One idle subscribed connection per process, to one sentinel; it moves to the next sentinel
when that one goes away (TCP keepalive notices a dead peer in about 2 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis

from memguard.config.target import Target, keepalive_options
from memguard.domain import events
from memguard.store.background import Background

SWITCH_CHANNEL = "+switch-master"


class SwitchListener(Background):
    """A daemon thread calling ``on_switch`` when the target's master changes."""

    THREAD_NAME = "memguard-sentinel"

    def __init__(self, target: Target, on_switch: Callable[[], None], hooks: events.Hooks) -> None:
        super().__init__()
        self.target = target
        self.hooks = hooks
        self.on_switch = on_switch

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            host, port = self.target.nodes[turn % len(self.target.nodes)]
            try:
                self._listen(host, port)
            except (redis.RedisError, OSError) as exc:
                if self._stop.is_set():  # stopped meanwhile (its process closed): not the process's trouble
                    return
                detail = f"{host}:{port} {type(exc).__name__}"
                self.hooks.emit(events.GuardTrouble("redis_error", "sentinel", detail))
                turn += 1
                self._stop.wait(0.5)

    def _listen(self, host: str, port: int) -> None:
        auth: dict[str, Any] = dict(self.target.sentinel_kwargs)
        client = redis.Redis(host=host, port=port, decode_responses=True, socket_connect_timeout=1.0,
                             socket_keepalive=True, socket_keepalive_options=keepalive_options(), **auth)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(SWITCH_CHANNEL)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                # "<service> <old-ip> <old-port> <new-ip> <new-port>"
                service, *addresses = str(message["data"]).split()
                if service == self.target.service:
                    self.target.prefer(host, port)
                    self.hooks.emit(events.GuardTrouble("master_switch", "sentinel", " -> ".join(
                        ":".join(addresses[i:i + 2]) for i in (0, 2))))
                    self.on_switch()
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()
                client.close()
