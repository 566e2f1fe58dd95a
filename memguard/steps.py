"""One implementation of the request path for blocking and asyncio callers.

The guard's logic (and the state transitions it asks for) is written once, as generators
that yield what they need done — a Redis script, the snapshot read, the application's own
read — and get back the result, or have the exception thrown in where they yielded. ``run``
performs those steps with the blocking Redis client and plain calls; ``arun`` with
``redis.asyncio`` and ``await``. So classification, triggers, events and fail-open handling
cannot drift apart between the two: there is one copy of each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Script:
    """Run the transition script ``name`` with these arguments (after the change channel)."""

    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class ReadSnapshot:
    """The snapshot's plain reads, in one round trip."""


@dataclass(frozen=True)
class Read:
    """The application's read: ``fn(*args, **kwargs)``, awaited when it returns an awaitable."""

    fn: Callable[..., Any]
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


Step = Script | ReadSnapshot | Read
Steps = Generator[Step, Any, T]


def run(steps: Steps[T], perform: Callable[[Step], Any]) -> T:
    """Drive ``steps`` to its result, performing each step as a blocking call."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        try:
            value, error = perform(step), None
        except Exception as exc:
            value, error = None, exc


async def arun(steps: Steps[T], perform: Callable[[Step], Awaitable[Any]]) -> T:
    """Drive ``steps`` to its result, awaiting each step."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        try:
            value, error = await perform(step), None
        except Exception as exc:
            value, error = None, exc
