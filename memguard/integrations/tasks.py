"""The whole Celery integration: the four tasks, the probe's beat entry, beat settings that
keep the RedBeat lock, start-up checks, logging and metrics hooks.

An application's own Celery app gets everything with one call::

    import memguard
    memguard.install(app)

Settings come from the environment (see docs/settings.md); Celery-side choices from
``app.conf`` keys prefixed ``memguard_`` (``memguard_probe_interval``). Nothing here runs at
import: ``install`` registers the tasks on that app and connects its signal handlers, and each
task resolves the process's objects (``memguard.process.get``) when it runs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import redis
import structlog
from celery import Celery, Task, signals
from celery.utils.imports import symbol_by_name

from memguard import exporter, process
from memguard.config.settings import Settings, SettingsError
from memguard.config.target import tls_failure
from memguard.domain import events
from memguard.domain.declared import registry
from memguard.domain.events import origin
from memguard.domain.guards import DEFAULT, GuardError, NamedProbe
from memguard.integrations.celery_settings import lock_client, ready_app_keys, redbeat_conf, redbeat_url
from memguard.observe import logs, metrics
from memguard.ops import beatlock, doctor
from memguard.ops.actions import OperatorError
from memguard.ops.prober import Probe
from memguard.request.zep import make_reader

PROBE_SCHEDULE_NAME = "memguard-probe"
SCHEDULER = "memguard.beat.Scheduler"  # RedBeat that rides through Redis blips
# Beat settings memguard gives an app that has not chosen its own: beat wakes every second
# and the RedBeat lock outlives five wake-ups and one probe interval, so a standby takes
# over within ~6 s (Celery's and RedBeat's own defaults would make that 25 minutes).
LOOP_INTERVAL_S = 1.0
LOCK_LOOPS = 5
DOCTOR_LEVELS = {"ok": logging.INFO, "warn": logging.WARNING, "fail": logging.ERROR}


def _by(task: Task) -> dict[str, Any]:
    return origin("task", task_id=task.request.id, sent_from=task.request.origin or None)


class InternalFault(Exception):
    """A task failed on a fault of memguard's own; its one line names the fault."""


