"""jobwire worker SDK: run handlers for jobs leased from a jobwire scheduler.

::

    from jobwire.worker import JobContext, JobFailed, Worker

    worker = Worker("127.0.0.1:50051", queues=["default"], concurrency=8)

    @worker.handler("resize")
    async def resize(payload: dict, ctx: JobContext) -> dict:
        if "url" not in payload:
            raise JobFailed("no url", retryable=False)
        ...
        return {"ok": True}

    worker.run_forever()

Handlers can also be declared at module level with `@jobwire.worker.handler("type")`
and run with `jobwire worker --import mymodule`.
"""

from .backoff import Backoff
from .builtins import register_builtins
from .context import JobContext
from .errors import ConfigurationError, HandlerDefinitionError, JobFailed, WorkerError
from .payloads import Result
from .registry import HandlerRegistry, HandlerSpec, default_registry, handler
from .settings import WorkerSettings, default_worker_id
from .worker import Worker

__all__ = [
    "Backoff",
    "ConfigurationError",
    "HandlerDefinitionError",
    "HandlerRegistry",
    "HandlerSpec",
    "JobContext",
    "JobFailed",
    "Result",
    "Worker",
    "WorkerError",
    "WorkerSettings",
    "default_registry",
    "default_worker_id",
    "handler",
    "register_builtins",
]
