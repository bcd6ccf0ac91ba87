"""Exceptions of the worker SDK.

Every exception derives from `WorkerError`, so one `except` catches them all::

    WorkerError
    ├── JobFailed                 raised by a handler to fail its job on purpose
    ├── HandlerDefinitionError    a handler that cannot be registered
    └── ConfigurationError        a Worker built or started with unusable settings
"""

from __future__ import annotations

import math

__all__ = [
    "ConfigurationError",
    "HandlerDefinitionError",
    "JobFailed",
    "WorkerError",
]


class WorkerError(Exception):
    """Root of every exception the worker SDK raises or expects handlers to raise."""


class JobFailed(WorkerError):
    """Raised by a handler to end its attempt as a failure with a chosen error.

    `retryable=False` sends the job straight to FAILED whatever attempts are left.
    `retry_delay` (seconds) overrides the job's backoff before the next attempt.
    `kind` is the machine-readable category reported with the error; it defaults to
    the exception's class name, so subclasses name themselves. `details` is free text
    such as a traceback or the offending input.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_delay: float | None = None,
        kind: str | None = None,
        details: str = "",
    ) -> None:
        if retry_delay is not None and (math.isnan(retry_delay) or retry_delay < 0):
            raise ValueError(
                f"retry_delay must be a non-negative number of seconds, not {retry_delay!r}"
            )
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_delay = retry_delay
        self.kind = kind if kind else type(self).__name__
        self.details = details

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, retryable={self.retryable!r}, "
            f"retry_delay={self.retry_delay!r}, kind={self.kind!r})"
        )


class HandlerDefinitionError(WorkerError):
    """Raised when a handler is registered: not callable, wrong number of positional
    parameters, an invalid job type name, or a type that already has a handler."""


class ConfigurationError(WorkerError):
    """Raised when a Worker is built with unusable settings (no queues, concurrency
    below one, an invalid name) or started without any handler."""
