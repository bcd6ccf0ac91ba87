"""Domain objects to protobuf messages, for the gRPC layer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, jobs_pb2

from .model import Attempt, ErrorInfo, Job, QueueStats, State

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


def timestamp(value: datetime) -> Timestamp:
    # Plain arithmetic on the aware datetime: several times cheaper than FromDatetime,
    # and this runs a few times for every job leased.
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def duration(value: timedelta) -> Duration:
    d = Duration()
    d.FromTimedelta(value)
    return d


def error(value: ErrorInfo) -> job_pb2.JobError:
    return job_pb2.JobError(message=value.message, kind=value.kind, details=value.details)


def attempt(value: Attempt) -> job_pb2.Attempt:
    msg = job_pb2.Attempt(
        number=value.number,
        worker_id=value.worker_id,
        started_at=timestamp(value.started_at),
        outcome=OUTCOME_TO_PROTO[value.outcome],
    )
    if value.finished_at:
        msg.finished_at.CopyFrom(timestamp(value.finished_at))
    if value.error:
        msg.error.CopyFrom(error(value.error))
    return msg


def job(value: Job) -> job_pb2.Job:
    spec = job_pb2.JobSpec(
        queue=value.queue,
        type=value.type,
        payload=job_pb2.Payload(data=value.payload, content_type=value.payload_type),
        priority=value.priority,
        run_at=timestamp(value.run_at),
        max_attempts=value.max_attempts,
        backoff=job_pb2.BackoffPolicy(
            initial=duration(value.backoff.initial),
            max=duration(value.backoff.max),
            multiplier=value.backoff.multiplier,
            jitter=value.backoff.jitter,
        ),
        lease_timeout=duration(value.lease_timeout),
        idempotency_key=value.idempotency_key or "",
        labels=dict(value.labels),
    )
    if value.execution_timeout:
        spec.execution_timeout.CopyFrom(duration(value.execution_timeout))
    msg = job_pb2.Job(
        id=str(value.id),
        spec=spec,
        tenant=value.tenant,
        state=STATE_TO_PROTO[value.state],
        attempt=value.attempt,
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
        attempts=[attempt(a) for a in value.attempts],
        retried_from=str(value.retried_from) if value.retried_from else "",
        trace_id=value.trace_id,
        cancel_requested=value.cancel_requested,
    )
    if value.result is not None:
        msg.result.CopyFrom(
            job_pb2.Payload(data=value.result, content_type=value.result_type or "")
        )
    if value.error:
        msg.error.CopyFrom(error(value.error))
    if value.started_at:
        msg.started_at.CopyFrom(timestamp(value.started_at))
    if value.finished_at:
        msg.finished_at.CopyFrom(timestamp(value.finished_at))
    if value.lease_deadline and value.state is State.RUNNING:
        msg.lease_deadline.CopyFrom(timestamp(value.lease_deadline))
    return msg


def queue_stats(value: QueueStats, connected_workers: int) -> jobs_pb2.QueueStats:
    return jobs_pb2.QueueStats(
        queue=value.queue,
        ready=value.ready,
        scheduled=value.scheduled,
        running=value.running,
        succeeded=value.succeeded,
        failed=value.failed,
        cancelled=value.cancelled,
        oldest_ready_age=duration(value.oldest_ready_age),
        connected_workers=connected_workers,
    )
