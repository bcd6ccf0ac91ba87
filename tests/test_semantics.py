"""Scheduler semantics through the generated stubs: fencing, idempotency, retries,
cancellation, ordering, Watch, and a stream cut mid-job."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, jobs_pb2, leases_pb2

from tests.support import SchedulerThread, StreamClient, wait_for

OK = grpc.StatusCode.OK.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


def spec(**fields: object) -> job_pb2.JobSpec:
    fields.setdefault("type", "echo")
    fields.setdefault("payload", job_pb2.Payload(data=b"{}", content_type="application/json"))
    return job_pb2.JobSpec(**fields)


def submit(scheduler: SchedulerThread, **fields: object) -> job_pb2.Job:
    return scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec(**fields)])).results[0].job


def get(scheduler: SchedulerThread, job_id: str) -> job_pb2.Job:
    return scheduler.jobs().Get(jobs_pb2.GetRequest(id=job_id)).job


def wait_state(
    scheduler: SchedulerThread, job_id: str, state: int, timeout: float = 10
) -> job_pb2.Job:
    return wait_for(
        lambda: (j := get(scheduler, job_id)).state == state and j,
        timeout=timeout,
        message=f"job {job_id} in state {state}",
    )


def test_fencing_refuses_the_first_holder_after_its_lease_expired(
    scheduler: SchedulerThread,
) -> None:
    job = submit(scheduler, lease_timeout=Duration(seconds=1))
    first = StreamClient(scheduler.target, worker_id="first")
    leased = first.next_job()
    # The first worker never extends: the reaper ends its lease and the job is leased again.
    second = StreamClient(scheduler.target, worker_id="second")
    again = second.next_job(timeout=15)
    assert again.job.id == job.id and again.job.attempt == 2
    assert again.lease_token != leased.lease_token

    late = first.ack(leased, b'"late"')
    assert late.code == FAILED_PRECONDITION, late.message
    assert "no longer current" in late.message
    state = get(scheduler, job.id)
    assert state.state == job_pb2.JOB_STATE_RUNNING and not state.HasField("result")

    # The unary Ack refuses the same way, with the status itself.
    with pytest.raises(grpc.RpcError) as refused:
        scheduler.leases().Ack(
            leases_pb2.AckRequest(
                items=[leases_pb2.AckItem(job_id=job.id, lease_token=leased.lease_token)]
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert second.ack(again, b'"second"').code == OK
    done = get(scheduler, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED and json.loads(done.result.data) == "second"
    assert [a.outcome for a in done.attempts] == [
        job_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED,
        job_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    ]
    assert done.attempts[0].error.kind == "lease_expired"
    # Acknowledging again with the current token is a harmless repeat.
    assert second.ack(again, b'"second"').code == OK
    first.close()
    second.close()


def test_idempotent_submit(scheduler: SchedulerThread) -> None:
    first = scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec(idempotency_key="k1")]))
    again = scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec(idempotency_key="k1")]))
    assert first.results[0].created and not again.results[0].created
    assert first.results[0].job.id == again.results[0].job.id

    with pytest.raises(grpc.RpcError) as conflict:
        scheduler.jobs().Submit(
            jobs_pb2.SubmitRequest(jobs=[spec(idempotency_key="k1", priority=5)])
        )
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "k1" in conflict.value.details()
    # The same key in another queue is another job.
    other = scheduler.jobs().Submit(
        jobs_pb2.SubmitRequest(jobs=[spec(idempotency_key="k1", queue="other")])
    )
    assert other.results[0].created
    # A batch with a conflicting item writes nothing at all.
    with pytest.raises(grpc.RpcError):
        scheduler.jobs().Submit(
            jobs_pb2.SubmitRequest(
                jobs=[spec(idempotency_key="fresh"), spec(idempotency_key="k1", priority=9)]
            )
        )
    listed = scheduler.jobs().List(jobs_pb2.ListRequest()).jobs
    assert len(listed) == 2


def test_retries_back_off_then_fail(scheduler: SchedulerThread) -> None:
    job = submit(
        scheduler,
        max_attempts=3,
        backoff=job_pb2.BackoffPolicy(
            initial=Duration(nanos=300_000_000), multiplier=2.0, jitter=0.0
        ),
    )
    worker = StreamClient(scheduler.target, credits=1)
    nacked_at = []
    for attempt in (1, 2, 3):
        leased = worker.next_job(index=attempt - 1, timeout=15)
        if nacked_at:
            # run_at moved out by the backoff: 0.3 s, then 0.6 s.
            assert time.monotonic() - nacked_at[-1] >= 0.3 * 2 ** (attempt - 2) - 0.05
        assert leased.job.attempt == attempt
        assert worker.nack(leased, retryable=True).code == OK
        nacked_at.append(time.monotonic())
        worker.send(leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1)))
    failed = wait_state(scheduler, job.id, job_pb2.JOB_STATE_FAILED)
    assert failed.error.message == "boom" and failed.error.kind == "RuntimeError"
    assert [a.outcome for a in failed.attempts] == [job_pb2.ATTEMPT_OUTCOME_FAILED] * 3
    worker.close()


def test_non_retryable_nack_fails_at_once(scheduler: SchedulerThread) -> None:
    job = submit(scheduler, max_attempts=5)
    worker = StreamClient(scheduler.target)
    leased = worker.next_job()
    assert (
        worker.nack(
            leased,
            retryable=False,
            error=job_pb2.JobError(message="bad input", kind="ValueError"),
        ).code
        == OK
    )
    failed = get(scheduler, job.id)
    assert failed.state == job_pb2.JOB_STATE_FAILED and failed.attempt == 1
    assert failed.error.message == "bad input"
    # A resend of the same nack (lost reply) is answered OK and changes nothing.
    assert worker.nack(leased, retryable=False).code == OK
    worker.close()


def test_retry_of_a_failed_job_is_a_new_job(scheduler: SchedulerThread) -> None:
    job = submit(scheduler, max_attempts=1)
    worker = StreamClient(scheduler.target)
    assert worker.nack(worker.next_job(), retryable=True).code == OK
    wait_state(scheduler, job.id, job_pb2.JOB_STATE_FAILED)

    retried = scheduler.jobs().Retry(jobs_pb2.RetryRequest(id=job.id)).job
    assert retried.id != job.id and retried.retried_from == job.id
    assert retried.state == job_pb2.JOB_STATE_PENDING and retried.attempt == 0
    assert retried.spec.payload.data == job.spec.payload.data

    with pytest.raises(grpc.RpcError) as twice:
        scheduler.jobs().Retry(jobs_pb2.RetryRequest(id=job.id))
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as pending:
        scheduler.jobs().Retry(jobs_pb2.RetryRequest(id=retried.id))
    assert pending.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    worker.send(leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1)))
    assert worker.ack(worker.next_job(index=1)).code == OK
    assert get(scheduler, retried.id).state == job_pb2.JOB_STATE_SUCCEEDED
    worker.close()


def test_cancel_pending_and_running(scheduler: SchedulerThread) -> None:
    pending = submit(scheduler, queue="idle")
    cancelled = (
        scheduler.jobs()
        .Cancel(jobs_pb2.CancelRequest(id=pending.id, reason="no longer needed"))
        .job
    )
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert "no longer needed" in cancelled.error.message
    # Cancelling again is OK; a cancelled job is never leased.
    scheduler.jobs().Cancel(jobs_pb2.CancelRequest(id=pending.id))

    running = submit(scheduler)
    worker = StreamClient(scheduler.target, queues=("idle", "default"), credits=5)
    leased = worker.next_job()
    assert leased.job.id == running.id
    flagged = scheduler.jobs().Cancel(jobs_pb2.CancelRequest(id=running.id, reason="stop")).job
    assert flagged.state == job_pb2.JOB_STATE_RUNNING and flagged.cancel_requested
    notice = wait_for(lambda: worker.of_kind("cancel"), message="a cancel notice")[0]
    assert notice.job_id == running.id and notice.lease_token == leased.lease_token
    assert notice.reason == "stop"
    assert (
        worker.nack(
            leased,
            retryable=False,
            error=job_pb2.JobError(message="stopped", kind="cancelled"),
        ).code
        == OK
    )
    done = get(scheduler, running.id)
    assert done.state == job_pb2.JOB_STATE_CANCELLED
    assert done.attempts[0].outcome == job_pb2.ATTEMPT_OUTCOME_CANCELLED
    assert len(worker.of_kind("job")) == 1  # the cancelled pending job never came

    finished = submit(scheduler)
    worker.send(leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1)))
    assert worker.ack(worker.next_job(index=1)).code == OK
    with pytest.raises(grpc.RpcError) as late:
        scheduler.jobs().Cancel(jobs_pb2.CancelRequest(id=finished.id))
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    worker.close()


def test_priority_then_age(scheduler: SchedulerThread) -> None:
    low = submit(scheduler, priority=-5)
    normal_old = submit(scheduler)
    normal_new = submit(scheduler)
    high = submit(scheduler, priority=10)
    worker = StreamClient(scheduler.target, credits=4)
    wait_for(lambda: len(worker.of_kind("job")) == 4, message="four jobs")
    order = [j.job.id for j in worker.of_kind("job")]
    assert order == [high.id, normal_old.id, normal_new.id, low.id]
    worker.close()


def test_run_at_is_respected(scheduler: SchedulerThread) -> None:
    later = Timestamp()
    start_after = datetime.now(UTC) + timedelta(seconds=1.5)
    later.FromDatetime(start_after)
    job = submit(scheduler, run_at=later)
    worker = StreamClient(scheduler.target)
    leased = worker.next_job(timeout=10)
    assert leased.job.id == job.id
    assert datetime.now(UTC) >= start_after
    assert leased.job.started_at.ToDatetime(tzinfo=UTC) >= start_after
    worker.close()


def test_watch_delivers_every_state_change(scheduler: SchedulerThread) -> None:
    job = submit(
        scheduler,
        max_attempts=2,
        backoff=job_pb2.BackoffPolicy(initial=Duration(nanos=100_000_000), jitter=0.0),
    )
    events: list[jobs_pb2.WatchEvent] = []

    def follow() -> None:
        events.extend(scheduler.jobs().Watch(jobs_pb2.WatchRequest(id=job.id), timeout=30))

    watcher = threading.Thread(target=follow)
    watcher.start()
    worker = StreamClient(scheduler.target)
    assert worker.nack(worker.next_job(), retryable=True).code == OK
    worker.send(leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1)))
    assert worker.ack(worker.next_job(index=1)).code == OK
    watcher.join(30)
    assert not watcher.is_alive()
    assert [(e.sequence, e.state, e.attempt) for e in events] == [
        (1, job_pb2.JOB_STATE_PENDING, 0),
        (2, job_pb2.JOB_STATE_RUNNING, 1),
        (3, job_pb2.JOB_STATE_PENDING, 1),
        (4, job_pb2.JOB_STATE_RUNNING, 2),
        (5, job_pb2.JOB_STATE_SUCCEEDED, 2),
    ]
    assert events[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED
    worker.close()


def test_stream_cut_mid_job_is_leased_again_within_grace(scheduler: SchedulerThread) -> None:
    # A long lease: only the stream-loss grace (1 s here) can bring the job back quickly.
    job = submit(scheduler, lease_timeout=Duration(seconds=300))
    crashed = StreamClient(scheduler.target, worker_id="crashed")
    leased = crashed.next_job()
    cut_at = time.monotonic()
    crashed.cut()

    survivor = StreamClient(scheduler.target, worker_id="survivor")
    again = survivor.next_job(timeout=10)
    assert again.job.id == job.id and again.job.attempt == 2
    assert time.monotonic() - cut_at < 5, "re-leased after the grace, not the lease timeout"
    assert survivor.ack(again).code == OK

    # The crashed worker's outcome, had it come back, is refused.
    with pytest.raises(grpc.RpcError) as refused:
        scheduler.leases().Ack(
            leases_pb2.AckRequest(
                items=[leases_pb2.AckItem(job_id=job.id, lease_token=leased.lease_token)]
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = get(scheduler, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    outcomes = [a.outcome for a in done.attempts]
    assert outcomes == [job_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED, job_pb2.ATTEMPT_OUTCOME_SUCCEEDED]
    assert outcomes.count(job_pb2.ATTEMPT_OUTCOME_SUCCEEDED) == 1
    survivor.close()


def test_reconnecting_worker_keeps_its_lease_by_extending(scheduler: SchedulerThread) -> None:
    job = submit(scheduler, lease_timeout=Duration(seconds=300))
    first = StreamClient(scheduler.target, worker_id="flaky")
    leased = first.next_job()
    first.cut()
    back = StreamClient(scheduler.target, worker_id="flaky", credits=0)
    back.send(
        leases_pb2.LeaseRequest(
            extend=leases_pb2.ExtendRequest(
                items=[leases_pb2.ExtendItem(job_id=job.id, lease_token=leased.lease_token)]
            )
        )
    )
    assert back.result_for(job.id, leases_pb2.SETTLE_KIND_EXTEND).code == OK
    assert back.ack(leased).code == OK
    assert get(scheduler, job.id).attempt == 1
    back.close()


def test_streams_cut_together_are_pulled_in_together(
    scheduler: SchedulerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers cut off at once (a network blip) each have their leases shortened to the
    grace, in one statement for all the cuts that came while one was being written: the
    statement passes over every running job. A worker still connected keeps its lease."""
    store, dispatcher = scheduler.scheduler.store, scheduler.scheduler.dispatcher
    real = store.pull_in_leases
    calls: list[list[str]] = []

    async def hold_first(**kwargs: Any) -> int:
        calls.append(sorted(kwargs["workers"]))
        # The first pull-in waits until every cut stream has ended, so that the others'
        # pull-ins are queued behind it (a stream's session goes as its pull-in is queued).
        for _ in range(1000):
            cut = [s for s in dispatcher.sessions if s.worker_id.startswith("blip-")]
            if len(calls) > 1 or not cut:
                break
            await asyncio.sleep(0.01)
        return await real(**kwargs)

    monkeypatch.setattr(store, "pull_in_leases", hold_first)
    workers = [f"blip-{i}" for i in range(4)] + ["steady"]
    streams, jobs = {}, {}
    for worker in workers:
        job = submit(scheduler, lease_timeout=Duration(seconds=300))
        streams[worker] = StreamClient(scheduler.target, worker_id=worker)
        jobs[worker] = streams[worker].next_job().job.id
        assert jobs[worker] == job.id
    for worker in workers[:4]:
        streams[worker].cut()
    wait_for(lambda: sum(map(len, calls)) == 4, message="the cut streams pulled in")
    assert len(calls) == 2 and sorted(calls[0] + calls[1]) == workers[:4], calls
    soon = datetime.now(UTC) + timedelta(seconds=5)
    for worker in workers:
        deadline = get(scheduler, jobs[worker]).lease_deadline.ToDatetime(tzinfo=UTC)
        assert (deadline < soon) == (worker != "steady"), (worker, deadline)
    streams["steady"].close()


def test_a_refused_stale_ack_leaves_the_current_holder_reachable(
    scheduler: SchedulerThread,
) -> None:
    job = submit(scheduler, lease_timeout=Duration(seconds=1))
    stale = StreamClient(scheduler.target, worker_id="stale")
    old = stale.next_job()
    wait_state(scheduler, job.id, job_pb2.JOB_STATE_PENDING)  # reaped, ready again
    current = StreamClient(scheduler.target, worker_id="current")
    new = current.next_job()
    current.send(
        leases_pb2.LeaseRequest(
            extend=leases_pb2.ExtendRequest(
                items=[
                    leases_pb2.ExtendItem(
                        job_id=job.id, lease_token=new.lease_token, extend_by=Duration(seconds=60)
                    )
                ]
            )
        )
    )
    assert current.result_for(job.id, leases_pb2.SETTLE_KIND_EXTEND).code == OK
    assert stale.ack(old).code == FAILED_PRECONDITION
    scheduler.jobs().Cancel(jobs_pb2.CancelRequest(id=job.id, reason="stop"))
    notice = wait_for(lambda: current.of_kind("cancel"), timeout=3, message="cancel notice")[0]
    assert notice.lease_token == new.lease_token
    stale.close()
    current.close()
