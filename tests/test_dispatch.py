"""When the dispatcher claims jobs: on events that may have made jobs ready, not on every
returned credit, and at least once per poll interval whatever else wakes it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, jobs_pb2, leases_pb2
from prometheus_client import REGISTRY

from tests.support import SchedulerThread, StreamClient, wait_for


def claims(queue: str, result: str) -> float:
    return (
        REGISTRY.get_sample_value("jobwire_lease_claims_total", {"queue": queue, "result": result})
        or 0.0
    )


def submit(scheduler: SchedulerThread, queue: str, **fields: object) -> str:
    reply = scheduler.jobs().Submit(
        jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(queue=queue, type="echo", **fields)])
    )
    return str(reply.results[0].job.id)


def idle_worker(scheduler: SchedulerThread, queue: str, **hello: Any) -> StreamClient:
    """A stream on `queue` whose first claim has found it empty: claims counted from here
    on are the test's."""
    worker = StreamClient(scheduler.target, queues=(queue,), **hello)
    wait_for(lambda: claims(queue, "empty") >= 1, message="the first claim")
    return worker


def credit(worker: StreamClient, n: int = 1) -> None:
    worker.send(leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=n)))


@pytest.fixture
def slow_poll(database_url: str) -> Iterator[SchedulerThread]:
    # A poll tick far away: every claim in these tests comes from an event.
    scheduler = SchedulerThread(database_url, poll_interval=30)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()


def test_an_idle_worker_costs_one_claim_per_job(slow_poll: SchedulerThread) -> None:
    queue = "one-claim-per-job"
    worker = idle_worker(slow_poll, queue, credits=4)
    empty_before = claims(queue, "empty")
    for i in range(10):
        submit(slow_poll, queue)
        job = worker.next_job(index=i)
        worker.ack(job)
        credit(worker)
    worker.close()
    assert claims(queue, "jobs") == 10
    # Neither the submit's own NOTIFY nor the returned credit claimed again: the queue
    # was found empty and nothing since could have made a job ready.
    assert claims(queue, "empty") == empty_before


def test_returned_credit_claims_what_a_full_claim_left_behind(
    slow_poll: SchedulerThread,
) -> None:
    queue = "left-behind"
    worker = StreamClient(slow_poll.target, queues=(queue,), credits=2)
    wait_for(lambda: slow_poll.scheduler.dispatcher.sessions, message="worker connected")
    slow_poll.jobs().Submit(
        jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(queue=queue, type="echo") for _ in range(5)])
    )
    for i in range(5):
        worker.ack(worker.next_job(index=i, timeout=5))
        credit(worker)
    worker.close()


def test_a_scheduled_job_comes_due_while_credit_keeps_waking_the_dispatcher(
    database_url: str,
) -> None:
    scheduler = SchedulerThread(database_url, poll_interval=0.5)
    scheduler.start()
    try:
        busy = StreamClient(scheduler.target, worker_id="busy", queues=("busy",), credits=1)
        later = StreamClient(scheduler.target, worker_id="later", queues=("later",), credits=1)
        wait_for(lambda: len(scheduler.scheduler.dispatcher.sessions) == 2, message="workers")
        run_at = Timestamp()
        run_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
        job_id = submit(scheduler, "later", run_at=run_at)
        # Credit every 20 ms wakes the dispatcher far more often than its poll interval.
        deadline = time.monotonic() + 10
        while not later.of_kind("job") and time.monotonic() < deadline:
            credit(busy)
            time.sleep(0.02)
        busy.close()
        assert later.next_job(timeout=0.1).job.id == job_id
        later.close()
    finally:
        scheduler.stop()


def test_only_a_nack_that_makes_a_job_due_now_wakes_leasing(slow_poll: SchedulerThread) -> None:
    """A failure retried after a backoff waits for the poll tick; one that fails for good
    changes nothing either. A hand-back, or a retry without delay, is leased again at once."""
    queue = "nack-wakes"
    worker = idle_worker(slow_poll, queue, credits=10)
    ids = [submit(slow_poll, queue, max_attempts=5) for _ in range(4)]
    leased = {j.job.id: j for j in (worker.next_job(index=i) for i in range(4))}
    empty_before = claims(queue, "empty")
    minute = Duration(seconds=60)
    assert worker.nack(leased[ids[0]], retryable=True, retry_delay=minute).code == 0
    assert worker.nack(leased[ids[1]], retryable=False).code == 0
    retried, failed = (slow_poll.jobs().Get(jobs_pb2.GetRequest(id=i)).job for i in ids[:2])
    assert (retried.state, failed.state) == (job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_FAILED)
    time.sleep(0.3)  # time for a claim that should not happen
    assert claims(queue, "empty") == empty_before  # neither woke leasing

    assert worker.nack(leased[ids[2]], release=True).code == 0
    assert worker.next_job(index=4, timeout=5).job.id == ids[2]
    zero = Duration(seconds=0)
    assert worker.nack(leased[ids[3]], retryable=True, retry_delay=zero).code == 0
    assert worker.next_job(index=5, timeout=5).job.id == ids[3]
    worker.close()


