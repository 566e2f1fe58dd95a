"""``memguard.beat.Scheduler``: the scheduler's public name (``celery beat -S memguard.beat.Scheduler``).

It lives with the rest of the Celery integration, in ``memguard.integrations.beat``.
"""

from memguard.integrations.beat import Scheduler

__all__ = ["Scheduler"]
