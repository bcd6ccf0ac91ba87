"""Checks every producer and worker input and turns protobuf into domain objects.

Everything here raises `InvalidArgument` with a message naming the field, before any
statement runs, so a refused request leaves no trace in the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, leases_pb2

from .errors import InvalidArgument
from .model import Ack, Backoff, ErrorInfo, Extension, Nack, NewJob

NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
# The canonical text form only: uuid.UUID() alone also takes braces, URNs, Unicode digits
# and stray hyphens, which would make different strings name the same job.
UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
MAX_BATCH = 1000
# Shared by every job that names no backoff: it is immutable, and a batch of a thousand
# jobs would otherwise build a thousand equal ones.
DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds on inputs; the payload limit is an operator setting."""

    max_payload_bytes: int = 1024 * 1024
    max_priority: int = 1000
    max_attempts: int = 100
    max_lease_timeout: timedelta = timedelta(hours=1)
    min_lease_timeout: timedelta = timedelta(seconds=1)
    max_execution_timeout: timedelta = timedelta(hours=24)
    max_run_at_ahead: timedelta = timedelta(days=366)
    max_retry_delay: timedelta = timedelta(days=7)
    max_key_length: int = 256
    max_labels: int = 32
    max_error_message: int = 4096
    max_error_details: int = 65536
    max_content_type: int = 256
    default_lease_timeout: timedelta = timedelta(seconds=30)
    default_max_attempts: int = 3


