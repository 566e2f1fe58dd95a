"""The Zep client adapter: memguard's own read of thread context over either real SDK.

memguard turns client retries off (one read is one attempt, one failure is counted once)
and passes the timeout on every call: zep-python ignores an httpx client's own timeout.
The last HTTP status (and Retry-After) of a read is attached to the exception it raised
(``classify.RESPONSE_ATTR``), so that zep-python's raw ``JSONDecodeError`` on a non-JSON
error body can still be classified by status, and a 429's Retry-After is known although
zep-python's ``ApiError`` carries no headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from memguard.config.settings import Settings, SettingsError
from memguard.domain.classify import RESPONSE_ATTR

if TYPE_CHECKING:  # httpx and the SDKs are imported when a reader is made
    import httpx

# (status, Retry-After header) of the last Zep response seen in this thread/context.
_last_response: contextvars.ContextVar[tuple[int, str | None] | None] = contextvars.ContextVar(
    "memguard_zep_last_response", default=None
)


@contextlib.contextmanager
def _attributed() -> Iterator[None]:
    """One read: nothing remembered from an earlier one; a failure carries this read's last
    response (status, Retry-After) for ``classify``."""
    _last_response.set(None)
    try:
        yield
    except Exception as exc:
        last = _last_response.get()
        if last is not None:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, RESPONSE_ATTR, last)
        raise


def _remember_status(response: httpx.Response) -> None:
    _last_response.set((response.status_code, response.headers.get("retry-after")))


async def _aremember_status(response: httpx.Response) -> None:
    _remember_status(response)


class ZepReader(Protocol):
    def read_context(self, thread_id: str, timeout_s: float) -> str | None: ...


class AsyncZepReader(Protocol):
    async def read_context(self, thread_id: str, timeout_s: float) -> str | None: ...


def _http(timeout_s: float) -> httpx.Client:
    import httpx

    return httpx.Client(timeout=timeout_s, event_hooks={"response": [_remember_status]})


def _ahttp(timeout_s: float) -> httpx.AsyncClient:
    import httpx

    return httpx.AsyncClient(timeout=timeout_s, event_hooks={"response": [_aremember_status]})


def _memory_text(memory: Any) -> str | None:
    """zep-python's memory as text: its context, else its messages one per line."""
    data = memory.dict()
    if data.get("context"):
        return str(data["context"])
    lines = [f"{m.get('role') or m.get('role_type')}: {m.get('content')}" for m in data.get("messages") or []]
    return "\n".join(lines) if lines else None


def _pin_root(client: Any, root_url: str) -> None:
    """zep-python prefers the process's ZEP_API_URL over base_url; pin the configured root."""
    wrapper = client._client_wrapper
    wrapper._base_url = wrapper.httpx_client.base_url = f"{root_url}/api/v2"


@contextlib.contextmanager
def gc_quiet() -> Iterator[None]:
    """For a worker thread importing for an event loop: no garbage collection meanwhile, and what
    the imports made is then moved to the permanent generation (``gc.freeze``).

    A full collection holds the GIL for tens of milliseconds while it walks every object, so
    one that an import triggers stalls the loop just as an import on the loop would. Modules
    and their objects live as long as the process: freezing them only spares every later
    collection the walk (``gc.unfreeze()`` undoes it). An application that turned the
    collector off keeps it off, unfrozen."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()


def prime_async_transport() -> None:
    """Import what an httpx ``AsyncClient`` imports on its first request (anyio's asyncio
    backend), so that a worker thread pays for it and not the event loop."""
    with contextlib.suppress(ImportError):
        import anyio._backends._asyncio  # noqa: F401
        import httpcore._async.connection_pool  # noqa: F401


def _options(timeout_s: float) -> Any:
    """Each SDK's ``RequestOptions`` (a TypedDict of its own): one attempt, this timeout."""
    return {"timeout_in_seconds": timeout_s, "max_retries": 0}


class ZepPythonReader:
    """zep-python 2.x: ``memory.get`` = GET {root}/api/v2/sessions/{id}/memory."""

    def __init__(self, root_url: str, api_key: str, timeout_s: float) -> None:
        from zep_python.client import Zep

        self.client = Zep(base_url=root_url, api_key=api_key, timeout=timeout_s,
                          httpx_client=_http(timeout_s))
        _pin_root(self.client, root_url)

    def read_context(self, thread_id: str, timeout_s: float) -> str | None:
        with _attributed():
            return _memory_text(self.client.memory.get(thread_id, request_options=_options(timeout_s)))



