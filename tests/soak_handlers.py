"""The soak test's job type: mostly quick successes, with failures and hangs mixed in."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from jobwire.worker import JobContext, JobFailed, handler


@handler("soak")
async def soak(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    draw = random.random()
    if draw < payload["hang_rate"]:
        await asyncio.sleep(30)  # the job's execution timeout ends this attempt
    await asyncio.sleep(random.uniform(0, payload["max_sleep"]))
    if draw > 1 - payload["fail_rate"]:
        # Most failures are retryable; a few are final and go straight to FAILED.
        raise JobFailed("soak failure", retryable=draw < 1 - payload["final_rate"])
    return {"n": payload["n"], "attempt": ctx.attempt}