def _operator_call(task: Task, action: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an operator action as who sent it, on the guard it names; a refusal is recorded and
    logged by the action, and a fault of memguard's own is counted, logged and answered in one
    line."""
    try:
        guard = kwargs.pop("guard", DEFAULT)  # which guard; the action checks the rest
        ops = process.get().ops_for(guard)
        out = getattr(ops, action)(_by(task), positional=args, **kwargs)
        return out if ops.state.guard is None else {**out, "guard": guard}  # a named guard's says so
    except (OperatorError, SettingsError, redis.RedisError):
        raise
    except Exception as fault:
        trouble = events.internal(action, fault)
        process.hooks.emit(trouble)
        detail = logs.scrubbed(trouble.detail)
        raise InternalFault(f"memguard.{action} failed on an internal error: {detail}") from None


def probe_entry(settings: Settings, interval: float | None = None) -> dict[str, Any]:
    interval = float(interval or settings.probe_interval_seconds)
    # A tick that waited longer than one interval in the queue is stale: drop it.
    return {"task": "memguard.probe", "schedule": interval, "kwargs": {"scheduled": True},
            "options": {"expires": interval}}


def install(app: Celery, *, probe: Probe | None = None, probes: Mapping[str, NamedProbe] | None = None,
            json_logs: bool = False) -> Celery:
    """Give ``app`` memguard's tasks, the probe's beat entry and safe beat settings.

    ``probe`` replaces memguard's Zep read as the probe (a callable taking the timeout in
    seconds that raises on failure). ``probes`` gives named guards theirs, by declared name or
    pattern (``{"vectordb": fn}``, ``fn(name, timeout_s)``), over their declarations' own.
    ``json_logs`` takes over Celery's logging and sends
    every line as JSON with secrets redacted. A bad configuration is reported in one line
    when a worker or beat of this app starts, not here.
    """
    try:
        settings: Settings | None = process.load_settings()
    except SettingsError:
        settings = None
    registry.use_probes(probe, _checked_probes(probes))  # found the same way for every guard
    _register_tasks(app)

    def configure_beat(conf: Any) -> None:
        entry = probe_entry(settings or Settings(), conf.get("memguard_probe_interval"))
        conf.beat_schedule = {PROBE_SCHEDULE_NAME: entry, **(conf.beat_schedule or {})}
        if conf.get("redbeat_lock_timeout") is None:  # RedBeat's default would be 5 x 300 s
            loop = float(conf.beat_max_loop_interval)
            conf.redbeat_lock_timeout = max(LOCK_LOOPS * loop, entry["schedule"] + loop)

    # Celery's own default (0, meaning 300 s) counts as set for conf.setdefault: add a
    # default that ranks above Celery's and below anything the app sets itself.
    app.add_defaults({"beat_max_loop_interval": LOOP_INTERVAL_S, "beat_scheduler": SCHEDULER,
                      **redbeat_conf((settings or Settings()).redis_target)})
    if app.configured:
        configure_beat(app.conf)
    else:
        app.on_after_configure.connect(lambda sender, **_: configure_beat(sender.conf), weak=False)

    def check_worker(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            _exit_on_config_error(probe)
            port = process.load_settings().metrics_port  # checked just above
            if port:
                exporter.serve_metrics(port)

    def check_beat(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            _exit_on_config_error(probe)
            _exit_on_losing_lock(app, sender)
            _hint_scheduler(sender)

    signals.worker_init.connect(check_worker, weak=False)
    signals.beat_init.connect(check_beat, weak=False)
    # Process-wide hooks, connected once however many apps install memguard.
    signals.worker_process_shutdown.connect(_mark_dead, weak=False, dispatch_uid="memguard-mark-dead")
    if json_logs:
        signals.setup_logging.connect(_setup_logging, weak=False, dispatch_uid="memguard-json-logs")
        signals.task_prerun.connect(_bind_task, weak=False, dispatch_uid="memguard-bind-task")
    return app


def beat_keys(app: Celery | None, settings: Settings) -> beatlock.BeatKeys:
    """Where ``app``'s RedBeat keeps its lock and keys (the ready app's when None)."""
    if app is None:
        return ready_app_keys(settings)
    from redbeat.schedulers import RedBeatConfig

    ours = redbeat_url(settings)
    conf = RedBeatConfig(app)
    theirs = app.conf.get("redbeat_redis_url") or app.conf.broker_url or ""
    if ours is not None and theirs == ours:
        return beatlock.BeatKeys(conf.lock_key or None, conf.key_prefix, True)
    plain = theirs.split("://")[0] in ("redis", "rediss")
    return beatlock.BeatKeys(conf.lock_key or None, conf.key_prefix, False, theirs if plain else None)


def deployment(app: Celery | None, proc: Any, by: dict[str, Any]) -> doctor.Deployment:
    """What ``memguard doctor`` checks for ``app`` (the ready app's when None): the probe
    ``install`` registered, the app's RedBeat lock and prefix (when RedBeat keeps them on
    REDIS_URL) and the declared guards."""
    keys = beat_keys(app, proc.settings)
    locks = lock_client(keys, proc.state.client, 2.0)
    return doctor.Deployment(
        proc.state, proc.settings, lambda: proc.guards.probe_of(proc.guards.resolve(DEFAULT)),
        lock_key=keys.lock_key if locks is not None else None, lock_client=locks,
        redbeat_prefix=keys.prefix if keys.on_redis_url else None,
        named=[(d.name, registry.has_probe(d)) for d in registry.declarations()], by=by)


def _checked_probes(probes: Mapping[str, NamedProbe] | None) -> dict[str, NamedProbe]:
    """install's named probes: each a declared name or pattern, each callable."""
    out = dict(probes or {})
    for name, fn in out.items():
        if not registry.declared(name):
            raise GuardError(f"install(probes=...): {name!r} is not declared (memguard.declare it first)")
        if not callable(fn):
            raise GuardError(f"install(probes=...): the probe of {name!r} is not callable")
    return out


