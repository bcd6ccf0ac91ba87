"""Soak with accounting: many jobs over two schedulers and four workers, with failures,
timeouts, cancels, and a worker and a scheduler killed along the way. Afterwards an SQL
audit accounts for every job. `make soak` runs the full size (JOBWIRE_SOAK_JOBS=20000)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from jobwire.v1 import job_pb2, jobs_pb2, jobs_pb2_grpc

from tests.processes import SchedulerProcess, WorkerProcess
from tests.support import wait_for

pytestmark = pytest.mark.slow

JOBS = int(os.environ.get("JOBWIRE_SOAK_JOBS", "2000"))
BATCH = 100
RETENTION_SECONDS = 5


def soak_spec(n: int) -> job_pb2.JobSpec:
    payload = {"n": n, "max_sleep": 0.02, "fail_rate": 0.1, "final_rate": 0.01, "hang_rate": 0.005}
    return job_pb2.JobSpec(
        type="soak",
        payload=job_pb2.Payload(data=json.dumps(payload).encode(), content_type="application/json"),
        idempotency_key=f"soak-{n}",
        max_attempts=4,
        priority=random.randint(-3, 3),
        backoff=job_pb2.BackoffPolicy(
            initial=Duration(nanos=50_000_000), max=Duration(nanos=500_000_000)
        ),
        execution_timeout=Duration(nanos=500_000_000),
        lease_timeout=Duration(seconds=5),
    )


def submit_all(targets: list[str], accepted: dict[int, str], wrong: list[str]) -> None:
    stubs = [jobs_pb2_grpc.JobsStub(grpc.insecure_channel(t)) for t in targets]
    for first in range(0, JOBS, BATCH):
        specs = [soak_spec(n) for n in range(first, min(first + BATCH, JOBS))]
        deadline = time.monotonic() + 120
        while True:
            stub = random.choice(stubs)
            try:
                results = stub.Submit(jobs_pb2.SubmitRequest(jobs=specs), timeout=10).results
                for spec, result in zip(specs, results, strict=True):
                    accepted[int(spec.idempotency_key.split("-")[1])] = result.job.id
                break
            except grpc.RpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    wrong.append(f"{exc.code()}: {exc.details()}")
                    return
                if time.monotonic() > deadline:
                    wrong.append("submits unavailable for two minutes")
                    return
                time.sleep(0.1)


@pytest.mark.timeout(1800)
def test_soak_with_accounting(database_url: str, tmp_path: Path) -> None:
    extra = ["--retention", f"{RETENTION_SECONDS}s", "--prune-interval", "0.5"]
    schedulers = [
        SchedulerProcess(database_url, tmp_path / f"scheduler{i}.log", extra=extra)
        for i in range(2)
    ]
    workers = [
        WorkerProcess(
            schedulers[i % 2].target,
            tmp_path / f"worker{i}.log",
            worker_id=f"soak-{i}",
            concurrency=16,
            imports=("tests.soak_handlers",),
        )
        for i in range(4)
    ]
    accepted: dict[int, str] = {}
    wrong: list[str] = []
    producer = threading.Thread(
        target=submit_all, args=([s.target for s in schedulers], accepted, wrong), daemon=True
    )
    producer.start()
    cancels = 0
    canceller = jobs_pb2_grpc.JobsStub(grpc.insecure_channel(schedulers[0].target))
    peak_rows = 0
    peak_overdue = 0
    started = time.monotonic()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:

            def finished() -> int:
                row = conn.execute(
                    "SELECT count(*) FROM jobwire_jobs WHERE finished_at IS NOT NULL"
                ).fetchone()
                assert row is not None
                return int(row[0])

            def overdue() -> int:
                """Finished jobs that retention should have pruned by now."""
                row = conn.execute(
                    "SELECT count(*) FROM jobwire_jobs WHERE finished_at < now() - %s::interval",
                    (f"{RETENTION_SECONDS + 3} seconds",),
                ).fetchone()
                assert row is not None
                return int(row[0])

            def rows() -> int:
                row = conn.execute("SELECT count(*) FROM jobwire_jobs").fetchone()
                assert row is not None
                return int(row[0])

            killed_worker = killed_scheduler = False
            while producer.is_alive() or len(accepted) < JOBS:
                assert not wrong, wrong
                peak_rows = max(peak_rows, rows())
                peak_overdue = max(peak_overdue, overdue())
                for _ in range(3 if accepted else 0):
                    # A producer cancels a random job, whatever state it is in.
                    try:
                        canceller.Cancel(
                            jobs_pb2.CancelRequest(
                                id=random.choice(list(accepted.values())), reason="soak"
                            ),
                            timeout=5,
                        )
                        cancels += 1
                    except grpc.RpcError as exc:
                        assert exc.code() in (
                            grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.NOT_FOUND,
                        ), exc
                if not killed_worker and len(accepted) > JOBS * 0.3:
                    workers[0].kill()
                    workers[0].start()
                    killed_worker = True
                if not killed_scheduler and len(accepted) > JOBS * 0.6:
                    schedulers[1].kill()
                    time.sleep(0.5)
                    schedulers[1].restart()
                    killed_scheduler = True
                time.sleep(0.1)
                if time.monotonic() - started > 600:
                    pytest.fail(f"soak did not finish submitting: {len(accepted)} of {JOBS}")
            assert not wrong, wrong
            assert killed_worker and killed_scheduler
            ids = sorted(accepted.values())
            assert len(ids) == JOBS and len(set(ids)) == JOBS, "a resubmit created a new job"

            # Every job reaches a terminal state (and some are already pruned).
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM jobwire_jobs WHERE finished_at IS NULL"
                    ).fetchone()
                    == (0,)
                    and len(ids) - rows() + finished() >= len(ids)
                ),
                timeout=300,
                interval=0.5,
                message="every job terminal",
            )
            elapsed = time.monotonic() - started
            audit(conn, ids)
            peak_rows = max(peak_rows, rows())
    finally:
        for w in workers:
            w.stop()
        for s in schedulers:
            s.stop()
    print(
        f"soak: {JOBS} jobs in {elapsed:.1f}s ({JOBS / elapsed:.0f}/s), {cancels} cancels, "
        f"peak {peak_rows} rows, peak {peak_overdue} rows past retention"
    )
    # The table stays bounded: finished jobs never linger much past the retention (a
    # sweep every 0.5 s deletes up to 500 a batch, in as many batches as needed).
    assert peak_overdue <= 500, peak_overdue


def audit(conn: psycopg.Connection[tuple[object, ...]], ids: list[str]) -> None:
    def one(sql: str) -> object:
        row = conn.execute(sql, (ids,)).fetchone()
        assert row is not None
        return row[0]

    # Present jobs are terminal; absent ones were pruned, which only ever deletes finished
    # jobs (the schema ties finished_at to terminal states).
    assert (
        one(
            "SELECT count(*) FROM jobwire_jobs WHERE id = ANY(%s) "
            "AND state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED')"
        )
        == 0
    )
    assert (
        one("SELECT count(*) FROM jobwire_jobs WHERE lease_token IS NOT NULL AND id = ANY(%s)") == 0
    ), "a lease is still held"
    assert (
        one(
            "SELECT count(*) FROM jobwire_attempt_history"
            " WHERE outcome = 'RUNNING' AND job_id = ANY(%s)"
        )
        == 0
    ), "an attempt still runs"
    assert (
        one("""SELECT count(*) FROM (SELECT job_id FROM jobwire_attempt_history
                  WHERE outcome = 'SUCCEEDED' AND job_id = ANY(%s)
                  GROUP BY job_id HAVING count(*) > 1) twice""")
        == 0
    ), "succeeded twice"
    # Every attempt's row belongs to a job (no foreign key says so: migration 0006), also
    # after retention pruned jobs.
    orphans = conn.execute(
        "SELECT count(*) FROM jobwire_attempts a"
        " WHERE NOT EXISTS (SELECT 1 FROM jobwire_jobs j WHERE j.id = a.job_id)"
    ).fetchone()
    assert orphans == (0,), "an attempt outlived its job"
    # Attempt numbers are 1..attempt without gaps, and match the job's counter.
    assert (
        one("""SELECT count(*) FROM jobwire_jobs j
                  LEFT JOIN LATERAL (SELECT count(*) AS n, coalesce(max(number), 0) AS top
                                     FROM jobwire_attempt_history a WHERE a.job_id = j.id) h ON true
                  WHERE j.id = ANY(%s) AND (j.attempt <> h.n OR j.attempt <> h.top)
               """)
        == 0
    ), "attempt history inconsistent"
    # A SUCCEEDED job's last attempt succeeded; no other job has a successful attempt.
    assert (
        one("""SELECT count(*) FROM jobwire_jobs j WHERE id = ANY(%s) AND
                  (j.state = 'SUCCEEDED') IS DISTINCT FROM EXISTS (
                     SELECT 1 FROM jobwire_attempt_history a WHERE a.job_id = j.id
                     AND a.number = j.attempt AND a.outcome = 'SUCCEEDED')""")
        == 0
    )
    # Attempts that count never exceed max_attempts.
    assert (
        one(
            "SELECT count(*) FROM jobwire_jobs WHERE id = ANY(%s) "
            "AND attempt - released > max_attempts"
        )
        == 0
    )
