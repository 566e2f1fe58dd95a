"""The recovery ramp: after a hold ends, a growing share of conversations reads Zep again.

A Zep that has just recovered, often with cold caches, would otherwise take the whole fleet's
traffic at once, trip again and make the fleet flap with the hold as its period. So the end of
a hold (a probe's success, an operator's clear, a lapse) writes a ramp record beside the
forced record, and each read decides alone, with no I/O, whether it is admitted:

    share(t) = max(min_percent / 100, (t / seconds) ** (1 / aggression))   (Envoy's slow start)

    admitted  <=>  hash(ramp id, thread id) / 2**64 < share(t)

``t`` runs on the Redis clock (the record's ``start``), so every process decides the same for
the same conversation at the same moment; the share only grows, so a conversation once
admitted stays admitted; a new ramp id gives each ramp another order. Until the ramp ends it is
the half-open state: a trip then is ``ramp_failed`` and keeps the back-off growing.

The validity rule of a ramp record is here and, word for word, in the scripts' prelude
(``store/lua/prelude.lua``, ``decode_ramp``): a JSON object with ``id`` a string of 1 to
``MAX_ID_BYTES``, ``start`` a finite number at most ``CLOCK_SKEW_S`` ahead of the Redis clock,
``seconds`` in (0, ``MAX_RAMP_SECONDS``], ``min_percent`` in [0, 100], ``aggression`` in
[``MIN_AGGRESSION``, ``MAX_AGGRESSION``], and optional fields of their own types (``null``
counts as absent): ``holds`` a whole number >= 1, ``since`` finite, ``reason`` and
``previous_reason`` strings of at most ``MAX_REASON_BYTES``. Anything else is no ramp: reads
are all admitted (fail open), status names the problem, and the next transition replaces it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from memguard.domain.record import finite, optional_problem, parsed_or_none, shown, valid

MAX_RAMP_SECONDS = 3600
MAX_ID_BYTES = 64  # a blake2b key is at most 64 bytes
CLOCK_SKEW_S = 5  # a ramp never starts later than now: its writer read the Redis clock
MIN_AGGRESSION, MAX_AGGRESSION = 0.1, 10.0
_WHOLE = 2.0 ** 64


def keyed_problem(data: Any, now: float | None) -> str | None:
    """The part of the rule every record read through ``position``'s keyed hash shares (a ramp,
    a game day's experiment): a JSON object whose ``id`` keys the hash and whose ``start`` is on
    the Redis clock (``now``). None when that part holds."""
    if not isinstance(data, dict):
        return f"not a JSON object: {shown(data)}"
    rid = data.get("id")
    if not (isinstance(rid, str) and 1 <= len(rid.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES):
        return f"id is not a string of 1 to {MAX_ID_BYTES} bytes: {shown(rid)}"
    start = data.get("start")
    if not finite(start):
        return f"start is not a finite number: {shown(start)}"
    if now is not None and start > now + CLOCK_SKEW_S:
        return f"start is {start - now:.0f} s ahead of the Redis clock"
    return None


def ramp_problem(data: Any, now: float | None) -> str | None:
    """Why ``data`` (a decoded ramp record) is not valid, or None. ``now``: the Redis clock."""
    if (problem := keyed_problem(data, now)) is not None:
        return problem
    for name, lo, hi, low_open in (("seconds", 0, MAX_RAMP_SECONDS, True), ("min_percent", 0, 100, False),
                                   ("aggression", MIN_AGGRESSION, MAX_AGGRESSION, False)):
        value = data.get(name)
        if not finite(value) or value > hi or value < lo or (low_open and value <= lo):
            return f"{name} is not a number in {'(' if low_open else '['}{lo:g}, {hi:g}]: {shown(value)}"
    return optional_problem(data, ("since",), ("reason", "previous_reason"))


@dataclass(frozen=True)
class Ramp:
    """A ramp record as stored in Redis (times are Redis epoch seconds)."""

    id: str
    start: float
    seconds: float
    min_percent: float
    aggression: float
    holds: int
    since: float
    reason: str  # what ended the hold: probe_success, manual_clear, lapsed
    previous_reason: str  # the hold's own reason

    @classmethod
    def parse(cls, raw: str, now: float | None = None) -> Ramp:
        """The ramp in ``raw``; raises ``CorruptRecord`` saying what is wrong."""
        data = valid(raw, now, ramp_problem)
        start = float(data["start"])
        return cls(id=data["id"], start=start, seconds=float(data["seconds"]),
                   min_percent=float(data["min_percent"]), aggression=float(data["aggression"]),
                   holds=int(data.get("holds") or 1),
                   since=float(data["since"]) if data.get("since") is not None else start,
                   reason=data.get("reason") or "unknown",
                   previous_reason=data.get("previous_reason") or "unknown")

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.end - now)

    def share(self, now: float) -> float:
        """The share of conversations admitted at ``now`` (Redis seconds), 0 to 1."""
        return share(now - self.start, self.seconds, self.min_percent, self.aggression)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "start": self.start, "seconds": self.seconds,
                "share_percent": round(100 * self.share(now), 1),
                "seconds_left": round(self.seconds_left(now), 1), "min_percent": self.min_percent,
                "aggression": self.aggression, "holds": self.holds, "reason": self.reason,
                "previous_reason": self.previous_reason}


def share(elapsed: float, seconds: float, min_percent: float, aggression: float) -> float:
    """Envoy's slow-start curve: ``max(min, (t / window) ** (1 / aggression))``, 1 from the end."""
    if elapsed >= seconds:
        return 1.0
    return max(min_percent / 100.0, (max(0.0, elapsed) / seconds) ** (1.0 / aggression))


