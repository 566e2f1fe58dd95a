"""Celery's and RedBeat's settings for memguard's Redis: what ``memguard.install`` gives an app
and the ready app's broker and results. Plain dictionaries: nothing here imports Celery, so the
ready app's configuration and the command line can read them cheaply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis

from memguard.config.settings import Settings
from memguard.config.target import Target, connection_name
from memguard.ops.beatlock import READY_APP_PREFIX, BeatKeys


def redbeat_conf(target: Target) -> dict[str, Any]:
    """Celery settings that point RedBeat at this Redis ({} on a cluster: RedBeat then keeps to
    the broker's Redis, which must not be a cluster)."""
    if target.kind == "single":
        return {"redbeat_redis_url": target.url,
                "redbeat_redis_options": {"client_name": connection_name("beat")}}
    if target.kind == "cluster":
        return {}
    options: dict[str, Any] = {"sentinels": list(target.nodes), "service_name": target.service,
                               "db": target.db, "socket_timeout": 1.0, **target.auth()}
    if target.sentinel_kwargs:
        options["sentinel_kwargs"] = dict(target.sentinel_kwargs)
    tls = {"redbeat_redis_use_ssl": dict(target.tls)} if target.ssl else {}  # RedBeat: a dict turns TLS on
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options, **tls}


def celery_broker(target: Target) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and transport options for this Redis (kombu's sentinel form)."""
    if target.kind == "single":
        return target.url, {}
    if target.kind == "cluster":
        raise ValueError("Celery's broker cannot be a Redis Cluster: set CELERY_BROKER_URL")
    auth = ""
    if target.password:
        auth = f"{target.username or ''}:{target.password}@"
    url = ";".join(f"sentinel://{auth}{h}:{p}/{target.db}" for h, p in target.nodes)
    options: dict[str, Any] = {"master_name": target.service}
    if target.sentinel_kwargs:
        options["sentinel_kwargs"] = dict(target.sentinel_kwargs)
    return url, options


def celery_transport(redis_url: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Celery's broker and result settings as memguard's ready app takes them:
    CELERY_BROKER_URL, else ``redis_url`` (in kombu's ``sentinel://`` form for Sentinel);
    results at CELERY_RESULT_BACKEND, else the broker. Raises ``ValueError`` for a Cluster
    without CELERY_BROKER_URL: a Cluster cannot carry them."""
    broker, options = env.get("CELERY_BROKER_URL"), cast(dict[str, Any], {})
    if not broker:
        broker, options = celery_broker(Target.parse(redis_url))
    return {"broker_url": broker, "broker_transport_options": options,
            "result_backend": env.get("CELERY_RESULT_BACKEND") or broker,
            "result_backend_transport_options": options}


def redbeat_url(settings: Settings) -> str | None:
    """The RedBeat URL ``memguard.install`` gives an app for this REDIS_URL (None on a Cluster)."""
    return redbeat_conf(settings.redis_target).get("redbeat_redis_url")


def ready_app_keys(settings: Settings) -> BeatKeys:
    """The ready app's (``celery -A memguard``) RedBeat keys, known without importing Celery."""
    return BeatKeys(f"{READY_APP_PREFIX}:lock", READY_APP_PREFIX, redbeat_url(settings) is not None)


def lock_client(keys: BeatKeys, ours: redis.Redis, timeout_s: float) -> redis.Redis | None:
    """A client of the Redis that holds the app's beat lock: ``ours`` (memguard's) when RedBeat
    keeps it on REDIS_URL, else RedBeat's own with a short timeout; None when that is not a plain
    Redis URL (the ready app on a Cluster, a Sentinel broker)."""
    if keys.on_redis_url:
        return ours
    if keys.elsewhere is None:
        return None
    return redis.Redis.from_url(keys.elsewhere, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                decode_responses=True)