class ZepCloudReader:
    """zep-cloud 4.x: ``thread.get_context`` = GET {root}/api/v4/threads/{id}/context."""

    def __init__(self, root_url: str, api_key: str, timeout_s: float) -> None:
        from zep_cloud import Zep

        self.client = Zep(base_url=f"{root_url}/api/v4", api_key=api_key, max_retries=0,
                          timeout=timeout_s, httpx_client=_http(timeout_s))

    def read_context(self, thread_id: str, timeout_s: float) -> str | None:
        with _attributed():
            return self.client.thread.get_context(thread_id, request_options=_options(timeout_s)).context



class AsyncZepPythonReader:
    """zep-python 2.x ``AsyncZep``: the same read as ``ZepPythonReader``, awaited."""

    def __init__(self, root_url: str, api_key: str, timeout_s: float) -> None:
        from zep_python.client import AsyncZep

        self.client = AsyncZep(base_url=root_url, api_key=api_key, timeout=timeout_s,
                               httpx_client=_ahttp(timeout_s))
        _pin_root(self.client, root_url)
        self.memory = self.client.memory  # its module is imported here, off the event loop

    async def read_context(self, thread_id: str, timeout_s: float) -> str | None:
        with _attributed():
            return _memory_text(await self.memory.get(thread_id, request_options=_options(timeout_s)))


class AsyncZepCloudReader:
    """zep-cloud 4.x ``AsyncZep``: the same read as ``ZepCloudReader``, awaited."""

    def __init__(self, root_url: str, api_key: str, timeout_s: float) -> None:
        from zep_cloud import AsyncZep

        self.client = AsyncZep(base_url=f"{root_url}/api/v4", api_key=api_key, max_retries=0,
                               timeout=timeout_s, httpx_client=_ahttp(timeout_s))
        self.thread = self.client.thread  # zep-cloud imports its sub-clients on first access

    async def read_context(self, thread_id: str, timeout_s: float) -> str | None:
        with _attributed():
            context = await self.thread.get_context(thread_id, request_options=_options(timeout_s))
        return context.context


def make_reader(settings: Settings) -> ZepReader:
    cls = ZepCloudReader if settings.zep_client == "zep-cloud" else ZepPythonReader
    return cls(settings.zep_api_url, _api_key(settings), settings.read_timeout_s)


def make_async_reader(settings: Settings) -> AsyncZepReader:
    """An asyncio reader; its httpx client belongs to the event loop it is first used on."""
    cls = AsyncZepCloudReader if settings.zep_client == "zep-cloud" else AsyncZepPythonReader
    reader = cls(settings.zep_api_url, _api_key(settings), settings.read_timeout_s)
    prime_async_transport()
    return reader


def _api_key(settings: Settings) -> str:
    if not settings.zep_api_key:
        raise SettingsError("invalid configuration: ZEP_API_KEY is not set "
                            "(memguard's Zep reader needs it)")
    return settings.zep_api_key


def _quietly(make: Any, *args: Any) -> Any:
    with gc_quiet():
        return make(*args)


class Readers:
    """memguard's own Zep readers for one process, made on first use: one blocking reader, and
    one asyncio reader per event loop (its httpx client belongs to that loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reader: ZepReader | None = None
        self._areaders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncZepReader] = (
            weakref.WeakKeyDictionary())

    @property
    def reader(self) -> ZepReader:
        """Raises SettingsError when it cannot be built (no ZEP_API_KEY)."""
        if self._reader is None:
            self._reader = make_reader(self.settings)
        return self._reader

    def get(self) -> ZepReader:
        """The blocking reader (``aget``'s counterpart); raises SettingsError as ``reader`` does."""
        return self.reader

    async def aget(self) -> AsyncZepReader:
        """The running event loop's reader. The first one is made in a worker thread: importing
        an SDK and building its httpx client (TLS context) takes hundreds of milliseconds, which
        the loop must not wait for. Its client binds to the loop on its first request."""
        loop = asyncio.get_running_loop()
        reader = self._areaders.get(loop)
        if reader is None:
            built = await asyncio.to_thread(_quietly, make_async_reader, self.settings)
            reader = self._areaders.setdefault(loop, built)
        return reader
