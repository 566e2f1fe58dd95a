"""memguard's key names in Redis (the first two are fixed by
memguard's design contract and by older code).

On one server the names below; on a Redis Cluster the same names with ``{mem}:`` for ``mem:``,
so that every script's keys share one hash slot. These are the guard ``default``'s keys; a named
guard (``memguard.domain.guards``) has the same keys under ``mem:g:<name>:`` (``{mem:g:<name>}:``
on a Cluster: one slot per guard) and its own change channel, ``mem:g:<name>:mode:changes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FORCED_MODE_KEY = "mem:mode:forced:v1"
RAMP_KEY = "mem:mode:ramp"  # the recovery ramp (memguard.domain.ramp); unknown to earlier releases
CHAOS_KEY = "mem:mode:chaos"  # a game day's experiment (memguard.domain.chaos); unknown to earlier releases
CONSECUTIVE_FAILURES_KEY = "mem:read:consec_failures"
VERSION_KEY = "mem:state:version"
PROBE_LOCK_KEY = "mem:probe:lock"
PROBE_HEARTBEAT_KEY = "mem:probe:heartbeat"
LATENCY_KEY = "mem:read:latency"
OUTCOMES_KEY = "mem:read:outcomes"
FAILING_HOSTS_KEY = "mem:read:failing_hosts"
AUTH_HOSTS_KEY = "mem:read:auth_failing_hosts"
AUDIT_KEY = "mem:audit"
NOTIFY_CURSOR_KEY = "mem:notify:cursor"
NOTIFY_STUCK_KEY = "mem:notify:stuck"
NOTIFY_LOCK_KEY = "mem:notify:lock"
HEARTBEAT_LOCK_KEY = "mem:watch:heartbeat"
EXPLAIN_LOCK_KEY = "mem:watch:explain"
# Named guards' hold ends (a ZSET: guard name -> the ms its hold or ramp ends), so the prober
# finds the due guards without scanning keys. One for the fleet, under the default's prefix.
HOLDS_KEY = "mem:guards:holds"
CHANGES_CHANNEL = "mem:mode:changes"
# The heartbeat's primary time ("<seconds>.<micros>"), for views on replicas to measure lag by.
CLOCK_CHANNEL = "mem:mode:clock"
# The read meter's windows, by their ``Keys`` field: what their scripts are told, and what a
# window that holds bad reads announces on the change channel (``hot <window>``).
LATENCY_WINDOW, OUTCOMES_WINDOW = "latency", "outcomes"
WINDOWS = (LATENCY_WINDOW, OUTCOMES_WINDOW)


# The Redis type memguard writes at each key (``Keys`` field names); any other is repaired.
KEY_TYPES = {
    "forced": "string", "ramp": "string", "chaos": "string", "counter": "string", "version": "string",
    "lock": "string", "heartbeat": "string",
    "latency": "hash", "outcomes": "hash", "failing_hosts": "set", "auth_hosts": "set", "audit": "stream",
    "notify_cursor": "string", "notify_stuck": "string", "notify_lock": "string", "heartbeat_lock": "string",
    "explain_lock": "string", "holds": "zset",
}


@dataclass(frozen=True)
class Keys:
    """The key names one process uses; ``Keys.under(prefix)`` gives a Cluster's."""

    forced: str = FORCED_MODE_KEY
    ramp: str = RAMP_KEY
    chaos: str = CHAOS_KEY
    counter: str = CONSECUTIVE_FAILURES_KEY
    version: str = VERSION_KEY
    lock: str = PROBE_LOCK_KEY
    heartbeat: str = PROBE_HEARTBEAT_KEY
    latency: str = LATENCY_KEY
    outcomes: str = OUTCOMES_KEY
    failing_hosts: str = FAILING_HOSTS_KEY
    auth_hosts: str = AUTH_HOSTS_KEY
    audit: str = AUDIT_KEY
    notify_cursor: str = NOTIFY_CURSOR_KEY
    notify_stuck: str = NOTIFY_STUCK_KEY
    notify_lock: str = NOTIFY_LOCK_KEY
    heartbeat_lock: str = HEARTBEAT_LOCK_KEY
    explain_lock: str = EXPLAIN_LOCK_KEY
    holds: str = HOLDS_KEY

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(**{f.name: prefix + str(f.default).removeprefix("mem:") for f in dataclasses.fields(cls)})

    @classmethod
    def for_guard(cls, name: str, prefix: str) -> Keys:
        """A guard's keys: ``default``'s are today's (``prefix`` is ``mem:`` or a Cluster's ``{mem}:``)."""
        if name == "default":
            return cls.under(prefix)
        own = cls.under(f"{{mem:g:{name}}}:" if prefix.startswith("{") else f"mem:g:{name}:")
        return dataclasses.replace(own, holds=cls.under(prefix).holds)  # the fleet's one index

    @property
    def prefix(self) -> str:
        return self.forced.removesuffix("mode:forced:v1")

    @property
    def channel(self) -> str:
        """Where the guard's transitions are announced (not a key: no hash tag on a Cluster)."""
        return self.prefix.replace("{", "").replace("}", "") + "mode:changes"
