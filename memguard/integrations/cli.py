"""The ``memguard`` command line: status, force, clear, probe, history, drill, metrics.

Every command names the Redis it talks to (password masked). Every failure is one line on
stderr and a non-zero exit: 2 for refused input or a bad setting, 3 when Redis cannot be
reached (refused, timed out, authentication, no such database, Sentinel or Cluster down, told
apart with the setting to check), 70 for a fault of memguard's own (a bug, a missing package
file), named in one line without a traceback. The exit code is the action's: an action that was done
exits 0 even if something after it failed (recording it in the audit trail, say), and says
so on stderr. The one-shot commands wait up to ``CLI_TIMEOUT_S`` for Redis, longer than the
request path's budget. A closed pipe (``memguard status | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

import redis

from memguard.config.settings import SettingsError, masked_url
from memguard.integrations import cli_text
from memguard.store.index import indexed_guards

DISTRIBUTION = "memguard-zep"  # what pip installs (a test holds it to pyproject.toml and the README)
CLI_TIMEOUT_S = 2.0  # an operator can wait for an answer; the request path waits 50 ms


def _parser() -> argparse.ArgumentParser:
    from memguard import __version__
    from memguard.domain.record import DOWNGRADE_REASONS
    from memguard.ops.actions import MAX_REASON_LEN, MAX_TTL_SECONDS, OPERATOR_HOLD_SECONDS

    parser = argparse.ArgumentParser(prog="memguard", description="Fleet-wide Zep read guard.")
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("status", help="the fleet's mode, record, failure count, prober and last "
                       "operator action")
    p.add_argument("--all", action="store_true", help="also every named guard that is not healthy")
    p.add_argument("--app", help="the Celery app whose beat lock to show, as celery -A takes it (default: "
                   "memguard, the ready app)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("force", help="force write_only fleet-wide")
    p.add_argument("--reason", default="manual_ops",
                   help=f"why (default manual_ops; the reasons memguard uses: "
                        f"{', '.join(DOWNGRADE_REASONS)}; any printable ASCII of at most {MAX_REASON_LEN} "
                        "characters)")
    p.add_argument("--ttl", type=int, default=OPERATOR_HOLD_SECONDS,
                   help=f"hold seconds, 1 to {MAX_TTL_SECONDS} (default {OPERATOR_HOLD_SECONDS})")
    p.add_argument("--replace", action="store_true",
                   help="replace a longer hold in place (without it, a longer hold is kept)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("clear", help="end the forced mode now: reads return through the recovery ramp")
    p.add_argument("--no-ramp", action="store_true",
                   help="restore every read at once (also ends a recovery ramp in progress)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("probe", help="probe Zep now if a hold has expired (a manual probe: it does "
                       "not count as beat's tick)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("chaos", help="a game day: make a share of conversations' reads fail fleet-wide, "
                       "for a bounded time, in the processes that allow it (MEMGUARD_CHAOS=allow)")
    chaos = p.add_subparsers(dest="chaos", required=True)
    c = chaos.add_parser("start", help="start an experiment (it replaces one in progress)")
    c.add_argument("--fault", required=True, help="timeout, error:<500-599>, latency:<1-60000>ms or auth")
    c.add_argument("--share", required=True, help="the share of conversations picked: 30%% or 30")
    c.add_argument("--for", dest="duration", required=True, help="how long: 90s, 10m or 1h (5 s to 1 h)")
    c.add_argument("--trip", action="store_true",
                   help="injected faults count toward a trip, so the whole path runs (force, hold, probe, "
                   "ramp)")
    chaos.add_parser("stop", help="end the experiment in every process now")
    for c in chaos.choices.values():
        c.add_argument("--guard", default="default",
                       help="the guard (default: default, memguard's Zep guard)")
        c.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("history", help="transitions, probe results and operator actions, oldest first")
    p.add_argument("-n", type=int, default=20, help="how many entries (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = sub.add_parser("guards", help="the guards with their state: default, those held or recovering, "
                       "and those --app declares")
    p.add_argument("--degraded", action="store_true", help="only the guards that are not healthy")
    p.add_argument("--app", help="a module to import first, whose memguard.declare calls list its guards")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    for name in ("status", "force", "clear", "probe", "history"):
        sub.choices[name].add_argument("--guard", default="default",
                                       help="the guard to act on (default: default, memguard's Zep guard)")
    p = sub.add_parser("acl", help="the least-privilege Redis ACL users for memguard and for a read-only "
                       "operator, as ACL SETUSER lines")
    p.add_argument("--user", default="memguard", help="memguard's user (default memguard)")
    p.add_argument("--read-only-user", default="memguard-ro", help="the operator's (default memguard-ro)")
    p.add_argument("--no-beat", action="store_true", help="the beat's RedBeat keys live on another Redis")
    p.add_argument("--app", help="grant this Celery app's RedBeat key prefix, as celery -A takes it "
                   "(memguard: the ready app's)")
    p.add_argument("--redbeat-prefix", help="grant this RedBeat key prefix (default: the app's, else "
                   "RedBeat's default redbeat:)")
    p = sub.add_parser("doctor", help="check this deployment: Redis, permissions, beat, probe, webhooks, "
                       "clock, eviction, settings; one line per check, exit 1 on any fail")
    p.add_argument("--app", help="the Celery app to check, as celery -A takes it (default: memguard, the "
                   "ready app)")
    p.add_argument("--json", action="store_true", help="one JSON object per check")
    p = sub.add_parser("drill", help="run the auth, failure and recovery drills end to end")
    p.add_argument("--redis-url", help="run against this Redis (a canary) instead of a local stack")
    p.add_argument("--zep-url", help="with --redis-url: the canary's Zep root URL")
    p.add_argument("--zep-key", help="the canary's Zep API key (else ZEP_API_KEY); locally, the key "
                   "the stub accepts")
    p.add_argument("--logdir", help="where the logs go: this process's (drill.log) and, on the local "
                   "stack, the worker's and the beat's (default: a new temporary directory)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print this process's JSON log lines inline (stderr) instead of into drill.log")
    p.add_argument("--hold", type=int, default=5, help="hold seconds for the local stack (default 5)")
    p.add_argument("--ramp", type=int, default=6,
                   help="recovery ramp seconds for the local stack (default 6; 0: restore at once)")
    p.add_argument("--chaos", action="store_true",
                   help="also a game day: an experiment makes a share of conversations fail, and stops")
    p = sub.add_parser("metrics", help="serve /metrics")
    p.add_argument("--port", type=int, default=9464)
    p.add_argument("--addr", default="0.0.0.0")
    return parser


def _drill(drill: Any, args: argparse.Namespace) -> int:
    """The drill's timeline and verdicts on stdout; its JSON log lines in a file (or inline)."""
    from memguard.observe import logs

    logdir = args.logdir or tempfile.mkdtemp(prefix="memguard-drill-")
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, "drill.log")
    # Left open to the end of the process: late lines (a shutdown warning) still have a home.
    stream = sys.stderr if args.verbose else open(path, "a")  # noqa: SIM115
    logs.configure(level="INFO", stream=stream)
    code = drill.run(args.redis_url, args.zep_url, args.zep_key, hold=args.hold, logdir=logdir,
                     ramp=args.ramp, chaos=args.chaos)
    files = sorted(name for name in os.listdir(logdir) if name.endswith(".log"))
    print(f"logs (JSON lines) in {logdir}: {', '.join(files) or 'none'}")
    return code


