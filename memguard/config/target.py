"""Which Redis memguard talks to, from ``REDIS_URL``: one server, a Sentinel master or a Cluster.

- ``redis://``, ``rediss://``, ``unix://``: one server (redis-py's own URL forms).
- ``redis+sentinel://[user:pass@]host[:port][,host:port...]/<service>[/<db>]`` (and
  ``rediss+sentinel://``): the master Sentinel names for ``<service>``; the sentinel port
  defaults to 26379. The credentials are the master's; ``?sentinel_password=`` (and
  ``sentinel_username=``) authenticate to the sentinels when they need it. Every connection
  asks the sentinels for the master when it (re)connects, so a failover needs no restart.
- ``redis+cluster://[user:pass@]host:port[,host:port...]`` (and ``rediss+cluster://``): Redis
  Cluster. memguard's keys then carry the hash tag ``{mem}`` (``{mem}:mode:forced:v1``...) so
  that every script's keys live in one slot; on one server they keep their original names.

Everything that connects (the request path, the watcher, the prober, the tasks, the CLI, and
RedBeat through ``memguard.install``) goes through a ``Target``, so they all follow the same
master.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_PORT = 26379
SENTINEL_TIMEOUT_S = 0.25
KEY_PREFIX = "mem:"
CLUSTER_KEY_PREFIX = "{mem}:"  # one hash slot for every memguard key
# TLS in REDIS_URL's query (redis-py's names), read for Sentinel and Cluster URLs too.
TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


@dataclass(frozen=True)
class Target:
    """A parsed ``REDIS_URL``. ``kind`` is ``single``, ``sentinel`` or ``cluster``."""

    url: str
    kind: str = "single"
    nodes: tuple[tuple[str, int], ...] = ()  # the sentinels, or the cluster's start-up nodes
    service: str = ""
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    # a connection to a sentinel: its credentials (sentinel_username/_password) and TLS
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    # rediss+sentinel / rediss+cluster: the TLS files and verification from REDIS_URL's query
    # (redis-py reads them from a one-server URL itself).
    tls: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> Target:
        """Raises ``ValueError`` saying what is wrong with the URL."""
        scheme, sep, rest = url.partition("://")
        if not sep or not rest:
            raise ValueError("expected a URL such as redis://host:6379/0")
        if scheme in SINGLE_SCHEMES:
            parts = urlsplit(url)
            # redis-py ignores what it cannot read after the host; a password holding /, ? or #
            # that is not percent-encoded ends up there too. Neither is echoed: it may be secret.
            if parts.fragment or (parts.path.strip("/") and not parts.path.strip("/").isdigit()):
                raise ValueError("the part after the host is not a database number (a password holding "
                                 "/, ? or # must be percent-encoded: %2F, %3F, %23)")
            redis.connection.parse_url(url)  # redis-py's own check
            return cls(url)
        if scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme!r}; expected one of "
                             f"{', '.join(SINGLE_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES)}")
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username, _, password = userinfo.partition(":")
        sentinel = scheme in SENTINEL_SCHEMES
        nodes = tuple(_host_port(h, SENTINEL_PORT if sentinel else None) for h in hosts.split(","))
        path = [p for p in parts.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        ssl_on = scheme.startswith("rediss")
        common: dict[str, Any] = dict(nodes=nodes, username=unquote(username) or None,
                                      password=unquote(password) or None, ssl=ssl_on,
                                      tls={k: query[k] for k in TLS_PARAMETERS if k in query and ssl_on})
        if sentinel:
            if not path or len(path) > 2:
                raise ValueError("expected /<service>[/<db>] after the sentinels, e.g. "
                                 "redis+sentinel://sentinel-1:26379,sentinel-2:26379/mymaster/0")
            to_sentinel: dict[str, Any] = {k.removeprefix("sentinel_"): query[k]
                                           for k in ("sentinel_username", "sentinel_password") if k in query}
            if ssl_on and _sentinel_ssl(query.get("sentinel_ssl", "true")):
                to_sentinel.update(ssl=True, **common["tls"])
            return cls(url, "sentinel", service=unquote(path[0]), db=_db(path[1:]),
                       sentinel_kwargs=to_sentinel, **common)
        if path and path != ["0"]:
            raise ValueError("Redis Cluster has only database 0; drop the path after the nodes")
        return cls(url, "cluster", **common)

    @property
    def key_prefix(self) -> str:
        return CLUSTER_KEY_PREFIX if self.kind == "cluster" else KEY_PREFIX

    def client(self, **options: Any) -> redis.Redis:
        """A client for memguard's keys (a ``RedisCluster`` on a cluster)."""
        if self.kind == "single":
            return redis.Redis.from_url(self.url, **options)
        if self.kind == "sentinel":
            return self.sentinels.master_for(self.service, db=self.db, **self.auth(), **self.tls, **options)
        options.pop("retry_on_timeout", None)  # a cluster client retries by its own rules
        nodes = [ClusterNode(h, p) for h, p in self.nodes]
        # It forwards every command to the RedisCluster it makes on first use.
        return cast(redis.Redis, LazyCluster(lambda: RedisCluster(startup_nodes=nodes, ssl=self.ssl,
                                                                  **self.auth(), **self.tls, **options)))

    def aclient(self, **options: Any) -> redis.asyncio.Redis:
        """An asyncio client (one server or the Sentinel master; a Cluster has none here)."""
        if self.kind == "single":
            return redis.asyncio.Redis.from_url(self.url, **options)
        if self.kind == "sentinel":
            order = [(kw["host"], kw["port"]) for kw in
                     (c.connection_pool.connection_kwargs for c in self.sentinels.sentinels)]
            manager = redis.asyncio.sentinel.Sentinel(order, **self._manager_options())
            return manager.master_for(self.service, db=self.db, **self.auth(), **self.tls, **options)
        raise ValueError("no asyncio client for a Redis Cluster")

    def connection(self, **options: Any) -> redis.Connection:
        """One unpooled connection to the server holding memguard's keys, for the watcher:
        the current master, or on a cluster the node that owns the ``{mem}`` slot."""
        if self.kind == "single":
            pool = redis.ConnectionPool.from_url(self.url, **options)
            return cast(redis.Connection, pool.make_connection())
        if self.kind == "sentinel":
            master = self.sentinels.master_for(self.service, db=self.db, **self.auth(), **self.tls,
                                               **options)
            return master.connection_pool.make_connection()  # asks the sentinels on connect
        finder = self.client(socket_timeout=options.get("socket_timeout"),
                             socket_connect_timeout=options.get("socket_connect_timeout"))
        try:
            node = cast(RedisCluster, finder).get_node_from_key(CLUSTER_KEY_PREFIX)
        finally:
            finder.close()
        cls = redis.SSLConnection if self.ssl else redis.Connection
        return cls(host=node.host, port=node.port, **self.auth(), **self.tls, **options)

    def server_connection(self, host: str, port: int, **options: Any) -> redis.Connection:
        """One unpooled connection to another server of this deployment (a replica), with the
        credentials, database and TLS of ``REDIS_URL``."""
        cls = redis.SSLConnection if self.ssl else redis.Connection
        return cls(host=host, port=port, db=self.db, **self.auth(), **self.tls, **options)

    def server_aclient(self, host: str, port: int, **options: Any) -> redis.asyncio.Redis:
        """``server_connection``'s asyncio client."""
        return redis.asyncio.Redis(host=host, port=port, db=self.db, ssl=self.ssl, **self.auth(), **self.tls,
                                   **options)

    def auth(self) -> dict[str, Any]:
        auth: dict[str, Any] = {}
        if self.username:
            auth["username"] = self.username
        if self.password:
            auth["password"] = self.password
        return auth

    @cached_property
    def sentinels(self) -> Sentinel:
        """The one Sentinel manager of this target: every client and the watcher ask the same
        sentinels, in the order ``prefer`` leaves them."""
        return Sentinel(list(self.nodes), **self._manager_options())

    def _manager_options(self) -> dict[str, Any]:
        """A Sentinel manager's options, blocking or asyncio. Short timeouts: a reconnect on
        the request path must not wait long for a sentinel that is down."""
        kwargs = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S,
                  **self.sentinel_kwargs}
        return {"sentinel_kwargs": kwargs, **({"ssl": True} if self.ssl else {})}

    def prefer(self, host: str, port: int) -> None:
        """Ask this sentinel first from now on (it announced the latest switch)."""
        clients = self.sentinels.sentinels
        for i, client in enumerate(clients):
            kw = client.connection_pool.connection_kwargs
            if (kw.get("host"), kw.get("port")) == (host, port):
                clients.insert(0, clients.pop(i))
                return


