"""The request-path entry points: guarded reads (memguard's own and the application's).

Both resolve the process's guard at call time (``memguard.process.get``), so a function
decorated at import is correct in a forked child and after ``process.configure``. Neither
raises what Zep, Redis or a bad configuration raised: the value is ``None`` and ``meta`` says
why. Nor what memguard itself raised (a bug, a missing package file): the read then runs
unguarded, the fault is counted and logged, and ``meta["guard_error"]`` names its type.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable, Coroutine
from types import ModuleType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

from memguard.config.settings import SettingsError
from memguard.domain import events
from memguard.domain.guards import DEFAULT, GuardError, check_name

if TYPE_CHECKING:
    from memguard.process import Process
    from memguard.request.guard import Guard
    from memguard.request.zep import Readers

P = ParamSpec("P")
R = TypeVar("R")
Meta = dict[str, Any]
GuardName = str | Callable[..., str]


class _Decorator(Protocol):
    @overload
    def __call__(  # type: ignore[overload-overlap]  # a coroutine function is also a callable
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, tuple[R | None, Meta]]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, tuple[R | None, Meta]]: ...


_process: ModuleType | None = None


def _wiring() -> ModuleType:
    """``memguard.process``, imported on first use: decorating a function or importing memguard
    loads neither Redis nor the rest of the wiring."""
    global _process
    if _process is None:
        from memguard import process

        _process = process
    return _process


def _get() -> Process:
    return _wiring().get()


def _get_for_asyncio() -> Process:
    from memguard.request.zep import gc_quiet, prime_async_transport

    with gc_quiet():
        proc = _get()
        prime_async_transport()  # an application's own async HTTP client will want it too
    return proc


async def _aget() -> Process:
    """The process; the first time, imported and built in a worker thread, off the event loop."""
    module = sys.modules.get("memguard.process")
    proc = module.current() if module is not None else None
    return proc if proc is not None else await asyncio.to_thread(_get_for_asyncio)


async def awarm_up() -> None:
    """Build the process and this event loop's Zep reader off the loop, at start-up (FastAPI's
    lifespan, say), so no request waits for them. Optional: the first read does the same, also
    off the loop. Raises ``SettingsError`` naming a bad setting, which at start-up is wanted."""
    proc = await _aget()
    await proc.readers.aget()


def fetch_thread_context(thread_id: str) -> tuple[str | None, Meta]:
    """Return (context | None, meta) from memguard's own Zep reader.

    While the fleet is forced to write_only this returns ``(None, meta)`` at once with
    ``meta["source"] == "write_only_forced"`` and makes no call to Zep.
    """
    try:
        proc = _get()
        reader = proc.readers.get()
        timeout_s = proc.settings.read_timeout_s
    except SettingsError as exc:
        return None, _config_error(exc)
    except Exception as fault:
        return _unguarded(fault, lambda: _bare_read(thread_id))
    result = proc.guard.call(thread_id, reader.read_context, (thread_id, timeout_s), budget_s=timeout_s)
    return _told(proc, proc.guard.name, result)


async def afetch_thread_context(thread_id: str) -> tuple[str | None, Meta]:
    """``fetch_thread_context`` for asyncio code, with Zep's async client on the running loop.

    The same contract and the same fleet state; the healthy path makes no Redis round trip,
    and nothing here blocks the loop: the first call builds the process and imports the SDK in a
    worker thread, and failures are recorded with ``redis.asyncio``.
    """
    try:
        proc = await _aget()
        reader = await proc.readers.aget()
        timeout_s = proc.settings.read_timeout_s
    except SettingsError as exc:
        return None, _config_error(exc)
    except Exception as fault:
        return await _aunguarded(fault, lambda: _abare_read(thread_id))
    result = await proc.guard.acall(thread_id, reader.read_context, (thread_id, timeout_s),
                                    budget_s=timeout_s)
    return _told(proc, proc.guard.name, result)


@overload
def guarded(  # type: ignore[overload-overlap]  # a coroutine function is also a callable
    fn: Callable[P, Coroutine[Any, Any, R]], /
) -> Callable[P, Coroutine[Any, Any, tuple[R | None, Meta]]]: ...


@overload
def guarded(fn: Callable[P, R], /) -> Callable[P, tuple[R | None, Meta]]: ...


@overload
def guarded(*, timeout_ms: int | None = None, guard: GuardName = DEFAULT) -> _Decorator: ...


def guarded(fn: Callable[..., Any] | None = None, /, *, timeout_ms: int | None = None,
            guard: GuardName = DEFAULT) -> Any:
    """Guard an application's own read ``fn(thread_id, ...)``; it then returns (value | None, meta).

    Usable bare (``@memguard.guarded``) or with a per-read budget
    (``@memguard.guarded(timeout_ms=300)``, default ``MEMORY_ZEP_READ_TIMEOUT_MS``): a read
    that returns but overran it counts as a ``timeout`` failure, and the caller still gets
    its value. On an ``async def`` read the wrapper is a coroutine function too, and the
    guard's own Redis work is awaited (``redis.asyncio``).

    ``guard`` names a declared guard (``memguard.declare``), refused here if it is not one; or
    is a function of the read's arguments returning the name per call. A name a call gives
    that is not declared (or a function that raises) sends that read to the guard ``default``,
    told once per name, and ``meta["unknown_guard"]`` says so.
    """
    if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int)
                                   or timeout_ms <= 0):
        raise ValueError(f"guarded(timeout_ms=...) must be a positive whole number, got {timeout_ms!r}")
    _check_guard(guard)

    def decorate(read: Callable[..., Any]) -> Callable[..., Any]:
        first = next(iter(inspect.signature(read).parameters), None)

        def resolve(proc: Process, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, float]:
            """The thread id and the read's budget."""
            thread_id = str(args[0] if args else kwargs.get(first or "", ""))
            return thread_id, (timeout_ms or proc.settings.read_timeout_ms) / 1000.0

        def pick(proc: Process, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Guard, Meta]:
            """The read's guard, and the meta to add when the name it gave was not a guard's."""
            if callable(guard):
                try:
                    name: object = guard(*args, **kwargs)
                except Exception as exc:  # the application's function: its fault goes to default
                    name = exc
            else:
                name = guard
            chosen, unknown = proc.units.for_read(name)
            return chosen, {} if unknown is None else {"unknown_guard": unknown}

        def merged(result: tuple[Any, Meta], extra: Meta) -> tuple[Any, Meta]:
            return (result[0], {**result[1], **extra}) if extra else result

        if inspect.iscoroutinefunction(read):

            @functools.wraps(read)
            async def awrapper(*args: Any, **kwargs: Any) -> tuple[Any, Meta]:
                try:
                    proc = await _aget()
                    thread_id, budget_s = resolve(proc, args, kwargs)
                    chosen, extra = pick(proc, args, kwargs)
                except SettingsError as exc:
                    return None, _config_error(exc)
                except Exception as fault:
                    return await _aunguarded(fault, lambda: read(*args, **kwargs))
                result = await chosen.acall(thread_id, read, args, kwargs, budget_s=budget_s)
                return _told(proc, chosen.name, merged(result, extra))

            return awrapper

        @functools.wraps(read)
        def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, Meta]:
            try:
                proc = _get()
                thread_id, budget_s = resolve(proc, args, kwargs)
                chosen, extra = pick(proc, args, kwargs)
            except SettingsError as exc:
                return None, _config_error(exc)
            except Exception as fault:
                return _unguarded(fault, lambda: read(*args, **kwargs))
            result = chosen.call(thread_id, read, args, kwargs, budget_s=budget_s)
            return _told(proc, chosen.name, merged(result, extra))

        return wrapper

    return decorate if fn is None else decorate(fn)


