"""memguard: keeps Zep memory reads from dragging an application down when Zep degrades.

The public surface::

    memguard.install(app, probe=None)          # an existing Celery app: tasks, beat entry, checks
    @memguard.guarded / @memguard.guarded(timeout_ms=300)   # guard your own read fn(thread_id, ...)
    memguard.fetch_thread_context(thread_id)   # memguard's own Zep read -> (context | None, meta)
    memguard.flags                             # modes and the forced record (the seed's API)

Importing it changes nothing in the application: no logging set-up, signal handlers,
threads or connections until ``install`` or the first guarded call.
"""

from memguard import flags
from memguard.service import fetch_thread_context, guarded
from memguard.tasks import install

__all__ = ["fetch_thread_context", "flags", "guarded", "install"]
