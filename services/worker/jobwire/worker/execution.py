"""One leased attempt: run its handler, stop it when told, and decide its outcome."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import traceback
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from google.protobuf import duration_pb2
from jobwire.v1 import leases_pb2

from . import outcomes
from .context import JobContext, JobLogger, LeaseState, job_log, job_logger
from .errors import JobFailed
from .outcomes import Outcome
from .payloads import PayloadError, decode_payload, encode_result
from .registry import HandlerSpec
from .threads import DaemonThreadPool

__all__ = ["DEFAULT_LEASE_TIMEOUT", "Execution", "StopReason"]

DEFAULT_LEASE_TIMEOUT = 30.0


class StopReason(enum.Enum):
    """Why the worker stopped a handler before it returned."""

    CANCELLED = "cancelled"  # the producer cancelled the job
    TIMEOUT = "timeout"  # the job's execution timeout passed
    LOST = "lost"  # the scheduler no longer recognises this lease
    RELEASED = "released"  # the worker is stopping and hands the job back


class Execution:
    """Runs one attempt. `run()` returns its outcome, or None when the lease was lost
    (nobody may settle it any more); `finished()` waits until the handler itself has
    returned, which for a plain handler that ignores its signal can be much later."""

    def __init__(
        self,
        leased: leases_pb2.LeasedJob,
        spec: HandlerSpec,
        *,
        worker_id: str,
        pool: DaemonThreadPool,
    ) -> None:
        job = leased.job
        self.spec = spec
        self.job_id = job.id
        self.lease_token = leased.lease_token
        self.job_type = job.spec.type
        self.attempt = job.attempt
        lease_timeout = _seconds(job.spec.lease_timeout)
        self.lease_timeout = lease_timeout if lease_timeout > 0 else DEFAULT_LEASE_TIMEOUT
        execution_timeout = _seconds(job.spec.execution_timeout)
        self.execution_timeout = execution_timeout if execution_timeout > 0 else None
        self._payload = job.spec.payload
        self._pool = pool
        self._leased = leased
        self._worker_id = worker_id
        self._lease = LeaseState(
            leased.lease_deadline if leased.HasField("lease_deadline") else None
        )
        # Built when first asked for: a handler without a context never needs one, and
        # this runs for every job.
        self._ctx: JobContext | None = None
        self._logger: JobLogger | None = None
        self.stop_reason: StopReason | None = None
        # Resolved when the handler returns or is stopped, whichever comes first.
        self._settled: asyncio.Future[None] | None = None
        self._handler: asyncio.Future[Any] | None = None
        # The thread's own future: it completes in the thread, while the asyncio
        # wrapper above only learns of it one loop iteration later.
        self._thread_future: concurrent.futures.Future[Any] | None = None
        self._done_before_stop = False
        # Set by the worker: loop time of the last extension sent for this lease.
        self.extended_at = asyncio.get_running_loop().time()

    @property
    def logger(self) -> JobLogger:
        """The job's logger: its lines carry the job's identity."""
        if self._logger is None:
            job = self._leased.job
            self._logger = job_logger(
                job_id=job.id,
                queue=job.spec.queue,
                job_type=job.spec.type,
                attempt=job.attempt,
                worker_id=self._worker_id,
                trace_id=job.trace_id,
            )
        return self._logger

    def log(self, level: int, message: str, *args: object) -> None:
        """A line about this job: the job's logger is built only for a line written."""
        if job_log.isEnabledFor(level):
            # The record names the caller's line, not this one.
            self.logger.log(level, message, *args, stacklevel=2)

    @property
    def ctx(self) -> JobContext:
        """What the handler is told about its job."""
        if self._ctx is None:
            job = self._leased.job
            self._ctx = JobContext(
                job_id=job.id,
                type=job.spec.type,
                queue=job.spec.queue,
                attempt=job.attempt,
                max_attempts=job.spec.max_attempts,
                trace_id=job.trace_id,
                labels=MappingProxyType(dict(job.spec.labels)),
                worker_id=self._worker_id,
                logger=self.logger,
                _lease=self._lease,
            )
            if self.stop_reason is not None:
                self._ctx.cancelled.set()
        return self._ctx

    # -- signals from the worker -------------------------------------------------

    def stop(self, reason: StopReason, detail: str = "") -> bool:
        """Asks the handler to stop; the first reason wins. Returns whether this call
        stopped it."""
        if self.stop_reason is not None:
            return False
        self.stop_reason = reason
        self._done_before_stop = self._handler_done()
        self._lease.cancel_reason = detail or reason.value
        if self._ctx is not None:
            self._ctx.cancelled.set()
        # Thread handlers are only signalled: cancelling the asyncio wrapper of a
        # thread's future would report it finished while the thread still runs.
        if self._handler is not None and self.spec.is_async:
            self._handler.cancel()
        self._wake()
        return True

    def _wake(self, _: object = None) -> None:
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def _handler_done(self) -> bool:
        if self._thread_future is not None:
            return self._thread_future.done()
        return self._handler is not None and self._handler.done()

    def update_deadline(self, deadline: datetime) -> None:
        self._lease.deadline = deadline

    # -- running -------------------------------------------------------------------

    async def run(self) -> Outcome | None:
        try:
            payload = decode_payload(self._payload)
        except PayloadError as exc:
            return self._nack(str(exc), kind=exc.kind, retryable=False)
        if self.stop_reason is not None:
            return self.stopped_outcome()
        loop = asyncio.get_running_loop()
        # One future and one timer rather than asyncio.wait: this runs for every job.
        self._settled = loop.create_future()
        timer: asyncio.TimerHandle | None = None
        if self.execution_timeout is not None:
            self._lease.execution_deadline = datetime.now(UTC) + timedelta(
                seconds=self.execution_timeout
            )
            timer = loop.call_later(self.execution_timeout, self._time_out)
        handler = self._handler = self._start(payload)
        handler.add_done_callback(self._wake)
        try:
            await self._settled
        except asyncio.CancelledError:
            # The worker itself is being torn down: take the handler with it.
            self.stop(StopReason.RELEASED, "worker stopped")
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return self._decide(handler)

    def _time_out(self) -> None:
        if not self._handler_done():
            self.stop(StopReason.TIMEOUT, f"execution timeout of {self.execution_timeout:g} s")

    async def finished(self) -> None:
        """Waits until the handler has returned (or raised)."""
        handler = self._handler
        if handler is None:
            return
        if not handler.done():
            # asyncio.wait neither raises the handler's error nor cancels the handler
            # when this waiter is cancelled.
            await asyncio.wait({handler})
        if not handler.cancelled():
            handler.exception()  # marks the error retrieved, so asyncio does not log it

    def _start(self, payload: Any) -> asyncio.Future[Any]:
        args: tuple[Any, ...] = (payload, self.ctx) if self.spec.takes_context else (payload,)
        func = self.spec.func
        if self.spec.is_async:

            async def call() -> Any:
                return await func(*args)

            return asyncio.create_task(call(), name=f"jobwire-job-{self.job_id}")
        self._thread_future = self._pool.submit(functools.partial(func, *args))
        return asyncio.wrap_future(self._thread_future)

    # -- outcomes ------------------------------------------------------------------

    def _decide(self, handler: asyncio.Future[Any]) -> Outcome | None:
        if self.stop_reason is StopReason.LOST:
            return None
        # What a handler returns or raises after being stopped is its reaction to
        # the stop (an early return, an error from interrupted work), not the job's
        # outcome; an attempt that had already ended before the stop keeps its own.
        source: asyncio.Future[Any] | concurrent.futures.Future[Any] = (
            self._thread_future if self._thread_future is not None else handler
        )
        if (
            source.done()
            and not source.cancelled()
            and (self.stop_reason is None or self._done_before_stop)
        ):
            exc = source.exception()
            return self._success(source.result()) if exc is None else self._failure(exc)
        if self.stop_reason is None:
            # Cancelled without the worker asking: treat like any other error.
            return self._nack("handler was cancelled", kind="CancelledError", retryable=True)
        return self.stopped_outcome()

    def stopped_outcome(self) -> Outcome | None:
        """The outcome the stop decides (None: the lease is lost, nothing to report)."""
        reason = self.stop_reason
        detail = self._lease.cancel_reason or ""
        if reason is StopReason.CANCELLED:
            return self._nack(
                f"cancelled: {detail}" if detail and detail != "cancelled" else "job was cancelled",
                kind="cancelled",
                retryable=False,
                label="cancelled",
            )
        if reason is StopReason.TIMEOUT:
            return self._nack(f"{detail} exceeded", kind="timeout", retryable=True, label="timeout")
        if reason is StopReason.RELEASED:
            return outcomes.release(self.job_id, self.lease_token, f"handed back: {detail}")
        return None

    def _success(self, value: Any) -> Outcome:
        try:
            result = encode_result(value)
        except PayloadError as exc:
            return self._nack(str(exc), kind=exc.kind, retryable=False)
        return outcomes.ack(self.job_id, self.lease_token, result)

    def _failure(self, exc: BaseException) -> Outcome:
        if isinstance(exc, JobFailed):
            return self._nack(
                exc.message,
                kind=exc.kind,
                details=exc.details,
                retryable=exc.retryable,
                retry_delay=exc.retry_delay,
            )
        return self._nack(
            str(exc) or type(exc).__name__,
            kind=type(exc).__name__,
            details="".join(traceback.format_exception(exc)),
            retryable=True,
        )

    def _nack(
        self,
        message: str,
        *,
        kind: str,
        retryable: bool,
        details: str = "",
        retry_delay: float | None = None,
        label: str = "failed",
    ) -> Outcome:
        return outcomes.nack(
            self.job_id,
            self.lease_token,
            message=message,
            kind=kind,
            details=details,
            retryable=retryable,
            retry_delay=retry_delay,
            label=label,
        )


def _seconds(value: duration_pb2.Duration) -> float:
    # The fields themselves: ToTimedelta() builds a timedelta only to be read back.
    return value.seconds + value.nanos / 1e9
