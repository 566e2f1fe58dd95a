"""An asyncio web app (FastAPI) reading Zep memory through memguard, on its event loop.

    uvicorn app:app       # with REDIS_URL, ZEP_API_URL and ZEP_API_KEY set

The blocking Celery side (worker, beat, probe) is the same as for any app: see
``examples/existing_app``. The web processes only read, so they need no Celery at all.
"""

import os
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

import memguard


@asynccontextmanager
async def lifespan(app: FastAPI):
    await memguard.awarm_up()  # optional: build memguard off the loop before the first request
    yield


app = FastAPI(lifespan=lifespan)
zep = httpx.AsyncClient(
    base_url=os.environ.get("ZEP_API_URL", "http://127.0.0.1:8000"),
    headers={"Authorization": f"Api-Key {os.environ.get('ZEP_API_KEY', '')}"},
)


@memguard.guarded(timeout_ms=300)
async def read_memory(thread_id: str) -> dict:
    response = await zep.get(f"/api/v2/sessions/{thread_id}/memory", timeout=0.3)
    response.raise_for_status()
    return response.json()


@app.get("/answer/{thread_id}")
async def answer(thread_id: str) -> dict:
    memory, meta = await read_memory(thread_id)  # never raises; None while Zep is degraded
    return {"memory": memory, "source": meta["source"]}


@app.get("/context/{thread_id}")
async def context(thread_id: str) -> dict:
    text, meta = await memguard.afetch_thread_context(thread_id)  # memguard's own read, AsyncZep
    return {"context": text, "source": meta["source"]}
