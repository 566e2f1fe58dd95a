"""The fleet's index of named guards' hold ends (``mem:guards:holds``, a ZSET written by the
``index_hold`` script after each named transition), as the prober and the operators read it.
Any value there fails open: a key of another type reads as empty, a name no guard can have is
taken out."""

from __future__ import annotations

import redis

from memguard.domain.guards import name_problem
from memguard.store.state import State


def due_guards(state: State, limit: int) -> list[str]:
    """The named guards whose hold or ramp has ended by Redis's clock (the fleet's index)."""
    plain = state.plain
    try:
        names = plain.scored_until(state.keys.holds, plain.time_ms(), limit)
    except redis.ResponseError:  # not a sorted set: the next named guard's transition repairs it
        return []
    wrong = [name for name in names if name_problem(name) is not None]
    if wrong:  # a hand ZADD: no guard has that name, so nothing will ever take it out
        plain.unscore(state.keys.holds, *wrong)
    return [name for name in names if name not in wrong]


def indexed_guards(state: State, limit: int = 1_000) -> list[str]:
    """The named guards in the fleet's index (held or recovering), soonest due first."""
    try:
        names = state.plain.lowest(state.keys.holds, limit)
    except redis.ResponseError:  # not a sorted set: as good as empty until it is repaired
        return []
    return [name for name in names if name_problem(name) is None]