class LazyCluster:
    """A ``RedisCluster`` made on first use, whose cluster-level errors are Redis errors.

    redis-py's ``RedisCluster`` connects in its constructor and reports an unreachable
    cluster with ``RedisClusterException``, which is not a ``redis.RedisError``: a cluster
    that is down when a process starts would raise out of the request path. Made lazily, and
    with that exception turned into ``redis.ConnectionError``, it is an ordinary Redis outage:
    the guard fails open until the cluster answers.
    """

    def __init__(self, factory: Callable[[], RedisCluster]) -> None:
        self._factory = factory
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def register_script(self, script: str) -> Script:
        return Script(cast(RedisCluster, self), script)  # hashed locally; loaded on the first call

    def get_encoder(self) -> Encoder:
        return Encoder("utf-8", "strict", False)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._cluster(), name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except RedisClusterException as exc:
                raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc

        return call

    def _cluster(self) -> RedisCluster:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._factory()
                except RedisClusterException as exc:
                    raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
            return self._client


def _sentinel_ssl(raw: str) -> bool:
    """``sentinel_ssl``: whether a ``rediss+sentinel://`` URL's sentinels speak TLS too (the
    default), with the master's CA and client certificate; ``false`` asks them over plain TCP."""
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ValueError("sentinel_ssl must be true or false")


