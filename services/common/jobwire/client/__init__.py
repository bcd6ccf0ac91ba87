"""Python client for the jobwire scheduler: submit jobs, follow them, read their results.

    from jobwire.client import Client

    with Client("127.0.0.1:50051") as client:
        job_id = client.submit("uppercase", {"text": "hi"}).id
        print(client.result(job_id, timeout=30))

Errors are `ClientError` subclasses, one per gRPC status code the scheduler uses.
"""

from jobwire.client.client import DEFAULT_TARGET, Client
from jobwire.client.errors import (
    AlreadyExistsError,
    ClientError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    JobOutcomeError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    WaitTimeoutError,
)
from jobwire.client.models import (
    Attempt,
    AttemptOutcome,
    Backoff,
    Job,
    JobError,
    JobSpec,
    JobState,
    Page,
    QueueStats,
    Submitted,
    WatchEvent,
)

__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExistsError",
    "Attempt",
    "AttemptOutcome",
    "Backoff",
    "Client",
    "ClientError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobOutcomeError",
    "JobSpec",
    "JobState",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "QueueStats",
    "ResourceExhaustedError",
    "Submitted",
    "UnauthenticatedError",
    "UnavailableError",
    "WaitTimeoutError",
    "WatchEvent",
]