def _check_guard(guard: object) -> None:
    """A static guard name must be declared already (a typo fails here, at import, not in
    production); anything else must be a function of the read's arguments."""
    if callable(guard):
        return
    from memguard.domain.declared import registry

    check_name(guard)
    if registry.resolve(guard) is None:  # type: ignore[arg-type]
        raise GuardError(f"guard {guard!r} is not declared: call memguard.declare({guard!r}, ...) "
                         "before decorating a read with it")


def _told(proc: Process, guard: str, result: tuple[R | None, Meta]) -> tuple[R | None, Meta]:
    """``result``, its outcome put on the caller's span first (OpenTelemetry, when fed); a fault
    doing so is counted and logged, and the caller still gets the result."""
    if proc.telemetry is not None:
        try:
            proc.annotate(result[1], guard)
        except Exception as fault:
            with contextlib.suppress(Exception):
                proc.state.hooks.emit(events.internal("annotate", fault))
    return result


def _config_error(exc: SettingsError) -> Meta:
    _wiring().hooks.emit(events.GuardTrouble("config_error", "read", str(exc)))
    return {"used": False, "source": "config_error", "error": str(exc)}


# -- when memguard cannot guard: the read runs unguarded -------------------------------------

_bare: Readers | None = None
_unreported: set[str] = set()  # fault types told on stderr when not even the hooks could be had


def _bare_readers() -> Readers:
    """memguard's own Zep readers without the process (whose building failed)."""
    global _bare
    if _bare is None:
        from memguard.request.zep import Readers

        _bare = Readers(_wiring().settings())
    return _bare


def _bare_read(thread_id: str) -> str | None:
    readers = _bare_readers()
    return readers.get().read_context(thread_id, readers.settings.read_timeout_s)


async def _abare_read(thread_id: str) -> str | None:
    readers = _bare_readers()
    return await (await readers.aget()).read_context(thread_id, readers.settings.read_timeout_s)


def _report(fault: Exception) -> Meta:
    """Count and log a fault of memguard's own (building the process, say); the meta to add."""
    trouble = events.internal("build", fault)
    try:
        _wiring().hooks.emit(trouble)
        _wiring().hooks.emit(events.ReadUnguarded())  # the read goes on without a guard: counted
    except Exception:  # not even the wiring imports: say so once per type, where it can be seen
        name = type(fault).__name__
        if name not in _unreported and len(_unreported) < 64:
            _unreported.add(name)
            print(f"memguard: internal error, reads go on unguarded: {trouble.detail}", file=sys.stderr)
    return {"guard_error": type(fault).__name__}


def _unguarded(fault: Exception, read: Callable[[], R]) -> tuple[R | None, Meta]:
    """The read with no guard around it: memguard could not be had for it (``_aunguarded`` is
    this, awaited)."""
    meta = _report(fault)
    try:
        value = read()
    except Exception as exc:
        return None, {**_error_meta(exc), **meta}
    return value, {"used": True, "source": "zep", **meta}


async def _aunguarded(fault: Exception, read: Callable[[], Awaitable[R]]) -> tuple[R | None, Meta]:
    """``_unguarded``, awaited."""
    meta = _report(fault)
    try:
        value = await read()
    except Exception as exc:
        return None, {**_error_meta(exc), **meta}
    return value, {"used": True, "source": "zep", **meta}


def _error_meta(exc: Exception) -> Meta:
    if isinstance(exc, SettingsError):  # memguard's own reader cannot be made
        return _config_error(exc)
    from memguard.domain.classify import error_meta  # pure: the fault path's only import

    return error_meta(exc)
