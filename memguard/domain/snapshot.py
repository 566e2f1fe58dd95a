"""What one read of the state and one transition give back: plain values the store hands up.

Apart from ``record``, ``ramp`` and ``chaos`` (the records it carries), so that none imports
another.
"""

from __future__ import annotations

from dataclasses import dataclass

from memguard.domain.chaos import Chaos
from memguard.domain.ramp import Ramp
from memguard.domain.record import ForcedRecord, Status


@dataclass(frozen=True)
class Snapshot:
    """One round trip's read of the state, with the Redis clock then. Plain reads, not one
    atomic step: the version tells a view whether a notice has overtaken it."""

    record: ForcedRecord | None
    corrupt: str | None
    fail_count: int
    fail_ttl_ms: int
    redis_now: float
    probe_heartbeat: float | None = None  # Redis time of the prober's last tick, if recent
    version: int = 0  # of the last notice sent (writes that bypass the scripts do not bump it)
    record_ttl_ms: int = -2  # the record key's own expiry (-1: none), e.g. a hand SET ... EX
    fleet: int = 0  # connections subscribed to the change channel, as the server counts them
    ramp: Ramp | None = None  # the recovery ramp's record, if valid (it may have run its course)
    chaos: Chaos | None = None  # a game day's experiment, if valid (it may have run its course)


@dataclass(frozen=True)
class Transition:
    """What a script did: its status, the record it left and the one it replaced."""

    status: Status
    record: ForcedRecord | None = None
    previous: ForcedRecord | None = None
    fail_count: int = 0
    ident: str = ""
    ramp: Ramp | None = None  # the ramp this transition started, or the one it found complete
    waiting: bool = False  # a window script: its bad reads are judged after the catch-up
    due: float | None = None  # a probe claim with no hold: when a ramp or an experiment running ends
    chaos_ended: bool = False  # an operator's force or clear ended an experiment
