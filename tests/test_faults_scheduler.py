"""Faults on the scheduler's side, with real processes: the scheduler killed mid-stream and
PostgreSQL restarted under load. Afterwards every accepted job is accounted for."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobwire.scheduler import migrate
from jobwire.v1 import job_pb2, jobs_pb2, jobs_pb2_grpc
from psycopg.conninfo import make_conninfo

from tests.processes import RestartablePostgres, SchedulerProcess, WorkerProcess
from tests.support import SchedulerThread, wait_for

pytestmark = pytest.mark.slow


class Producer(threading.Thread):
    """Submits jobs with idempotency keys, retrying UNAVAILABLE as a careful client does.

    Anything but OK or UNAVAILABLE is a wrong answer and is kept for the test to fail on.
    """

    def __init__(
        self,
        target: str,
        count: int,
        make_spec: Callable[[int], job_pb2.JobSpec],
        pace: float = 0.01,
    ) -> None:
        super().__init__(daemon=True)
        self._stub = jobs_pb2_grpc.JobsStub(grpc.insecure_channel(target))
        self._count = count
        self._make_spec = make_spec
        self._pace = pace
        self.accepted: dict[int, str] = {}
        self.unavailable = 0
        self.wrong: list[str] = []

    def run(self) -> None:
        for i in range(self._count):
            spec = self._make_spec(i)
            spec.idempotency_key = f"job-{i}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    response = self._stub.Submit(jobs_pb2.SubmitRequest(jobs=[spec]), timeout=10)
                    self.accepted[i] = response.results[0].job.id
                    break
                except grpc.RpcError as exc:
                    if exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        self.unavailable += 1
                        time.sleep(0.05)
                        continue
                    self.wrong.append(f"{exc.code()}: {exc.details()}")
                    return
            time.sleep(self._pace)


def sleep_job(seconds: float) -> Callable[[int], job_pb2.JobSpec]:
    def make(_: int) -> job_pb2.JobSpec:
        return job_pb2.JobSpec(
            type="sleep",
            payload=job_pb2.Payload(
                data=json.dumps({"seconds": seconds}).encode(), content_type="application/json"
            ),
        )

    return make


def audit(database_url: str, ids: list[str]) -> None:
    """Every job terminal and SUCCEEDED once; no lease left; history consistent."""
    with psycopg.connect(database_url) as conn:
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM jobwire_jobs WHERE id = ANY(%s) AND state = 'SUCCEEDED'",
                    (ids,),
                ).fetchone()
                == (len(ids),)
            ),
            timeout=60,
            message="every job SUCCEEDED",
        )
        twice = conn.execute(
            """SELECT job_id FROM jobwire_attempt_history WHERE outcome = 'SUCCEEDED'
               GROUP BY job_id HAVING count(*) > 1"""
        ).fetchall()
        assert twice == [], "a job succeeded twice"
        live = conn.execute(
            "SELECT count(*) FROM jobwire_attempt_history WHERE outcome = 'RUNNING'"
        ).fetchone()
        assert live == (0,)
        gaps = conn.execute(
            """SELECT j.id FROM jobwire_jobs j
               WHERE j.attempt <> (SELECT count(*) FROM jobwire_attempt_history a
                                   WHERE a.job_id = j.id)
            """
        ).fetchall()
        assert gaps == []


def test_scheduler_killed_mid_stream_and_restarted(database_url: str, tmp_path: Path) -> None:
    scheduler = SchedulerProcess(database_url, tmp_path / "scheduler.log")
    workers = [
        WorkerProcess(
            scheduler.target, tmp_path / f"worker{i}.log", worker_id=f"w{i}", concurrency=4
        )
        for i in range(2)
    ]
    producer = Producer(scheduler.target, 120, sleep_job(0.6), pace=0.02)
    producer.start()
    try:
        wait_for(lambda: len(producer.accepted) >= 40, timeout=30, message="40 submits")
        with psycopg.connect(database_url) as conn:
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM jobwire_jobs WHERE state = 'RUNNING'"
                    ).fetchone()[0]
                    > 0
                ),
                message="jobs running",
            )
            scheduler.kill()
            running = [
                str(r[0])
                for r in conn.execute("SELECT id FROM jobwire_jobs WHERE state = 'RUNNING'")
            ]
        assert running
        # The gap lasts longer than the jobs: their outcomes wait in the workers.
        wait_for(lambda: producer.unavailable > 0, message="producers to see UNAVAILABLE")
        time.sleep(1.0)  # keep the scheduler down for a while: the gap is the point
        scheduler.restart()
        producer.join(120)
        assert not producer.wrong, producer.wrong
        assert len(producer.accepted) == 120
        ids = list(producer.accepted.values())
        assert len(set(ids)) == 120, "a retried submit created a second job"
        audit(database_url, ids)
        with psycopg.connect(database_url) as conn:
            attempts = conn.execute(
                "SELECT attempt FROM jobwire_jobs WHERE id = ANY(%s)", (running,)
            ).fetchall()
        # Jobs running at the kill finished on their first attempt: the workers kept their
        # leases across the restart and resent the outcomes they held.
        assert {a for (a,) in attempts} == {1}, attempts
        assert all(w.alive() for w in workers)
    finally:
        for w in workers:
            w.stop()
        scheduler.stop()


def test_postgres_restart_under_load(tmp_path: Path) -> None:
    postgres = RestartablePostgres(tmp_path / "pg")
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE jobwire")
    database_url = make_conninfo(postgres.url, dbname="jobwire")
    migrate.apply(database_url)
    scheduler = SchedulerThread(
        database_url,
        health_interval=0.2,
        poll_interval=0.2,
        reaper_interval=0.2,
        stream_grace=timedelta(seconds=1),
    )
    scheduler.start()
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(scheduler.target))

    def status() -> int:
        return int(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)

    worker = WorkerProcess(scheduler.target, tmp_path / "worker.log", worker_id="w", concurrency=8)
    producer = Producer(scheduler.target, 150, sleep_job(0.05), pace=0.01)
    producer.start()
    try:
        wait_for(lambda: len(producer.accepted) >= 40, timeout=30, message="40 submits")
        postgres.stop()
        wait_for(
            lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING,
            timeout=20,
            message="health NOT_SERVING",
        )
        with pytest.raises(grpc.RpcError) as down:
            scheduler.jobs().Get(jobs_pb2.GetRequest(id=producer.accepted[0]), timeout=15)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        postgres.start()
        wait_for(
            lambda: status() == health_pb2.HealthCheckResponse.SERVING,
            timeout=30,
            message="health SERVING again",
        )
        producer.join(120)
        assert not producer.wrong, producer.wrong
        assert producer.unavailable > 0
        ids = list(producer.accepted.values())
        assert len(ids) == 150 and len(set(ids)) == 150
        audit(database_url, ids)
    finally:
        worker.stop()
        scheduler.stop()
        postgres.stop()


def test_scheduler_stops_gracefully_on_sigterm(database_url: str, tmp_path: Path) -> None:
    scheduler = SchedulerProcess(database_url, tmp_path / "scheduler.log")
    worker = WorkerProcess(
        scheduler.target, tmp_path / "worker.log", worker_id="w", drain_grace=0.5
    )
    try:
        spec = sleep_job(30)(0)
        spec.lease_timeout.FromSeconds(300)
        stub = jobs_pb2_grpc.JobsStub(grpc.insecure_channel(scheduler.target))
        job_id = stub.Submit(jobs_pb2.SubmitRequest(jobs=[spec]), timeout=10).results[0].job.id
        with psycopg.connect(database_url, autocommit=True) as conn:

            def lease_seconds_left() -> float:
                row = conn.execute(
                    "SELECT extract(epoch FROM lease_deadline - now()) FROM jobwire_jobs "
                    "WHERE id = %s AND state = 'RUNNING'",
                    (job_id,),
                ).fetchone()
                return float(row[0]) if row and row[0] is not None else 0.0

            wait_for(lambda: lease_seconds_left() > 0, message="the job running")
            scheduler.signal(signal.SIGTERM)
            assert scheduler.wait(30) == 0, scheduler.output()
            assert "scheduler stopping" in scheduler.output()
            # The worker did not go away, the scheduler did: its lease was not cut to the
            # stream grace (1 s here), so a restarted scheduler finds the job still held.
            assert lease_seconds_left() > 200
    finally:
        worker.stop()
