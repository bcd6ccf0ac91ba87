"""The whole lifecycle through the generated stubs alone, as a client in another language."""

from __future__ import annotations

import json
import queue
import time
import uuid

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, jobs_pb2, leases_pb2

from tests.support import SchedulerThread, StreamClient


def submit(scheduler: SchedulerThread, **spec: object) -> job_pb2.Job:
    spec.setdefault("type", "echo")
    spec.setdefault(
        "payload", job_pb2.Payload(data=b'{"text": "hi"}', content_type="application/json")
    )
    response = scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(**spec)]))
    return response.results[0].job


def test_submit_lease_extend_ack_get(scheduler: SchedulerThread) -> None:
    job = submit(scheduler, queue="default", lease_timeout=Duration(seconds=5))
    assert job.state == job_pb2.JOB_STATE_PENDING
    assert job.spec.max_attempts == 3 and job.attempt == 0

    worker = StreamClient(scheduler.target)
    try:
        leased = worker.next_job()
        assert leased.job.id == job.id
        assert leased.job.attempt == 1
        assert leased.job.state == job_pb2.JOB_STATE_RUNNING
        assert json.loads(leased.job.spec.payload.data) == {"text": "hi"}

        worker.send(
            leases_pb2.LeaseRequest(
                extend=leases_pb2.ExtendRequest(
                    items=[
                        leases_pb2.ExtendItem(
                            job_id=job.id,
                            lease_token=leased.lease_token,
                            extend_by=Duration(seconds=60),
                        )
                    ]
                )
            )
        )
        extended = worker.result_for(job.id, leases_pb2.SETTLE_KIND_EXTEND)
        assert extended.code == grpc.StatusCode.OK.value[0]
        assert extended.lease_deadline.seconds > leased.lease_deadline.seconds

        settled = worker.ack(leased, b'"HI"')
        assert settled.code == 0, settled.message
    finally:
        worker.close()

    done = scheduler.jobs().Get(jobs_pb2.GetRequest(id=job.id)).job
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert json.loads(done.result.data) == "HI"
    assert done.result.content_type == "application/json"
    assert [a.outcome for a in done.attempts] == [job_pb2.ATTEMPT_OUTCOME_SUCCEEDED]
    assert done.attempts[0].worker_id == "stub-worker"
    assert done.HasField("finished_at") and not done.HasField("lease_deadline")


def test_batched_stream_messages(scheduler: SchedulerThread) -> None:
    """A worker that sets Hello.batches gets jobs and answers packed, and may pack its
    outcomes and credit into one SettleBatch, each outcome answered on its own."""
    ids = [
        r.job.id
        for r in scheduler.jobs()
        .Submit(jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(type="echo") for _ in range(5)]))
        .results
    ]
    requests: queue.Queue[leases_pb2.LeaseRequest | None] = queue.Queue()
    requests.put(
        leases_pb2.LeaseRequest(
            hello=leases_pb2.Hello(
                worker_id="batcher", queues=["default"], types=["echo"], credits=5, batches=True
            )
        )
    )
    responses = scheduler.leases().Lease(iter(requests.get, None), timeout=30)
    leased: list[leases_pb2.LeasedJob] = []
    while len(leased) < 5:
        message = next(responses)
        assert message.WhichOneof("kind") == "jobs"
        leased.extend(message.jobs.jobs)
    assert sorted(j.job.id for j in leased) == sorted(ids)
    *acked, nacked = leased
    stale = str(uuid.uuid4())
    requests.put(
        leases_pb2.LeaseRequest(
            batch=leases_pb2.SettleBatch(
                acks=[
                    *(
                        leases_pb2.AckItem(job_id=j.job.id, lease_token=j.lease_token)
                        for j in acked
                    ),
                    leases_pb2.AckItem(job_id="not-an-id", lease_token=stale),
                    leases_pb2.AckItem(job_id=nacked.job.id, lease_token=stale),
                ],
                nacks=[
                    leases_pb2.NackItem(
                        job_id=nacked.job.id,
                        lease_token=nacked.lease_token,
                        error=job_pb2.JobError(message="no"),
                        retryable=False,
                    )
                ],
                credits=5,
            )
        )
    )
    answered: dict[tuple[int, str, str], int] = {}
    while len(answered) < 7:
        message = next(responses)
        assert message.WhichOneof("kind") == "results"
        for r in message.results.results:
            answered[(r.kind, r.job_id, r.lease_token)] = r.code
    ack, nack = leases_pb2.SETTLE_KIND_ACK, leases_pb2.SETTLE_KIND_NACK
    assert answered == {
        **{(ack, j.job.id, j.lease_token): 0 for j in acked},
        (ack, "not-an-id", stale): grpc.StatusCode.INVALID_ARGUMENT.value[0],
        (ack, nacked.job.id, stale): grpc.StatusCode.INVALID_ARGUMENT.value[0],  # never issued
        (nack, nacked.job.id, nacked.lease_token): 0,
    }
    requests.put(None)
    states = [scheduler.jobs().Get(jobs_pb2.GetRequest(id=j.job.id)).job.state for j in leased]
    assert states == [job_pb2.JOB_STATE_SUCCEEDED] * 4 + [job_pb2.JOB_STATE_FAILED]


