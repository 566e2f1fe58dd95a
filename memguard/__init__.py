"""memguard: keeps Zep memory reads from dragging an application down when Zep degrades.

The public surface::

    memguard.install(app, probe=None)          # an existing Celery app: tasks, beat entry, checks
    @memguard.guarded / @memguard.guarded(timeout_ms=300)   # guard your own read fn(thread_id, ...),
                                                            # def or async def
    memguard.fetch_thread_context(thread_id)   # memguard's own Zep read -> (context | None, meta)
    await memguard.afetch_thread_context(thread_id)   # the same on an asyncio event loop
    memguard.flags                             # modes and the forced record (the seed's API)

Importing it changes nothing in the application: no logging set-up, signal handlers,
threads or connections until ``install`` or the first guarded call.
"""

from memguard import flags
from memguard.integrations.tasks import install
from memguard.service import afetch_thread_context, fetch_thread_context, guarded

__all__ = ["afetch_thread_context", "fetch_thread_context", "flags", "guarded", "install"]
