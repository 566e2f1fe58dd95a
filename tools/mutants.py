"""Deliberate bugs in promised behaviours: each must turn the suite red.

    ./run mutants [NAME ...]      (all when no name is given; --list shows them)

Each mutant is applied alone to a fresh copy of the working tree, and the tests that guard
its behaviour run there, under a Python environment of the copy's own: a venv whose only
path entries are the copy and this project's installed dependencies. Every process the tests
start (Celery workers and beats, the command line) runs that Python, so it imports the mutated
``memguard`` whatever PYTHONPATH a test sets. A mutant is *killed* when those tests fail, and
*survived* when they pass. The exit code is the number of survivors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant("no-redis-backoff", "the request path's Redis back-off set to 0",
           "memguard/request/guard.py", "REDIS_BACKOFF_S = 1.0", "REDIS_BACKOFF_S = 0.0",
           ("tests/test_hung_redis.py",)),
    Mutant("config-exit-1", "a bad configuration exits 1 instead of 78 (EX_CONFIG)",
           "memguard/integrations/tasks.py", "os._exit(78)", "os._exit(1)",
           ("tests/test_existing_celery_app.py", "-k", "exits or refuses or naming")),
    Mutant("force-notice-unpublished", "memguard's own force publishes no freshness notice",
           "memguard/store/lua/force.lua", "notice = notify({forced = new, ramp = ramp, chaos = chaos})",
           "notice = (function() local c = {forced = new, ramp = ramp, chaos = chaos}; "
           "c.v = redis.call('INCR', VERSION); c.now = now_ms(); return cjson.encode(c) end)()",
           ("tests/test_propagation_to_every_view.py", "-k", "no_command")),
    Mutant("probe-lock-owner-unchecked", "a probe's result is applied without checking its lock's owner",
           "memguard/store/lua/probe_finish.lua", "if redis.call('GET', LOCK) ~= A.token then",
           "if false then", ("tests/test_request_path_with_real_redis.py", "-k", "probe")),
    Mutant("broker-password-unredacted", "the broker URL's password is no longer redacted from logs",
           "memguard/observe/logs.py", '("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")',
           '("REDIS_URL", "CELERY_RESULT_BACKEND")', ("tests/test_metrics_and_logs.py", "-k", "redact")),
    # Our own: the other promises a regression must not slip past.
    Mutant("no-safety-net", "a fault of memguard's own on a read is raised into the caller",
           "memguard/request/guard.py",
           "        with contextlib.suppress(Exception):\n"
           "            self.hooks.emit(events.internal(op, fault))\n",
           "        raise fault\n",
           ("tests/unit/test_guard_never_raises_its_own_faults.py",
            "tests/test_guard_never_raises_into_the_caller.py")),
    Mutant("unbuilt-guard-raises", "a read whose guard cannot be built raises instead of running unguarded",
           "memguard/service.py", "    meta = _report(fault)\n    try:\n        value = read()\n",
           "    raise fault\n    try:\n        value = read()\n",
           ("tests/test_guard_never_raises_into_the_caller.py",)),
    Mutant("lua-not-packaged", "the wheel and the sdist leave the Lua scripts out",
           "pyproject.toml", 'memguard = ["py.typed", "store/lua/*.lua"]', 'memguard = ["py.typed"]',
           ("tests/test_release.py", "-k", "carry")),
    Mutant("auth-counts", "a 401/403 counts like a 5xx instead of forcing at once",
           "memguard/domain/classify.py", 'return Verdict(Action.FORCE, "auth", status)',
           'return Verdict(Action.COUNT, "auth", status)',
           ("tests/test_request_path_with_real_redis.py", "-k", "auth_failure")),
    Mutant("408-not-timeout", "an HTTP 408 is not classified as a timeout",
           "memguard/domain/classify.py", "if status == 408:", "if status == -408:",
           ("tests/test_request_path_with_real_redis.py", "-k", "fault_classification and 408")),
    Mutant("success-keeps-count", "a successful read never resets the failure count",
           "memguard/request/guard.py",
           "self._reset_steps() if self._may_have_failures() else None", "None",
           ("tests/test_request_path_with_real_redis.py", "-k", "resets_the_count")),
    Mutant("auto-shortens-ops-hold", "an automatic trigger overwrites an operator's longer hold",
           "memguard/store/lua/force.lua", "if A.auto and prev then", "if false then",
           ("tests/test_request_path_with_real_redis.py", "-k", "never_shortens")),
    Mutant("no-hold-doubling", "a failed probe no longer doubles the hold",
           "memguard/store/lua/probe_finish.lua", "A.hold_ms * 2 ^ (tonumber(rec.holds) or 1)", "A.hold_ms",
           ("tests/test_trip_policies_backoff_and_webhooks.py", "-k", "double_the_hold")),
    Mutant("hand-write-ignored", "a write no notice explains (a hand SET) is not re-read",
           "memguard/request/view.py", "        return bool(unexplained)\n",
           "        return False\n",
           ("tests/test_propagation_to_every_view.py", "-k", "any_writer")),
    Mutant("explain-asked-by-all", "every live view asks for a hand write's explanation at once",
           "memguard/request/view.py",
           "or random.random() * max(self.fleet, self.fleet_floor) < EXPLAIN_ASKERS:", "or True:",
           ("tests/unit/test_guard_decisions.py", "-k", "explanation_at_once")),
    Mutant("fleet-size-unlearned", "a view never learns the fleet's size: in a crowd, every view asks",
           "memguard/request/view.py", "self.fleet = snap.fleet or self.fleet",
           "self.fleet = self.fleet",
           ("tests/test_propagation_to_every_view.py", "-k", "crowd")),
    Mutant("re-read-still-asks", "a view whose re-read covered a hand write still asks for its explanation",
           "memguard/request/watch.py", "                explain_at.pop(view, None)\n",
           "                pass\n", ("tests/unit/test_guard_decisions.py", "-k", "re_read_covers")),
    Mutant("explained-once-for-good", "the same values are not explained again after a transition",
           "memguard/store/lua/explain.lua", "~= digest .. ':' .. tostring(current)",
           "~= digest .. ':' .. tostring(redis.pcall('GET', LOCK)):match(':(.*)$')",
           ("tests/test_any_value_at_any_key.py", "-k", "explained_again")),
    Mutant("no-key-hygiene", "a script no longer removes a key of the wrong Redis type first",
           "memguard/store/scripts.py",
           "checks = [f\"expect({lua}, '{KEY_TYPES[field]}')\" for lua, field in spec.keys if spec.repair]",
           "checks: list[str] = []", ("tests/test_any_value_at_any_key.py", "-k", "fails_open")),
    Mutant("lua-until-unbounded", "the scripts accept a record ending years ahead (Python does not)",
           "memguard/store/lua/prelude.lua",
           "if not finite(u) or u * 1000 > now_ms() + LONGEST_AHEAD_MS then return false end",
           "if not finite(u) then return false end",
           ("tests/test_any_value_at_any_key.py", "-k", "one_rule")),
    Mutant("quadratic-redaction", "URL passwords are scrubbed with the old backtracking pattern",
           "memguard/observe/logs.py", "    text = _url_passwords(text)[0] if \"://\" in text else text\n",
           "    text = re.sub(r\"(\\w+://[^:/@\\s]*:)([^@\\s]+)(@)\", rf\"\\1{REDACTED}\\3\", text)\n",
           ("tests/test_metrics_and_logs.py", "-k", "linear")),
    Mutant("webhook-no-idempotency-key", "a webhook retry carries no Idempotency-Key",
           "memguard/ops/notify.py",
           "headers = {\"Idempotency-Key\": f\"memguard-{msg['kind']}-{msg['id']}\"}",
           "headers: dict[str, str] = {}",
           ("tests/test_trip_policies_backoff_and_webhooks.py", "-k", "webhooks_once")),
    Mutant("healthy-counts-sent-cold", "the read meter sends healthy counts once a slot, no window hot",
           "memguard/request/meter.py",
           "        return hot and now - self._flushed_at >= self.healthy_flush_s\n",
           "        return now - self._flushed_at >= self.healthy_flush_s\n",
           ("tests/test_failure_rate_policy.py", "-k", "sends_no_counts")),
    Mutant("window-judged-before-catchup", "a window is judged before the fleet's kept counts are in",
           "memguard/store/lua/window_trip.lua", "local waiting = now - hot < A.catchup_ms",
           "local waiting = false", ("tests/test_failure_rate_policy.py", "-k", "fleet_wide")),
    Mutant("kept-counts-in-todays-slot", "kept counts are sent as if read now, not in their own slots",
           "memguard/request/meter.py",
           "            age_ms = max(0, int((now - (index + 0.5) * self.bucket_s) * 1000))\n",
           "            age_ms = 0\n", ("tests/test_failure_rate_policy.py", "-k", "sends_no_counts")),
    Mutant("ramp-skipped", "the recovery ramp is ignored: every read is admitted at once after a hold",
           "memguard/request/guard.py",
           "share = ramp.held(thread_id if isinstance(thread_id, str) else str(thread_id), time.monotonic())",
           "share = None", ("tests/unit/test_recovery_ramp_decisions.py",)),
    Mutant("ramp-random-decision", "a read is admitted at random under the share, not by its conversation",
           "memguard/domain/ramp.py", 'int.from_bytes(h.digest(), "big") < now * _WHOLE',
           "__import__('random').random() < now", ("tests/unit/test_recovery_ramp_decisions.py",)),
    Mutant("back-off-reset-at-ramp-start", "the back-off resets when a ramp starts, not when it completes",
           "memguard/store/lua/prelude.lua", "holds = finite(rec.holds) and rec.holds or 1, reason = reason,",
           "holds = 1, reason = reason,", ("tests/test_recovery_ramp.py", "-k", "back_off")),
    Mutant("window-verdict-waits-for-reads",
           "bad reads a window kept waiting are judged only when more reads come",
           "memguard/request/meter.py", "self._recheck_at[window.name] = now + RECHECK_S", "pass",
           ("tests/test_a_window_is_judged_without_later_reads.py",)),
    # Promised figures and names (README, docs/settings.md, the key and metric names): their tests write them.
    Mutant("liveness-60s", "the liveness bound raised from 5 s to 60 s",
           "memguard/request/watch.py", "LIVENESS_S = 5.0", "LIVENESS_S = 60.0",
           ("tests/test_hung_redis.py",)),
    Mutant("forced-key-renamed", "the forced record's key renamed",
           "memguard/store/keys.py", 'FORCED_MODE_KEY = "mem:mode:forced:v1"',
           'FORCED_MODE_KEY = "mem:mode:forced:v2"',
           ("tests/test_promised_figures.py", "-k", "design_names")),
    Mutant("probe-budget-1500ms", "the probe's budget default raised from 150 ms to 1.5 s",
           "memguard/config/settings.py", "probe_timeout_ms: int = 150", "probe_timeout_ms: int = 1500",
           ("tests/test_promised_figures.py", "-k", "150_ms")),
    # Named guards (issue 29): a tenant's guard under its parent.
    Mutant("parent-not-consulted", "a named guard's read goes on while its parent is forced",
           "memguard/request/guard.py", "            if self.parent is not None and (held := steps.run(",
           "            if False and (held := steps.run(", ("tests/test_named_guard_parents.py",)),
    Mutant("401-counted-toward-parent", "a tenant's 401 forces its parent instead of the tenant's guard",
           "memguard/request/guard.py",
           "yield from self.state.force_steps(verdict.reason, hold, by, auto=True, quorum=quorum)",
           "yield from (steps.via(self.parent.state, self.parent.state.force_steps(verdict.reason, hold, by, "
           "auto=True, quorum=quorum)) if self.parent else self.state.force_steps(verdict.reason, hold, by, "
           "auto=True, quorum=quorum))", ("tests/test_named_guard_parents.py",)),
    Mutant("views-not-evicted", "a process keeps a named guard's view for every name a read gave",
           "memguard/request/units.py", "        while len(self.units) > self.bound:", "        while False:",
           ("tests/test_named_guards.py", "-k", "bound")),
    Mutant("default-keys-renamed", "the default guard's keys moved under a guard's own prefix",
           "memguard/store/keys.py", '        if name == "default":\n            return cls.under(prefix)',
           '        if name == "default":\n            return cls.under("mem:g:default:")',
           ("tests/test_named_guards.py", "tests/unit/test_named_guard_declarations.py", "-k",
            "previous_main or default_guards_keys")),
    Mutant("probes-one-at-a-time", "the beat's tick probes the due named guards one after another",
           "memguard/ops/prober.py", "PROBE_WORKERS = 16", "PROBE_WORKERS = 1",
           ("tests/test_named_guards.py", "-k", "hundred")),
    Mutant("otel-span-left-bare", "a guarded read's outcome is not put on the caller's span",
           "memguard/observe/otel.py",
           "        if not span.is_recording():\n            return\n        attributes",
           "        if span.is_recording():\n            return\n        attributes",
           ("tests/test_opentelemetry.py",)),
    Mutant("otel-mode-not-read", "OpenTelemetry's mode gauge says read_write whatever Redis holds",
           "memguard/observe/otel.py", "Observation(1 if m is status.mode else 0",
           "Observation(1 if m is EffectiveMode.READ_WRITE else 0", ("tests/test_opentelemetry.py",)),
    Mutant("otel-probe-unseen", "a probe's result is counted in OpenTelemetry under another guard",
           "memguard/observe/otel.py", "            self.counters[counter].add(amount, labels)",
           "            self.counters[counter].add(amount, {**labels, 'guard': '?'} if counter == 'probes' "
           "else labels)",
           ("tests/test_opentelemetry.py",)),
    Mutant("sentinels-asked-in-plain", "rediss+sentinel:// asks the sentinels over plain TCP",
           "memguard/config/target.py",
           'query.get("sentinel_ssl", "true")', 'query.get("sentinel_ssl", "false")',
           ("tests/test_tls_sentinel_and_cluster.py", "-k", "reads_forces")),
    Mutant("views-on-primary", "the views connect to the primary though replicas are set",
           "memguard/request/watch.py", "        servers, of = self.state.settings.view_servers, None\n",
           "        servers, of = None, None\n", ("tests/test_views_on_replicas.py", "-k", "killed")),
    Mutant("replica-death-unnoticed", "a view whose replica died reconnects to the same one",
           "memguard/request/placement.py", "        self._turn += 1\n", "        self._turn += 0\n",
           ("tests/test_views_on_replicas.py", "-k", "killed")),
    Mutant("replica-lag-ignored", "a view stays on a replica whose messages arrive late",
           "memguard/request/placement.py", "        if lag > MAX_LAG_S:", "        if lag > 3600:",
           ("tests/test_views_on_replicas.py", "-k", "lagging")),
    Mutant("replica-fleet-uncounted", "views on replicas count the fleet by the primary's subscribers (none)",
           "memguard/request/view.py", "random.random() * max(self.fleet, self.fleet_floor)",
           "random.random() * self.fleet", ("tests/test_views_on_replicas.py", "-k", "every_change")),
    Mutant("idle-command-connection-kept", "an idle process keeps its command connection open",
           "memguard/store/state.py",
           "            self.client.connection_pool.disconnect(inuse_connections=False)", "            pass",
           ("tests/test_connection_names.py", "-k", "idle")),
    Mutant("command-idle-zero-ignored", "MEMGUARD_COMMAND_IDLE_SECONDS=0 closes the connection at once",
           "memguard/request/watch.py", "            if idle_s:\n                self.state.close_idle",
           "            if True:\n                self.state.close_idle",
           ("tests/test_connection_names.py", "-k", "idle")),
    Mutant("operator-force-pages", "an operator's force counts as an automatic downgrade",
           "memguard/observe/counted.py", "        if not event.operator:  #", "        if True:  #",
           ("tests/test_alerts_in_real_prometheus.py", "-k", "fire_and_resolve")),
    Mutant("prober-up-absent-when-down", "the exporter leaves memory_prober_up out when Redis is down",
           "memguard/observe/metrics.py", '            yield _gauge("memory_prober_up", PROBER_UP, 0)\n',
           "", ("tests/test_alerts_in_real_prometheus.py", "-k", "cannot_reach_redis")),
    Mutant("unguarded-reads-uncounted", "a read that skipped the guard is not counted",
           "memguard/request/guard.py", "            self.hooks.emit(events.ReadUnguarded(n))",
           "            pass", ("tests/test_alerts_in_real_prometheus.py", "-k", "cannot_reach_redis")),
    Mutant("beat-lock-unnamed", "memguard's beat leaves RedBeat's random token on the lock it holds",
           "memguard/integrations/beat.py", "                self._name_lock()", "                pass",
           ("tests/test_acl_users.py", "-k", "ready_apps_beat")),
    Mutant("acl-app-prefix-ignored", "memguard acl --app grants RedBeat's default prefix",
           "memguard/integrations/cli.py", "beat=not args.no_beat, redbeat_prefix=prefix)",
           "beat=not args.no_beat)", ("tests/test_acl_users.py", "-k", "ready_apps_beat")),
    Mutant("doctor-misses-no-beat", "memguard doctor passes a deployment whose lock no beat holds",
           "memguard/ops/doctor.py", "    if lock is not None and not lock.held:", "    if False:",
           ("tests/test_doctor.py", "-k", "no_beat")),
    Mutant("doctor-tries-nothing", "memguard doctor, unable to ask ACL DRYRUN, assumes every command allowed",
           "memguard/ops/doctor.py", "                denied.append(_label(command))\n    for channel",
           "                pass\n    for channel", ("tests/test_doctor.py", "-k", "acl_user")),
    Mutant("async-replan-kept", "the asyncio driver keeps the replan due after following new views",
           "memguard/drill/awatch.py", "    watcher.following()\n", "",
           ("tests/test_watcher_drivers.py",)),
    Mutant("plugin-zep-unwired", "memguard_guard leaves memguard's reads on the environment's Zep",
           "memguard/testing.py", '        monkeypatch.setenv("ZEP_API_URL", zep.url)\n', "",
           ("tests/test_release.py", "-k", "users_suite")),
    Mutant("unguarded-batch-lost", "a batch of unguarded reads is told as one read",
           "memguard/request/guard.py", "        n, self._unguarded_n = self._unguarded_n, 0",
           "        n, self._unguarded_n = 1, 0",
           ("tests/unit/test_guard_decisions.py", "-k", "outages_unguarded")),
    Mutant("chaos-ignores-opt-in", "a process injects without MEMGUARD_CHAOS=allow",
           "memguard/request/guard.py", 'self._chaos_on = settings.chaos == "allow"', "self._chaos_on = True",
           ("tests/test_chaos_experiments.py", "-k", "same_in_every_process")),
    Mutant("chaos-picks-per-read", "an experiment picks reads at random instead of by conversation",
           "memguard/domain/chaos.py", '        h.update(thread_id.encode("utf-8", "surrogatepass"))\n'
           "        return self.chaos.fault", "        h.update(str(mono).encode())\n"
           "        return self.chaos.fault",
           ("tests/test_chaos_experiments.py", "-k", "same_in_every_process")),
    Mutant("chaos-outlives-its-end", "a process keeps injecting past the experiment's end",
           "memguard/domain/chaos.py",
           "        if mono >= self.mono_end:\n            return None\n        h", "        h",
           ("tests/test_chaos_experiments.py", "-k", "ends_by_itself")),
    Mutant("chaos-force-keeps-it", "an operator's force leaves a running experiment",
           "memguard/store/lua/force.lua", "  chaos, ended = end_chaos()", "  chaos, ended = nil, nil",
           ("tests/test_chaos_experiments.py", "-k", "force_or_clear")),
    Mutant("chaos-expiry-untold", "an experiment that ran its course ends without a trail entry",
           "memguard/store/lua/probe_claim.lua", "  change.chaos, chaos_ended = end_chaos()",
           "  change.chaos = end_chaos()", ("tests/test_chaos_experiments.py", "-k", "ends_by_itself")),
    Mutant("chaos-always-trips", "an injected fault counts toward a trip without --trip",
           "memguard/request/guard.py", "            if chaos.trip:", "            if True:",
           ("tests/test_chaos_experiments.py", "-k", "trip_the_fleet_only")),
    Mutant("threshold-4", "the consecutive-failure threshold default raised from 3 to 4",
           "memguard/config/settings.py", "threshold: int = 3", "threshold: int = 4",
           ("tests/test_promised_figures.py", "-k", "three_failures")),
)


def copy_tree(dest: Path) -> None:
    """The working tree as it is (tracked and new files), without the venv or caches."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def environment(copy: Path) -> str:
    """A venv that imports ``copy`` first, then this environment's packages; returns its python."""
    venv = copy / ".mutant-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "mutant.pth").write_text(f"{copy}\n{sysconfig.get_paths()['purelib']}\n")
    return str(venv / "bin" / "python")