def test_submit_ids_only(scheduler: SchedulerThread) -> None:
    stub = scheduler.jobs()
    keyed = job_pb2.JobSpec(type="echo", idempotency_key="same")
    first = stub.Submit(
        jobs_pb2.SubmitRequest(
            jobs=[keyed] * 2 + [job_pb2.JobSpec(type="echo")] * 20, ids_only=True
        )
    )
    results = first.results
    assert len(results) == 22 and all(r.job.id for r in results)
    assert not results[0].job.HasField("spec") and results[0].job.state == 0
    assert [r.created for r in results[:2]] == [True, False]
    assert results[0].job.id == results[1].job.id
    stored = stub.Get(jobs_pb2.GetRequest(id=results[5].job.id)).job
    assert stored.spec.type == "echo" and stored.state == job_pb2.JOB_STATE_PENDING


def test_job_ids_are_time_ordered_uuid7(scheduler: SchedulerThread) -> None:
    """Every path that makes a job (one job, a batch, a big ids-only batch, a retry) gives
    it a version 7 UUID stamped with the millisecond it was submitted in."""
    stub = scheduler.jobs()
    spec = job_pb2.JobSpec(queue="ids", type="echo")
    made: list[str] = []
    before = time.time_ns() // 1_000_000
    made.append(submit(scheduler, queue="ids").id)
    time.sleep(0.002)
    made += [r.job.id for r in stub.Submit(jobs_pb2.SubmitRequest(jobs=[spec] * 3)).results]
    time.sleep(0.002)
    request = jobs_pb2.SubmitRequest(jobs=[spec] * 200, ids_only=True)
    made += [r.job.id for r in stub.Submit(request).results]
    time.sleep(0.002)
    stub.Cancel(jobs_pb2.CancelRequest(id=made[0]))
    made.append(stub.Retry(jobs_pb2.RetryRequest(id=made[0])).job.id)
    after = time.time_ns() // 1_000_000

    ids = [uuid.UUID(i) for i in made]
    assert {(i.version, i.variant) for i in ids} == {(7, uuid.RFC_4122)}
    assert len(set(ids)) == len(ids)
    millis = [i.int >> 80 for i in ids]
    assert before <= millis[0] and millis[-1] <= after
    # Calls apart in time get increasing ids; one call's jobs share its millisecond.
    assert millis[0] < millis[1] == millis[3] < millis[4] == millis[203] < millis[-1]


def test_a_big_ids_only_batch_stores_what_single_submits_store(
    scheduler: SchedulerThread,
) -> None:
    """Big key-less batches of ids go in by another path (COPY); the jobs must not differ."""
    stub = scheduler.jobs()
    later = Timestamp(seconds=int(time.time()) + 3600)
    specs = [
        job_pb2.JobSpec(
            queue="bulk",
            type="echo",
            payload=job_pb2.Payload(data=b'{"n": 1}', content_type="application/json"),
            priority=7,
            max_attempts=5,
            backoff=job_pb2.BackoffPolicy(
                initial=Duration(seconds=2), max=Duration(seconds=90), multiplier=3, jitter=0.5
            ),
            lease_timeout=Duration(seconds=45),
            execution_timeout=Duration(seconds=20),
            labels={"batch": "big"},
        ),
        job_pb2.JobSpec(queue="bulk", type="echo", run_at=later),
    ]
    one = [stub.Submit(jobs_pb2.SubmitRequest(jobs=[s])).results[0].job for s in specs]
    many = stub.Submit(jobs_pb2.SubmitRequest(jobs=specs * 150, ids_only=True)).results
    assert len(many) == 300 and all(r.created for r in many)
    assert len({r.job.id for r in many}) == 300
    for i in (0, 1, 298, 299):
        stored = stub.Get(jobs_pb2.GetRequest(id=many[i].job.id)).job
        expected = one[i % 2]
        if i % 2 == 0:  # no run_at given: each has its own submit time, compared below
            stored.spec.ClearField("run_at")
            expected.spec.ClearField("run_at")
        assert stored.spec == expected.spec
        assert (stored.state, stored.tenant, stored.attempt) == (
            expected.state,
            expected.tenant,
            expected.attempt,
        )
    # A job without run_at is ready as of the batch's own transaction, like a single submit.
    first = stub.Get(jobs_pb2.GetRequest(id=many[0].job.id)).job
    assert first.spec.run_at == first.created_at
    stats = stub.Stats(jobs_pb2.StatsRequest(queue="bulk")).queues[0]
    assert (stats.ready, stats.scheduled) == (151, 151)
