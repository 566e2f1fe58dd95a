"""A game day's experiment: a share of conversations' reads fail, fleet-wide, for a bounded time.

An operator starts one (``memguard chaos start``); it is a record beside the forced record and
the ramp, carried by every view like the ramp, so a read decides with no I/O whether it is
picked, by the ramp's keyed hash of the conversation with the experiment's id:

    picked  <=>  hash(experiment id, thread id) / 2**64 < share

so the same conversations are affected in every process for the experiment's whole life. Only
a process whose own setting allows it (``MEMGUARD_CHAOS=allow``) injects; the rest ignore it.

The validity rule of a record is here and, word for word, in the scripts' prelude
(``store/lua/prelude.lua``, ``decode_chaos``): a JSON object with ``id`` and ``start`` as a
ramp's (``memguard.domain.ramp.keyed_problem``), ``fault`` one of the faults below in its
canonical text, ``percent`` in (0, 100], ``seconds`` in [``MIN_SECONDS``, ``MAX_SECONDS``], and
optional ``trip`` (a boolean) and ``by`` (an object). Anything else is no experiment: reads go
on, status names the problem, and the next probe tick, operator force or clear removes it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from memguard.domain.ramp import keyed_problem
from memguard.domain.record import finite, parsed_or_none, shown, valid

MIN_SECONDS, MAX_SECONDS = 5, 3600
MAX_LATENCY_MS = 60_000
MAX_INPUT_CHARS = 32  # an operator's --fault, --share or --for: longer is refused unread
FAULTS = ("timeout", "error:<500-599>", "latency:<1-60000>ms", "auth")
FAULT_KINDS = ("timeout", "error", "latency", "auth")  # memory_chaos_injected_total's fault label
_FAULT = re.compile(r"(timeout|auth|error:(5[0-9][0-9])|latency:([1-9][0-9]{0,4})ms)")  # ASCII, as Lua's %d
_SHARE = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,2})?)%?")
_DURATION = re.compile(r"([1-9][0-9]{0,4})(s|m|h)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
_WHOLE = 2.0 ** 64


@dataclass(frozen=True)
class Fault:
    """What a picked read gets: the HTTP status it fails with (none for a timeout or a delay)."""

    text: str  # canonical: timeout, auth, error:503, latency:300ms
    kind: str  # timeout, auth, error, latency
    status: int | None = None
    delay_ms: int = 0


def parse_fault(raw: Any) -> Fault:
    """The fault ``raw`` names; ValueError says what is wrong."""
    if not isinstance(raw, str) or len(raw) > MAX_INPUT_CHARS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, got {shown(raw)}")
    m = _FAULT.fullmatch(raw.strip().lower())
    if m is None:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, got {shown(raw)}")
    if m.group(2):
        return Fault(m.group(1), "error", status=int(m.group(2)))
    if m.group(3):
        ms = int(m.group(3))
        if ms > MAX_LATENCY_MS:
            raise ValueError(f"fault latency must be 1 to {MAX_LATENCY_MS} ms, got {ms}")
        return Fault(m.group(1), "latency", delay_ms=ms)
    return Fault(m.group(1), m.group(1), status=401 if m.group(1) == "auth" else None)


def parse_share(raw: Any) -> float:
    """A share as an operator writes it (``30%``, ``30``, 12.5), in percent: (0, 100]."""
    text = raw if isinstance(raw, str) else str(raw) if isinstance(raw, int | float) \
        and not isinstance(raw, bool) else None
    m = _SHARE.fullmatch(text.strip()) if text is not None and len(text) <= MAX_INPUT_CHARS else None
    if m is None or not 0 < float(m.group(1)) <= 100:
        raise ValueError(f"share must be a percentage above 0 and at most 100 (30% or 30), got {shown(raw)}")
    return float(m.group(1))


def parse_duration(raw: Any) -> int:
    """An experiment's length as an operator writes it (``90s``, ``10m``, ``1h``, or seconds)."""
    text = str(raw) + "s" if isinstance(raw, int) and not isinstance(raw, bool) else raw
    m = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) and len(text) <= MAX_INPUT_CHARS \
        else None
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)] if m is not None else None
    if seconds is None or not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ValueError(f"duration must be {MIN_SECONDS} s to {MAX_SECONDS // 3600} h (90s, 10m or 1h), "
                         f"got {shown(raw)}")
    return seconds


