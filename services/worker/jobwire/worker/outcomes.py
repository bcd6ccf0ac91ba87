"""Outcomes of attempts (acks and nacks) and the record of those not yet settled.

An outcome counts as delivered only when the scheduler answers it with a final
SettleResult; until then it is kept and sent again on every new stream, since a
stream can die after a message left the worker but before it was committed.
Resending is safe: the scheduler answers a repeated outcome for the same lease
with OK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf import duration_pb2
from jobwire.v1 import job_pb2, leases_pb2

__all__ = [
    "Outcome",
    "OutcomeKey",
    "UnsettledOutcomes",
    "ack",
    "nack",
    "release",
]

# Limits of JobError and NackItem in the contract. An item over a limit would be
# refused as INVALID_ARGUMENT and the attempt would only end when its lease expired,
# so the worker trims instead.
MAX_MESSAGE = 4096
MAX_KIND = 128
MAX_DETAILS = 65536
MAX_RETRY_DELAY = 7 * 24 * 3600.0

OutcomeKey = tuple[int, str, str]
"""(SettleKind, job id, lease token): what a SettleResult names."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """One ack or nack, ready to send, with a short label for logs and metrics
    ("succeeded", "failed", "timeout", "cancelled", "released")."""

    job_id: str
    lease_token: str
    label: str
    request: leases_pb2.LeaseRequest

    @property
    def kind(self) -> int:
        if self.request.WhichOneof("kind") == "ack":
            return leases_pb2.SETTLE_KIND_ACK
        return leases_pb2.SETTLE_KIND_NACK

    @property
    def key(self) -> OutcomeKey:
        return (self.kind, self.job_id, self.lease_token)


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = "…"
    return text[: limit - len(marker)] + marker


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(min(max(seconds, 0.0), MAX_RETRY_DELAY) * 1e9))
    return duration


def ack(job_id: str, lease_token: str, result: job_pb2.Payload) -> Outcome:
    item = leases_pb2.AckItem(job_id=job_id, lease_token=lease_token, result=result)
    return Outcome(
        job_id=job_id,
        lease_token=lease_token,
        label="succeeded",
        request=leases_pb2.LeaseRequest(ack=item),
    )


def nack(
    job_id: str,
    lease_token: str,
    *,
    message: str,
    kind: str,
    details: str = "",
    retryable: bool,
    retry_delay: float | None = None,
    label: str = "failed",
) -> Outcome:
    item = leases_pb2.NackItem(
        job_id=job_id,
        lease_token=lease_token,
        error=job_pb2.JobError(
            message=_trim(message or kind, MAX_MESSAGE),
            kind=_trim(kind, MAX_KIND),
            details=_trim(details, MAX_DETAILS),
        ),
        retryable=retryable,
    )
    if retry_delay is not None:
        item.retry_delay.CopyFrom(_duration(retry_delay))
    return Outcome(
        job_id=job_id,
        lease_token=lease_token,
        label=label,
        request=leases_pb2.LeaseRequest(nack=item),
    )


def release(job_id: str, lease_token: str, reason: str) -> Outcome:
    """Hands a job back without using up an attempt."""
    item = leases_pb2.NackItem(
        job_id=job_id,
        lease_token=lease_token,
        error=job_pb2.JobError(message=_trim(reason, MAX_MESSAGE), kind="released"),
        retryable=True,
        release=True,
    )
    return Outcome(
        job_id=job_id,
        lease_token=lease_token,
        label="released",
        request=leases_pb2.LeaseRequest(nack=item),
    )


class UnsettledOutcomes:
    """Outcomes sent (or waiting to be sent) whose final SettleResult has not come."""

    def __init__(self) -> None:
        self._items: dict[OutcomeKey, Outcome] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, outcome: Outcome) -> None:
        self._items[outcome.key] = outcome
        self._empty.clear()

    def pop(self, key: OutcomeKey) -> Outcome | None:
        outcome = self._items.pop(key, None)
        if not self._items:
            self._empty.set()
        return outcome

    def get(self, key: OutcomeKey) -> Outcome | None:
        return self._items.get(key)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def __iter__(self) -> Iterator[Outcome]:
        # A snapshot, so that settling while resending cannot break the iteration.
        return iter(tuple(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
