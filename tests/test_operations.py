"""What operators rely on: metrics on /metrics, probes on /healthz and /readyz, and JSON log
lines that carry a job's trace id from the producer to the handler.

Metrics live in one registry per process, shared by every scheduler the tests start in
this process: each test uses queues of its own and compares values before and after.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobwire.client import Client
from jobwire.v1 import job_pb2, jobs_pb2
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from tests.processes import SchedulerProcess, WorkerProcess, free_port
from tests.support import SchedulerThread, StreamClient, http_get, wait_for


def fetch(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{port}{path}", timeout=timeout)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample on /metrics, keyed by name and labels."""
    status, text = fetch(port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(port: int, predicate: Callable[[Samples], bool], message: str) -> Samples:
    """Scrapes until `predicate` holds for the samples; returns them."""

    def attempt() -> Samples | None:
        samples = scrape(port)
        return samples if predicate(samples) else None

    return wait_for(attempt, message=message)


@pytest.fixture
def observed(database_url: str) -> Iterator[SchedulerThread]:
    """A scheduler with its HTTP port, reading queue depths often."""
    running = SchedulerThread(
        database_url,
        stream_grace=timedelta(seconds=1),
        reaper_interval=0.2,
        poll_interval=0.2,
        http_host="127.0.0.1",
        http_port=0,
        stats_interval=0.2,
        health_interval=0.2,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def fresh_queue() -> str:
    return f"ops-{uuid.uuid4().hex[:8]}"


# -- scheduler metrics --------------------------------------------------------------------


def test_job_lifecycle_counters_and_histograms(observed: SchedulerThread) -> None:
    port = observed.scheduler.http_port
    queue = fresh_queue()
    before = scrape(port)
    with Client(observed.target) as client:
        ok = client.submit("echo", {"n": 1}, queue=queue)
        retried = client.submit("echo", {"n": 2}, queue=queue, max_attempts=3)
        dead = client.submit("echo", {"n": 3}, queue=queue, max_attempts=1)
        # An idempotent repeat creates no job and counts as no submit.
        client.submit("echo", {"n": 4}, queue=queue, idempotency_key="k")
        client.submit("echo", {"n": 4}, queue=queue, idempotency_key="k")
    worker = StreamClient(observed.target, queues=(queue,), credits=4)
    try:
        leased = {worker.next_job(index=i).job.id: worker.next_job(index=i) for i in range(4)}
        worker.ack(leased[ok.id])
        for job_id in (retried.id, dead.id):
            worker.nack(
                leased[job_id],
                error=job_pb2.JobError(message="broken", kind="test"),
                retryable=True,
            )
    finally:
        worker.close()
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("jobwire_jobs_submitted_total", queue=queue, type="echo") == 4
    assert delta("jobwire_jobs_leased_total", queue=queue, type="echo") == 4
    settled = "jobwire_jobs_settled_total"
    assert delta(settled, queue=queue, type="echo", outcome="succeeded") == 1
    assert delta(settled, queue=queue, type="echo", outcome="retried") == 1
    assert delta(settled, queue=queue, type="echo", outcome="failed") == 1
    assert delta("jobwire_job_retries_total", queue=queue, type="echo", cause="failed") == 1
    assert delta("jobwire_job_start_latency_seconds_count", queue=queue) == 4
    runs = "jobwire_job_run_seconds_count"
    assert delta(runs, queue=queue, type="echo", outcome="succeeded") == 1
    assert delta(runs, queue=queue, type="echo", outcome="failed") == 1


def test_rpc_metrics_count_codes_for_unary_and_streaming_calls(observed: SchedulerThread) -> None:
    port = observed.scheduler.http_port
    before = scrape(port)
    stub = observed.jobs()
    with pytest.raises(grpc.RpcError) as missing:
        stub.Get(jobs_pb2.GetRequest(id=str(uuid.uuid4())), timeout=5)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bad:
        stub.Get(jobs_pb2.GetRequest(id="not-a-uuid"), timeout=5)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    stub.Stats(jobs_pb2.StatsRequest(), timeout=5)
    stream = StreamClient(observed.target, queues=(fresh_queue(),))
    wait_for(
        lambda: (
            value(
                scrape(port),
                "jobwire_grpc_server_started_total",
                service="jobwire.v1.Leases",
                method="Lease",
            )
            > value(
                before,
                "jobwire_grpc_server_started_total",
                service="jobwire.v1.Leases",
                method="Lease",
            )
        ),
        message="the Lease stream counted as started",
    )
    stream.cut()  # as a crashed worker's connection would end

    def handled(
        samples: Samples,
        method: str,
        code: str,
        service: str = "jobwire.v1.Jobs",
    ) -> float:
        return value(
            samples, "jobwire_grpc_server_handled_total", service=service, method=method, code=code
        )

    after = scrape_until(
        port,
        lambda s: (
            handled(s, "Lease", "CANCELLED", "jobwire.v1.Leases")
            > handled(before, "Lease", "CANCELLED", "jobwire.v1.Leases")
        ),
        "the cancelled Lease stream counted as CANCELLED",
    )
    assert handled(after, "Get", "NOT_FOUND") - handled(before, "Get", "NOT_FOUND") == 1
    assert (
        handled(after, "Get", "INVALID_ARGUMENT") - handled(before, "Get", "INVALID_ARGUMENT") == 1
    )
    assert handled(after, "Stats", "OK") - handled(before, "Stats", "OK") == 1
    seconds = "jobwire_grpc_server_handling_seconds_count"
    assert (
        value(after, seconds, service="jobwire.v1.Jobs", method="Get")
        - value(before, seconds, service="jobwire.v1.Jobs", method="Get")
        == 2
    )


def test_queue_depth_oldest_age_and_connected_workers(observed: SchedulerThread) -> None:
    port = observed.scheduler.http_port
    queue = fresh_queue()
    with Client(observed.target) as client:
        for n in range(3):
            client.submit("echo", {"n": n}, queue=queue)
        client.submit("echo", {}, queue=queue, run_at=timedelta(hours=1))

    def depth(samples: Samples, state: str) -> float:
        return value(samples, "jobwire_queue_jobs", queue=queue, state=state)

    samples = scrape_until(
        port,
        lambda s: (
            depth(s, "ready") == 3
            and value(s, "jobwire_queue_oldest_ready_age_seconds", queue=queue) > 0
        ),
        "the ready jobs in the queue metrics",
    )
    assert depth(samples, "scheduled") == 1
    assert depth(samples, "running") == 0
    assert value(samples, "jobwire_workers_connected", queue=queue) == 0

    worker = StreamClient(observed.target, queues=(queue,), credits=5)
    try:
        worker.next_job()
        samples = scrape_until(
            port,
            lambda s: depth(s, "running") == 3 and depth(s, "ready") == 0,
            "the leased jobs in the queue metrics",
        )
        assert value(samples, "jobwire_workers_connected", queue=queue) == 1
        assert value(samples, "jobwire_worker_credit", queue=queue) == 2
        assert value(samples, "jobwire_queue_oldest_ready_age_seconds", queue=queue) == 0
    finally:
        worker.close()
    wait_for(
        lambda: value(scrape(port), "jobwire_workers_connected", queue=queue) == 0,
        message="the closed stream gone from the metrics",
    )


def test_a_queue_shows_in_the_depth_metrics_while_workers_wait_on_it(
    observed: SchedulerThread,
) -> None:
    """Succeeded jobs are not counted, so an empty queue is known from its workers."""
    port = observed.scheduler.http_port
    queue = fresh_queue()
    ready = ("jobwire_queue_jobs", frozenset({("queue", queue), ("state", "ready")}))
    worker = StreamClient(observed.target, queues=(queue,), credits=1)
    try:
        samples = scrape_until(port, lambda s: ready in s, "the empty queue in the metrics")
        assert samples[ready] == 0
    finally:
        worker.close()
    wait_for(lambda: ready not in scrape(port), message="the unserved empty queue gone")


def test_lease_expiries_are_counted(observed: SchedulerThread) -> None:
    port = observed.scheduler.http_port
    queue = fresh_queue()
    with Client(observed.target) as client:
        job = client.submit("echo", {}, queue=queue, lease_timeout=1, max_attempts=2)
    worker = StreamClient(observed.target, queues=(queue,), credits=2)
    try:
        worker.next_job()  # and never answers nor extends
        worker.next_job(index=1, timeout=15)  # the second attempt, after the first expired
        samples = scrape_until(
            port,
            lambda s: value(s, "jobwire_lease_expiries_total", queue=queue) == 2,
            "both expired leases counted",
        )
    finally:
        worker.close()
    # The first expiry made the job run again; the second ended its last attempt.
    retries = value(
        samples, "jobwire_job_retries_total", queue=queue, type="echo", cause="lease_expired"
    )
    assert retries == 1
    settled = {"queue": queue, "type": "echo"}
    assert value(samples, "jobwire_jobs_settled_total", **settled, outcome="retried") == 1
    assert value(samples, "jobwire_jobs_settled_total", **settled, outcome="failed") == 1
    with Client(observed.target) as client:
        assert client.get(job.id).state.name == "FAILED"


# -- probes -------------------------------------------------------------------------------


def test_probes_follow_the_schema(observed: SchedulerThread, database_url: str) -> None:
    port = observed.scheduler.http_port
    assert fetch(port, "/healthz") == (200, "ok\n")
    status, body = fetch(port, "/readyz")
    assert status == 200, body
    assert fetch(port, "/nowhere")[0] == 404
    # A schema older than this version ships (a migration not applied): not ready.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM jobwire_migrations WHERE version = 1")
    status, body = wait_for(
        lambda: (answer := fetch(port, "/readyz"))[0] == 503 and answer, message="/readyz 503"
    )
    assert "migrations [1] not applied" in body
    assert fetch(port, "/healthz")[0] == 200  # alive all the same: no restart would help
    with grpc.insecure_channel(observed.target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.slow
def test_readyz_follows_the_database(tmp_path: Path) -> None:
    from tests.processes import RestartablePostgres

    postgres = RestartablePostgres(tmp_path / "pg")
    http = free_port()
    scheduler = SchedulerProcess(
        postgres.url, tmp_path / "scheduler.log", env={"JOBWIRE_HTTP_PORT": str(http)}
    )
    try:
        wait_for(lambda: fetch(http, "/readyz")[0] == 200, message="/readyz 200")
        postgres.stop()
        _, body = wait_for(
            lambda: (answer := fetch(http, "/readyz"))[0] == 503 and answer,
            message="/readyz 503 while the database is down",
        )
        assert "database unreachable" in body
        assert fetch(http, "/healthz")[0] == 200
        postgres.start()
        wait_for(lambda: fetch(http, "/readyz")[0] == 200, timeout=30, message="/readyz 200 again")
    finally:
        scheduler.stop()
        postgres.stop()


def test_the_database_urls_own_options_hold_on_every_connection(database_url: str) -> None:
    """Settings an operator puts in the URL's `options` (here an application name, which
    shows in pg_stat_activity) reach every connection, the lease pool's included, next to
    the scheduler's own session settings."""
    name = f"jobwire-ops-{uuid.uuid4().hex[:8]}"
    running = SchedulerThread(make_conninfo(database_url, options=f"-c application_name={name}"))
    running.start()
    try:
        store = running.scheduler.store

        async def settings(relaxed: bool) -> dict[str, str]:
            # Straight from each pool: what a statement of the scheduler runs with.
            async with store._conn(relaxed=relaxed) as conn:
                cur = await conn.execute(
                    "SELECT current_setting('application_name') AS app,"
                    " current_setting('TimeZone') AS zone,"
                    " current_setting('synchronous_commit') AS flush"
                )
                return dict(await cur.fetchone() or {})

        assert running.call(lambda: settings(False)) == {"app": name, "zone": "UTC", "flush": "on"}
        assert running.call(lambda: settings(True)) == {"app": name, "zone": "UTC", "flush": "off"}
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        assert rows and {r[0] for r in rows} == {name}, rows
    finally:
        running.stop()


# -- worker port and logs -----------------------------------------------------------------


def json_lines(path: Path) -> list[dict[str, object]]:
    """Every line of a JSON log; fails on a line that is not one JSON object."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    # gRPC's C core may write its own lines to stderr; they are not ours to format.
    ours = [line for line in lines if line[:1] not in "IWE" or line.startswith("{")]
    return [json.loads(line) for line in ours]


@pytest.mark.slow
def test_trace_id_travels_from_producer_to_handler_logs(database_url: str, tmp_path: Path) -> None:
    trace_id = uuid.uuid4().hex
    debug_json = {"JOBWIRE_LOG_FORMAT": "json", "JOBWIRE_LOG_LEVEL": "DEBUG"}
    scheduler = SchedulerProcess(database_url, tmp_path / "scheduler.log", env=debug_json)
    http = free_port()
    worker = WorkerProcess(
        scheduler.target,
        tmp_path / "worker.log",
        worker_id="traced-worker",
        env={"JOBWIRE_LOG_FORMAT": "json", "JOBWIRE_WORKER_HTTP_PORT": str(http)},
    )
    try:
        wait_for(lambda: fetch(http, "/readyz")[0] == 200, message="the worker ready")
        assert fetch(http, "/healthz")[0] == 200
        metadata = {"traceparent": f"00-{trace_id}-{'1' * 16}-01"}
        with Client(scheduler.target, metadata=metadata) as client:
            job = client.submit("sleep", {"seconds": 0})
            assert client.wait(job.id, timeout=30).state.name == "SUCCEEDED"
            assert client.get(job.id).trace_id == trace_id

        def lines_of_job(path: Path) -> list[dict[str, object]]:
            return [line for line in json_lines(path) if line.get("job_id") == job.id]

        worker_lines = wait_for(
            lambda: (
                (found := lines_of_job(tmp_path / "worker.log"))
                and any("succeeded" in str(line["event"]) for line in found)
                and found
            ),
            message="the worker's lines for the job",
        )
        events = [str(line["event"]) for line in worker_lines]
        assert "started" in events
        assert "sleeping 0 s" in events  # the handler's own logger
        for line in worker_lines:
            assert line["trace_id"] == trace_id
            assert line["queue"] == "default" and line["type"] == "sleep"
            assert line["attempt"] == 1 and line["worker_id"] == "traced-worker"
            assert line["level"] in {"info", "debug", "warning"} and line["ts"]

        scheduler_lines = lines_of_job(tmp_path / "scheduler.log")
        by_event = {str(line["event"]): line for line in scheduler_lines}
        assert by_event["submitted"]["trace_id"] == trace_id
        assert by_event["leased"]["trace_id"] == trace_id
        assert by_event["leased"]["worker_id"] == "traced-worker"

        samples = scrape(http)
        assert value(samples, "jobwire_worker_jobs_total", type="sleep", outcome="succeeded") == 1
        assert value(samples, "jobwire_worker_handler_seconds_count", type="sleep") == 1
        assert value(samples, "jobwire_worker_connected") == 1
        assert value(samples, "jobwire_worker_jobs_in_flight") == 0

        scheduler.stop()
        _, body = wait_for(
            lambda: (answer := fetch(http, "/readyz"))[0] == 503 and answer,
            message="the worker not ready without its scheduler",
        )
        assert "not connected" in body
    finally:
        worker.stop()
        scheduler.stop()


def test_stats_show_a_queue_that_workers_wait_on_before_it_has_jobs(
    observed: SchedulerThread,
) -> None:
    queue = fresh_queue()
    worker = StreamClient(observed.target, queues=(queue,), credits=3)
    try:
        with Client(observed.target) as client:
            found = wait_for(
                lambda: [q for q in client.stats(queue) if q.connected_workers == 1],
                message="the empty queue in the statistics",
            )
            assert [(q.queue, q.ready, q.failed) for q in found] == [(queue, 0, 0)]
            assert queue in {q.queue for q in client.stats()}
            assert client.stats(fresh_queue()) == []
    finally:
        worker.close()


@pytest.mark.slow
def test_healthz_fails_while_the_event_loop_is_blocked(observed: SchedulerThread) -> None:
    port = observed.scheduler.http_port

    async def block() -> None:
        time.sleep(7)  # noqa: ASYNC251 - a stuck handler, on purpose

    assert observed._loop is not None
    asyncio.run_coroutine_threadsafe(block(), observed._loop)
    # The probe answers after waiting LOOP_TIMEOUT (5 s) for the loop: the client waits longer.
    status, body = fetch(port, "/healthz", timeout=15)
    assert (status, body) == (503, "event loop unresponsive for 5 s\n")
    wait_for(lambda: fetch(port, "/healthz")[0] == 200, message="/healthz 200 again")


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        (["scheduler", "--database-url", "postgresql://nowhere/db"], "JOBWIRE_HTTP_PORT"),
        (["worker", "--target", "127.0.0.1:1"], "JOBWIRE_WORKER_HTTP_PORT"),
    ],
)
def test_a_taken_http_port_is_a_clear_error(
    command: list[str], variable: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "jobwire.cli.main", "--log-format", "text", *command,
             "--http-host", "127.0.0.1", "--http-port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
