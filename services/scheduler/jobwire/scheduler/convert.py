"""Domain objects to protobuf messages, for the gRPC layer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, jobs_pb2

from .model import Attempt, ErrorInfo, Job, QueueStats, State

M = TypeVar("M", bound=Message)

STATE_TO_PROTO = {
    State.PENDING: job_pb2.JOB_STATE_PENDING,
    State.RUNNING: job_pb2.JOB_STATE_RUNNING,
    State.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    State.FAILED: job_pb2.JOB_STATE_FAILED,
    State.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}

OUTCOME_TO_PROTO = {
    "RUNNING": job_pb2.ATTEMPT_OUTCOME_RUNNING,
    "SUCCEEDED": job_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    "FAILED": job_pb2.ATTEMPT_OUTCOME_FAILED,
    "CANCELLED": job_pb2.ATTEMPT_OUTCOME_CANCELLED,
    "LEASE_EXPIRED": job_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED,
    "RELEASED": job_pb2.ATTEMPT_OUTCOME_RELEASED,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Messages are built from nested keyword dicts: the protobuf runtime fills the nested
# messages in place, where building each one and passing it in would copy it again. That
# halves the cost of converting a job, which runs for every job leased.


def message(cls: type[M], fields: dict[str, Any]) -> M:
    """A message from its keyword dict (nested dicts for nested messages), which the
    protobuf stubs would refuse as keywords typed as messages."""
    return cls(**fields)


def _timestamp_fields(value: datetime) -> dict[str, int]:
    # Plain arithmetic on the aware datetime: several times cheaper than FromDatetime.
    delta = value - _EPOCH
    return {"seconds": delta.days * 86400 + delta.seconds, "nanos": delta.microseconds * 1000}


def _duration_fields(value: timedelta) -> dict[str, int]:
    # Normalized like FromTimedelta: nanos take the sign of seconds (timedelta keeps
    # microseconds non-negative, so a negative duration borrows one second).
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    seconds, rest = divmod(abs(micros), 1_000_000)
    sign = -1 if micros < 0 else 1
    return {"seconds": sign * seconds, "nanos": sign * rest * 1000}


def timestamp(value: datetime) -> Timestamp:
    return Timestamp(**_timestamp_fields(value))


def duration(value: timedelta) -> Duration:
    return Duration(**_duration_fields(value))


def _error_fields(value: ErrorInfo) -> dict[str, str]:
    return {"message": value.message, "kind": value.kind, "details": value.details}


def _attempt_fields(value: Attempt) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "number": value.number,
        "worker_id": value.worker_id,
        "started_at": _timestamp_fields(value.started_at),
        "outcome": OUTCOME_TO_PROTO[value.outcome],
    }
    if value.finished_at:
        fields["finished_at"] = _timestamp_fields(value.finished_at)
    if value.error:
        fields["error"] = _error_fields(value.error)
    return fields


def job_fields(value: Job) -> dict[str, Any]:
    """The fields of a `job_pb2.Job`, as keywords for it or for a message holding one."""
    # Fields left at their default are left out rather than set to it: protobuf looks
    # up every keyword by name, and most jobs have no key, labels, tenant or retry.
    spec: dict[str, Any] = {
        "queue": value.queue,
        "type": value.type,
        "payload": {"data": value.payload, "content_type": value.payload_type},
        "run_at": _timestamp_fields(value.run_at),
        "max_attempts": value.max_attempts,
        "backoff": {
            "initial": _duration_fields(value.backoff.initial),
            "max": _duration_fields(value.backoff.max),
            "multiplier": value.backoff.multiplier,
            "jitter": value.backoff.jitter,
        },
        "lease_timeout": _duration_fields(value.lease_timeout),
    }
    if value.priority:
        spec["priority"] = value.priority
    if value.idempotency_key:
        spec["idempotency_key"] = value.idempotency_key
    if value.labels:
        spec["labels"] = dict(value.labels)
    if value.execution_timeout:
        spec["execution_timeout"] = _duration_fields(value.execution_timeout)
    fields: dict[str, Any] = {
        "id": str(value.id),
        "spec": spec,
        "state": STATE_TO_PROTO[value.state],
        "attempt": value.attempt,
        "created_at": _timestamp_fields(value.created_at),
        "updated_at": _timestamp_fields(value.updated_at),
    }
    if value.tenant:
        fields["tenant"] = value.tenant
    if value.retried_from:
        fields["retried_from"] = str(value.retried_from)
    if value.trace_id:
        fields["trace_id"] = value.trace_id
    if value.cancel_requested:
        fields["cancel_requested"] = True
    if value.attempts:
        fields["attempts"] = [_attempt_fields(a) for a in value.attempts]
    if value.result is not None:
        fields["result"] = {"data": value.result, "content_type": value.result_type or ""}
    if value.error:
        fields["error"] = _error_fields(value.error)
    if value.started_at:
        fields["started_at"] = _timestamp_fields(value.started_at)
    if value.finished_at:
        fields["finished_at"] = _timestamp_fields(value.finished_at)
    if value.lease_deadline and value.state is State.RUNNING:
        fields["lease_deadline"] = _timestamp_fields(value.lease_deadline)
    return fields


def job(value: Job) -> job_pb2.Job:
    return job_pb2.Job(**job_fields(value))


def leased_job_fields(value: Job) -> dict[str, Any]:
    """The fields of a `leases_pb2.LeasedJob`: a job as its worker receives it, with the
    lease it holds."""
    assert value.lease_token is not None and value.lease_deadline is not None
    return {
        "job": job_fields(value),
        "lease_token": str(value.lease_token),
        "lease_deadline": _timestamp_fields(value.lease_deadline),
    }


def queue_stats(value: QueueStats, connected_workers: int) -> jobs_pb2.QueueStats:
    return jobs_pb2.QueueStats(
        queue=value.queue,
        ready=value.ready,
        scheduled=value.scheduled,
        running=value.running,
        succeeded=value.succeeded or 0,
        failed=value.failed,
        cancelled=value.cancelled,
        oldest_ready_age=duration(value.oldest_ready_age),
        connected_workers=connected_workers,
    )
