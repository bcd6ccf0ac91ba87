"""Bad input is answered with INVALID_ARGUMENT and a readable message, and writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, jobs_pb2, leases_pb2

from tests.support import SchedulerThread, StreamClient

PAYLOAD_LIMIT = 1024 * 1024


def spec(**fields: Any) -> job_pb2.JobSpec:
    fields.setdefault("type", "echo")
    return job_pb2.JobSpec(**fields)


BAD_SPECS: dict[str, tuple[job_pb2.JobSpec, str]] = {
    "empty type": (job_pb2.JobSpec(type=""), "type"),
    "overlong type": (spec(type="t" * 129), "type"),
    "type with spaces": (spec(type="rm -rf"), "type"),
    "overlong queue": (spec(queue="q" * 129), "queue"),
    "queue with slash": (spec(queue="a/b"), "queue"),
    "payload over the limit": (
        spec(payload=job_pb2.Payload(data=b"x" * (PAYLOAD_LIMIT + 1))),
        "limit is 1048576 bytes",
    ),
    "negative priority": (spec(priority=-1001), "priority"),
    "absurd priority": (spec(priority=2**31 - 1), "priority"),
    "negative max_attempts": (spec(max_attempts=-1), "max_attempts"),
    "absurd max_attempts": (spec(max_attempts=10_000), "max_attempts"),
    "negative lease timeout": (spec(lease_timeout=Duration(seconds=-5)), "lease_timeout"),
    "absurd lease timeout": (spec(lease_timeout=Duration(seconds=10**9)), "lease_timeout"),
    "zero lease timeout": (spec(lease_timeout=Duration()), "lease_timeout"),
    "negative execution timeout": (
        spec(execution_timeout=Duration(seconds=-1)),
        "execution_timeout",
    ),
    "absurd execution timeout": (
        spec(execution_timeout=Duration(seconds=400 * 86400)),
        "execution_timeout",
    ),
    "malformed duration": (spec(lease_timeout=Duration(seconds=5, nanos=-1)), "lease_timeout"),
    "run_at far ahead": (spec(run_at=Timestamp(seconds=253402300000)), "run_at"),
    "backoff multiplier": (spec(backoff=job_pb2.BackoffPolicy(multiplier=50)), "multiplier"),
    "backoff jitter": (spec(backoff=job_pb2.BackoffPolicy(jitter=-0.5)), "jitter"),
    "overlong idempotency key": (spec(idempotency_key="k" * 257), "idempotency_key"),
    "too many labels": (spec(labels={str(i): "v" for i in range(33)}), "labels"),
}


def count_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM jobwire_jobs) + (SELECT count(*) FROM jobwire_attempts)"
        ).fetchone()
    assert row is not None
    return int(row[0])


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_job_spec_is_refused_and_writes_nothing(scheduler: SchedulerThread, case: str) -> None:
    bad, mentions = BAD_SPECS[case]
    stub = scheduler.jobs()
    # The bad spec comes second: the good one before it must not be written either.
    error = refused(lambda: stub.Submit(jobs_pb2.SubmitRequest(jobs=[spec(), bad])))
    assert "jobs[1]" in error.details() and mentions in error.details()
    assert count_rows(scheduler.database_url) == 0


def test_empty_and_oversized_batches(scheduler: SchedulerThread) -> None:
    stub = scheduler.jobs()
    refused(lambda: stub.Submit(jobs_pb2.SubmitRequest()))
    refused(lambda: stub.Submit(jobs_pb2.SubmitRequest(jobs=[spec()] * 1001)))
    assert count_rows(scheduler.database_url) == 0


@pytest.mark.parametrize("bad_id", ["", "42", "not-a-uuid", "'; DROP TABLE jobwire_jobs; --"])
def test_malformed_job_ids(scheduler: SchedulerThread, bad_id: str) -> None:
    stub = scheduler.jobs()
    for call in (
        lambda: stub.Get(jobs_pb2.GetRequest(id=bad_id)),
        lambda: stub.Cancel(jobs_pb2.CancelRequest(id=bad_id)),
        lambda: stub.Retry(jobs_pb2.RetryRequest(id=bad_id)),
        lambda: list(stub.Watch(jobs_pb2.WatchRequest(id=bad_id))),
    ):
        assert "id" in refused(call).details()


def test_unknown_job_is_not_found(scheduler: SchedulerThread) -> None:
    with pytest.raises(grpc.RpcError) as info:
        scheduler.jobs().Get(jobs_pb2.GetRequest(id="00000000-0000-4000-8000-000000000000"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_forged_and_foreign_page_tokens(scheduler: SchedulerThread) -> None:
    stub = scheduler.jobs()
    stub.Submit(jobs_pb2.SubmitRequest(jobs=[spec() for _ in range(3)]))
    page = stub.List(jobs_pb2.ListRequest(page_size=2))
    assert len(page.jobs) == 2 and page.next_page_token
    rest = stub.List(jobs_pb2.ListRequest(page_size=2, page_token=page.next_page_token))
    assert len(rest.jobs) == 1 and not rest.next_page_token

    token = page.next_page_token
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (forged, "garbage", "eyJ0IjogMX0", token + "x"):
        assert (
            "page_token"
            in refused(
                lambda bad=bad: stub.List(jobs_pb2.ListRequest(page_size=2, page_token=bad))
            ).details()
        )
    # A token is bound to the filters it was made for.
    refused(lambda: stub.List(jobs_pb2.ListRequest(page_size=2, page_token=token, queue="other")))
    refused(lambda: stub.List(jobs_pb2.ListRequest(page_size=501)))
    refused(lambda: stub.List(jobs_pb2.ListRequest(page_size=-1)))


def test_unknown_and_malformed_lease_tokens(scheduler: SchedulerThread) -> None:
    job = scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec()])).results[0].job
    worker = StreamClient(scheduler.target)
    leased = worker.next_job()
    before = scheduler.jobs().Get(jobs_pb2.GetRequest(id=job.id)).job
    stub = scheduler.leases()
    unknown = "00000000-0000-4000-8000-000000000000"
    details = refused(
        lambda: stub.Ack(
            leases_pb2.AckRequest(items=[leases_pb2.AckItem(job_id=job.id, lease_token=unknown)])
        )
    ).details()
    assert "never issued" in details
    refused(
        lambda: stub.Nack(
            leases_pb2.NackRequest(
                items=[
                    leases_pb2.NackItem(
                        job_id=job.id, lease_token=unknown, error=job_pb2.JobError(message="x")
                    )
                ]
            )
        )
    )
    refused(
        lambda: stub.Extend(
            leases_pb2.ExtendRequest(
                items=[leases_pb2.ExtendItem(job_id=job.id, lease_token=unknown)]
            )
        )
    )
    refused(
        lambda: stub.Ack(
            leases_pb2.AckRequest(
                items=[leases_pb2.AckItem(job_id=job.id, lease_token="not-a-token")]
            )
        )
    )
    refused(lambda: stub.Ack(leases_pb2.AckRequest()))
    # A nack needs an error unless it hands the job back.
    refused(
        lambda: stub.Nack(
            leases_pb2.NackRequest(
                items=[leases_pb2.NackItem(job_id=job.id, lease_token=leased.lease_token)]
            )
        )
    )
    # A batch naming one job twice is refused whole.
    refused(
        lambda: stub.Ack(
            leases_pb2.AckRequest(
                items=[
                    leases_pb2.AckItem(job_id=job.id, lease_token=leased.lease_token),
                    leases_pb2.AckItem(job_id=job.id, lease_token=unknown),
                ]
            )
        )
    )
    other = scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec()])).results[0].job
    # An atomic batch with one unknown token leaves the good item unapplied too.
    refused(
        lambda: stub.Ack(
            leases_pb2.AckRequest(
                items=[
                    leases_pb2.AckItem(job_id=job.id, lease_token=leased.lease_token),
                    leases_pb2.AckItem(job_id=other.id, lease_token=unknown),
                ]
            )
        )
    )
    after = scheduler.jobs().Get(jobs_pb2.GetRequest(id=job.id)).job
    assert after.state == job_pb2.JOB_STATE_RUNNING
    assert after.updated_at == before.updated_at
    # On the stream, the same refusal comes back as the item's result.
    worker.send(leases_pb2.LeaseRequest(ack=leases_pb2.AckItem(job_id=job.id, lease_token=unknown)))
    result = worker.result_for(job.id, leases_pb2.SETTLE_KIND_ACK)
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    worker.close()


def test_stream_must_start_with_a_valid_hello(scheduler: SchedulerThread) -> None:
    stub = scheduler.leases()
    no_hello = stub.Lease(iter([leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1))]))
    with pytest.raises(grpc.RpcError) as info:
        list(no_hello)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_hello = stub.Lease(
        iter(
            [
                leases_pb2.LeaseRequest(
                    hello=leases_pb2.Hello(worker_id="w", queues=["default"], types=[], credits=1)
                )
            ]
        )
    )
    with pytest.raises(grpc.RpcError) as info:
        list(bad_hello)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "types" in info.value.details()