def tls_failure(exc: BaseException) -> str | None:
    """Why a connection failed TLS verification (a wrong CA, an expired certificate, a hostname
    mismatch), from redis-py's error or its cause; None when it failed otherwise."""
    seen: BaseException | None = exc
    for _ in range(5):  # the error, its cause, ...
        if seen is None:
            return None
        text = str(seen)
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            reason = getattr(seen, "verify_message", None) or text.partition("certificate verify failed:")[2]
            return (reason.split(" (_ssl")[0].strip(" .") or "certificate verify failed")[:200]
        seen = seen.__cause__ or seen.__context__
    return None


NAME_CHARS = 120  # a connection's name: CLIENT SETNAME takes no spaces; bounded like any label


def connection_name(role: str) -> str:
    """``memguard:<role>:<host>:<pid>``: what ``CLIENT LIST`` shows for each connection memguard
    opens, so an operator of a shared Redis can tell its views, commands, beat and CLI apart.
    Read when the connection is made: a forked child names its own."""
    host = "".join(c if c.isalnum() or c in "-._" else "_" for c in socket.gethostname()) or "host"
    return f"memguard:{role}:{host}:{os.getpid()}"[:NAME_CHARS]


def keepalive_options() -> dict[int, int]:
    """Let the kernel notice a dead peer in about 2 s without any Redis command."""
    opts = {}
    for name, value in (("TCP_KEEPIDLE", 1), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 1)):
        if hasattr(socket, name):
            opts[getattr(socket, name)] = value
    return opts


def _host_port(text: str, default_port: int | None) -> tuple[str, int]:
    host, port = text, None
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if port is None:
        if default_port is None:
            raise ValueError(f"missing port in {text!r}")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port)


def _db(path: list[str]) -> int:
    if not path:
        return 0
    if not path[0].isdigit():
        raise ValueError(f"the database must be a number, not {path[0]!r}")
    return int(path[0])