def run(m: Mutant) -> tuple[bool, float, str]:
    """Apply ``m`` to a fresh copy and run its tests; (killed, seconds, last output line)."""
    with tempfile.TemporaryDirectory(prefix=f"memguard-mutant-{m.name}-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        target = copy / m.path
        text = target.read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"mutant {m.name}: {m.path} must hold the original text exactly once")
        target.write_text(text.replace(m.old, m.new))
        python = environment(copy)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        started = time.monotonic()
        out = subprocess.run([python, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider",
                              "--hypothesis-profile=mutants", *m.tests], cwd=copy, env=env,
                             capture_output=True, text=True, timeout=900)
        last = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
        if out.returncode not in (0, 1):  # 1: tests failed; anything else: the run itself broke
            raise SystemExit(f"mutant {m.name}: pytest exited {out.returncode}: {last}\n{out.stderr[-2000:]}")
        return out.returncode == 1, time.monotonic() - started, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s): {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.name:30} {m.what}")
        return 0
    survivors = 0
    for m in chosen:
        killed, seconds, last = run(m)
        survivors += not killed
        print(f"{'killed  ' if killed else 'SURVIVED'} {m.name:30} {seconds:5.1f}s  {m.what}  [{last}]",
              flush=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} mutants killed")
    return survivors


if __name__ == "__main__":
    sys.exit(main())
