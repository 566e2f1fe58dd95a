"""The request-path entry points: guarded reads (memguard's own and the application's).

Both resolve the process's guard at call time, so a function decorated at import is
correct in a forked child and after ``runtime.configure``. Neither raises what Zep, Redis
or a bad configuration raised: the value is ``None`` and ``meta`` says why.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from memguard import events, runtime
from memguard.modes import EffectiveMode
from memguard.settings import SettingsError

P = ParamSpec("P")
R = TypeVar("R")
Meta = dict[str, Any]


def fetch_thread_context(thread_id: str) -> tuple[str | None, Meta]:
    """Return (context | None, meta) from memguard's own Zep reader.

    While the fleet is forced to write_only this returns ``(None, meta)`` at once with
    ``meta["source"] == "write_only_forced"`` and makes no call to Zep.
    """
    try:
        rt = runtime.get()
        reader = rt.reader
    except SettingsError as exc:
        return None, _config_error(exc)
    timeout_s = rt.settings.read_timeout_s
    return rt.guard.call(thread_id, reader.read_context, (thread_id, timeout_s), budget_s=timeout_s)


@overload
def guarded(fn: Callable[P, R], /) -> Callable[P, tuple[R | None, Meta]]: ...


@overload
def guarded(
    *, timeout_ms: int | None = None
) -> Callable[[Callable[P, R]], Callable[P, tuple[R | None, Meta]]]: ...


def guarded(fn: Callable[..., Any] | None = None, /, *, timeout_ms: int | None = None) -> Any:
    """Guard an application's own read ``fn(thread_id, ...)``; it then returns (value | None, meta).

    Usable bare (``@memguard.guarded``) or with a per-read budget
    (``@memguard.guarded(timeout_ms=300)``, default ``MEMORY_ZEP_READ_TIMEOUT_MS``): a read
    that returns but overran it counts as a ``timeout`` failure, and the caller still gets
    its value.
    """
    if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int)
                                   or timeout_ms <= 0):
        raise ValueError(f"guarded(timeout_ms=...) must be a positive whole number, got {timeout_ms!r}")

    def decorate(read: Callable[..., Any]) -> Callable[..., Any]:
        first = next(iter(inspect.signature(read).parameters), None)

        @functools.wraps(read)
        def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, Meta]:
            thread_id = str(args[0] if args else kwargs.get(first, ""))
            try:
                rt = runtime.get()
            except SettingsError as exc:
                return None, _config_error(exc)
            budget_ms = timeout_ms or rt.settings.read_timeout_ms
            return rt.guard.call(thread_id, read, args, kwargs, budget_s=budget_ms / 1000.0)

        return wrapper

    return decorate if fn is None else decorate(fn)


def _config_error(exc: SettingsError) -> Meta:
    events.emit(events.GuardTrouble("config_error", "read", str(exc)))
    return {"used": False, "source": "config_error", "error": str(exc)}


def add_messages(thread_id: str, messages: Sequence[dict[str, str]]) -> bool:
    """Write messages to Zep unless FLAG_ZEP_WRITE is off; a forced write_only never blocks writes.

    Errors from Zep and a bad configuration are raised: the caller decides whether a lost
    write matters.
    """
    rt = runtime.get()
    if rt.state.base is EffectiveMode.OFF:
        return False
    rt.reader.add_messages(thread_id, messages)
    return True