def test_a_submit_reopens_only_its_own_queue(slow_poll: SchedulerThread) -> None:
    idle = StreamClient(slow_poll.target, worker_id="idle", queues=("quiet",), credits=4)
    busy = StreamClient(slow_poll.target, worker_id="busy", queues=("loud",), credits=4)
    wait_for(
        lambda: claims("quiet", "empty") >= 1 and claims("loud", "empty") >= 1,
        message="the first claims",
    )
    quiet_before = claims("quiet", "empty")
    for i in range(5):
        submit(slow_poll, "loud")
        busy.ack(busy.next_job(index=i))
        credit(busy)
    assert claims("loud", "jobs") == 5
    assert claims("quiet", "empty") == quiet_before  # nothing came to its queue
    submit(slow_poll, "quiet")
    assert idle.next_job().job.spec.queue == "quiet"
    idle.close()
    busy.close()


def test_a_job_for_an_idle_worker_is_leased_in_its_submits_transaction(
    slow_poll: SchedulerThread,
) -> None:
    queue = "handed-over"
    worker = idle_worker(slow_poll, queue, credits=4)
    empty_before = claims(queue, "empty")
    reply = slow_poll.jobs().Submit(
        jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(queue=queue, type="echo")])
    )
    submitted = reply.results[0].job
    job_id = submitted.id
    leased = worker.next_job()
    assert leased.job.id == job_id
    # The reply tells the job as it was committed: already running, under that lease.
    assert (submitted.state, submitted.attempt) == (job_pb2.JOB_STATE_RUNNING, 1)
    assert submitted.lease_deadline == leased.lease_deadline
    with psycopg.connect(slow_poll.database_url) as conn:
        created, leased = conn.execute(
            "SELECT created_at, attempt_started_at FROM jobwire_jobs WHERE id = %s",
            (job_id,),
        ).fetchone() or (None, None)
    # now() is the transaction's start: the same for the insert and the lease only when
    # they share one transaction.
    assert created is not None and created == leased
    assert claims(queue, "jobs") == 1
    # The claim found the queue empty again, so leasing stays asleep there.
    time.sleep(0.3)  # time for a claim that should not happen
    assert claims(queue, "empty") == empty_before
    worker.close()


def test_a_keyed_job_for_an_idle_worker_is_leased_in_its_submits_transaction(
    slow_poll: SchedulerThread,
) -> None:
    queue = "keyed-handed-over"
    worker = idle_worker(slow_poll, queue, credits=4)
    spec = job_pb2.JobSpec(queue=queue, type="echo", idempotency_key="order-1")
    first = slow_poll.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec])).results[0]
    leased = worker.next_job()
    assert first.created and leased.job.id == first.job.id
    assert (first.job.state, first.job.attempt) == (job_pb2.JOB_STATE_RUNNING, 1)
    with psycopg.connect(slow_poll.database_url) as conn:
        created, started = conn.execute(
            "SELECT created_at, attempt_started_at FROM jobwire_jobs WHERE id = %s",
            (first.job.id,),
        ).fetchone() or (None, None)
    assert created is not None and created == started  # one transaction
    assert claims(queue, "jobs") == 1
    # The key again: the same job, running; nothing new, so no claim at all.
    empty_before = claims(queue, "empty")
    again = slow_poll.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec])).results[0]
    assert not again.created and again.job.id == first.job.id
    assert again.job.state == job_pb2.JOB_STATE_RUNNING
    assert (claims(queue, "jobs"), claims(queue, "empty")) == (1, empty_before)
    worker.close()


