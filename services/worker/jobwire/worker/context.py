"""What a handler knows about the job it runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from google.protobuf import timestamp_pb2

__all__ = ["JobContext", "JobLogger", "LeaseState"]

job_log = logging.getLogger("jobwire.worker.job")


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the job's identity (job_id, queue, job_type, attempt, worker_id, trace_id) to
    every record as `extra` fields. jobwire's formatters show them: as top-level keys in
    JSON lines, as a `[type id attempt N]` prefix in text lines."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


class LeaseState:
    """The parts of a running job that change while it runs, shared between the
    worker (which learns them from the scheduler) and the handler's context."""

    __slots__ = ("_deadline", "cancel_reason", "execution_deadline")

    def __init__(
        self,
        deadline: datetime | timestamp_pb2.Timestamp | None,
        execution_deadline: datetime | None = None,
    ) -> None:
        # Kept as the scheduler sent it until someone reads it: converting costs more
        # than the rest of taking a job, and most handlers never ask.
        self._deadline = deadline
        # Set when the handler starts: a prefetched job's clock starts then, not on arrival.
        self.execution_deadline = execution_deadline
        self.cancel_reason: str | None = None

    @property
    def deadline(self) -> datetime | None:
        # Converted at every read and never written back: a thread handler reading it
        # must not put an older deadline over one the worker set meanwhile.
        if isinstance(self._deadline, timestamp_pb2.Timestamp):
            return self._deadline.ToDatetime(tzinfo=UTC)
        return self._deadline

    @deadline.setter
    def deadline(self, value: datetime | None) -> None:
        self._deadline = value


@dataclass(frozen=True, kw_only=True, slots=True)
class JobContext:
    """Passed as the second argument to handlers that take one.

    `cancelled` is set when the job is cancelled, times out, loses its lease or the
    worker hands it back while stopping. Plain (thread) handlers should poll it or
    wait on it; async handlers are also cancelled with `Task.cancel()`.
    """

    job_id: str
    type: str
    queue: str
    attempt: int
    max_attempts: int
    trace_id: str
    labels: Mapping[str, str]
    worker_id: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    logger: logging.LoggerAdapter[logging.Logger]
    _lease: LeaseState = field(repr=False, compare=False)

    @property
    def lease_deadline(self) -> datetime | None:
        """When the lease ends unless extended again; the worker extends it on its own."""
        return self._lease.deadline

    @property
    def execution_deadline(self) -> datetime | None:
        """When the worker stops the attempt because of the job's execution timeout."""
        return self._lease.execution_deadline

    @property
    def cancel_reason(self) -> str | None:
        """Why `cancelled` was set, once it is."""
        return self._lease.cancel_reason

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    @classmethod
    def standalone(
        cls,
        *,
        type: str = "test",
        job_id: str = "00000000-0000-0000-0000-000000000000",
        queue: str = "default",
        attempt: int = 1,
        max_attempts: int = 1,
        trace_id: str = "",
        labels: Mapping[str, str] | None = None,
        worker_id: str = "standalone",
        lease_deadline: datetime | None = None,
        execution_deadline: datetime | None = None,
    ) -> JobContext:
        """A context for calling a handler outside a worker, as in unit tests."""
        return cls(
            job_id=job_id,
            type=type,
            queue=queue,
            attempt=attempt,
            max_attempts=max_attempts,
            trace_id=trace_id,
            labels=MappingProxyType(dict(labels or {})),
            worker_id=worker_id,
            logger=job_logger(
                job_id=job_id,
                queue=queue,
                job_type=type,
                attempt=attempt,
                worker_id=worker_id,
                trace_id=trace_id,
            ),
            _lease=LeaseState(lease_deadline, execution_deadline),
        )


def job_logger(
    *, job_id: str, queue: str, job_type: str, attempt: int, worker_id: str, trace_id: str
) -> JobLogger:
    return JobLogger(
        job_log,
        {
            "job_id": job_id,
            "queue": queue,
            "job_type": job_type,
            "attempt": attempt,
            "worker_id": worker_id,
            "trace_id": trace_id,
        },
    )
