"""A synchronous client for the scheduler's Jobs service."""

from __future__ import annotations

import builtins
import json
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from jobwire.client.errors import (
    ClientError,
    JobCancelledError,
    JobFailedError,
    UnavailableError,
    WaitTimeoutError,
    from_rpc_error,
)
from jobwire.client.models import (
    Backoff,
    Job,
    JobSpec,
    JobState,
    Page,
    QueueStats,
    Submitted,
    WatchEvent,
)
from jobwire.v1 import jobs_pb2, jobs_pb2_grpc

__all__ = ["DEFAULT_TARGET", "Client"]

DEFAULT_TARGET = "127.0.0.1:50051"

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Metadata = Mapping[str, str] | Sequence[tuple[str, str]]

# Calls that change nothing, or whose repetition is harmless (cancelling twice is OK by
# contract), are retried by gRPC itself when the scheduler is briefly unreachable.
# Submit and Retry are not: a resent Submit without an idempotency key, or a resent
# Retry, would create a second job.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "jobwire.v1.Jobs", "method": m}
                    for m in ("Get", "List", "Watch", "Cancel", "Stats")
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

# gRPC's 4 MiB receive default is smaller than a page of jobs with large payloads.
_MAX_MESSAGE = 64 * 1024 * 1024


class Client:
    """Submits jobs to a jobwire scheduler and follows them.

    `timeout` bounds every unary call in seconds; `wait`, `result` and `watch` take their
    own. `metadata` is sent with every call; `token` adds a bearer token to it, and
    `credentials` switches the channel to TLS. A ready `channel` may be passed instead of
    a target; the client then leaves closing it to the caller.

    `watch`, `wait` and `result` survive a scheduler restart: a stream that breaks after
    it was established is opened again, for up to `reconnect_timeout` seconds of
    consecutive failures, without repeating the events already delivered.

    Safe to share between threads. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 10.0,
        metadata: Metadata | None = None,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
        reconnect_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        pairs = list(metadata.items()) if isinstance(metadata, Mapping) else list(metadata or ())
        if token:
            pairs.append(("authorization", f"Bearer {token}"))
        self._metadata: tuple[tuple[str, str | bytes], ...] = tuple(pairs)
        self._owns_channel = channel is None
        if channel is None:
            opts: list[tuple[str, Any]] = [
                ("grpc.service_config", _SERVICE_CONFIG),
                ("grpc.enable_retries", 1),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                *options,
            ]
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, options=opts)
            else:
                channel = grpc.insecure_channel(target, options=opts)
        self._channel = channel
        self._stub = jobs_pb2_grpc.JobsStub(channel)
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel if the client opened it. Calling it again does nothing."""
        if not self._closed:
            self._closed = True
            if self._owns_channel:
                self._channel.close()

    def __repr__(self) -> str:
        return f"Client(target={self.target!r})"

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
    ) -> _Resp:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    # -- submitting -------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        run_at: datetime | timedelta | None = None,
        max_attempts: int | None = None,
        lease_timeout: float | timedelta | None = None,
        execution_timeout: float | timedelta | None = None,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        content_type: str | None = None,
    ) -> Submitted:
        """Submits one job of handler `type`.

        `payload` is encoded as JSON, unless it is bytes (sent as `content_type`, by
        default application/octet-stream) or `content_type` names another type.
        `run_at` is a datetime (naive means local time) or a delay from now; durations
        are seconds or timedeltas. Unset values take the scheduler's defaults.

        With an `idempotency_key`, resubmitting the same job returns the existing one
        with `created` False; the same key with a different job raises
        `AlreadyExistsError`.
        """
        spec = JobSpec(
            type=type,
            payload=payload,
            queue=queue,
            priority=priority,
            run_at=run_at,
            max_attempts=max_attempts,
            lease_timeout=lease_timeout,
            execution_timeout=execution_timeout,
            idempotency_key=idempotency_key,
            labels=labels,
            backoff=backoff,
            content_type=content_type,
        )
        return self.submit_many([spec])[0]

    def submit_many(self, specs: Iterable[JobSpec]) -> builtins.list[Submitted]:
        """Submits many jobs in one atomic call: all are accepted or none is.

        Returns one `Submitted` per spec, in order.
        """
        request = jobs_pb2.SubmitRequest(jobs=[spec.to_proto() for spec in specs])
        if not request.jobs:
            return []
        response = self._unary(self._stub.Submit, request)
        return [Submitted.from_proto(r) for r in response.results]

    # -- reading ----------------------------------------------------------------------

    def get(self, id: str) -> Job:
        """The job with its attempt history; `NotFoundError` if there is none."""
        response = self._unary(self._stub.Get, jobs_pb2.GetRequest(id=id))
        return Job.from_proto(response.job)

    def list(
        self,
        queue: str | None = None,
        type: str | None = None,
        states: Iterable[JobState | str] | None = None,
        tenant: str | None = None,
        page_size: int = 50,
        page_token: str | None = None,
    ) -> Page:
        """One page of jobs, newest first, without attempt history.

        Pass `page.next_page_token` with the same filters for the next page, or use
        `iter_jobs` to walk them all.
        """
        request = jobs_pb2.ListRequest(
            queue=queue or "",
            type=type or "",
            states=[_state(s).to_proto() for s in states or ()],
            tenant=tenant or "",
            page_size=page_size,
            page_token=page_token or "",
        )
        return Page.from_proto(self._unary(self._stub.List, request))

    def iter_jobs(
        self,
        queue: str | None = None,
        type: str | None = None,
        states: Iterable[JobState | str] | None = None,
        tenant: str | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetching pages as the iteration needs them.

        Stops after `limit` jobs when it is given.
        """
        wanted = builtins.list(states or ())
        token: str | None = None
        seen = 0
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = self.list(queue, type, wanted, tenant, size, token)
            for job in page.jobs:
                yield job
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    def stats(self, queue: str | None = None) -> builtins.list[QueueStats]:
        """Job counts per queue and state, sorted by queue name."""
        response = self._unary(self._stub.Stats, jobs_pb2.StatsRequest(queue=queue or ""))
        return [QueueStats.from_proto(q) for q in response.queues]

    # -- following --------------------------------------------------------------------

    def watch(self, id: str, *, timeout: float | None = None) -> Iterator[WatchEvent]:
        """The job's state changes, starting with its history so far; ends after the
        terminal state.

        Raises `WaitTimeoutError` if the job is not terminal within `timeout` seconds.
        Breaking out of the loop closes the stream.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last_sequence = 0
        connected = False
        broken_since: float | None = None
        delay = 0.1
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _wait_timeout(id, timeout)
            call = self._stub.Watch(
                jobs_pb2.WatchRequest(id=id), timeout=remaining, metadata=self._metadata
            )
            try:
                for msg in call:
                    connected = True
                    broken_since = None
                    delay = 0.1
                    # After a reconnect the stream replays the history: skip what we saw.
                    if msg.sequence and msg.sequence <= last_sequence:
                        continue
                    last_sequence = max(last_sequence, msg.sequence)
                    event = WatchEvent.from_proto(msg)
                    yield event
                    if event.state.terminal:
                        return
                # The server ended the stream before the job finished (it may be shutting
                # down); treat it like a broken stream.
                error: ClientError = UnavailableError(
                    "the watch stream ended before the job finished",
                    code=grpc.StatusCode.UNAVAILABLE,
                )
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                if error.code is grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise _wait_timeout(id, timeout) from err
                if not (connected and error.code is grpc.StatusCode.UNAVAILABLE):
                    raise error from err
            finally:
                call.cancel()
            now = time.monotonic()
            broken_since = broken_since if broken_since is not None else now
            if now - broken_since >= self.reconnect_timeout:
                raise error
            # Jitter keeps a fleet of waiting clients from reconnecting in lockstep.
            pause = delay * random.uniform(0.5, 1.0)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - now))
            time.sleep(pause)
            delay = min(delay * 2, 2.0)

    def wait(self, id: str, timeout: float | None = None) -> Job:
        """Blocks until the job is SUCCEEDED, FAILED or CANCELLED and returns it.

        Follows the Watch stream rather than polling. Raises `WaitTimeoutError` after
        `timeout` seconds; the job itself is left alone.
        """
        for event in self.watch(id, timeout=timeout):
            if event.state.terminal:
                if event.job.terminal:
                    return event.job
                break
        # Only reached if the stream's own copy of the job lagged behind its event.
        job = self.get(id)
        if not job.terminal:
            raise ClientError(f"the watch of job {id} ended while it is {job.state}")
        return job

    def result(self, id: str, timeout: float | None = None) -> Any:
        """Waits for the job and returns its decoded result.

        Raises `JobFailedError` or `JobCancelledError`, carrying the job, if it did not
        succeed, and `WaitTimeoutError` after `timeout` seconds.
        """
        job = self.wait(id, timeout)
        if job.state is JobState.SUCCEEDED:
            return job.result
        reason = f": {job.error}" if job.error else ""
        if job.state is JobState.CANCELLED:
            raise JobCancelledError(f"job {id} was cancelled{reason}", job=job)
        raise JobFailedError(f"job {id} failed{reason}", job=job)

    # -- changing ---------------------------------------------------------------------

    def cancel(self, id: str, reason: str = "") -> Job:
        """Cancels the job: a PENDING one at once, a RUNNING one when its worker stops
        (the returned job then has `cancel_requested` set). Cancelling a CANCELLED job is
        fine; a SUCCEEDED or FAILED one raises `FailedPreconditionError`."""
        response = self._unary(self._stub.Cancel, jobs_pb2.CancelRequest(id=id, reason=reason))
        return Job.from_proto(response.job)

    def retry(self, id: str) -> Job:
        """Runs a FAILED or CANCELLED job again as a new job, which is returned; its
        `retried_from` names the old one."""
        response = self._unary(self._stub.Retry, jobs_pb2.RetryRequest(id=id))
        return Job.from_proto(response.job)


def _state(value: JobState | str) -> JobState:
    return value if isinstance(value, JobState) else JobState.parse(value)


def _wait_timeout(id: str, timeout: float | None) -> WaitTimeoutError:
    return WaitTimeoutError(
        f"job {id} did not finish within {timeout:g} s"
        if timeout is not None
        else f"gave up waiting for job {id}",
        job_id=id,
    )