def position(ramp_id: bytes, thread_id: str) -> float:
    """Where a conversation stands in a ramp's order, in [0, 1): the same in every process."""
    digest = hashlib.blake2b(thread_id.encode("utf-8", "surrogatepass"), digest_size=8, key=ramp_id).digest()
    return int.from_bytes(digest, "big") / _WHOLE


@dataclass(frozen=True, eq=False)
class LocalRamp:
    """A ramp on this process's monotonic clock: what a read decides with, and nothing else.

    ``mono_start`` is fixed when the process first learns of the ramp (``at``), so within a
    process the share only grows and an admitted conversation stays admitted. The keyed hash
    is set up once per ramp: a read only copies it (the decision costs about a microsecond)."""

    ramp: Ramp
    hasher: Any  # blake2b keyed with the ramp id: ``position``'s, ready to copy
    mono_start: float
    seconds: float
    min_share: float
    exponent: float

    @classmethod
    def at(cls, ramp: Ramp, redis_now: float, mono_now: float) -> LocalRamp:
        key = ramp.id.encode("utf-8", "surrogatepass")
        return cls(ramp, hashlib.blake2b(digest_size=8, key=key), mono_now - (redis_now - ramp.start),
                   ramp.seconds, ramp.min_percent / 100.0, 1.0 / ramp.aggression)

    def share(self, mono: float) -> float:
        elapsed = mono - self.mono_start
        return share(elapsed, self.seconds, self.min_share * 100, 1.0 / self.exponent)

    def held(self, thread_id: str, mono: float) -> float | None:
        """The share that leaves ``thread_id`` out at ``mono``, or None: it is admitted.
        ``share`` and ``position`` written out, since every read in a ramp runs this."""
        elapsed = mono - self.mono_start
        if elapsed >= self.seconds:
            return None
        now = elapsed / self.seconds if elapsed > 0 else 0.0
        if self.exponent != 1.0:
            now **= self.exponent
        if now < self.min_share:
            now = self.min_share
        h = self.hasher.copy()
        h.update(thread_id.encode("utf-8", "surrogatepass"))
        return None if int.from_bytes(h.digest(), "big") < now * _WHOLE else now


def parse_ramp(raw: str | None, now: float | None = None) -> Ramp | None:
    """The ramp in ``raw``, or None when there is none or it is not valid."""
    return parsed_or_none(Ramp.parse, raw, now)
