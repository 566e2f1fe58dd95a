"""The ``memguard`` command line: status, force, clear, probe, history, drill, metrics.

Every failure is one line on stderr and a non-zero exit: 2 for refused input or a bad
setting, 3 when Redis cannot be reached (its URL shown with the password masked).
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
from typing import Any

import redis

from memguard.config.settings import SettingsError, masked_url


def _print_status(st: dict[str, Any]) -> None:
    print(f"mode:        {st['mode']} (base {st['base_mode']})")
    if st["forced"]:
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st["until"]))
        print(f"forced:      yes, reason {st['reason']}, by {st.get('by') or '?'}")
        print(f"until:       {until} ({st['seconds_left']}s left, phase {st['phase']}, "
              f"hold #{st['holds']})")
        print(f"lapses in:   {st['lapses_in']}s if no probe acts")
    else:
        print("forced:      no")
    print(f"failures:    {st['fail_count']} of {st['threshold']} in the current window")
    seen = st["prober_seen_seconds_ago"]
    prober = "no probe tick seen recently: is celery beat running?" if seen is None \
        else f"last tick {seen}s ago"
    print(f"prober:      {prober}")
    last = st["last_operator_action"]
    if last is not None:
        from memguard.ops.audit import describe

        print(f"last op:     {describe(last)}")
    if "corrupt_record" in st:
        print(f"WARNING:     corrupt forced record in Redis: {st['corrupt_record']!r}")


def _parser() -> argparse.ArgumentParser:
    from memguard.ops.actions import OPERATOR_HOLD_SECONDS

    parser = argparse.ArgumentParser(prog="memguard", description="Fleet-wide Zep read guard.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("status", help="the fleet's mode, record, failure count, prober and last "
                       "operator action")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("force", help="force write_only fleet-wide")
    p.add_argument("--reason", default="manual_ops")
    p.add_argument("--ttl", type=int, default=OPERATOR_HOLD_SECONDS,
                   help=f"hold seconds (default {OPERATOR_HOLD_SECONDS})")
    sub.add_parser("clear", help="end the forced mode now")
    sub.add_parser("probe", help="probe Zep now if a hold has expired")
    p = sub.add_parser("history", help="transitions, probe results and operator actions, oldest first")
    p.add_argument("-n", type=int, default=20, help="how many entries (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
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
    code = drill.run(args.redis_url, args.zep_url, args.zep_key, hold=args.hold, logdir=logdir)
    files = sorted(name for name in os.listdir(logdir) if name.endswith(".log"))
    print(f"logs (JSON lines) in {logdir}: {', '.join(files) or 'none'}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    from memguard import process
    from memguard.domain.events import origin
    from memguard.observe import logs
    from memguard.ops.actions import OperatorError

    one_shot = args.cmd in ("status", "force", "clear", "probe", "history")
    if one_shot:  # they print their own outcome; a warning line would only repeat it
        logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="memguard: %(message)s")
    elif args.cmd == "metrics":
        logs.configure(level="WARNING", stream=sys.stderr)
    by = origin("cli", user=getpass.getuser())
    url = None
    try:
        if one_shot:
            proc = process.configure(watch=False, count_metrics=False)  # one shot: no thread, no metrics
            url = proc.settings.redis_url
        if args.cmd == "status":
            st = proc.ops.status(by)
            print(json.dumps(st)) if args.json else _print_status(st)
        elif args.cmd == "force":
            print(json.dumps(proc.ops.force(by, reason=args.reason, ttl_seconds=args.ttl)))
        elif args.cmd == "clear":
            print(json.dumps(proc.ops.clear(by)))
        elif args.cmd == "probe":
            print(json.dumps(proc.ops.probe(by)))
        elif args.cmd == "history":
            from memguard.ops import audit

            if args.n < 1:
                raise OperatorError(f"-n must be at least 1, got {args.n}")
            for item in audit.history(proc.state.client, proc.state.keys.audit, args.n):
                print(json.dumps(item) if args.json else audit.describe(item))
        elif args.cmd == "drill":
            from memguard.drill import run as drill

            if args.zep_url and not args.redis_url:
                parser.error("--zep-url needs --redis-url")
            return _drill(drill, args)
        elif args.cmd == "metrics":
            print(f"serving /metrics on {args.addr}:{args.port}", file=sys.stderr)
            process.serve_metrics(args.port, args.addr)
            while True:
                time.sleep(3600)
    except (OperatorError, SettingsError) as exc:
        print(f"memguard: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"memguard: cannot reach Redis at {masked_url(url or '?')}: {type(exc).__name__}",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
