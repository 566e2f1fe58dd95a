"""The whole Celery integration: the four tasks, the beat entry, logging and metrics hooks.

An application's own Celery app gets everything with one call::

    import memguard.tasks
    memguard.tasks.install(app)

Settings come from the environment (DESIGN.md) and, for Celery-side choices, from
``app.conf`` keys prefixed ``memguard_`` (``memguard_probe_interval``).
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery, Task, shared_task, signals

from memguard import logs, metrics, ops
from memguard.guard import origin
from memguard.settings import Settings

PROBE_SCHEDULE_NAME = "memguard-probe"
log = structlog.get_logger("memguard")


def _by(task: Task) -> dict[str, Any]:
    return origin("task", task_id=task.request.id, sent_from=task.request.origin or None)


def _refuse_positional(args: tuple[Any, ...]) -> None:
    if args:
        raise ops.OperatorError(f"positional arguments are not accepted, got {list(args)!r}; "
                                "use --kwargs")


def _operator_call(task: Task, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                   changes: bool = True) -> Any:
    """Run an operator action; refusals and changes are logged with who sent them."""
    try:
        _refuse_positional(args)
        result = fn(by=_by(task), **kwargs) if changes else fn(**kwargs)
    except ops.OperatorError as exc:
        log.error("memguard_operator_refused", task=task.name, error=str(exc),
                  task_id=task.request.id, sent_from=task.request.origin)
        raise
    if changes:
        log.info("memguard_operator_action", task=task.name, task_id=task.request.id,
                 sent_from=task.request.origin, result=result)
    return result


@shared_task(name="memguard.force", bind=True)
def force(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Force write_only fleet-wide: kwargs reason (default manual_ops), ttl_seconds (600)."""
    return _operator_call(self, ops.force, args, kwargs)


@shared_task(name="memguard.clear", bind=True)
def clear(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Remove the forced record now."""
    return _operator_call(self, ops.clear, args, kwargs)


@shared_task(name="memguard.status", bind=True)
def status(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The fleet's mode, record, seconds left and failure count."""
    return _operator_call(self, ops.status, args, kwargs, changes=False)


@shared_task(name="memguard.probe", bind=True, ignore_result=True)
def probe(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Beat's tick: probe Zep once fleet-wide if a hold has expired, else do nothing."""
    _refuse_positional(args)
    return ops.probe(by=_by(self), **kwargs)


def probe_entry(settings: Settings, interval: float | None = None) -> dict[str, Any]:
    interval = float(interval or settings.probe_interval_seconds)
    # A tick that waited longer than one interval in the queue is stale: drop it.
    return {"task": "memguard.probe", "schedule": interval, "options": {"expires": interval}}


def install(app: Celery, *, configure_logging: bool = True) -> None:
    """Add memguard's beat entry and safe defaults to ``app``; the tasks register on import."""
    settings = Settings.from_env()
    conf = app.conf
    schedule = dict(conf.beat_schedule or {})
    schedule.setdefault(PROBE_SCHEDULE_NAME, probe_entry(settings, conf.get("memguard_probe_interval")))
    conf.beat_schedule = schedule
    conf.setdefault("redbeat_redis_url", settings.redis_url)
    # Defaults give a 25-minute failover between beats; keep it to seconds.
    conf.setdefault("beat_max_loop_interval", 1)
    conf.setdefault("redbeat_lock_timeout", 5)
    if configure_logging:
        signals.setup_logging.connect(_setup_logging, weak=False)
        signals.task_prerun.connect(_bind_task, weak=False)


def _setup_logging(loglevel: str | int | None = None, **_: Any) -> None:
    level = loglevel if isinstance(loglevel, str) else "INFO"
    logs.configure(level=level.upper())


def _bind_task(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=getattr(task, "name", None))


@signals.worker_init.connect
def _check_settings(**_: Any) -> None:
    """Fail at worker start, naming the variable, rather than at the first read."""
    Settings.from_env()
    port = os.environ.get("MEMGUARD_METRICS_PORT")
    if port:
        metrics.serve(int(port))


@signals.worker_process_shutdown.connect
def _mark_dead(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())
