"""The Python client: conversions and error mapping without I/O, then a fake Jobs server
for stream behaviour the real one cannot be made to show on demand, then the real
scheduler."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jobwire.client
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.client import (
    AlreadyExistsError,
    Attempt,
    AttemptOutcome,
    Backoff,
    Client,
    ClientError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    Job,
    JobCancelledError,
    JobFailedError,
    JobSpec,
    JobState,
    NotFoundError,
    Page,
    PermissionDeniedError,
    QueueStats,
    ResourceExhaustedError,
    Submitted,
    UnauthenticatedError,
    UnavailableError,
    WaitTimeoutError,
    WatchEvent,
    codec,
)
from jobwire.client.errors import from_rpc_error
from jobwire.v1 import job_pb2, jobs_pb2, jobs_pb2_grpc, leases_pb2

from tests.support import wait_for

# -- public surface -----------------------------------------------------------------------


def test_exported_members() -> None:
    assert sorted(jobwire.client.__all__) == sorted(
        [
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
    )
    for name in jobwire.client.__all__:
        assert getattr(jobwire.client, name) is not None


def test_client_side_imports_no_scheduler_worker_or_database_driver() -> None:
    code = (
        "import sys, jobwire.client, jobwire.cli.jobs_commands\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'psycopg'\n"
        "       or m.startswith(('jobwire.scheduler', 'jobwire.worker'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_every_error_is_a_client_error() -> None:
    for name in jobwire.client.__all__:
        obj = getattr(jobwire.client, name)
        if isinstance(obj, type) and name.endswith("Error") and name != "JobError":
            assert issubclass(obj, ClientError), name
            assert obj.__doc__, f"{name} says when it is raised"
    assert issubclass(WaitTimeoutError, TimeoutError)


# -- payloads and time ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "content_type", "data", "sent_type"),
    [
        ({"text": "hi", "a": 1}, None, b'{"text":"hi","a":1}', "application/json"),
        ({"b": 1, "a": 2}, None, b'{"b":1,"a":2}', "application/json"),  # order kept
        ("HI", None, b'"HI"', "application/json"),
        (None, None, b"null", "application/json"),
        ("é", None, '"é"'.encode(), "application/json"),
        (b"\x00\x01", None, b"\x00\x01", "application/octet-stream"),
        (b"a,b\n", "text/csv", b"a,b\n", "text/csv"),
        ("héllo", "text/plain", "héllo".encode(), "text/plain"),
        ("héllo", "text/plain; charset=latin-1", "héllo".encode("latin-1"), None),
        (b'{"x":1}', "application/json", b'{"x":1}', "application/json"),
        ([1, 2], "application/vnd.api+json", b"[1,2]", "application/vnd.api+json"),
    ],
)
def test_encode_payload(value: Any, content_type: str | None, data: bytes, sent_type: str) -> None:
    payload = codec.encode_payload(value, content_type)
    assert payload.data == data
    assert payload.content_type == (sent_type or content_type)


def test_encode_payload_refuses_objects_for_non_json_types() -> None:
    with pytest.raises(TypeError, match="text/plain"):
        codec.encode_payload({"a": 1}, "text/plain")


@pytest.mark.parametrize(
    ("data", "content_type", "value"),
    [
        (b'{"a":[1,2]}', "application/json", {"a": [1, 2]}),
        (b'"HI"', "application/json", "HI"),
        (b'{"a":1}', "application/problem+json; charset=utf-8", {"a": 1}),
        (b"", "application/json", None),
        (b"{not json", "application/json", b"{not json"),
        (b"hello", "text/plain", "hello"),
        ("héllo".encode("latin-1"), "text/plain; charset=latin-1", "héllo"),
        (b"\xff\xfe", "text/plain", b"\xff\xfe"),
        (b"\x00", "", b"\x00"),
        (b"\x00", "image/png", b"\x00"),
    ],
)
def test_decode_payload(data: bytes, content_type: str, value: Any) -> None:
    assert codec.decode_payload(job_pb2.Payload(data=data, content_type=content_type)) == value


def test_decode_missing_payload_is_none() -> None:
    assert codec.decode_payload(None) is None


def test_timestamps_keep_the_instant() -> None:
    aware = datetime(2030, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert codec.from_timestamp(codec.to_timestamp(aware)) == aware
    # A naive datetime means local time, like datetime.timestamp() takes it.
    naive = datetime(2030, 5, 1, 12, 30, 15)
    assert codec.to_timestamp(naive).seconds == int(naive.timestamp())


def test_durations() -> None:
    assert codec.to_duration(1.5) == Duration(seconds=1, nanos=500_000_000)
    assert codec.to_duration(timedelta(minutes=2)) == Duration(seconds=120)
    assert codec.from_duration(Duration(seconds=3, nanos=250_000_000)) == timedelta(seconds=3.25)
    with pytest.raises(ValueError, match="negative"):
        codec.to_duration(-1)


# -- protobuf to client types ---------------------------------------------------------------


def _ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


T0 = 1_900_000_000


def full_job_proto(**overrides: Any) -> job_pb2.Job:
    fields: dict[str, Any] = dict(
        id="6f1b4c1e-0000-4000-8000-000000000001",
        spec=job_pb2.JobSpec(
            queue="emails",
            type="send",
            payload=job_pb2.Payload(data=b'{"to":"a@b.c"}', content_type="application/json"),
            priority=7,
            run_at=_ts(T0),
            max_attempts=5,
            backoff=job_pb2.BackoffPolicy(
                initial=Duration(seconds=2), max=Duration(seconds=60), multiplier=3.0, jitter=0.1
            ),
            lease_timeout=Duration(seconds=45),
            execution_timeout=Duration(seconds=600),
            idempotency_key="k-1",
            labels={"team": "growth", "env": "test"},
        ),
        tenant="acme",
        state=job_pb2.JOB_STATE_FAILED,
        attempt=2,
        error=job_pb2.JobError(message="boom", kind="ValueError", details="Traceback..."),
        created_at=_ts(T0),
        updated_at=_ts(T0 + 30),
        started_at=_ts(T0 + 1),
        finished_at=_ts(T0 + 30),
        attempts=[
            job_pb2.Attempt(
                number=1,
                worker_id="w1",
                started_at=_ts(T0 + 1),
                finished_at=_ts(T0 + 3),
                outcome=job_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED,
                error=job_pb2.JobError(message="lease expired", kind="lease_expired"),
            ),
            job_pb2.Attempt(
                number=2,
                worker_id="w2",
                started_at=_ts(T0 + 10),
                finished_at=_ts(T0 + 30),
                outcome=job_pb2.ATTEMPT_OUTCOME_FAILED,
                error=job_pb2.JobError(message="boom", kind="ValueError"),
            ),
        ],
        retried_from="6f1b4c1e-0000-4000-8000-000000000000",
        trace_id="abc123",
        cancel_requested=False,
    )
    fields.update(overrides)
    return job_pb2.Job(**fields)


def test_job_from_proto_carries_every_field() -> None:
    msg = full_job_proto()
    job = Job.from_proto(msg)
    at = lambda s: datetime.fromtimestamp(s, UTC)  # noqa: E731
    assert job.id == msg.id and job.queue == "emails" and job.type == "send"
    assert job.state is JobState.FAILED and job.terminal
    assert (job.attempt, job.max_attempts, job.priority) == (2, 5, 7)
    assert job.payload == {"to": "a@b.c"} and job.payload_content_type == "application/json"
    assert job.result is None
    assert job.error is not None and job.error.kind == "ValueError"
    assert str(job.error) == "ValueError: boom"
    assert job.tenant == "acme" and job.idempotency_key == "k-1"
    assert job.labels == {"team": "growth", "env": "test"}
    assert job.trace_id == "abc123" and job.retried_from == msg.retried_from
    assert job.run_at == at(T0) and job.created_at == at(T0) and job.updated_at == at(T0 + 30)
    assert job.started_at == at(T0 + 1) and job.finished_at == at(T0 + 30)
    assert job.lease_deadline is None
    assert job.lease_timeout == timedelta(seconds=45)
    assert job.execution_timeout == timedelta(minutes=10)
    assert job.backoff == Backoff(
        initial=timedelta(seconds=2), max=timedelta(seconds=60), multiplier=3.0, jitter=0.1
    )
    assert [a.outcome for a in job.attempts] == [
        AttemptOutcome.LEASE_EXPIRED,
        AttemptOutcome.FAILED,
    ]
    assert job.attempts[1] == Attempt(
        number=2,
        worker_id="w2",
        started_at=at(T0 + 10),
        finished_at=at(T0 + 30),
        outcome=AttemptOutcome.FAILED,
        error=job.attempts[1].error,
    )
    assert job.attempts[1].duration == timedelta(seconds=20)
    assert job.raw is msg
    # Timestamps are aware and in UTC, whatever the local zone.
    assert job.created_at.tzinfo is UTC


def test_job_from_minimal_proto_uses_none_for_unset() -> None:
    job = Job.from_proto(job_pb2.Job(id="x", spec=job_pb2.JobSpec(type="t")))
    assert job.state is JobState.UNSPECIFIED
    assert job.payload is None and job.result is None and job.error is None
    assert job.retried_from is None and job.idempotency_key is None
    assert job.started_at is None and job.run_at is None and job.backoff is None
    assert job.attempts == () and job.labels == {}


def test_job_result_decoded_only_when_present() -> None:
    job = Job.from_proto(
        full_job_proto(
            state=job_pb2.JOB_STATE_SUCCEEDED,
            result=job_pb2.Payload(data=b'"HI"', content_type="application/json"),
        )
    )
    assert job.result == "HI" and job.result_content_type == "application/json"


def test_unknown_enum_values_do_not_break_conversion() -> None:
    msg = job_pb2.Job(id="x", state=99, attempts=[job_pb2.Attempt(number=1, outcome=42)])  # type: ignore[arg-type]
    job = Job.from_proto(msg)
    assert job.state is JobState.UNSPECIFIED
    assert job.attempts[0].outcome is AttemptOutcome.UNSPECIFIED


def test_job_to_dict_is_json() -> None:
    job = Job.from_proto(
        full_job_proto(
            spec=job_pb2.JobSpec(
                type="blob", payload=job_pb2.Payload(data=b"\x00\xff", content_type="")
            )
        )
    )
    document = json.loads(json.dumps(job.to_dict()))
    assert document["state"] == "FAILED"
    assert document["payload"] == {"base64": "AP8="}
    assert document["created_at"] == datetime.fromtimestamp(T0, UTC).isoformat().replace(
        "+00:00", "Z"
    )
    assert document["attempts"][0]["outcome"] == "LEASE_EXPIRED"
    assert document["error"] == {"message": "boom", "kind": "ValueError", "details": "Traceback..."}


@pytest.mark.parametrize("text", ["pending", "PENDING", "job_state_pending", " Pending "])
def test_job_state_parse(text: str) -> None:
    assert JobState.parse(text) is JobState.PENDING


@pytest.mark.parametrize("text", ["", "done", "unspecified"])
def test_job_state_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="unknown job state"):
        JobState.parse(text)


def test_job_state_proto_round_trip() -> None:
    for state in JobState:
        if state is not JobState.UNSPECIFIED:
            assert JobState.from_proto(state.to_proto()) is state
    assert {s for s in JobState if s.terminal} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    }
    assert JobState.RUNNING == "RUNNING"


def test_spec_to_proto_defaults_leave_fields_unset() -> None:
    msg = JobSpec(type="uppercase", payload={"text": "hi"}).to_proto()
    assert msg.type == "uppercase" and msg.queue == "default"
    assert msg.payload.data == b'{"text":"hi"}'
    assert msg.max_attempts == 0 and msg.idempotency_key == ""
    for name in ("run_at", "lease_timeout", "execution_timeout", "backoff"):
        assert not msg.HasField(name), name


def test_spec_to_proto_sets_everything() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    msg = JobSpec(
        type="t",
        payload="plain",
        content_type="text/plain",
        queue="q",
        priority=-5,
        run_at=timedelta(seconds=90),
        max_attempts=7,
        lease_timeout=12,
        execution_timeout=timedelta(minutes=1),
        idempotency_key="key",
        labels={"a": "b"},
        backoff=Backoff(initial=0.5, multiplier=1.5),
    ).to_proto(now=now)
    assert msg.payload == job_pb2.Payload(data=b"plain", content_type="text/plain")
    assert (msg.queue, msg.priority, msg.max_attempts) == ("q", -5, 7)
    assert msg.run_at.ToDatetime(tzinfo=UTC) == now + timedelta(seconds=90)
    assert msg.lease_timeout == Duration(seconds=12)
    assert msg.execution_timeout == Duration(seconds=60)
    assert msg.idempotency_key == "key" and dict(msg.labels) == {"a": "b"}
    assert msg.backoff.initial == Duration(nanos=500_000_000)
    assert not msg.backoff.HasField("max")
    assert msg.backoff.multiplier == 1.5 and msg.backoff.jitter == 0.0


def test_other_types_from_proto() -> None:
    job = full_job_proto()
    submitted = Submitted.from_proto(jobs_pb2.SubmitResult(job=job, created=True))
    assert submitted.created and submitted.id == job.id

    page = Page.from_proto(jobs_pb2.ListResponse(jobs=[job, job], next_page_token="t"))
    assert len(page) == 2 and [j.id for j in page] == [job.id, job.id]
    assert page.next_page_token == "t"
    assert Page.from_proto(jobs_pb2.ListResponse()).next_page_token is None

    stats = QueueStats.from_proto(
        jobs_pb2.QueueStats(
            queue="q",
            ready=3,
            scheduled=2,
            running=1,
            succeeded=10,
            failed=4,
            cancelled=5,
            oldest_ready_age=Duration(seconds=7),
            connected_workers=2,
        )
    )
    assert stats.pending == 5 and stats.oldest_ready_age == timedelta(seconds=7)
    assert stats.to_dict()["oldest_ready_age"] == 7.0

    event = WatchEvent.from_proto(
        jobs_pb2.WatchEvent(sequence=3, state=job_pb2.JOB_STATE_RUNNING, attempt=2, job=job)
    )
    assert (event.sequence, event.state, event.attempt) == (3, JobState.RUNNING, 2)
    assert event.job.state is JobState.FAILED  # the job may be ahead of the event


# -- error mapping ---------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, ClientError),
    ],
)
def test_status_codes_map_to_errors(code: grpc.StatusCode, cls: type[ClientError]) -> None:
    error = from_rpc_error(FakeRpcError(code, "what happened"))
    assert type(error) is cls
    assert error.code is code and error.message == "what happened"
    assert error.status == code.name
    assert str(error) == f"{code.name}: what happened"


def test_resource_exhausted_keeps_retry_delay() -> None:
    error = from_rpc_error(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (("retry-after", "2.5"),))
    )
    assert isinstance(error, ResourceExhaustedError) and error.retry_after == 2.5


def test_bare_rpc_error_still_maps() -> None:
    error = from_rpc_error(grpc.RpcError("odd"))
    assert type(error) is ClientError and error.code is grpc.StatusCode.UNKNOWN


# -- a fake Jobs server, for stream breaks and timing -----------------------------------------

JOB_ID = "6f1b4c1e-0000-4000-8000-0000000000aa"


def _job(state: int, *, attempt: int = 0, result: bytes | None = None) -> job_pb2.Job:
    msg = job_pb2.Job(id=JOB_ID, spec=job_pb2.JobSpec(type="t", queue="default"), state=state)  # type: ignore[arg-type]
    msg.attempt = attempt
    if result is not None:
        msg.result.CopyFrom(job_pb2.Payload(data=result, content_type="application/json"))
    return msg


def _event(sequence: int, state: int, attempt: int, job: job_pb2.Job) -> jobs_pb2.WatchEvent:
    return jobs_pb2.WatchEvent(sequence=sequence, state=state, attempt=attempt, job=job)  # type: ignore[arg-type]


class FakeJobs(jobs_pb2_grpc.JobsServicer):
    """Answers Watch from a script: a list of (events, then abort with this code or end)."""

    def __init__(self) -> None:
        self.scripts: list[tuple[list[jobs_pb2.WatchEvent], grpc.StatusCode | None]] = []
        self.watch_calls = 0
        self.metadata: list[dict[str, str]] = []
        self.release = threading.Event()

    def Watch(self, request: jobs_pb2.WatchRequest, context: Any) -> Iterator[jobs_pb2.WatchEvent]:
        self.watch_calls += 1
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        if not self.scripts:
            # Hold the stream open, like a job that never finishes.
            self.release.wait(30)
            return
        events, code = self.scripts.pop(0)
        yield from events
        if code is not None:
            context.abort(code, "scripted failure")

    def Submit(self, request: jobs_pb2.SubmitRequest, context: Any) -> jobs_pb2.SubmitResponse:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        return jobs_pb2.SubmitResponse(
            results=[jobs_pb2.SubmitResult(job=_job(job_pb2.JOB_STATE_PENDING), created=True)]
            * len(request.jobs)
        )


@pytest.fixture
def fake() -> Iterator[tuple[FakeJobs, str]]:
    servicer = FakeJobs()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    jobs_pb2_grpc.add_JobsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        servicer.release.set()
        server.stop(0).wait()


def test_watch_resumes_after_a_broken_stream_without_repeating(
    fake: tuple[FakeJobs, str],
) -> None:
    servicer, target = fake
    pending = _job(job_pb2.JOB_STATE_PENDING)
    done = _job(job_pb2.JOB_STATE_SUCCEEDED, attempt=1, result=b'"ok"')
    servicer.scripts = [
        ([_event(1, job_pb2.JOB_STATE_PENDING, 0, pending)], grpc.StatusCode.UNAVAILABLE),
        (
            [
                _event(1, job_pb2.JOB_STATE_PENDING, 0, done),
                _event(2, job_pb2.JOB_STATE_RUNNING, 1, done),
                _event(3, job_pb2.JOB_STATE_SUCCEEDED, 1, done),
            ],
            None,
        ),
    ]
    with Client(target) as client:
        events = list(client.watch(JOB_ID, timeout=10))
    assert [(e.sequence, e.state) for e in events] == [
        (1, JobState.PENDING),
        (2, JobState.RUNNING),
        (3, JobState.SUCCEEDED),
    ]
    assert servicer.watch_calls == 2


def test_watch_gives_up_on_errors_that_are_not_transient(fake: tuple[FakeJobs, str]) -> None:
    servicer, target = fake
    servicer.scripts = [([], grpc.StatusCode.NOT_FOUND)]
    with Client(target) as client, pytest.raises(NotFoundError):
        list(client.watch(JOB_ID))


def test_watch_reconnects_only_within_the_reconnect_budget(fake: tuple[FakeJobs, str]) -> None:
    servicer, target = fake
    pending = _job(job_pb2.JOB_STATE_PENDING)
    servicer.scripts = [
        ([_event(1, job_pb2.JOB_STATE_PENDING, 0, pending)], grpc.StatusCode.UNAVAILABLE)
    ] + [([], grpc.StatusCode.UNAVAILABLE)] * 50
    started = time.monotonic()
    with Client(target, reconnect_timeout=0.5) as client, pytest.raises(UnavailableError):
        list(client.watch(JOB_ID))
    assert time.monotonic() - started < 5


def test_wait_times_out_and_closes_the_stream(fake: tuple[FakeJobs, str]) -> None:
    _, target = fake
    started = time.monotonic()
    with Client(target) as client, pytest.raises(WaitTimeoutError) as caught:
        client.wait(JOB_ID, timeout=0.3)
    assert caught.value.job_id == JOB_ID
    assert 0.25 < time.monotonic() - started < 5


def test_metadata_and_token_are_sent(fake: tuple[FakeJobs, str]) -> None:
    servicer, target = fake
    with Client(target, metadata={"x-request-id": "req-1"}, token="s3cret") as client:
        assert client.submit("t").created
        assert client.submit_many([]) == []
    assert servicer.metadata[0]["x-request-id"] == "req-1"
    assert servicer.metadata[0]["authorization"] == "Bearer s3cret"
    assert len(servicer.metadata) == 1  # the empty submit_many made no call


def test_client_close_is_idempotent() -> None:
    client = Client("127.0.0.1:1")
    client.close()
    client.close()


def test_unreachable_scheduler_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=5) as client, pytest.raises(UnavailableError) as caught:
        client.get(str(uuid.uuid4()))
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


# -- against the real scheduler ------------------------------------------------------------


@pytest.fixture
def client(scheduler: Any) -> Iterator[Client]:
    with Client(scheduler.target) as c:
        yield c


def test_submit_and_get(client: Client) -> None:
    run_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    submitted = client.submit(
        "uppercase",
        {"text": "hi"},
        queue="q1",
        priority=5,
        run_at=run_at,
        max_attempts=4,
        lease_timeout=20,
        execution_timeout=timedelta(seconds=90),
        labels={"team": "a"},
        backoff=Backoff(initial=2, max=30),
    )
    assert submitted.created
    job = submitted.job
    assert uuid.UUID(job.id)
    assert job.state is JobState.PENDING and job.attempt == 0
    assert (job.queue, job.type, job.priority, job.max_attempts) == ("q1", "uppercase", 5, 4)
    assert job.payload == {"text": "hi"} and job.payload_content_type == "application/json"
    assert job.run_at == run_at
    assert job.lease_timeout == timedelta(seconds=20)
    assert job.execution_timeout == timedelta(seconds=90)
    assert job.labels == {"team": "a"}
    assert job.backoff is not None and job.backoff.initial == timedelta(seconds=2)
    assert job.trace_id

    got = client.get(job.id)
    assert got.id == job.id and got.state is JobState.PENDING
    assert got.payload == {"text": "hi"} and got.created_at == job.created_at


def test_submit_bytes_and_text_payloads(client: Client) -> None:
    raw = client.submit("blob", b"\x00\x01\x02").job
    assert raw.payload == b"\x00\x01\x02" and raw.payload_content_type == (
        "application/octet-stream"
    )
    text = client.submit("t", "héllo", content_type="text/plain").job
    assert client.get(text.id).payload == "héllo"
    assert client.submit("t").job.payload is None


def test_idempotent_submit(client: Client) -> None:
    first = client.submit("t", {"n": 1}, idempotency_key="key-1")
    again = client.submit("t", {"n": 1}, idempotency_key="key-1")
    assert first.created and not again.created
    assert again.job.id == first.job.id
    with pytest.raises(AlreadyExistsError) as caught:
        client.submit("t", {"n": 2}, idempotency_key="key-1")
    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.message
    # Keys are per queue.
    assert client.submit("t", {"n": 2}, idempotency_key="key-1", queue="other").created


def test_submit_many_is_atomic(client: Client) -> None:
    results = client.submit_many(
        [JobSpec(type="a", payload=1), JobSpec(type="b", payload=2, queue="q2")]
    )
    assert [r.job.type for r in results] == ["a", "b"] and all(r.created for r in results)
    with pytest.raises(InvalidArgumentError):
        client.submit_many([JobSpec(type="ok"), JobSpec(type="bad type!")])
    assert {j.type for j in client.iter_jobs()} == {"a", "b"}


def test_get_unknown_and_malformed_ids(client: Client) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.get(str(uuid.uuid4()))
    assert missing.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(InvalidArgumentError) as malformed:
        client.get("not-a-uuid")
    assert malformed.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.value.message


def test_list_filters_and_pages(client: Client) -> None:
    a_ids = [client.submit("x", {"i": i}, queue="qa").id for i in range(5)]
    b_ids = [client.submit("y", {"i": i}, queue="qb").id for i in range(2)]

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = client.list(queue="qa", page_size=2, page_token=token)
        assert len(page) <= 2
        seen += [j.id for j in page]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert pages == 3
    assert seen == list(reversed(a_ids))  # newest first, no gaps, no repeats

    assert [j.id for j in client.iter_jobs(type="y", page_size=1)] == list(reversed(b_ids))
    assert len(list(client.iter_jobs(page_size=3, limit=4))) == 4
    assert client.list(queue="nothing-here").jobs == ()

    client.cancel(a_ids[0])
    cancelled = client.list(states=["cancelled"])
    assert [j.id for j in cancelled] == [a_ids[0]]
    both = client.list(states=[JobState.CANCELLED, JobState.PENDING], queue="qa")
    assert len(both) == 5


def test_cancel_then_retry(client: Client) -> None:
    job = client.submit("t", {"n": 1}, idempotency_key="once", labels={"k": "v"}).job
    cancelled = client.cancel(job.id, reason="not needed")
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None
    assert client.cancel(job.id).state is JobState.CANCELLED  # again is fine

    retried = client.retry(job.id)
    assert retried.id != job.id and retried.retried_from == job.id
    assert retried.state is JobState.PENDING
    assert retried.payload == {"n": 1} and retried.labels == {"k": "v"}
    assert retried.idempotency_key is None

    with pytest.raises(FailedPreconditionError):
        client.retry(retried.id)  # still pending


def test_stats_counts(client: Client) -> None:
    for _ in range(3):
        client.submit("t", queue="s1")
    later = client.submit("t", queue="s1", run_at=timedelta(hours=1)).id
    client.submit("t", queue="s2")
    client.cancel(later)

    stats = {s.queue: s for s in client.stats()}
    assert set(stats) == {"s1", "s2"}
    s1 = stats["s1"]
    assert (s1.ready, s1.scheduled, s1.running, s1.cancelled) == (3, 0, 0, 1)
    assert s1.oldest_ready_age >= timedelta(0)
    assert [s.queue for s in client.stats("s2")] == ["s2"]


def test_watch_sees_a_cancel_from_another_thread(client: Client, scheduler: Any) -> None:
    job_id = client.submit("t").id
    events: list[WatchEvent] = []
    done = threading.Event()

    def follow() -> None:
        with Client(scheduler.target) as own:
            events.extend(own.watch(job_id, timeout=20))
        done.set()

    thread = threading.Thread(target=follow)
    thread.start()
    wait_for(lambda: events, message="the first watch event")
    client.cancel(job_id)
    assert done.wait(20)
    thread.join(5)
    assert [e.state for e in events] == [JobState.PENDING, JobState.CANCELLED]
    assert [e.sequence for e in events] == [1, 2]
    assert events[-1].job.state is JobState.CANCELLED


def test_watch_survives_a_scheduler_restart(client: Client, scheduler: Any) -> None:
    job_id = client.submit("t").id
    events: list[WatchEvent] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            with Client(scheduler.target) as own:
                events.extend(own.watch(job_id, timeout=30))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    wait_for(lambda: events, message="the first watch event")
    scheduler.restart()
    with Client(scheduler.target) as again:
        again.cancel(job_id)
    thread.join(30)
    assert not errors, errors
    assert [e.state for e in events] == [JobState.PENDING, JobState.CANCELLED]


def test_wait_and_result_with_a_worker(client: Client, scheduler: Any) -> None:
    from tests.support import StreamClient

    job_id = client.submit("echo", {"text": "hi"}).id
    worker = StreamClient(scheduler.target)
    try:
        leased = worker.next_job()
        assert leased.job.id == job_id
        assert worker.ack(leased, b'"HI"').code == 0
    finally:
        worker.close()
    assert client.result(job_id, timeout=10) == "HI"
    job = client.wait(job_id)
    assert job.state is JobState.SUCCEEDED and job.result == "HI"
    assert [a.outcome for a in job.attempts] == [AttemptOutcome.SUCCEEDED]


def test_result_raises_for_failed_job(client: Client, scheduler: Any) -> None:
    from tests.support import StreamClient

    job_id = client.submit("echo", max_attempts=1).id
    worker = StreamClient(scheduler.target)
    try:
        leased = worker.next_job()
        worker.send(
            leases_pb2.LeaseRequest(
                nack=leases_pb2.NackItem(
                    job_id=job_id,
                    lease_token=leased.lease_token,
                    error=job_pb2.JobError(message="bad input", kind="ValueError"),
                    retryable=False,
                )
            )
        )
        worker.result_for(job_id, leases_pb2.SETTLE_KIND_NACK)
    finally:
        worker.close()
    with pytest.raises(JobFailedError) as caught:
        client.result(job_id, timeout=10)
    assert caught.value.job.state is JobState.FAILED
    assert caught.value.job.error is not None
    assert caught.value.job.error.message == "bad input"
    assert "bad input" in str(caught.value)


def test_result_raises_for_cancelled_job(client: Client) -> None:
    job_id = client.submit("t").id
    client.cancel(job_id, reason="changed my mind")
    with pytest.raises(JobCancelledError) as caught:
        client.result(job_id, timeout=10)
    assert caught.value.job.id == job_id


def test_wait_times_out_on_a_pending_job(client: Client) -> None:
    job_id = client.submit("t").id
    with pytest.raises(WaitTimeoutError):
        client.wait(job_id, timeout=0.5)
    assert client.get(job_id).state is JobState.PENDING
