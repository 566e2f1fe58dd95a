"""An existing application's Celery app with memguard added: what a user writes.

Run from any directory with this folder on PYTHONPATH::

    celery -A myapp worker -P prefork -c 2 -l info
    celery -A myapp beat -l info        # memguard.install sets -S memguard.beat.Scheduler

Its Zep reads use plain httpx (not a Zep SDK), so it gives memguard its own probe.
``CELERY_BROKER_URL`` is the app's broker, Redis or RabbitMQ (``amqp://guest:guest@host:5672//``).
With a Redis broker RedBeat keeps its schedule and lock there; with RabbitMQ, memguard.install
points RedBeat at memguard's Redis (``REDIS_URL``), where memguard's state lives in both cases.
"""

import os

import httpx
from celery import Celery

import memguard

app = Celery(
    "myapp",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"),
    backend=os.environ.get("CELERY_RESULT_BACKEND"),  # optional
)
if app.conf.broker_url.startswith("redis"):
    app.conf.redbeat_redis_url = app.conf.broker_url

zep = httpx.Client(
    base_url=os.environ.get("ZEP_API_URL", "http://127.0.0.1:8000"),
    headers={"Authorization": f"Api-Key {os.environ.get('ZEP_API_KEY', '')}"},
)


@memguard.guarded
def read_memory(thread_id: str) -> dict:
    response = zep.get(f"/api/v2/sessions/{thread_id}/memory", timeout=0.25)
    response.raise_for_status()
    return response.json()


def probe_zep(timeout_s: float) -> None:
    zep.get("/api/v2/sessions/memguard-probe/memory", timeout=timeout_s).raise_for_status()


memguard.install(app, probe=probe_zep)


@app.task(name="myapp.answer")
def answer(thread_id: str) -> str:
    memory, meta = read_memory(thread_id)
    if memory is None:  # Zep is degraded or the fleet is write_only: answer without memory
        return f"no memory ({meta['source']})"
    return memory.get("context") or ""


@app.task(name="myapp.read_many")
def read_many(count: int, how: str = "decorated") -> dict:
    """Reads for the tests: through the decorated function or memguard.fetch_thread_context."""
    read = read_memory if how == "decorated" else memguard.fetch_thread_context
    used = sum(1 for _ in range(count) if read("thread-1")[1]["used"])
    return {"pid": os.getpid(), "reads": count, "used": used}


# -- one guard per tenant: a tenant's bad key switches off that tenant's memory alone ----------

TENANT_KEYS = {"acme": os.environ.get("ZEP_API_KEY", ""), "globex": os.environ.get("ZEP_API_KEY", "")}
TENANT_ZEP = {tenant: httpx.Client(base_url=zep.base_url, headers={"Authorization": f"Api-Key {key}"})
              for tenant, key in TENANT_KEYS.items()}


def probe_tenant(name: str, timeout_s: float) -> None:
    """A tenant guard's probe, with that tenant's key (``name`` is ``zep-t.<tenant>``)."""
    tenant = name.removeprefix("zep-t.")
    TENANT_ZEP[tenant].get("/api/v2/sessions/memguard-probe/memory", timeout=timeout_s).raise_for_status()


memguard.declare("zep-t.*", parent="default", probe=probe_tenant,
                 hold_seconds=int(os.environ.get("MYAPP_TENANT_HOLD_SECONDS", "300")))


@memguard.guarded(guard=lambda thread_id, tenant: f"zep-t.{tenant}")
def read_tenant_memory(thread_id: str, tenant: str) -> dict:
    response = TENANT_ZEP[tenant].get(f"/api/v2/sessions/{thread_id}/memory", timeout=0.25)
    response.raise_for_status()
    return response.json()


@app.task(name="myapp.tenant_answer")
def tenant_answer(thread_id: str, tenant: str) -> dict:
    """A tenant's read, with what the guard said (for the tests)."""
    _, meta = read_tenant_memory(thread_id, tenant)
    return {"used": meta["used"], "source": meta["source"], "guard": meta.get("guard")}
