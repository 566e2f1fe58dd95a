"""The least-privilege Redis ACL users memguard needs, as ``ACL SETUSER`` lines (``memguard acl``).

Two users: the one every memguard process runs as (workers, web apps, the beat), limited to
memguard's keys and channels and to the commands it sends; and a read-only operator's, for
``memguard status``, ``history`` and ``guards``. Their passwords are placeholders: an operator
sets them, and ``REDIS_URL`` carries the user and the password (``redis://memguard:<pw>@host``).
"""

from __future__ import annotations

# memguard's keys (one server, and a Cluster's hash-tagged forms, named guards' too) and channels
# (its change channels, and the server's invalidation channel that client tracking redirects to).
KEYS = ("~mem:*", "~{mem}:*", "~{mem:g:*")
CHANNELS = ("&mem:*", "&__redis__:invalidate")
# What the processes send: reads and writes of its keys, its Lua scripts (and what they run),
# pub/sub, TIME, and @connection's CLIENT ID / TRACKING / SETNAME (/ SETINFO on Redis 7.2);
# nothing dangerous (CLIENT KILL, CONFIG, FLUSHALL, KEYS...).
COMMANDS = ("-@all", "+@read", "+@write", "+@scripting", "+@pubsub", "+@transaction", "+@connection",
            "+time", "-@dangerous")
# The operator's reads: the snapshot (MGET, PTTL, TIME, PUBSUB NUMSUB, TYPE), the audit trail and
# the index of hold ends. Keys read-only (%R); no script, so no force or clear.
READ_ONLY = ("-@all", "+@read", "+@connection", "+time", "+pubsub|numsub", "-@dangerous")


def rules(*, user: str = "memguard", read_only_user: str = "memguard-ro", beat: bool = True,
          redbeat_prefix: str = "redbeat:") -> list[str]:
    """The ``ACL SETUSER`` lines for memguard's user (with RedBeat's keys, under the app's
    ``redbeat_prefix``, when the beat runs on this Redis) and the read-only operator's (who reads
    the beat lock there)."""
    beat_keys = (f"~{redbeat_prefix}*",) if beat else ()
    return [
        " ".join(("ACL SETUSER", user, "on", ">CHANGE-ME", "resetkeys", "resetchannels", *KEYS, *beat_keys,
                  *CHANNELS, *COMMANDS)),
        " ".join(("ACL SETUSER", read_only_user, "on", ">CHANGE-ME-TOO", "resetkeys", "resetchannels",
                  *(f"%R{k}" for k in (*KEYS, *beat_keys)), *CHANNELS, *READ_ONLY)),
    ]
