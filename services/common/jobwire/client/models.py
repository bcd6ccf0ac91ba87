"""The client's value types, converted from and to protobuf only here, at the edge."""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from jobwire.client import codec
from jobwire.v1 import job_pb2, jobs_pb2

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "Backoff",
    "Job",
    "JobError",
    "JobSpec",
    "JobState",
    "Page",
    "QueueStats",
    "Submitted",
    "WatchEvent",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATE_PREFIX = "JOB_STATE_"
_OUTCOME_PREFIX = "ATTEMPT_OUTCOME_"


class JobState(enum.StrEnum):
    """Lifecycle state of a job; compares equal to its name, e.g. ``"PENDING"``."""

    # Only seen when a newer scheduler sends a state this client does not know.
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED, which never change again."""
        return self in _TERMINAL

    @classmethod
    def parse(cls, text: str) -> JobState:
        """A state from its name in any case, with or without the JOB_STATE_ prefix."""
        name = text.strip().upper().removeprefix(_STATE_PREFIX)
        try:
            state = cls(name)
        except ValueError:
            raise ValueError(f"unknown job state {text!r}") from None
        if state is cls.UNSPECIFIED:
            raise ValueError(f"unknown job state {text!r}")
        return state

    @classmethod
    def from_proto(cls, value: job_pb2.JobState.ValueType) -> JobState:
        try:
            name = job_pb2.JobState.Name(value)
        except ValueError:
            return cls.UNSPECIFIED
        return cls(name.removeprefix(_STATE_PREFIX))

    def to_proto(self) -> job_pb2.JobState.ValueType:
        return job_pb2.JobState.Value(_STATE_PREFIX + self.value)


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended."""

    UNSPECIFIED = "UNSPECIFIED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    RELEASED = "RELEASED"

    @classmethod
    def from_proto(cls, value: job_pb2.AttemptOutcome.ValueType) -> AttemptOutcome:
        try:
            name = job_pb2.AttemptOutcome.Name(value)
        except ValueError:
            return cls.UNSPECIFIED
        return cls(name.removeprefix(_OUTCOME_PREFIX))