def chaos_problem(data: Any, now: float | None) -> str | None:
    """Why ``data`` (a decoded record) is not a valid experiment, or None. ``now``: the Redis clock."""
    if (problem := keyed_problem(data, now)) is not None:
        return problem
    fault = data.get("fault")
    try:
        if parse_fault(fault).text != fault:
            return f"fault is not in its canonical form: {shown(fault)}"
    except ValueError as exc:
        return str(exc)
    percent, seconds = data.get("percent"), data.get("seconds")
    if not finite(percent) or not 0 < percent <= 100:
        return f"percent is not a number in (0, 100]: {shown(percent)}"
    if not finite(seconds) or not MIN_SECONDS <= seconds <= MAX_SECONDS:
        return f"seconds is not a number in [{MIN_SECONDS}, {MAX_SECONDS}]: {shown(seconds)}"
    if data.get("trip") is not None and not isinstance(data.get("trip"), bool):
        return f"trip is not true or false: {shown(data.get('trip'))}"
    if data.get("by") is not None and not (isinstance(data["by"], dict) or data["by"] == []):
        return f"by is not an object: {shown(data['by'])}"
    return None


@dataclass(frozen=True)
class Chaos:
    """An experiment's record as stored in Redis (times are Redis epoch seconds)."""

    id: str
    fault: Fault
    percent: float
    start: float
    seconds: float
    trip: bool
    by: dict[str, Any]

    @classmethod
    def parse(cls, raw: str, now: float | None = None) -> Chaos:
        """The experiment in ``raw``; raises ``CorruptRecord`` saying what is wrong."""
        data = valid(raw, now, chaos_problem)
        return cls(data["id"], parse_fault(data["fault"]), float(data["percent"]), float(data["start"]),
                   float(data["seconds"]), data.get("trip") is True, data.get("by") or {})

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "fault": self.fault.text, "share_percent": self.percent, "trip": self.trip,
                "start": self.start, "end": self.end, "seconds_left": round(max(0.0, self.end - now), 1),
                "by": self.by}


def parse_chaos(raw: str | None, now: float | None = None) -> Chaos | None:
    """The experiment in ``raw``, or None when there is none or it is not valid."""
    return parsed_or_none(Chaos.parse, raw, now)


@dataclass(frozen=True, eq=False)
class LocalChaos:
    """An experiment on this process's monotonic clock: what a read decides with. Its end is
    fixed when the process learns of it, so it ends in every process at its end, with or
    without a message."""

    chaos: Chaos
    hasher: Any  # blake2b keyed with the experiment id, ready to copy
    mono_end: float
    bound: float  # a position below it is picked

    @classmethod
    def at(cls, chaos: Chaos, redis_now: float, mono_now: float) -> LocalChaos:
        key = chaos.id.encode("utf-8", "surrogatepass")
        return cls(chaos, hashlib.blake2b(digest_size=8, key=key), mono_now + (chaos.end - redis_now),
                   chaos.percent / 100.0 * _WHOLE)

    def picked(self, thread_id: str, mono: float) -> Fault | None:
        """The fault this conversation's read gets at ``mono``, or None."""
        if mono >= self.mono_end:
            return None
        h = self.hasher.copy()
        h.update(thread_id.encode("utf-8", "surrogatepass"))
        return self.chaos.fault if int.from_bytes(h.digest(), "big") < self.bound else None


@dataclass(frozen=True)
class Injection:
    """What a picked read does: wait ``delay`` seconds, then answer with the fault (``answers``:
    the read never reaches Zep) or read Zep. ``trip``: the fault counts toward a trip as the
    real one would, and the meter and the read budget see the delay (``counted``)."""

    fault: Fault
    delay: float
    answers: bool
    status: int | None  # the answer's HTTP status; None: a timeout
    trip: bool

    @classmethod
    def of(cls, fault: Fault, budget_s: float, trip: bool) -> Injection:
        """A fault as the real one would happen on a read with ``budget_s``: a delay shorter than
        the budget, then the read; a timeout (or a longer delay) at the budget; an error at once."""
        if fault.kind == "latency" and fault.delay_ms / 1000 < budget_s:
            return cls(fault, fault.delay_ms / 1000, False, None, trip)
        if fault.kind in ("latency", "timeout"):
            return cls(fault, budget_s, True, None, trip)
        return cls(fault, 0.0, True, fault.status, trip)

    @property
    def counted(self) -> float:
        return self.delay if self.trip else 0.0
