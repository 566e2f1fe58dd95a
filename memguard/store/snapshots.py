"""A snapshot parsed from what Redis answered: a round trip of plain reads, or an ``explain``
script's reply or message (``store/lua/explain.lua``). No I/O: the store reads, this parses.

A value memguard did not write is never an error here: it reads as no record (or a count of 0)
and is named in ``Snapshot.corrupt``, for the status line, the log and the next transition.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from memguard.domain.chaos import Chaos
from memguard.domain.ramp import Ramp
from memguard.domain.record import CorruptRecord, ForcedRecord, shown
from memguard.domain.snapshot import Snapshot
from memguard.store.keys import Keys

T = TypeVar("T")


def string_keys(keys: Keys) -> tuple[str, str, str, str, str]:
    """The string keys a snapshot reads, whose type it checks."""
    return keys.forced, keys.counter, keys.version, keys.ramp, keys.chaos


def whole(raw: str | None) -> int | None:
    """A counter's value: 0 when absent, None when it is not a whole number."""
    if raw is None:
        return 0
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def explained(keys: Keys, data: str) -> Snapshot | None:
    """The snapshot in an ``explain`` script's reply or message; None if it is not one."""
    try:
        s = json.loads(data)
        now, version = float(s["now"]) / 1000.0, int(s["version"])
        ttl, record_ttl = int(s["ttl"]), int(s["fttl"])
        raw, count, ramp, chaos = (None if s.get(f) is False else s.get(f)
                                   for f in ("forced", "count", "ramp", "chaos"))
        problems = [str(p) for p in s.get("problems") or ()]
        fleet = max(0, int(s.get("fleet") or 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not all(isinstance(v, str | None) for v in (raw, count, ramp, chaos)):
        return None
    return parse(keys, raw, count, None, str(version), ttl, record_ttl, now, problems, fleet=fleet, ramp=ramp,
                 chaos=chaos)


def parse(keys: Keys, raw: str | None, count: str | None, beat: str | None, version: str | None, ttl: int,
          record_ttl: int, now: float, problems: list[str], *, fleet: int = 0,
          ramp: str | None = None, chaos: str | None = None) -> Snapshot:
    """The snapshot of these values read at ``now`` (Redis time); ``problems``: found so far."""
    record = _checked(ForcedRecord.parse, raw, now, keys.forced, problems)
    ramp_record = _checked(Ramp.parse, ramp, now, keys.ramp, problems)
    chaos_record = _checked(Chaos.parse, chaos, now, keys.chaos, problems)
    fail_count = whole(count)
    if fail_count is None:
        problems.append(f"{keys.counter} is not a whole number: {shown(count)}")
    if whole(version) is None:
        problems.append(f"{keys.version} is not a whole number: {shown(version)}")
    heartbeat = int(beat) / 1000.0 if beat and beat.isdigit() and len(beat) < 20 else None
    return Snapshot(record, "; ".join(problems) or None, fail_count or 0, ttl, now, heartbeat,
                    whole(version) or 0, record_ttl, fleet, ramp_record, chaos_record)


def _checked(parse: Callable[[str, float], T], raw: str | None, now: float, key: str,
             problems: list[str]) -> T | None:
    """The record at ``key`` read as ``raw`` (an empty string too: memguard never writes one), or
    None, with what is wrong with it added to ``problems``."""
    if raw is None:
        return None
    try:
        return parse(raw, now)
    except CorruptRecord as exc:
        problems.append(f"{key}: {exc}")
        return None