EX_SOFTWARE = 70  # sysexits.h: a fault of memguard's own


def main(argv: list[str] | None = None) -> int:
    command = "memguard"
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        command = args.cmd
        return _main(parser, args)
    except BrokenPipeError:  # the reader went away (| head): nothing more to say, to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as fault:  # a fault of memguard's own: one line naming it, never a traceback
        print(f"memguard: internal error during {command}: {_fault_detail(command, fault)}", file=sys.stderr)
        return EX_SOFTWARE


def _fault_detail(command: str, fault: Exception) -> str:
    """The fault's type and message, secrets masked; its type alone if even that fails (so that
    nothing unmasked is printed)."""
    try:
        from memguard.domain import events
        from memguard.observe.logs import scrubbed

        return scrubbed(events.internal(command, fault).detail)
    except Exception:
        return type(fault).__name__


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from memguard import exporter, process
    from memguard.domain import events
    from memguard.domain.events import origin
    from memguard.observe import logs
    from memguard.ops.actions import OperatorError

    one_shot = args.cmd in ("status", "force", "clear", "probe", "history", "guards", "doctor", "chaos")
    if one_shot:  # they print their own outcome; a warning line would only repeat it
        logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="memguard: %(message)s")
    elif args.cmd == "metrics":
        logs.configure(level="WARNING", stream=sys.stderr)
    by = origin("cli", user=getpass.getuser())
    url = None
    troubles: list[events.GuardTrouble] = []

    def note(event: events.Event) -> None:
        if isinstance(event, events.GuardTrouble):
            troubles.append(event)

    try:
        if one_shot:
            settings = replace(process.load_settings(), redis_timeout_ms=int(CLI_TIMEOUT_S * 1000))
            url = settings.redis_url
            proc = process.configure(settings, watch=False, count_metrics=False)  # no thread, no metrics
            process.hooks.subscribe(note)
            if args.cmd == "doctor":
                return _doctor(args, proc, by)
            print(_one_shot(args, proc, by))
            # The action was done: say what went wrong around it (status prints its own warning).
            for trouble in (t for t in troubles if t.op != "status"):
                print(f"memguard: note: {trouble.kind} during {trouble.op} (the {args.cmd} itself was done): "
                      f"{logs.scrubbed(trouble.detail)}", file=sys.stderr)
        elif args.cmd == "acl":
            from memguard.ops import acl

            prefix = args.redbeat_prefix or (_redbeat_prefix(args.app) if args.app else "redbeat:")
            memguard_rule, read_only_rule = acl.rules(user=args.user, read_only_user=args.read_only_user,
                                                      beat=not args.no_beat, redbeat_prefix=prefix)
            print(f"# memguard's processes (workers, web apps, beat): REDIS_URL=redis://{args.user}:<pw>@host\n"
                  f"{memguard_rule}\n# a read-only operator (status, history, guards)\n{read_only_rule}")
        elif args.cmd == "drill":
            from memguard.drill import run as drill

            if args.zep_url and not args.redis_url:
                parser.error("--zep-url needs --redis-url")
            return _drill(drill, args)
        elif args.cmd == "metrics":
            print(f"serving /metrics on {args.addr}:{args.port}", file=sys.stderr)
            exporter.serve_metrics(args.port, args.addr)
            while True:
                time.sleep(3600)
    except (OperatorError, SettingsError) as exc:
        print(f"memguard: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"memguard: {cli_text.redis_error(exc, url or '?', CLI_TIMEOUT_S)}", file=sys.stderr)
        return 3
    return 0


def _one_shot(args: argparse.Namespace, proc: Any, by: dict[str, Any]) -> str:
    """Run one operator command; what it prints (the Redis it used on its last line)."""
    from memguard.ops import audit
    from memguard.ops.actions import OperatorError

    where = masked_url(proc.settings.redis_url)
    now = time.time()
    if args.cmd == "guards":
        return _guards(args, proc, where)
    ops = proc.ops_for(args.guard)
    if args.cmd == "history":
        if args.n < 1:
            raise OperatorError(f"-n must be at least 1, got {args.n}")
        items = audit.history(ops.state.plain, ops.state.keys.audit, args.n)
        if args.json:  # one object per line on stdout; the Redis it read goes to stderr
            print(f"redis: {where}", file=sys.stderr)
            return "\n".join(json.dumps(cli_text.json_safe(item), allow_nan=False) for item in items)
        return "\n".join([*(audit.describe(item) for item in items), f"redis:       {where}"])
    if args.cmd == "status":
        res = ops.status(by)
        lines = cli_text.status_lines(res, res.get("redis_time") or now)
        from_env = bool(os.environ.get("REDIS_URL"))
        lines.append(cli_text.watchers_line(res["watchers"], where, from_env=from_env,
                                            on_replicas=bool(proc.settings.view_urls)))
        lock = _beat_lock(proc, args.app, res.get("redis_time") or now)
        res["beat_lock"] = lock if isinstance(lock, str) else lock.as_dict()
        lines.append(lock if isinstance(lock, str) else lock.line())
        if args.all:
            res["guards"] = _rows(proc, indexed_guards(proc.state), degraded=True)
            lines += cli_text.guards_lines(res["guards"], now, heading="named guards not healthy:")
    elif args.cmd == "force":
        res = ops.force(by, reason=args.reason, ttl_seconds=args.ttl, replace=args.replace)
        lines = cli_text.force_lines(res, now)
    elif args.cmd == "clear":
        res = ops.clear(by, ramp=not args.no_ramp)
        lines = cli_text.clear_lines(res)
    elif args.cmd == "chaos":
        res = ops.chaos_stop(by) if args.chaos == "stop" else \
            ops.chaos_start(by, fault=args.fault, share=args.share, duration=args.duration, trip=args.trip)
        lines = cli_text.chaos_lines(res)
    else:
        res = ops.probe(by)
        lines = cli_text.probe_lines(res)
    if ops.state.guard is not None:  # a named guard's: say which
        res, lines = {"guard": args.guard, **res}, [f"guard:       {args.guard}", *lines]
    if args.json:
        return json.dumps(cli_text.json_safe({**res, "redis": where}), allow_nan=False)
    return "\n".join([*lines, f"redis:       {where}"])


def _doctor(args: argparse.Namespace, proc: Any, by: dict[str, Any]) -> int:
    """``memguard doctor``: one line per check (or one JSON object), exit 1 on any fail."""
    from memguard import process
    from memguard.integrations.tasks import deployment
    from memguard.ops import doctor

    url = proc.settings.redis_url
    checks = doctor.run(deployment(celery_app(args.app) if args.app else None, proc, by), process.hooks,
                        lambda exc: cli_text.redis_error(exc, url, CLI_TIMEOUT_S))
    for c in checks:
        print(json.dumps(c.as_dict()) if args.json else c.line())
    return doctor.worst(checks)


def celery_app(name: str) -> Any:
    """The Celery app ``name`` names, found as ``celery -A`` finds it (the working directory first
    on the import path); a name that finds none is refused in one line."""
    from celery.app.utils import find_app

    from memguard.ops.actions import OperatorError

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = find_app(name)
    except Exception as exc:
        raise OperatorError(f"--app {name[:100]}: no Celery app found there ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None
    # An app's module may configure logging for its workers (the ready app's JSON lines on
    # stdout): the command's own output stays what it prints.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="memguard: %(message)s", force=True)
    return app


def _redbeat_prefix(app_name: str) -> str:
    """The app's RedBeat key prefix (``beat_keys``; the settings matter only for where it is)."""
    from memguard.config.settings import Settings
    from memguard.integrations.tasks import beat_keys

    return beat_keys(celery_app(app_name), Settings()).prefix


def _beat_lock(proc: Any, app_name: str | None, now: float) -> Any:
    """The app's beat lock as read on REDIS_URL (a ``BeatLock``), or a line saying why not. The
    ready app's (no ``--app``) is known without importing Celery."""
    from memguard.integrations.celery_settings import lock_client, ready_app_keys
    from memguard.ops import beatlock

    if app_name:
        from memguard.integrations.tasks import beat_keys

        keys = beat_keys(celery_app(app_name), proc.settings)
    else:
        keys = ready_app_keys(proc.settings)
    if keys.lock_key is None:
        return f"beat lock:   none: {app_name}'s redbeat_lock_key turns the lock off"
    client = lock_client(keys, proc.state.client, CLI_TIMEOUT_S)
    if client is None:
        return (f"beat lock:   {keys.lock_key} lives on RedBeat's own Redis (redbeat_redis_url or the "
                "broker), not read here")
    where = proc.settings.redis_url if keys.on_redis_url else (keys.elsewhere or "?")
    try:
        return beatlock.read(client, keys.lock_key, now)
    except redis.RedisError as exc:  # the status itself was read: say why this line was not
        why = cli_text.redis_error(exc, where, CLI_TIMEOUT_S)
        return f"beat lock:   {keys.lock_key} could not be read: {why}"


def _rows(proc: Any, names: list[str], *, degraded: bool) -> list[dict[str, Any]]:
    """Each guard's summary (``Operations.summary``), the unhealthy ones alone if ``degraded``."""
    rows = [{"guard": name, **proc.ops_for(name).summary()} for name in names]
    return [row for row in rows if row["state"] != "healthy"] if degraded else rows


def _guards(args: argparse.Namespace, proc: Any, where: str) -> str:
    """``memguard guards``: default, the declared guards (``--app``) and the indexed ones."""
    import importlib

    from memguard.domain.declared import registry

    if args.app:
        importlib.import_module(args.app)
    names = dict.fromkeys(["default", *registry.names(), *indexed_guards(proc.state)])
    rows = _rows(proc, list(names), degraded=args.degraded)
    if args.json:
        print(f"redis: {where}", file=sys.stderr)
        return "\n".join(json.dumps(cli_text.json_safe(row), allow_nan=False) for row in rows)
    return "\n".join([*cli_text.guards_lines(rows, time.time()), f"redis:       {where}"])


if __name__ == "__main__":
    sys.exit(main())
