"""Several scheduler replicas on one database, and retention."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import grpc
import psycopg
import pytest
from jobwire.v1 import job_pb2, jobs_pb2, leases_pb2

from tests.support import SchedulerThread, StreamClient, wait_for

OK = grpc.StatusCode.OK.value[0]


def spec(**fields: object) -> job_pb2.JobSpec:
    fields.setdefault("type", "echo")
    return job_pb2.JobSpec(**fields)


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[SchedulerThread, SchedulerThread]]:
    # A long poll interval: only NOTIFY can make a cross-replica submit fast.
    a = SchedulerThread(
        database_url, poll_interval=30, reaper_interval=0.2, stream_grace=timedelta(seconds=1)
    )
    b = SchedulerThread(
        database_url, poll_interval=30, reaper_interval=0.2, stream_grace=timedelta(seconds=1)
    )
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_submit_on_one_replica_reaches_a_worker_on_the_other(
    replicas: tuple[SchedulerThread, SchedulerThread],
) -> None:
    a, b = replicas
    worker = StreamClient(b.target, credits=100)
    wait_for(lambda: b.scheduler.dispatcher.sessions, message="worker connected to b")
    delays = []
    for i in range(20):
        sent = time.monotonic()
        a.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec()]))
        worker.next_job(index=i, timeout=5)
        delays.append(time.monotonic() - sent)
    worker.close()
    # Far below the 30 s poll interval: the NOTIFY woke replica b, in milliseconds.
    assert sorted(delays)[len(delays) // 2] < 0.1, delays
    assert max(delays) < 2.0, delays


def test_no_job_is_leased_twice_across_replicas(
    replicas: tuple[SchedulerThread, SchedulerThread],
) -> None:
    a, b = replicas
    total = 300
    replica_of = (a, b, a, b)
    workers = [
        StreamClient(r.target, worker_id=f"w{n}", credits=50) for n, r in enumerate(replica_of)
    ]
    for start in range(0, total, 100):
        (a if start % 200 else b).jobs().Submit(
            jobs_pb2.SubmitRequest(jobs=[spec() for _ in range(100)])
        )

    acked: set[str] = set()

    def drain() -> bool:
        for w in workers:
            for leased in w.of_kind("job"):
                if leased.job.id not in acked:
                    acked.add(leased.job.id)
                    w.send(
                        leases_pb2.LeaseRequest(
                            ack=leases_pb2.AckItem(
                                job_id=leased.job.id, lease_token=leased.lease_token
                            )
                        )
                    )
                    w.send(leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1)))
        return len(acked) == total

    wait_for(drain, timeout=60, message="all jobs leased")
    leased_ids = Counter(j.job.id for w in workers for j in w.of_kind("job"))
    assert len(leased_ids) == total and set(leased_ids.values()) == {1}
    with psycopg.connect(a.database_url) as conn:
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM jobwire_jobs WHERE state = 'SUCCEEDED'"
                ).fetchone()
                == (total,)
            ),
            message="all acks recorded",
        )
        attempts = conn.execute(
            "SELECT count(*), count(DISTINCT job_id) FROM jobwire_attempts"
        ).fetchone()
    assert attempts == (total, total)
    # Both replicas leased: the work was spread, not served by one.
    served = {id(r) for r, w in zip(replica_of, workers, strict=True) if w.of_kind("job")}
    assert served == {id(a), id(b)}
    for w in workers:
        w.close()


def test_reaper_on_both_replicas_ends_each_expired_lease_once(
    replicas: tuple[SchedulerThread, SchedulerThread],
) -> None:
    a, b = replicas
    ids = [
        r.job.id
        for r in a.jobs()
        .Submit(jobs_pb2.SubmitRequest(jobs=[spec(max_attempts=5) for _ in range(50)]))
        .results
    ]
    worker = StreamClient(b.target, credits=50)
    wait_for(lambda: len(worker.of_kind("job")) == 50, message="50 leases")
    with psycopg.connect(a.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobwire_jobs SET lease_deadline = now() - interval '1 second' "
            "WHERE state = 'RUNNING'"
        )
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM jobwire_attempts WHERE outcome = 'LEASE_EXPIRED'"
                ).fetchone()
                == (50,)
            ),
            message="every lease reaped",
        )
        rows = conn.execute(
            "SELECT job_id, count(*) FROM jobwire_attempt_history GROUP BY job_id"
        ).fetchall()
    # Each job was reaped once (one expired attempt), then leased again at most once.
    assert {str(r[0]) for r in rows} == set(ids)
    assert all(count <= 2 for _, count in rows)
    worker.close()


def test_retention_prunes_finished_jobs_only(database_url: str) -> None:
    running = SchedulerThread(
        database_url,
        retention=timedelta(seconds=1),
        prune_interval=0.2,
        prune_batch=7,
        poll_interval=0.2,
    )
    running.start()
    try:
        jobs = running.jobs()
        done = [
            r.job.id
            for r in jobs.Submit(
                jobs_pb2.SubmitRequest(jobs=[spec(queue="q") for _ in range(20)])
            ).results
        ]
        for job_id in done:
            jobs.Cancel(jobs_pb2.CancelRequest(id=job_id))
        kept = jobs.Submit(jobs_pb2.SubmitRequest(jobs=[spec(queue="waiting")])).results[0].job
        with psycopg.connect(database_url) as conn:
            wait_for(
                lambda: conn.execute("SELECT count(*) FROM jobwire_jobs").fetchone() == (1,),
                timeout=15,
                message="finished jobs pruned in batches",
            )
        assert jobs.Get(jobs_pb2.GetRequest(id=kept.id)).job.state == job_pb2.JOB_STATE_PENDING
        with pytest.raises(grpc.RpcError) as gone:
            jobs.Get(jobs_pb2.GetRequest(id=done[0]))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.stop()


def test_retention_on_both_replicas(database_url: str) -> None:
    replicas = [
        SchedulerThread(
            database_url,
            retention=timedelta(seconds=1),
            prune_interval=0.1,
            prune_batch=5,
            poll_interval=0.2,
        )
        for _ in range(2)
    ]
    for replica in replicas:
        replica.start()
    try:
        jobs = replicas[0].jobs()
        ids = [
            r.job.id
            for r in jobs.Submit(jobs_pb2.SubmitRequest(jobs=[spec() for _ in range(200)])).results
        ]
        for job_id in ids:
            jobs.Cancel(jobs_pb2.CancelRequest(id=job_id))
        with psycopg.connect(database_url) as conn:
            wait_for(
                lambda: conn.execute("SELECT count(*) FROM jobwire_jobs").fetchone() == (0,),
                timeout=30,
                message="both replicas pruning",
            )
        # Both kept serving while they pruned side by side.
        for replica in replicas:
            assert replica.jobs().Stats(jobs_pb2.StatsRequest()).queues == []
    finally:
        for replica in replicas:
            replica.stop()
