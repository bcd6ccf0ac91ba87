"""Worker faults with real `jobwire worker` processes: killed with SIGKILL, stopped with
SIGTERM, cut off from the scheduler by a network that silently drops traffic (both ways
or one way), and stuck past the lease. After each, the jobs are checked in PostgreSQL:
every job accounted for, one SUCCEEDED attempt at most, late outcomes refused."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from jobwire.v1 import job_pb2, jobs_pb2, jobs_pb2_grpc
from psycopg.rows import dict_row

from tests.netproxy import NetProxy
from tests.processes import WorkerProcess
from tests.support import SchedulerThread, wait_for

# -- helpers ----------------------------------------------------------------------------------


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def submit(scheduler: SchedulerThread, job_type: str, payload: Any, **spec: Any) -> str:
    with scheduler.channel() as channel:
        response = jobs_pb2_grpc.JobsStub(channel).Submit(
            jobs_pb2.SubmitRequest(
                jobs=[
                    job_pb2.JobSpec(
                        type=job_type,
                        payload=job_pb2.Payload(
                            data=json.dumps(payload).encode(), content_type="application/json"
                        ),
                        **spec,
                    )
                ]
            ),
            timeout=10,
        )
    return str(response.results[0].job.id)


class Database:
    """Reads the jobs tables directly: what the tests assert is what PostgreSQL holds."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def job(self, job_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM jobwire_jobs WHERE id = %s", job_id)
        assert rows, f"job {job_id} is gone"
        return rows[0]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return self._query(
            "SELECT * FROM jobwire_attempt_history WHERE job_id = %s ORDER BY number", job_id
        )

    def attempts_of_worker(self, worker_id: str) -> list[dict[str, Any]]:
        return self._query(
            "SELECT * FROM jobwire_attempt_history WHERE worker_id = %s ORDER BY started_at",
            worker_id,
        )

    def now(self) -> datetime:
        value: datetime = self._query("SELECT clock_timestamp() AS now")[0]["now"]
        return value

    def snapshot(self, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.job(job_id), self.attempts(job_id)

    def wait_state(self, job_id: str, state: str, *, timeout: float = 20) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            row = self.job(job_id)
            return row if row["state"] == state else None

        return wait_for(reached, timeout=timeout, interval=0.05, message=f"{job_id} {state}")


def result_of(row: dict[str, Any]) -> Any:
    assert row["result"] is not None
    return json.loads(bytes(row["result"]))


class Fleet:
    """`jobwire worker` processes of one test, stopped at the end if still alive (SIGTERM,
    so that their streams end before the scheduler stops; SIGKILL if that takes long)."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []

    def start(self, target: str, worker_id: str, **kwargs: Any) -> WorkerProcess:
        log = self._tmp_path / f"{worker_id}.log"
        worker = WorkerProcess(target, log, worker_id=worker_id, **kwargs)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.signal(signal.SIGTERM)
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    workers = Fleet(tmp_path)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def db(scheduler: SchedulerThread) -> Database:
    return Database(scheduler.database_url)


def wait_log(worker: WorkerProcess, text: str, *, timeout: float = 20) -> None:
    def logged() -> bool:
        if text in worker.output():
            return True
        if not worker.alive():
            raise AssertionError(f"{worker.worker_id} exited:\n{worker.output()}")
        return False

    try:
        wait_for(logged, timeout=timeout, interval=0.02, message=f"{text!r} in the log")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {worker.worker_id} ---\n{worker.output()}") from None


def wait_connected(*workers: WorkerProcess) -> None:
    for worker in workers:
        wait_log(worker, "connected to")


def started(job_id: str, attempt: int = 1) -> str:
    """What the worker logs when it starts an attempt."""
    return f" {job_id} attempt {attempt}] started"


def outcomes(attempts: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(a["number"], a["outcome"], a["worker_id"]) for a in attempts]


def assert_succeeded_once(db: Database, job_id: str, *, attempts: int) -> dict[str, Any]:
    """The job is SUCCEEDED, holds no lease, and exactly one attempt succeeded: the last."""
    row = db.job(job_id)
    history = db.attempts(job_id)
    assert row["state"] == "SUCCEEDED"
    assert row["attempt"] == attempts == len(history)
    assert row["lease_token"] is None and row["lease_deadline"] is None
    assert row["finished_at"] is not None
    assert [a["outcome"] for a in history].count("SUCCEEDED") == 1
    assert history[-1]["outcome"] == "SUCCEEDED"
    assert all(a["finished_at"] is not None for a in history)
    return row


# -- the proxy itself -----------------------------------------------------------------------


def test_netproxy_holds_traffic_while_paused_and_delivers_it_late() -> None:
    """The cut the network tests rely on: no error on either side, nothing passes while
    paused (both ways or one way), everything arrives after resume, and close() stops
    the proxy's thread and its connections."""
    with socket.create_server(("127.0.0.1", 0)) as server:

        def shout() -> None:
            conn, _ = server.accept()
            with conn, contextlib.suppress(OSError):
                while data := conn.recv(1024):
                    conn.sendall(data.upper())

        echo = threading.Thread(target=shout, daemon=True)
        echo.start()
        proxy = NetProxy(f"127.0.0.1:{server.getsockname()[1]}")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(b"hi")
            assert client.recv(16) == b"HI"
            assert proxy.connections == 1

            proxy.pause()
            client.sendall(b"one")
            client.settimeout(0.3)
            with pytest.raises(TimeoutError):
                client.recv(16)
            assert proxy.forwarded() == {"upstream": 2, "downstream": 2}
            proxy.resume()
            client.settimeout(5)
            assert client.recv(16) == b"ONE"

            proxy.pause(downstream=False)
            client.sendall(b"two")
            client.settimeout(0.3)
            with pytest.raises(TimeoutError):
                client.recv(16)
            assert proxy.forwarded()["upstream"] == 5
            proxy.resume()
            client.settimeout(5)
            assert client.recv(16) == b"TWO"

            proxy.close()
            with contextlib.suppress(ConnectionResetError):  # closed, not left hanging
                assert client.recv(16) == b""
        assert not any(t.name == "netproxy" for t in threading.enumerate())
        echo.join(5)
        assert not echo.is_alive()
        with pytest.raises(RuntimeError):
            proxy.pause()


# -- 1. SIGKILL mid-job ---------------------------------------------------------------------


@pytest.mark.slow
def test_job_of_a_killed_worker_runs_again_after_the_stream_grace(
    scheduler: SchedulerThread, db: Database, fleet: Fleet
) -> None:
    """A worker killed with SIGKILL mid-job says nothing; its stream ending is all the
    scheduler learns. With a 300 s lease only the 1 s stream-loss grace can bring the
    job back, so it runs again on the other worker within seconds, and succeeds once."""
    workers = {
        w.worker_id: w
        for w in (
            fleet.start(scheduler.target, "kill-a", concurrency=1),
            fleet.start(scheduler.target, "kill-b", concurrency=1),
        )
    }
    wait_connected(*workers.values())
    job_id = submit(scheduler, "sleep", {"seconds": 3}, lease_timeout=seconds(300), max_attempts=3)

    def holder() -> str | None:
        row = db.job(job_id)
        return row["worker_id"] if row["state"] == "RUNNING" else None

    victim = workers.pop(wait_for(holder, message="the job to be leased"))
    (survivor,) = workers.values()
    wait_log(victim, started(job_id))
    running = db.job(job_id)
    assert (running["lease_deadline"] - db.now()).total_seconds() > 250

    killed_at = db.now()
    victim.kill()
    assert victim.popen is not None and victim.popen.returncode == -signal.SIGKILL

    db.wait_state(job_id, "SUCCEEDED", timeout=20)
    row = assert_succeeded_once(db, job_id, attempts=2)
    first, second = db.attempts(job_id)
    assert outcomes([first, second]) == [
        (1, "LEASE_EXPIRED", victim.worker_id),
        (2, "SUCCEEDED", survivor.worker_id),
    ]
    assert first["error_kind"] == "lease_expired"
    assert result_of(row) == {"attempt": 2, "worker": survivor.worker_id}
    assert row["released"] == 0
    # Ended by the grace (1 s) and the reaper, not by the 300 s lease; leased again once
    # the retry backoff (at most 1 s) had passed.
    expired_after = (first["finished_at"] - killed_at).total_seconds()
    leased_after = (second["started_at"] - killed_at).total_seconds()
    assert 0.9 <= expired_after < 4, expired_after
    assert expired_after <= leased_after < 5, leased_after
    wait_log(survivor, started(job_id, 2))


# -- 2. SIGTERM: drain --------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_finishes_the_short_job_and_hands_back_the_long_one(
    scheduler: SchedulerThread, db: Database, fleet: Fleet
) -> None:
    """SIGTERM with two jobs running and more waiting: the worker takes nothing new, the
    job that ends within --drain-grace succeeds, the one that does not is handed back
    without using up an attempt, the waiting ones are untouched, and it exits 0."""
    grace = 3.0
    worker = fleet.start(scheduler.target, "drain-a", concurrency=2, drain_grace=grace)
    wait_connected(worker)
    short = submit(scheduler, "sleep", {"seconds": 2}, max_attempts=1)
    long = submit(scheduler, "sleep", {"seconds": 60}, max_attempts=1)
    wait_log(worker, started(short))
    wait_log(worker, started(long))
    # Both slots are taken, so these wait for credit that must never come.
    waiting = [submit(scheduler, "sleep", {"seconds": 0.1}) for _ in range(3)]

    sigterm_at = db.now()
    worker.signal(signal.SIGTERM)
    try:
        code = worker.wait(grace + 15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit after SIGTERM:\n{worker.output()}") from None
    exited_after = (db.now() - sigterm_at).total_seconds()
    assert code == 0, worker.output()
    assert grace - 0.5 < exited_after < grace + 8, exited_after

    done = assert_succeeded_once(db, short, attempts=1)
    (short_attempt,) = db.attempts(short)
    assert short_attempt["finished_at"] > sigterm_at  # it was still running at SIGTERM
    assert (short_attempt["finished_at"] - sigterm_at).total_seconds() < grace
    assert result_of(done) == {"attempt": 1, "worker": worker.worker_id}

    back = db.job(long)
    (long_attempt,) = db.attempts(long)
    assert back["state"] == "PENDING"
    assert (back["attempt"], back["released"]) == (1, 1)  # attempt 1 did not count
    assert back["lease_token"] is None and back["finished_at"] is None
    assert back["error_message"] is None  # a hand-back is no failure
    assert back["run_at"] <= db.now()  # ready again at once, with no backoff
    assert long_attempt["outcome"] == "RELEASED"
    assert long_attempt["error_kind"] is None
    handed_back_after = (long_attempt["finished_at"] - sigterm_at).total_seconds()
    assert grace - 0.5 < handed_back_after < grace + 5, handed_back_after

    for job_id in waiting:
        row = db.job(job_id)
        assert (row["state"], row["attempt"], row["started_at"]) == ("PENDING", 0, None)
        assert db.attempts(job_id) == []
    # The slot the short job freed during the drain was not offered to the scheduler.
    leased = {str(a["job_id"]) for a in db.attempts_of_worker(worker.worker_id)}
    assert leased == {short, long}


# -- 3 and 4. Cut off from the scheduler -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("downstream", [True, False], ids=["both-ways", "worker-to-scheduler"])
def test_late_ack_after_a_network_cut_is_refused(
    scheduler: SchedulerThread, db: Database, fleet: Fleet, downstream: bool
) -> None:
    """A worker behind a proxy loses its network mid-job without any error on either side
    (both ways, or only its own traffic to the scheduler). Its extensions stop arriving,
    the 2 s lease expires, another worker runs the job to success; the cut worker's
    handler ends meanwhile and its ack waits in the network. Once the network is back
    the ack arrives late, is refused with FAILED_PRECONDITION and changes nothing, and
    the worker drops it rather than keeping it to resend."""
    with NetProxy(scheduler.target) as proxy:
        cut = fleet.start(proxy.target, "cut-a", concurrency=1)
        wait_connected(cut)
        assert proxy.accepted >= 1
        job_id = submit(
            scheduler,
            "sleep",
            {"seconds": 3},
            lease_timeout=seconds(2),
            max_attempts=3,
            backoff=job_pb2.BackoffPolicy(initial=seconds(0.2)),
        )
        wait_log(cut, started(job_id))
        proxy.pause(downstream=downstream)
        held = proxy.forwarded()["upstream"]

        direct = fleet.start(scheduler.target, "cut-b", concurrency=1)
        db.wait_state(job_id, "SUCCEEDED", timeout=20)
        # The cut worker's handler finished too; its ack is stuck in the network.
        wait_log(cut, f" {job_id} attempt 1] succeeded")
        assert proxy.forwarded()["upstream"] == held  # nothing got through
        assert "Lease stream" not in cut.output()  # and nobody noticed an error
        before = db.snapshot(job_id)

        proxy.resume()
        wait_log(cut, f"refused the succeeded outcome of job {job_id} (code 9)")
        assert proxy.forwarded()["upstream"] > held  # the late messages did arrive
        assert db.snapshot(job_id) == before  # and changed nothing

        row = assert_succeeded_once(db, job_id, attempts=2)
        assert outcomes(db.attempts(job_id)) == [
            (1, "LEASE_EXPIRED", cut.worker_id),
            (2, "SUCCEEDED", direct.worker_id),
        ]
        assert result_of(row) == {"attempt": 2, "worker": direct.worker_id}

        # The refused ack was dropped, not kept to be sent again: with nothing left to
        # settle the drain is immediate, no second refusal is logged (outcomes kept to
        # the end go through the unary calls and would be refused once more), and the
        # exit code is 0.
        stopping = db.now()
        cut.signal(signal.SIGTERM)
        assert cut.wait(15) == 0, cut.output()
        assert cut.output().count(f"refused the succeeded outcome of job {job_id}") == 1
        assert (db.now() - stopping).total_seconds() < 4  # no wait for confirmations
    assert db.snapshot(job_id) == before


@pytest.mark.slow
def test_stubborn_handler_past_a_lost_lease_is_dropped(
    scheduler: SchedulerThread, db: Database, fleet: Fleet
) -> None:
    """A plain handler that ignores cancellation, on a worker whose traffic to the
    scheduler is dropped (replies still reach it): the lease expires and another worker
    takes the job. When the network returns, the refused extension tells the worker the
    lease is lost; it stops waiting for the handler and reports nothing, not even when
    the handler returns a result later, and keeps its slot busy until then."""
    run_for = 5.0
    with NetProxy(scheduler.target) as proxy:
        cut = fleet.start(proxy.target, "stubborn-a", concurrency=1)
        wait_connected(cut)
        job_id = submit(
            scheduler,
            "block",
            {"seconds": run_for},
            lease_timeout=seconds(2),
            max_attempts=3,
            backoff=job_pb2.BackoffPolicy(initial=seconds(0.2)),
        )
        wait_log(cut, started(job_id))
        proxy.pause(downstream=False)
        direct = fleet.start(scheduler.target, "stubborn-b", concurrency=1)

        def second_attempt() -> bool:
            row = db.job(job_id)
            return bool(row["state"] == "RUNNING" and row["attempt"] == 2)

        wait_for(second_attempt, timeout=20, message="the job leased again")
        first = db.attempts(job_id)[0]
        assert (first["outcome"], first["worker_id"]) == ("LEASE_EXPIRED", cut.worker_id)
        proxy.resume()
        # A job for the cut worker's one slot: it must wait for the stubborn thread.
        follow_up = submit(scheduler, "sleep", {"seconds": 0})

        wait_log(cut, f" {job_id} attempt 1] lease lost (code 9")
        wait_log(cut, f" {job_id} attempt 1] dropped after")
        db.wait_state(job_id, "SUCCEEDED", timeout=20)
        db.wait_state(follow_up, "SUCCEEDED", timeout=20)

    row = assert_succeeded_once(db, job_id, attempts=2)
    assert outcomes(db.attempts(job_id)) == [
        (1, "LEASE_EXPIRED", cut.worker_id),
        (2, "SUCCEEDED", direct.worker_id),
    ]
    assert result_of(row) == {"attempt": 2, "worker": direct.worker_id}
    assert f"outcome of job {job_id}" not in cut.output()  # nothing was sent to refuse
    # The other worker was busy with the job until after the stubborn thread returned,
    # so the follow-up went to the cut worker, but only once that thread had returned:
    # a handler that is still running keeps its slot even after its lease is gone.
    (follow,) = db.attempts(follow_up)
    assert follow["worker_id"] == cut.worker_id
    assert (follow["started_at"] - first["started_at"]).total_seconds() >= run_for


@pytest.mark.slow
def test_handler_blocking_the_event_loop_loses_its_lease_and_its_ack(
    scheduler: SchedulerThread, db: Database, fleet: Fleet
) -> None:
    """An async handler that blocks the worker's event loop past its 2 s lease: no
    extension leaves the worker, the reaper ends the lease, the other worker runs the
    job. When the loop runs again the stale ack goes out at once and is refused."""
    workers = {
        w.worker_id: w
        for w in (
            fleet.start(scheduler.target, "hog-a", concurrency=1),
            fleet.start(scheduler.target, "hog-b", concurrency=1),
        )
    }
    wait_connected(*workers.values())
    job_id = submit(
        scheduler,
        "hog",
        {"seconds": 5},
        lease_timeout=seconds(2),
        max_attempts=3,
        backoff=job_pb2.BackoffPolicy(initial=seconds(0.2)),
    )

    def holder() -> str | None:
        row = db.job(job_id)
        return row["worker_id"] if row["state"] == "RUNNING" else None

    stuck = workers.pop(wait_for(holder, message="the job to be leased"))
    (other,) = workers.values()
    db.wait_state(job_id, "SUCCEEDED", timeout=20)
    wait_log(stuck, f"refused the succeeded outcome of job {job_id} (code 9)")

    row = assert_succeeded_once(db, job_id, attempts=2)
    first, second = db.attempts(job_id)
    assert outcomes([first, second]) == [
        (1, "LEASE_EXPIRED", stuck.worker_id),
        (2, "SUCCEEDED", other.worker_id),
    ]
    assert result_of(row) == {"attempt": 2, "worker": other.worker_id}
    # The job was taken over while the loop was still blocked.
    assert (second["finished_at"] - first["started_at"]).total_seconds() < 5
