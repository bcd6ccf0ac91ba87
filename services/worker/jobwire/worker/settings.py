"""A worker's settings, checked once when the Worker is built."""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from .backoff import Backoff
from .errors import ConfigurationError
from .registry import is_valid_name

__all__ = ["MAX_CONCURRENCY", "MAX_QUEUES", "WorkerSettings", "default_worker_id"]

MAX_CONCURRENCY = 10000  # the most credit a Hello may grant
MAX_QUEUES = 64


def default_worker_id() -> str:
    """`host-pid-xxxx`: unique per process, readable in the scheduler's attempt history."""
    # The scheduler accepts only [A-Za-z0-9_.:-] in names.
    host = re.sub(r"[^A-Za-z0-9_.:-]+", "-", socket.gethostname()).strip("-") or "worker"
    return f"{host[:100]}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSettings:
    """Everything a Worker needs to know besides its handlers. See `Worker`."""

    target: str
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 8
    prefetch: int = 0
    worker_id: str = field(default_factory=default_worker_id)
    drain_grace: float = 30.0
    settle_timeout: float = 5.0
    max_extend_interval: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    credentials: Any = None
    metadata: tuple[tuple[str, str], ...] = ()
    channel_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.target:
            raise ConfigurationError("target (the scheduler's host:port) is required")
        if not 1 <= len(self.queues) <= MAX_QUEUES:
            raise ConfigurationError(f"a worker serves 1 to {MAX_QUEUES} queues")
        for queue in self.queues:
            if not is_valid_name(queue):
                raise ConfigurationError(
                    f"invalid queue name {queue!r}: use 1-128 characters of [A-Za-z0-9_.:-]"
                )
        if isinstance(self.concurrency, bool) or not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigurationError(f"concurrency must be 1 to {MAX_CONCURRENCY}")
        if isinstance(self.prefetch, bool) or not 0 <= self.prefetch <= (
            MAX_CONCURRENCY - self.concurrency
        ):
            raise ConfigurationError(
                f"prefetch must be 0 to {MAX_CONCURRENCY - self.concurrency} "
                f"(concurrency plus prefetch at most {MAX_CONCURRENCY})"
            )
        for name in ("drain_grace", "settle_timeout", "max_extend_interval"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0:
                raise ConfigurationError(f"{name} must be a non-negative number of seconds")
        if not is_valid_name(self.worker_id):
            raise ConfigurationError(
                f"invalid worker_id {self.worker_id!r}: use 1-128 characters of [A-Za-z0-9_.:-]"
            )
