"""Job handlers for the fault tests, loaded by `jobwire worker --import tests.handlers`."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from jobwire.worker import JobContext, JobFailed, handler


@handler("sleep")
async def sleep(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Sleeps `seconds`, then answers with the attempt that finished."""
    ctx.logger.info("sleeping %s s", payload.get("seconds", 0))
    await asyncio.sleep(float(payload.get("seconds", 0)))
    return {"attempt": ctx.attempt, "worker": ctx.worker_id}


@handler("block")
def block(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A plain handler that ignores cancellation while it works (a slow, stubborn job)."""
    time.sleep(float(payload.get("seconds", 0)))
    return {"attempt": ctx.attempt, "worker": ctx.worker_id}


@handler("chaos")
async def chaos(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Sleeps a little, then fails at the given rate (retryably unless `final` is drawn)."""
    await asyncio.sleep(random.uniform(0, float(payload.get("max_sleep", 0.01))))
    draw = random.random()
    if draw < float(payload.get("fail_rate", 0.0)):
        raise JobFailed("chaos", retryable=draw > float(payload.get("final_rate", 0.0)))
    return {"attempt": ctx.attempt}


@handler("hog")
async def hog(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A badly written async handler: on its first attempt it blocks the worker's event
    loop for `seconds` (so no lease extension leaves the worker meanwhile); later
    attempts return at once."""
    if ctx.attempt == 1:
        time.sleep(float(payload.get("seconds", 0)))  # noqa: ASYNC251 - on purpose
    return {"attempt": ctx.attempt, "worker": ctx.worker_id}