def _register_tasks(app: Celery) -> None:
    # A refusal is an expected outcome: Celery logs it in one line, without a traceback.
    opts: dict[str, Any] = {"bind": True, "shared": False, "throws": (OperatorError, InternalFault)}

    @app.task(name="memguard.force", **opts)
    def force(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Force write_only fleet-wide: kwargs reason (default manual_ops), ttl_seconds (600)."""
        return _operator_call(self, "force", args, kwargs)

    @app.task(name="memguard.clear", **opts)
    def clear(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Remove the forced record now; reads return through the recovery ramp unless ramp=False."""
        return _operator_call(self, "clear", args, kwargs)

    @app.task(name="memguard.chaos_start", **opts)
    def chaos_start(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Start a game day's experiment: kwargs fault, share, duration, trip (false)."""
        return _operator_call(self, "chaos_start", args, kwargs)

    @app.task(name="memguard.chaos_stop", **opts)
    def chaos_stop(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """End the experiment in every process now."""
        return _operator_call(self, "chaos_stop", args, kwargs)

    @app.task(name="memguard.status", **opts)
    def status(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The fleet's mode, record, seconds left and failure count."""
        return _operator_call(self, "status", args, kwargs)

    @app.task(name="memguard.doctor", **opts)
    def doctor_task(self: Task) -> list[dict[str, str]]:
        """Check this deployment from a worker: one entry per check (ok, warn or fail)."""
        from memguard.integrations import cli_text

        try:
            proc = process.get()
            url = proc.settings.redis_url
            found = deployment(app, proc, _by(self))
            try:
                checks = doctor.run(found, process.hooks, lambda exc: cli_text.redis_error(exc, url, 2.0))
            finally:
                if found.lock_client is not None and found.lock_client is not proc.state.client:
                    found.lock_client.close()
        except Exception as fault:  # a fault of memguard's own: counted, logged, one line
            trouble = events.internal("doctor", fault)
            process.hooks.emit(trouble)
            detail = logs.scrubbed(trouble.detail)
            raise InternalFault(f"memguard.doctor failed on an internal error: {detail}") from None
        for c in checks:
            logs.emit(DOCTOR_LEVELS[c.verdict], "memguard_doctor_check", verdict=c.verdict, check=c.name,
                      detail=c.detail)
        return [c.as_dict() for c in checks]

    @app.task(name="memguard.probe", ignore_result=True, **opts)
    def probe_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Beat's tick: probe Zep once fleet-wide if a hold has expired, and each named guard
        whose hold has ended, then send the notifications no other prober has taken."""
        tick = kwargs.get("scheduled") is True and "guard" not in kwargs  # beat's entry
        result = _operator_call(self, "probe", args, kwargs)
        if tick:
            try:
                result["guards"] = process.get().probe_due(_by(self))
            except redis.RedisError as exc:
                process.hooks.emit(events.GuardTrouble("redis_error", "probe_due", type(exc).__name__))
        try:
            process.get().notifier.deliver()
        except redis.RedisError as exc:
            process.hooks.emit(events.GuardTrouble("redis_error", "notify", type(exc).__name__))
        return result


def _exit_on_config_error(probe: Probe | None) -> None:
    """Stop a worker or beat before it is ready, with one line naming the variable: a bad
    setting, or a Redis whose certificate fails verification (a Redis that is down is no
    configuration error: the reads fail open and the process waits for it)."""
    try:
        settings = process.load_settings()
        if probe is None:
            make_reader(settings)  # memguard's own probe reads Zep: it needs ZEP_API_KEY
    except SettingsError as exc:
        exit_config(str(exc))
    if settings.redis_target.ssl or settings.redis_url.startswith("rediss"):
        client = process.redis_client(settings, "check")
        try:
            client.ping()
        except redis.RedisError as exc:
            reason = tls_failure(exc)
            if reason is not None:
                exit_config(f"REDIS_URL: TLS verification failed: {reason} (check ssl_ca_certs, ssl_certfile "
                            "and ssl_keyfile in it, and that its host is the certificate's)")
        finally:
            client.close()


def _scheduler_class(beat: Any) -> type | None:
    scheduler = getattr(beat, "scheduler_cls", None)
    if isinstance(scheduler, str):
        scheduler = symbol_by_name(scheduler)
    return scheduler if isinstance(scheduler, type) else None


def _hint_scheduler(beat: Any) -> None:
    """A beat started with another scheduler (RedBeat's own, as its docs say) works, but loses
    what memguard's is for: say so once, at start-up."""
    from memguard.integrations.beat import Scheduler

    scheduler = _scheduler_class(beat)
    if scheduler is None or issubclass(scheduler, Scheduler):
        return
    logging.getLogger("memguard.beat").warning(
        "memguard: this beat runs %s.%s, not memguard.beat.Scheduler: it will exit on the first Redis "
        "error or lost lock (a Redis restart, a failover), standby beats too, leaving the fleet without "
        "a prober until something restarts them; start beat with -S memguard.beat.Scheduler "
        "(memguard.install makes it the default when -S is not given)",
        scheduler.__module__, scheduler.__qualname__)


def _exit_on_losing_lock(app: Celery, beat: Any) -> None:
    """Refuse settings under which RedBeat would lose its lock between two wake-ups."""
    from redbeat import RedBeatScheduler

    scheduler = _scheduler_class(beat)
    if not (scheduler is not None and issubclass(scheduler, RedBeatScheduler)):
        return
    conf = app.conf
    loop = float(beat.max_interval or conf.beat_max_loop_interval or 300)
    lock = float(conf.redbeat_lock_timeout or loop * 5)
    probe_interval = float(conf.beat_schedule.get(PROBE_SCHEDULE_NAME, {}).get("schedule", 0) or 0)
    if lock <= loop:
        exit_config(f"redbeat_lock_timeout ({lock:g} s) must be longer than beat_max_loop_interval "
                    f"({loop:g} s), or beat loses its lock between two wake-ups: raise "
                    "redbeat_lock_timeout (5 x the loop interval) or lower beat_max_loop_interval")
    if lock <= probe_interval:
        exit_config(f"redbeat_lock_timeout ({lock:g} s) must be longer than the memguard probe interval "
                    f"({probe_interval:g} s): raise redbeat_lock_timeout or lower "
                    "MEMORY_DOWNGRADE_PROBE_INTERVAL_SECONDS")


def exit_config(message: str) -> None:
    # The process's real stderr: beat redirects sys.stderr into its logger by then.
    print(f"memguard: {message}", file=sys.__stderr__, flush=True)
    os._exit(78)  # EX_CONFIG: before Celery's handlers can add a traceback


def _mark_dead(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


def _setup_logging(loglevel: str | int | None = None, **_: Any) -> None:
    level = loglevel if isinstance(loglevel, str) else "INFO"
    logs.configure(level=level.upper())


def _bind_task(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=getattr(task, "name", None))
