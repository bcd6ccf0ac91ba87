"""Exceptions raised by the jobwire client.

Every exception derives from `ClientError`, so one `except` catches them all::

    ClientError
    ├── InvalidArgumentError        INVALID_ARGUMENT
    ├── NotFoundError               NOT_FOUND
    ├── AlreadyExistsError          ALREADY_EXISTS
    ├── FailedPreconditionError     FAILED_PRECONDITION
    ├── ResourceExhaustedError      RESOURCE_EXHAUSTED
    ├── UnauthenticatedError        UNAUTHENTICATED
    ├── PermissionDeniedError       PERMISSION_DENIED
    ├── UnavailableError            UNAVAILABLE
    ├── DeadlineExceededError       DEADLINE_EXCEEDED
    ├── WaitTimeoutError            (also a TimeoutError)
    └── JobOutcomeError             a job that `Client.result` found not SUCCEEDED
        ├── JobFailedError
        └── JobCancelledError

Status codes with no class of their own (INTERNAL, UNKNOWN, ...) raise `ClientError`
itself, with `code` set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from jobwire.client.models import Job

__all__ = [
    "AlreadyExistsError",
    "ClientError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "JobCancelledError",
    "JobFailedError",
    "JobOutcomeError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "WaitTimeoutError",
    "from_rpc_error",
]


class ClientError(Exception):
    """Root of every client exception; raised as-is for status codes without a subclass.

    `code` is the gRPC status code (None when the error did not come from the server),
    `message` the server's readable explanation.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def status(self) -> str:
        """Name of the status code, such as "NOT_FOUND"; empty when there is none."""
        return self.code.name if self.code is not None else ""

    def __str__(self) -> str:
        return f"{self.status}: {self.message}" if self.code is not None else self.message


class InvalidArgumentError(ClientError):
    """The scheduler refused malformed input (bad id, queue name, payload too large...)."""


class NotFoundError(ClientError):
    """No job has the given id (or the caller's tenant may not see it)."""


class AlreadyExistsError(ClientError):
    """An idempotency key was reused with a different job spec."""


class FailedPreconditionError(ClientError):
    """The job's state does not allow the call, e.g. cancelling a SUCCEEDED job or
    retrying one that has not failed."""


class ResourceExhaustedError(ClientError):
    """A rate limit or quota was hit; `retry_after` says how long to wait when the
    scheduler told us."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class UnauthenticatedError(ClientError):
    """The call carried no valid credentials."""


class PermissionDeniedError(ClientError):
    """The credentials are valid but their role or tenant does not allow the call."""


class UnavailableError(ClientError):
    """The scheduler could not be reached, or its database is down; retrying later is safe
    for reads and for submits with an idempotency key."""


class DeadlineExceededError(ClientError):
    """A call took longer than the client's per-call timeout."""


class WaitTimeoutError(ClientError, TimeoutError):
    """`Client.wait` or `Client.result` gave up before the job reached a terminal state.

    `job_id` names the job, which keeps running on the scheduler.
    """

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobOutcomeError(ClientError):
    """Base of the errors `Client.result` raises for a job that did not succeed.

    `job` is the terminal job, with its error and attempt history.
    """

    def __init__(self, message: str, *, job: Job) -> None:
        super().__init__(message)
        self.job = job


class JobFailedError(JobOutcomeError):
    """`Client.result` found the job FAILED: attempts exhausted or a non-retryable error."""


class JobCancelledError(JobOutcomeError):
    """`Client.result` found the job CANCELLED."""


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}

# Metadata keys a server may use to say when to come back after RESOURCE_EXHAUSTED.
_RETRY_AFTER_KEYS = ("retry-after", "retry-delay", "jobwire-retry-after")


def _retry_after(err: grpc.RpcError) -> float | None:
    trailing = getattr(err, "trailing_metadata", None)
    if not callable(trailing):
        return None
    try:
        pairs = trailing() or ()
    except Exception:  # a half-built error object must not hide the real one
        return None
    for key, value in pairs:
        if key.lower() in _RETRY_AFTER_KEYS:
            text = value.decode() if isinstance(value, bytes) else str(value)
            try:
                return max(0.0, float(text.strip().removesuffix("s")))
            except ValueError:
                return None
    return None


def from_rpc_error(err: grpc.RpcError) -> ClientError:
    """The client exception for a failed gRPC call, keeping its code and message."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    message = details_fn() if callable(details_fn) else str(err)
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = message or code.name.lower().replace("_", " ")
    cls = _BY_CODE.get(code, ClientError)
    if cls is ResourceExhaustedError:
        return ResourceExhaustedError(message, code=code, retry_after=_retry_after(err))
    return cls(message, code=code)
