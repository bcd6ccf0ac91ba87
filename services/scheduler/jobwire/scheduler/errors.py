"""Errors of the scheduler core. The gRPC layer maps each class to one status code.

SchedulerError
├── InvalidArgument      -> INVALID_ARGUMENT
├── NotFound             -> NOT_FOUND
├── AlreadyExists        -> ALREADY_EXISTS
├── FailedPrecondition   -> FAILED_PRECONDITION
└── Unavailable          -> UNAVAILABLE
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of every error the scheduler core raises on purpose."""


class InvalidArgument(SchedulerError):
    """Raised when a request is malformed or out of bounds; nothing was written."""


class NotFound(SchedulerError):
    """Raised when a job id names no job."""


class AlreadyExists(SchedulerError):
    """Raised when an idempotency key is reused with a different job spec."""


class FailedPrecondition(SchedulerError):
    """Raised when a job's state does not allow the call, or a lease is no longer current."""


class Unavailable(SchedulerError):
    """Raised when PostgreSQL cannot be reached; the caller may retry."""