def _ts(msg: Message, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    return codec.from_timestamp(getattr(msg, name))


def _dur(msg: Message, name: str) -> timedelta | None:
    if not msg.HasField(name):
        return None
    return codec.from_duration(getattr(msg, name))


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _seconds(value: timedelta | None) -> float | None:
    return value.total_seconds() if value is not None else None


def _jsonable(value: Any) -> Any:
    # Non-JSON, non-text payloads arrive as bytes; JSON output carries them as base64.
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class JobError:
    """What went wrong: a readable message, a category and free-form details."""

    message: str
    kind: str = ""
    details: str = ""

    @classmethod
    def from_proto(cls, msg: job_pb2.JobError) -> JobError:
        return cls(message=msg.message, kind=msg.kind, details=msg.details)

    def to_dict(self) -> dict[str, str]:
        return {"message": self.message, "kind": self.kind, "details": self.details}

    def __str__(self) -> str:
        if self.kind and self.kind != self.message:
            return f"{self.kind}: {self.message}"
        return self.message


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """Delay between attempts after a retryable failure; None leaves the scheduler's
    default (1 s initial, 5 min max, multiplier 2.0, jitter 0.2)."""

    initial: float | timedelta | None = None
    max: float | timedelta | None = None
    multiplier: float | None = None
    jitter: float | None = None

    def to_proto(self) -> job_pb2.BackoffPolicy:
        msg = job_pb2.BackoffPolicy()
        if self.initial is not None:
            msg.initial.CopyFrom(codec.to_duration(self.initial))
        if self.max is not None:
            msg.max.CopyFrom(codec.to_duration(self.max))
        if self.multiplier is not None:
            msg.multiplier = self.multiplier
        if self.jitter is not None:
            msg.jitter = self.jitter
        return msg

    @classmethod
    def from_proto(cls, msg: job_pb2.BackoffPolicy) -> Backoff:
        return cls(
            initial=_dur(msg, "initial"),
            max=_dur(msg, "max"),
            multiplier=msg.multiplier,
            jitter=msg.jitter,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    """One job to submit; the same arguments as `Client.submit`, for `Client.submit_many`.

    `payload` is encoded as JSON unless it is bytes or `content_type` says otherwise.
    `run_at` may be a datetime (naive means local time) or a delay from now.
    """

    type: str
    payload: Any = None
    queue: str = "default"
    priority: int = 0
    run_at: datetime | timedelta | None = None
    max_attempts: int | None = None
    lease_timeout: float | timedelta | None = None
    execution_timeout: float | timedelta | None = None
    idempotency_key: str | None = None
    labels: Mapping[str, str] | None = field(default=None, hash=False)
    backoff: Backoff | None = None
    content_type: str | None = None

    def to_proto(self, *, now: datetime | None = None) -> job_pb2.JobSpec:
        msg = job_pb2.JobSpec(
            queue=self.queue,
            type=self.type,
            payload=codec.encode_payload(self.payload, self.content_type),
            priority=self.priority,
            max_attempts=self.max_attempts or 0,
            idempotency_key=self.idempotency_key or "",
            labels=dict(self.labels or {}),
        )
        if self.run_at is not None:
            run_at = self.run_at
            if isinstance(run_at, timedelta):
                run_at = (now or datetime.now(UTC)) + run_at
            msg.run_at.CopyFrom(codec.to_timestamp(run_at))
        if self.lease_timeout is not None:
            msg.lease_timeout.CopyFrom(codec.to_duration(self.lease_timeout))
        if self.execution_timeout is not None:
            msg.execution_timeout.CopyFrom(codec.to_duration(self.execution_timeout))
        if self.backoff is not None:
            msg.backoff.CopyFrom(self.backoff.to_proto())
        return msg


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    """One lease of a job by a worker, from the job's history."""

    number: int
    worker_id: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: AttemptOutcome = AttemptOutcome.UNSPECIFIED
    error: JobError | None = None

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def from_proto(cls, msg: job_pb2.Attempt) -> Attempt:
        return cls(
            number=msg.number,
            worker_id=msg.worker_id,
            started_at=_ts(msg, "started_at"),
            finished_at=_ts(msg, "finished_at"),
            outcome=AttemptOutcome.from_proto(msg.outcome),
            error=JobError.from_proto(msg.error) if msg.HasField("error") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "worker_id": self.worker_id,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "outcome": self.outcome.value,
            "error": self.error.to_dict() if self.error else None,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A job as the scheduler stores it, with payload and result decoded.

    `payload` and `result` are JSON-decoded for JSON content types, str for text/*,
    bytes otherwise; `result` is None unless the job SUCCEEDED. `raw` is the protobuf
    message the job was built from, for fields this type does not carry.
    """

    id: str
    queue: str
    type: str
    state: JobState
    attempt: int = 0
    max_attempts: int = 0
    priority: int = 0
    payload: Any = field(default=None, hash=False)
    payload_content_type: str = ""
    result: Any = field(default=None, hash=False)
    result_content_type: str = ""
    error: JobError | None = None
    tenant: str = ""
    idempotency_key: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    trace_id: str = ""
    retried_from: str | None = None
    cancel_requested: bool = False
    run_at: datetime | None = None
    created_at: datetime = _EPOCH
    updated_at: datetime = _EPOCH
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_deadline: datetime | None = None
    lease_timeout: timedelta | None = None
    execution_timeout: timedelta | None = None
    backoff: Backoff | None = None
    attempts: tuple[Attempt, ...] = ()
    raw: job_pb2.Job | None = field(default=None, repr=False, compare=False, hash=False)

    @property
    def terminal(self) -> bool:
        """True once the job is SUCCEEDED, FAILED or CANCELLED."""
        return self.state.terminal

    @classmethod
    def from_proto(cls, msg: job_pb2.Job) -> Job:
        spec = msg.spec
        return cls(
            id=msg.id,
            queue=spec.queue,
            type=spec.type,
            state=JobState.from_proto(msg.state),
            attempt=msg.attempt,
            max_attempts=spec.max_attempts,
            priority=spec.priority,
            payload=codec.decode_payload(spec.payload if spec.HasField("payload") else None),
            payload_content_type=spec.payload.content_type,
            result=codec.decode_payload(msg.result if msg.HasField("result") else None),
            result_content_type=msg.result.content_type,
            error=JobError.from_proto(msg.error) if msg.HasField("error") else None,
            tenant=msg.tenant,
            idempotency_key=spec.idempotency_key or None,
            labels=dict(spec.labels),
            trace_id=msg.trace_id,
            retried_from=msg.retried_from or None,
            cancel_requested=msg.cancel_requested,
            run_at=_ts(spec, "run_at"),
            created_at=_ts(msg, "created_at") or _EPOCH,
            updated_at=_ts(msg, "updated_at") or _EPOCH,
            started_at=_ts(msg, "started_at"),
            finished_at=_ts(msg, "finished_at"),
            lease_deadline=_ts(msg, "lease_deadline"),
            lease_timeout=_dur(spec, "lease_timeout"),
            execution_timeout=_dur(spec, "execution_timeout"),
            backoff=Backoff.from_proto(spec.backoff) if spec.HasField("backoff") else None,
            attempts=tuple(Attempt.from_proto(a) for a in msg.attempts),
            raw=msg,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: timestamps in RFC 3339 UTC, durations in seconds, and
        bytes payloads as ``{"base64": ...}``."""
        backoff = None
        if self.backoff is not None:
            backoff = {
                "initial": _seconds(_as_timedelta(self.backoff.initial)),
                "max": _seconds(_as_timedelta(self.backoff.max)),
                "multiplier": self.backoff.multiplier,
                "jitter": self.backoff.jitter,
            }
        return {
            "id": self.id,
            "queue": self.queue,
            "type": self.type,
            "state": self.state.value,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "payload": _jsonable(self.payload),
            "payload_content_type": self.payload_content_type,
            "result": _jsonable(self.result),
            "result_content_type": self.result_content_type,
            "error": self.error.to_dict() if self.error else None,
            "tenant": self.tenant,
            "idempotency_key": self.idempotency_key,
            "labels": dict(self.labels),
            "trace_id": self.trace_id,
            "retried_from": self.retried_from,
            "cancel_requested": self.cancel_requested,
            "run_at": _iso(self.run_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "lease_deadline": _iso(self.lease_deadline),
            "lease_timeout": _seconds(self.lease_timeout),
            "execution_timeout": _seconds(self.execution_timeout),
            "backoff": backoff,
            "attempts": [a.to_dict() for a in self.attempts],
        }


def _as_timedelta(value: float | timedelta | None) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=value)


@dataclass(frozen=True, kw_only=True, slots=True)
class Submitted:
    """The answer to one submitted job: the stored job, and False in `created` when an
    existing job was returned for a reused idempotency key."""

    job: Job
    created: bool

    @property
    def id(self) -> str:
        return self.job.id

    @classmethod
    def from_proto(cls, msg: jobs_pb2.SubmitResult) -> Submitted:
        return cls(job=Job.from_proto(msg.job), created=msg.created)


@dataclass(frozen=True, kw_only=True, slots=True)
class Page:
    """One page of `Client.list`, newest first; `next_page_token` is None on the last."""

    jobs: tuple[Job, ...]
    next_page_token: str | None = None

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    @classmethod
    def from_proto(cls, msg: jobs_pb2.ListResponse) -> Page:
        return cls(
            jobs=tuple(Job.from_proto(j) for j in msg.jobs),
            next_page_token=msg.next_page_token or None,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueStats:
    """Counts of one queue's jobs by state, and how long its oldest ready job waited."""

    queue: str
    ready: int = 0
    scheduled: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    oldest_ready_age: timedelta = timedelta(0)
    connected_workers: int = 0

    @property
    def pending(self) -> int:
        """Ready and scheduled jobs together: everything in the PENDING state."""
        return self.ready + self.scheduled

    @classmethod
    def from_proto(cls, msg: jobs_pb2.QueueStats) -> QueueStats:
        return cls(
            queue=msg.queue,
            ready=msg.ready,
            scheduled=msg.scheduled,
            running=msg.running,
            succeeded=msg.succeeded,
            failed=msg.failed,
            cancelled=msg.cancelled,
            oldest_ready_age=_dur(msg, "oldest_ready_age") or timedelta(0),
            connected_workers=msg.connected_workers,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "ready": self.ready,
            "scheduled": self.scheduled,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "oldest_ready_age": self.oldest_ready_age.total_seconds(),
            "connected_workers": self.connected_workers,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchEvent:
    """One state change of a watched job.

    `job` is the job as it was when the event was sent, which may already be past
    `state` when changes came quickly.
    """

    sequence: int
    state: JobState
    attempt: int
    job: Job

    @classmethod
    def from_proto(cls, msg: jobs_pb2.WatchEvent) -> WatchEvent:
        return cls(
            sequence=msg.sequence,
            state=JobState.from_proto(msg.state),
            attempt=msg.attempt,
            job=Job.from_proto(msg.job),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "state": self.state.value,
            "attempt": self.attempt,
            "job": self.job.to_dict(),
        }
