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
    secs, micros = state.client.time()
    now_ms = int(secs) * 1000 + int(micros) // 1000
    try:
        due = state.client.zrangebyscore(state.keys.holds, "-inf", now_ms, start=0, num=limit)
    except redis.ResponseError:  # not a sorted set: the next named guard's transition repairs it
        return []
    names = [str(name) for name in due]
    wrong = [name for name in names if name_problem(name) is not None]
    if wrong:  # a hand ZADD: no guard has that name, so nothing will ever take it out
        state.client.zrem(state.keys.holds, *wrong)
    return [name for name in names if name not in wrong]


def indexed_guards(state: State, limit: int = 1_000) -> list[str]:
    """The named guards in the fleet's index (held or recovering), soonest due first."""
    try:
        names = [str(name) for name in state.client.zrange(state.keys.holds, 0, limit - 1)]
    except redis.ResponseError:  # not a sorted set: as good as empty until it is repaired
        return []
    return [name for name in names if name_problem(name) is None]