def test_a_refused_key_gives_its_claims_credit_back_to_a_claim_that_wanted_it(
    slow_poll: SchedulerThread,
) -> None:
    """A keyed submit sets the idle stream's credit aside for its claim. Refused, it
    gives the credit back and wakes leasing: a job that came meanwhile, and found the
    stream without credit, is leased now rather than at the next poll."""
    queue = "keyed-refused"
    worker = idle_worker(slow_poll, queue, credits=1)
    (session,) = slow_poll.scheduler.dispatcher.sessions
    with psycopg.connect(slow_poll.database_url) as blocker:
        # Another transaction holds the key, uncommitted: the submit's insert waits on it.
        blocker.execute(
            "INSERT INTO jobwire_jobs (id, queue, type, payload, payload_type, run_at,"
            " max_attempts, backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,"
            " lease_timeout, idempotency_key, spec_digest)"
            " VALUES (gen_random_uuid(), %s, 'echo', '{}', 'application/json',"
            " now() + interval '1 hour', 3, '1 second', '1 minute', 2, 0, '30 seconds',"
            " 'taken', '\\x00')",
            (queue,),
        )
        keyed = job_pb2.JobSpec(queue=queue, type="echo", idempotency_key="taken")
        refusal: list[grpc.StatusCode] = []

        def submit_keyed() -> None:
            try:
                slow_poll.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[keyed]))
            except grpc.RpcError as exc:
                refusal.append(exc.code())

        thread = threading.Thread(target=submit_keyed)
        thread.start()
        with psycopg.connect(slow_poll.database_url, autocommit=True) as watcher:
            wait_for(
                lambda: (
                    session.credit == 0
                    and watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchone()
                    == (1,)
                ),
                message="the keyed submit waiting on the key, holding the stream's credit",
            )
        meanwhile = submit(slow_poll, queue)  # finds the stream without credit
        blocker.commit()  # the key is taken, by a different job: the submit is refused
        thread.join(10)
    assert refusal == [grpc.StatusCode.ALREADY_EXISTS]
    assert worker.next_job().job.id == meanwhile
    with psycopg.connect(slow_poll.database_url) as conn:
        rows = conn.execute(
            "SELECT state::text, idempotency_key FROM jobwire_jobs ORDER BY idempotency_key"
        ).fetchall()
    assert rows == [("PENDING", "taken"), ("RUNNING", None)]  # nothing of the refused one
    worker.close()


def test_a_full_claim_of_a_keyed_submit_is_followed_by_another(
    slow_poll: SchedulerThread,
) -> None:
    """A keyed batch's claim on a queue where its key was reused leases jobs the
    dispatcher did not know of; came back full, it may have left more, so the stream's
    next credit brings a claim there."""
    queue = "keyed-full-claim"
    reused = job_pb2.JobSpec(queue=queue, type="echo", idempotency_key="reused")
    submit(slow_poll, queue, idempotency_key="reused")  # no stream yet: it waits
    worker = StreamClient(slow_poll.target, queues=(queue,), credits=1)
    worker.ack(worker.next_job())
    credit(worker)
    wait_for(lambda: claims(queue, "empty") >= 1, message="the queue found empty")
    with psycopg.connect(slow_poll.database_url) as conn:
        # As another replica would have submitted them: this one is not woken.
        unknown = [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO jobwire_jobs (id, queue, type, payload, payload_type, run_at,"
                " max_attempts, backoff_initial, backoff_max, backoff_multiplier,"
                " backoff_jitter, lease_timeout)"
                " SELECT gen_random_uuid(), %s, 'echo', '{}', 'application/json',"
                " now() - g * interval '1 second', 3, '1 second', '1 minute', 2, 0,"
                " '30 seconds' FROM generate_series(2, 1, -1) AS g RETURNING id",
                (queue,),
            )
        ]
    batch = [job_pb2.JobSpec(queue="keyed-elsewhere", type="echo", idempotency_key="new"), reused]
    reply = slow_poll.jobs().Submit(jobs_pb2.SubmitRequest(jobs=batch))
    assert [r.created for r in reply.results] == [True, False]
    handed_over = worker.next_job(index=1)
    assert handed_over.job.id == unknown[0]
    worker.ack(handed_over)
    credit(worker)
    assert worker.next_job(index=2).job.id == unknown[1]
    worker.close()