def _fail(where: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {message}")


def name(value: str, where: str) -> str:
    if not NAME.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise _fail(where, f"{shown!r} must be 1-128 characters of letters, digits and _.:- ")
    return value


def job_id(value: str, where: str = "id") -> UUID:
    if not UUID_TEXT.fullmatch(value):
        raise _fail(where, f"{value[:64]!r} is not a UUID (8-4-4-4-12 hexadecimal digits)")
    return UUID(value)


def _duration(value: Duration, where: str, *, low: timedelta, high: timedelta) -> timedelta:
    if value.nanos < -999_999_999 or value.nanos > 999_999_999 or (value.seconds * value.nanos < 0):
        raise _fail(where, "is not a valid duration")
    # Compared in whole nanoseconds: timedelta would round 1 ns past a bound away.
    nanos = value.seconds * 1_000_000_000 + value.nanos
    if not _nanos(low) <= nanos <= _nanos(high):
        raise _fail(
            where, f"must be between {low} and {high}, got {value.seconds}s {value.nanos}ns"
        )
    return value.ToTimedelta()


def _nanos(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _timestamp(value: Timestamp, where: str) -> datetime:
    if not (0 <= value.nanos <= 999_999_999) or not (-62135596800 <= value.seconds <= 253402300799):
        raise _fail(where, "is not a valid timestamp")
    return value.ToDatetime(tzinfo=UTC)


def text(value: str, where: str, limit: int) -> str:
    if len(value) > limit:
        raise _fail(where, f"is longer than {limit} characters")
    if "\x00" in value:
        raise _fail(where, "must not contain NUL characters")
    return value


def _batch(count: int, where: str) -> None:
    if not 1 <= count <= MAX_BATCH:
        raise _fail(where, f"must hold 1 to {MAX_BATCH} items, got {count}")


def new_jobs(
    specs: list[job_pb2.JobSpec], *, limits: Limits, tenant: str, trace_id: str, now: datetime
) -> list[NewJob]:
    _batch(len(specs), "jobs")
    return [
        new_job(spec, f"jobs[{i}]", limits=limits, tenant=tenant, trace_id=trace_id, now=now)
        for i, spec in enumerate(specs)
    ]


def new_job(
    spec: job_pb2.JobSpec,
    where: str,
    *,
    limits: Limits,
    tenant: str,
    trace_id: str,
    now: datetime,
) -> NewJob:
    queue = name(spec.queue or "default", f"{where}.queue")
    job_type = name(spec.type, f"{where}.type")
    payload = spec.payload.data
    if len(payload) > limits.max_payload_bytes:
        raise _fail(
            f"{where}.payload",
            f"is {len(payload)} bytes; the limit is {limits.max_payload_bytes} bytes",
        )
    content_type = text(
        spec.payload.content_type, f"{where}.payload.content_type", limits.max_content_type
    )
    if not -limits.max_priority <= spec.priority <= limits.max_priority:
        raise _fail(
            f"{where}.priority",
            f"must be between {-limits.max_priority} and {limits.max_priority}, "
            f"got {spec.priority}",
        )
    run_at = None
    if spec.HasField("run_at"):
        run_at = _timestamp(spec.run_at, f"{where}.run_at")
        if run_at > now + limits.max_run_at_ahead:
            raise _fail(f"{where}.run_at", "is more than a year ahead")
    max_attempts = spec.max_attempts or limits.default_max_attempts
    if not 1 <= max_attempts <= limits.max_attempts:
        raise _fail(
            f"{where}.max_attempts",
            f"must be between 1 and {limits.max_attempts}, got {spec.max_attempts}",
        )
    backoff = DEFAULT_BACKOFF
    if spec.HasField("backoff"):
        b = spec.backoff
        initial = backoff.initial
        cap = backoff.max
        if b.HasField("initial"):
            initial = _duration(
                b.initial, f"{where}.backoff.initial", low=timedelta(0), high=timedelta(days=1)
            )
        if b.HasField("max"):
            cap = _duration(b.max, f"{where}.backoff.max", low=timedelta(0), high=timedelta(days=7))
        multiplier = b.multiplier or backoff.multiplier
        if not 1.0 <= multiplier <= 10.0:
            raise _fail(
                f"{where}.backoff.multiplier", f"must be between 1 and 10, got {multiplier}"
            )
        if not 0.0 <= b.jitter <= 1.0:
            raise _fail(f"{where}.backoff.jitter", f"must be between 0 and 1, got {b.jitter}")
        backoff = Backoff(
            initial=initial,
            max=cap,
            multiplier=multiplier,
            jitter=b.jitter if b.jitter else backoff.jitter,
        )
    lease_timeout = limits.default_lease_timeout
    if spec.HasField("lease_timeout"):
        lease_timeout = _duration(
            spec.lease_timeout,
            f"{where}.lease_timeout",
            low=limits.min_lease_timeout,
            high=limits.max_lease_timeout,
        )
    execution_timeout = None
    if spec.HasField("execution_timeout"):
        execution_timeout = (
            _duration(
                spec.execution_timeout,
                f"{where}.execution_timeout",
                low=timedelta(0),
                high=limits.max_execution_timeout,
            )
            or None
        )
    key = text(spec.idempotency_key, f"{where}.idempotency_key", limits.max_key_length) or None
    labels = dict(spec.labels) if spec.labels else {}
    if len(labels) > limits.max_labels:
        raise _fail(f"{where}.labels", f"has more than {limits.max_labels} entries")
    for k, v in labels.items():
        text(k, f"{where}.labels key", 64)
        text(v, f"{where}.labels[{k!r}]", 256)
        if not k:
            raise _fail(f"{where}.labels", "keys must not be empty")
    return NewJob(
        queue=queue,
        type=job_type,
        payload=payload,
        payload_type=content_type,
        priority=spec.priority,
        run_at=run_at,
        max_attempts=max_attempts,
        backoff=backoff,
        lease_timeout=lease_timeout,
        execution_timeout=execution_timeout,
        idempotency_key=key,
        labels=labels,
        tenant=tenant,
        trace_id=trace_id,
    )


def _lease_ref(job: str, token: str, where: str) -> tuple[UUID, UUID]:
    return job_id(job, f"{where}.job_id"), job_id(token, f"{where}.lease_token")


def ack(item: leases_pb2.AckItem, where: str, limits: Limits) -> Ack:
    jid, token = _lease_ref(item.job_id, item.lease_token, where)
    if len(item.result.data) > limits.max_payload_bytes:
        raise _fail(f"{where}.result", f"is larger than {limits.max_payload_bytes} bytes")
    content_type = text(
        item.result.content_type, f"{where}.result.content_type", limits.max_content_type
    )
    return Ack(job_id=jid, lease_token=token, result=item.result.data, result_type=content_type)


def nack(item: leases_pb2.NackItem, where: str, limits: Limits) -> Nack:
    jid, token = _lease_ref(item.job_id, item.lease_token, where)
    message = text(item.error.message, f"{where}.error.message", limits.max_error_message)
    if not message and not item.release:
        raise _fail(f"{where}.error.message", "is required unless release is set")
    delay = None
    if item.HasField("retry_delay"):
        delay = _duration(
            item.retry_delay, f"{where}.retry_delay", low=timedelta(0), high=limits.max_retry_delay
        )
    return Nack(
        job_id=jid,
        lease_token=token,
        error=ErrorInfo(
            message=message or "handed back",
            kind=text(item.error.kind, f"{where}.error.kind", 128),
            details=text(item.error.details, f"{where}.error.details", limits.max_error_details),
        ),
        retryable=item.retryable,
        retry_delay=delay,
        release=item.release,
    )


def extension(item: leases_pb2.ExtendItem, where: str, limits: Limits) -> Extension:
    jid, token = _lease_ref(item.job_id, item.lease_token, where)
    extend_by = None
    if item.HasField("extend_by"):
        extend_by = _duration(
            item.extend_by,
            f"{where}.extend_by",
            low=limits.min_lease_timeout,
            high=limits.max_lease_timeout,
        )
    return Extension(job_id=jid, lease_token=token, extend_by=extend_by)


Item = TypeVar("Item", Ack, Nack, Extension)


def _distinct_jobs(items: list[Item]) -> list[Item]:
    seen: set[UUID] = set()
    for i, item in enumerate(items):
        if item.job_id in seen:
            raise _fail(f"items[{i}].job_id", f"{item.job_id} appears more than once")
        seen.add(item.job_id)
    return items


def acks(items: list[leases_pb2.AckItem], limits: Limits) -> list[Ack]:
    _batch(len(items), "items")
    return _distinct_jobs([ack(item, f"items[{i}]", limits) for i, item in enumerate(items)])


def nacks(items: list[leases_pb2.NackItem], limits: Limits) -> list[Nack]:
    _batch(len(items), "items")
    return _distinct_jobs([nack(item, f"items[{i}]", limits) for i, item in enumerate(items)])


def extensions(items: list[leases_pb2.ExtendItem], limits: Limits) -> list[Extension]:
    _batch(len(items), "items")
    return _distinct_jobs([extension(item, f"items[{i}]", limits) for i, item in enumerate(items)])