def test_other_replicas_hear_only_of_jobs_a_submit_left_pending(
    slow_poll: SchedulerThread,
) -> None:
    """A submit that handed all its jobs to idle workers notifies no other replica: its
    dispatchers would only find the queue empty. One that left a job pending does."""
    taken, left = "all-handed-over", "one-left-over"
    workers = [idle_worker(slow_poll, queue, credits=1) for queue in (taken, left)]
    with psycopg.connect(slow_poll.database_url, autocommit=True) as listener:
        listener.execute("LISTEN jobwire_submitted")
        submit(slow_poll, taken)
        workers[0].next_job()
        slow_poll.jobs().Submit(
            jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(queue=left, type="echo")] * 2)
        )
        workers[1].next_job()
        # Notifications arrive in the order of their commits: had the first submit sent
        # one, it would come before the second's.
        heard = [n.payload.partition(" ")[2] for n in listener.notifies(timeout=10, stop_after=1)]
    assert heard == [left]
    for worker in workers:
        worker.close()


def test_a_submits_claim_still_leases_the_most_urgent_ready_job_first(
    slow_poll: SchedulerThread,
) -> None:
    queue = "urgent-first"
    worker = idle_worker(slow_poll, queue, credits=1)
    with psycopg.connect(slow_poll.database_url) as conn:
        # As another replica would have submitted it: this one is not woken.
        (urgent,) = conn.execute(
            "INSERT INTO jobwire_jobs (id, queue, type, payload, payload_type, priority,"
            " run_at, max_attempts, backoff_initial, backoff_max, backoff_multiplier,"
            " backoff_jitter, lease_timeout)"
            " VALUES (gen_random_uuid(), %s, 'echo', '{}', 'application/json', 5, now(), 3,"
            " '1 second', '1 minute', 2, 0, '30 seconds') RETURNING id::text",
            (queue,),
        ).fetchone() or (None,)
    submitted = submit(slow_poll, queue)
    assert worker.next_job().job.id == urgent
    worker.ack(worker.next_job())
    credit(worker)
    assert worker.next_job(index=1).job.id == submitted
    worker.close()


def test_a_submit_whose_lease_fails_goes_in_alone_and_gives_the_credit_back(
    scheduler: SchedulerThread,
) -> None:
    queue = "refused"
    worker = idle_worker(scheduler, queue, worker_id="refused", credits=4)
    (session,) = scheduler.scheduler.dispatcher.sessions
    with psycopg.connect(scheduler.database_url, autocommit=True) as conn:
        # A real failure in the middle of the submit's transaction: its lease is refused.
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'attempt refused'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON jobwire_jobs FOR EACH ROW"
            " WHEN (NEW.worker_id = 'refused') EXECUTE FUNCTION refuse()"
        )
        job_id = submit(scheduler, queue)
        # The insert went back with the refused lease, and the job went in again alone:
        # one row, not two, and the producer was not failed for a claim's trouble.
        assert conn.execute("SELECT id::text FROM jobwire_jobs").fetchall() == [(job_id,)]
        # The dispatcher's own claims fail the same way; leasing keeps trying.
        wait_for(lambda: claims(queue, "empty") >= 1 and session.credit == 4, message="credit")
        conn.execute("DROP TRIGGER refuse ON jobwire_jobs")
    assert worker.next_job().job.id == job_id
    worker.close()


def test_jobs_claimed_for_a_stream_that_ended_meanwhile_go_back_at_once(
    scheduler: SchedulerThread,
) -> None:
    """No worker got them: they are handed back, not left to a lease nobody holds, and
    the attempt does not count."""
    queue = "gone"
    worker = idle_worker(scheduler, queue, worker_id="leaving", credits=1)
    with psycopg.connect(scheduler.database_url, autocommit=True) as conn:
        # The claim in the submit's transaction takes long enough for the stream to end.
        conn.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow BEFORE UPDATE ON jobwire_jobs FOR EACH ROW"
            " WHEN (NEW.worker_id = 'leaving') EXECUTE FUNCTION slow()"
        )
        submitting = scheduler.jobs().Submit.future(
            jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(queue=queue, type="echo")])
        )
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                ).fetchone()
                == (1,)
            ),
            message="the claim to be under way",
        )
        worker.close()
        job_id = submitting.result(timeout=10).results[0].job.id
        conn.execute("DROP TRIGGER slow ON jobwire_jobs")
    job = scheduler.jobs().Get(jobs_pb2.GetRequest(id=job_id)).job
    assert job.state == job_pb2.JOB_STATE_PENDING
    assert [a.outcome for a in job.attempts] == [job_pb2.ATTEMPT_OUTCOME_RELEASED]
    # Ready again at once, for the next stream.
    other = StreamClient(scheduler.target, queues=(queue,), credits=1)
    leased = other.next_job()
    assert (leased.job.id, leased.job.attempt) == (job_id, 2)
    other.close()
