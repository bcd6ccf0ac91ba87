"""The worker SDK against a real scheduler: jobs submitted through the generated stubs,
run by a Worker in a thread of this process or by `jobwire worker` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from jobwire.v1 import job_pb2, jobs_pb2, jobs_pb2_grpc
from jobwire.worker import JobContext, Worker, register_builtins
from prometheus_client import REGISTRY

from tests.processes import QUIET
from tests.support import wait_for

T = TypeVar("T")

PENDING = job_pb2.JOB_STATE_PENDING
RUNNING = job_pb2.JOB_STATE_RUNNING
SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
FAILED = job_pb2.JOB_STATE_FAILED
CANCELLED = job_pb2.JOB_STATE_CANCELLED
TERMINAL = {SUCCEEDED, FAILED, CANCELLED}


class Producer:
    """Submits and follows jobs through the generated Jobs stub."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = jobs_pb2_grpc.JobsStub(self.channel)

    def submit(self, job_type: str, payload: Any = None, **spec: Any) -> str:
        job_spec = job_pb2.JobSpec(
            type=job_type,
            payload=job_pb2.Payload(
                data=json.dumps(payload).encode(), content_type="application/json"
            ),
            **spec,
        )
        response = self.stub.Submit(jobs_pb2.SubmitRequest(jobs=[job_spec]), timeout=10)
        return str(response.results[0].job.id)

    def get(self, job_id: str) -> job_pb2.Job:
        return self.stub.Get(jobs_pb2.GetRequest(id=job_id), timeout=10).job

    def cancel(self, job_id: str) -> job_pb2.Job:
        return self.stub.Cancel(jobs_pb2.CancelRequest(id=job_id, reason="test"), timeout=10).job

    def wait_state(
        self, job_id: str, *states: job_pb2.JobState.ValueType, timeout: float = 15.0
    ) -> job_pb2.Job:
        names = "/".join(job_pb2.JobState.Name(s) for s in states)

        def reached() -> job_pb2.Job | None:
            try:
                job = self.get(job_id)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:  # scheduler restarting
                    return None
                raise
            if job.state in states:
                return job
            if job.state in TERMINAL:
                raise AssertionError(
                    f"job {job_id} ended {job_pb2.JobState.Name(job.state)}, expected {names}: "
                    f"{job.error}"
                )
            return None

        return wait_for(reached, timeout=timeout, message=f"job {job_id} to be {names}")

    def close(self) -> None:
        self.channel.close()


class WorkerThread:
    """A Worker running on its own event loop in a thread of the test process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-worker", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.worker.run())
        except BaseException as exc:
            self.error = exc

    def start(self) -> WorkerThread:
        self._thread.start()
        wait_for(lambda: self.worker.connected, message="the worker to connect")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.shutdown()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def producer(scheduler: Any) -> Iterator[Producer]:
    client = Producer(scheduler.target)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def start_worker(scheduler: Any) -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(setup: Callable[[Worker], None] | None = None, **kwargs: Any) -> WorkerThread:
        kwargs.setdefault("concurrency", 4)
        worker = Worker(scheduler.target, **kwargs)
        register_builtins(worker)
        if setup is not None:
            setup(worker)
        running = WorkerThread(worker).start()
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()


# -- in-process worker ---------------------------------------------------------------------


def test_uppercase_end_to_end(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    running = start_worker()
    job_id = producer.submit("uppercase", {"text": "hi"})
    job = producer.wait_state(job_id, SUCCEEDED)
    assert job.result.content_type == "application/json"
    assert json.loads(job.result.data) == "HI"
    assert job.attempt == 1
    assert [a.worker_id for a in job.attempts] == [running.worker.worker_id]
    assert job.attempts[0].outcome == job_pb2.ATTEMPT_OUTCOME_SUCCEEDED
    wait_for(lambda: running.worker.unsettled_outcomes == 0, message="the ack to be confirmed")


def test_many_jobs_within_the_concurrency(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    peak = 0
    active = 0
    lock = threading.Lock()

    def setup(worker: Worker) -> None:
        @worker.handler("count")
        def count(payload: Any) -> int:
            nonlocal peak, active
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.05)
            with lock:
                active -= 1
            return int(payload["n"]) * 2

    start_worker(setup, concurrency=3)
    ids = [producer.submit("count", {"n": n}) for n in range(20)]
    for n, job_id in enumerate(ids):
        assert json.loads(producer.wait_state(job_id, SUCCEEDED).result.data) == n * 2
    assert 1 <= peak <= 3


def test_csv_result_keeps_its_content_type(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker()
    job_id = producer.submit("csv", {"rows": [{"a": 1}, {"b": "x"}]})
    job = producer.wait_state(job_id, SUCCEEDED)
    assert job.result.content_type == "text/csv"
    assert job.result.data.decode().splitlines() == ["a,b", "1,", ",x"]


def test_non_retryable_fail_ends_failed_after_one_attempt(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker()
    job_id = producer.submit("fail", {"message": "boom", "retryable": False}, max_attempts=3)
    job = producer.wait_state(job_id, FAILED)
    assert job.attempt == 1
    assert (job.error.message, job.error.kind) == ("boom", "simulated")
    assert job.attempts[0].outcome == job_pb2.ATTEMPT_OUTCOME_FAILED


def test_retryable_failure_uses_every_attempt(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker()
    job_id = producer.submit(
        "fail",
        {"message": "again"},
        max_attempts=2,
        backoff=job_pb2.BackoffPolicy(initial=Duration(nanos=100_000_000)),
    )
    job = producer.wait_state(job_id, FAILED)
    assert job.attempt == 2
    assert [a.outcome for a in job.attempts] == [job_pb2.ATTEMPT_OUTCOME_FAILED] * 2


def test_bad_payload_is_not_retried(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker()
    job_id = producer.submit("uppercase", {"txt": "hi"}, max_attempts=3)
    job = producer.wait_state(job_id, FAILED)
    assert job.attempt == 1
    assert job.error.kind == "invalid_payload"
    assert '"text"' in job.error.message


def test_cancelling_a_running_text_job_stops_it(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    running = start_worker()
    job_id = producer.submit("text", {"text": "a long line of text"})
    producer.wait_state(job_id, RUNNING)
    wait_for(lambda: running.worker.active_jobs == 1, message="the handler to start")
    started = time.monotonic()
    producer.cancel(job_id)
    job = producer.wait_state(job_id, CANCELLED, timeout=10)
    assert time.monotonic() - started < 8  # far sooner than the 19 s the text takes
    assert job.attempts[-1].outcome == job_pb2.ATTEMPT_OUTCOME_CANCELLED
    wait_for(lambda: running.worker.active_jobs == 0, message="the handler to stop")


def test_cancel_reaches_a_plain_handler_through_its_context(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    noticed = threading.Event()

    def setup(worker: Worker) -> None:
        @worker.handler("poll")
        def poll(payload: Any, ctx: JobContext) -> str:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if ctx.cancelled.wait(0.05):
                    noticed.set()
                    return "stopped early"
            return "ran to the end"

    start_worker(setup)
    job_id = producer.submit("poll", {})
    producer.wait_state(job_id, RUNNING)
    producer.cancel(job_id)
    job = producer.wait_state(job_id, CANCELLED)
    assert noticed.wait(5)
    assert not job.HasField("result") or not job.result.data


def test_execution_timeout_is_reported_as_timeout(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    cancelled = threading.Event()

    def setup(worker: Worker) -> None:
        @worker.handler("slow")
        async def slow(payload: Any) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    start_worker(setup)
    job_id = producer.submit("slow", {}, max_attempts=1, execution_timeout=Duration(seconds=1))
    job = producer.wait_state(job_id, FAILED)
    assert job.error.kind == "timeout"
    assert job.attempts[0].error.kind == "timeout"
    assert cancelled.wait(5)


def test_prefetched_jobs_wait_for_a_slot_with_their_leases_held(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    gate = threading.Event()
    started: list[int] = []
    deadlines: list[float | None] = []

    def setup(worker: Worker) -> None:
        @worker.handler("gated")
        def gated(payload: Any, ctx: JobContext) -> int:
            started.append(payload["n"])
            deadline = ctx.execution_deadline
            deadlines.append(deadline.timestamp() - time.time() if deadline else None)
            gate.wait(20)
            return int(payload["n"])

    running = start_worker(setup, concurrency=1, prefetch=2)
    # A 1 s lease for all; a 1 s execution timeout for those that wait their turn.
    ids = [producer.submit("gated", {"n": 0}, lease_timeout=Duration(seconds=1))] + [
        producer.submit(
            "gated",
            {"n": n},
            lease_timeout=Duration(seconds=1),
            execution_timeout=Duration(seconds=1),
        )
        for n in (1, 2, 3)
    ]
    wait_for(
        lambda: (running.worker.active_jobs, running.worker.prefetched_jobs) == (1, 2),
        message="one job running and two prefetched",
    )
    # Past the lease and the execution timeout: the waiting jobs keep their leases (the
    # heartbeat extends them too) and their execution clock has not started.
    time.sleep(2.5)
    assert [producer.get(i).state for i in ids] == [RUNNING, RUNNING, RUNNING, PENDING]
    assert started == [0]
    # The gauges count the engine's jobs when read.
    assert REGISTRY.get_sample_value("jobwire_worker_jobs_in_flight") == 1
    assert REGISTRY.get_sample_value("jobwire_worker_jobs_prefetched") == 2
    gate.set()
    for n, job_id in enumerate(ids):
        job = producer.wait_state(job_id, SUCCEEDED)
        assert (json.loads(job.result.data), job.attempt) == (n, 1)
    assert started == [0, 1, 2, 3]
    assert deadlines[0] is None
    assert all(d is not None and 0 < d <= 1 for d in deadlines[1:])


def test_a_cancelled_prefetched_job_never_starts_and_a_drain_hands_back_the_rest(
    producer: Producer,
    start_worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gate = threading.Event()
    started: list[int] = []

    def setup(worker: Worker) -> None:
        @worker.handler("gated")
        def gated(payload: Any) -> int:
            started.append(payload["n"])
            gate.wait(20)
            return int(payload["n"])

    running = start_worker(setup, concurrency=1, prefetch=2, drain_grace=30)
    ids = [producer.submit("gated", {"n": n}) for n in range(3)]
    wait_for(lambda: running.worker.prefetched_jobs == 2, message="two jobs prefetched")
    cancelled = producer.cancel(ids[1])
    assert producer.wait_state(ids[1], CANCELLED).attempts[-1].outcome == (
        job_pb2.ATTEMPT_OUTCOME_CANCELLED
    ), cancelled
    # Shutting down: the waiting job goes back at once, the running one may finish.
    stopper = threading.Thread(target=running.stop)
    stopper.start()
    handed_back = producer.wait_state(ids[2], PENDING)
    assert handed_back.attempts[-1].outcome == job_pb2.ATTEMPT_OUTCOME_RELEASED
    assert producer.get(ids[0]).state == RUNNING
    gate.set()
    stopper.join(30)
    assert producer.wait_state(ids[0], SUCCEEDED).attempt == 1
    assert started == [0]
    # The two that never ran are logged as such, and never as started.
    said = {
        job_id: [r.getMessage() for r in caplog.records if getattr(r, "job_id", None) == job_id]
        for job_id in ids
    }
    assert said[ids[0]][0] == "started" and said[ids[0]][-1].startswith("succeeded after")
    assert "started" not in said[ids[1]] + said[ids[2]]
    assert said[ids[1]][-1].startswith("cancelled before it started (cancelled, final)")
    assert said[ids[2]][-1] == "handed back before it started"


def test_a_draining_worker_says_so_before_it_hands_back_its_prefetched_jobs(
    scheduler: Any,
    producer: Producer,
    start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handed-back job is ready again as soon as its release is written: the stream must
    already be draining then, or the scheduler may lease the job straight back to it."""
    gate = threading.Event()

    def setup(worker: Worker) -> None:
        @worker.handler("gated")
        def gated(payload: Any) -> None:
            gate.wait(20)

    store, dispatcher = scheduler.scheduler.store, scheduler.scheduler.dispatcher
    real_nack = store.nack
    draining_at_release: list[bool] = []

    async def nack(items: Any, **kwargs: Any) -> Any:
        if any(item.release for item in items):
            sessions = [s for s in dispatcher.sessions if s.worker_id == "drains"]
            draining_at_release.append(bool(sessions) and all(s.draining for s in sessions))
        return await real_nack(items, **kwargs)

    monkeypatch.setattr(store, "nack", nack)
    running = start_worker(setup, concurrency=1, prefetch=1, worker_id="drains")
    ids = [producer.submit("gated", {}) for _ in range(2)]
    wait_for(lambda: running.worker.prefetched_jobs == 1, message="one job prefetched")
    stopper = threading.Thread(target=running.stop)
    stopper.start()
    producer.wait_state(ids[1], PENDING)
    gate.set()
    stopper.join(30)
    assert draining_at_release == [True]


def test_leases_are_extended_while_a_handler_runs(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    def setup(worker: Worker) -> None:
        @worker.handler("sleepy")
        async def sleepy(payload: Any) -> str:
            await asyncio.sleep(3.5)
            return "awake"

    start_worker(setup)
    # Without extensions the 1 s lease would expire (and be reaped) three times over.
    job_id = producer.submit("sleepy", {}, max_attempts=1, lease_timeout=Duration(seconds=1))
    job = producer.wait_state(job_id, SUCCEEDED)
    assert job.attempt == 1
    assert json.loads(job.result.data) == "awake"


def test_a_shorter_lease_arriving_while_longer_ones_are_held_is_extended_in_time(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    """The heartbeat sleeps until the earliest extension it knows of; a lease that is
    due sooner must wake it."""

    def setup(worker: Worker) -> None:
        @worker.handler("sleepy")
        async def sleepy(payload: Any) -> str:
            await asyncio.sleep(payload["seconds"])
            return "awake"

    start_worker(setup)
    long = producer.submit("sleepy", {"seconds": 5}, lease_timeout=Duration(seconds=60))
    producer.wait_state(long, RUNNING)
    short = producer.submit(
        "sleepy", {"seconds": 3.5}, max_attempts=1, lease_timeout=Duration(seconds=1)
    )
    job = producer.wait_state(short, SUCCEEDED)
    assert job.attempt == 1
    assert producer.wait_state(long, SUCCEEDED).attempt == 1


def test_shutdown_hands_back_jobs_beyond_the_grace(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    running = start_worker(drain_grace=0.5)
    job_id = producer.submit("text", {"text": "abcdefghij"})
    producer.wait_state(job_id, RUNNING)
    wait_for(lambda: running.worker.active_jobs == 1, message="the handler to start")
    running.stop()
    assert running.worker.unsettled_outcomes == 0
    job = producer.get(job_id)
    assert job.state == PENDING
    assert job.attempts[-1].outcome == job_pb2.ATTEMPT_OUTCOME_RELEASED


def test_job_caught_between_lease_and_shutdown_is_handed_back(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    # Stopping as soon as the job is RUNNING in the database: it may reach the worker
    # before the drain (then it is stopped at once, the grace being zero), or after
    # (then it is handed back on arrival). Either way it is released, not lost.
    running = start_worker(drain_grace=0)
    job_id = producer.submit("text", {"text": "abc"})
    producer.wait_state(job_id, RUNNING)
    running.stop()
    assert running.worker.unsettled_outcomes == 0
    job = producer.wait_state(job_id, PENDING)
    assert job.attempts[-1].outcome == job_pb2.ATTEMPT_OUTCOME_RELEASED


def test_hand_back_now_skips_the_grace(
    producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    running = start_worker(drain_grace=60)
    job_id = producer.submit("text", {"text": "abcdefghij"})
    producer.wait_state(job_id, RUNNING)
    wait_for(lambda: running.worker.active_jobs == 1, message="the handler to start")
    started = time.monotonic()
    running.worker.hand_back_now()
    running.stop()
    assert time.monotonic() - started < 10
    job = producer.get(job_id)
    assert job.state == PENDING
    assert job.attempts[-1].outcome == job_pb2.ATTEMPT_OUTCOME_RELEASED


def _extend_every(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Makes workers extend their leases every `seconds`, whatever the lease."""
    from jobwire.worker import engine

    monkeypatch.setattr(engine.Engine, "_extend_interval", lambda self, execution: seconds)


async def _stuck_until_cancelled(cancelled: threading.Event) -> None:
    """A handler's body that never returns, and says when it is cancelled."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.set()
        raise


def test_a_lost_lease_stops_the_handler_without_reporting(
    producer: Producer,
    start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Extending far too late lets the 1 s lease expire: the reaper fails the job
    # (one attempt allowed), and the next extension is refused as lost.
    _extend_every(monkeypatch, 2.5)
    cancelled = threading.Event()

    def setup(worker: Worker) -> None:
        @worker.handler("stuck")
        async def stuck(payload: Any) -> None:
            await _stuck_until_cancelled(cancelled)

    running = start_worker(setup)
    job_id = producer.submit("stuck", {}, max_attempts=1, lease_timeout=Duration(seconds=1))
    job = producer.wait_state(job_id, FAILED)
    assert job.error.kind == "lease_expired"
    assert cancelled.wait(10)
    wait_for(lambda: running.worker.active_jobs == 0, message="the attempt to be dropped")
    assert running.worker.unsettled_outcomes == 0
    assert producer.get(job_id).attempts[0].outcome == job_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED


def test_a_job_leased_again_to_the_same_worker_stops_its_earlier_attempt(
    producer: Producer,
    start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No extension before the test ends: the first lease expires, the reaper puts the job
    # back, and this worker, the only one, leases it again under a new token. Nothing but
    # the new lease can tell the first attempt that it is over.
    _extend_every(monkeypatch, 60.0)
    first_cancelled = threading.Event()

    def setup(worker: Worker) -> None:
        @worker.handler("stuck-once")
        async def stuck_once(payload: Any, ctx: JobContext) -> str:
            if ctx.attempt == 1:
                await _stuck_until_cancelled(first_cancelled)
            return "second"

    running = start_worker(setup)
    job_id = producer.submit(
        "stuck-once",
        {},
        max_attempts=2,
        lease_timeout=Duration(seconds=1),
        backoff=job_pb2.BackoffPolicy(initial=Duration(nanos=1)),
    )
    job = producer.wait_state(job_id, SUCCEEDED)
    assert job.attempt == 2
    assert first_cancelled.wait(10)
    wait_for(lambda: running.worker.active_jobs == 0, message="the first attempt to be dropped")
    assert running.worker.unsettled_outcomes == 0
    assert [a.outcome for a in job.attempts] == [
        job_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED,
        job_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    ]


def test_async_with_runs_and_drains(scheduler: Any, producer: Producer) -> None:
    worker = Worker(scheduler.target, concurrency=2)
    register_builtins(worker)

    async def main() -> job_pb2.Job:
        async with worker:
            job_id = await asyncio.to_thread(producer.submit, "reverse", {"text": "abc"})
            return await asyncio.to_thread(producer.wait_state, job_id, SUCCEEDED)

    job = asyncio.run(main())
    assert json.loads(job.result.data) == "cba"
    assert not worker.connected


def test_outcome_reached_while_the_scheduler_is_down_is_sent_after_it_returns(
    scheduler: Any, producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    proceed = threading.Event()

    def setup(worker: Worker) -> None:
        @worker.handler("gate")
        def gate(payload: Any) -> str:
            assert proceed.wait(60)
            return "through"

    running = start_worker(setup)
    job_id = producer.submit("gate", {}, lease_timeout=Duration(seconds=30))
    producer.wait_state(job_id, RUNNING)
    wait_for(lambda: running.worker.active_jobs == 1, message="the handler to start")

    scheduler.stop()
    wait_for(lambda: not running.worker.connected, message="the worker to notice")
    proceed.set()
    wait_for(lambda: running.worker.active_jobs == 0, message="the handler to finish")
    assert running.worker.unsettled_outcomes == 1
    scheduler.start()

    wait_for(lambda: running.worker.connected, message="the worker to reconnect")
    job = producer.wait_state(job_id, SUCCEEDED)
    assert job.attempt == 1  # the lease was kept across the outage
    assert json.loads(job.result.data) == "through"
    wait_for(lambda: running.worker.unsettled_outcomes == 0, message="the ack to be confirmed")


def test_running_job_survives_a_scheduler_restart(
    scheduler: Any, producer: Producer, start_worker: Callable[..., WorkerThread]
) -> None:
    def setup(worker: Worker) -> None:
        @worker.handler("nap")
        async def nap(payload: Any) -> str:
            await asyncio.sleep(3)
            return "rested"

    running = start_worker(setup)
    job_id = producer.submit("nap", {}, lease_timeout=Duration(seconds=5))
    producer.wait_state(job_id, RUNNING)
    scheduler.restart()
    job = producer.wait_state(job_id, SUCCEEDED, timeout=20)
    assert job.attempt == 1
    assert running.worker.connected


# -- `jobwire worker` in a subprocess ---------------------------------------------------------


class WorkerProcess:
    def __init__(self, target: str, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, **QUIET, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobwire.cli.main", "worker", "--target", target, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_connected(self) -> None:
        wait_for(lambda: "connected to" in self.log(), message="the worker process to connect")

    def wait_started(self, job_id: str) -> None:
        # RUNNING in the database precedes the job's arrival at the worker.
        wait_for(
            lambda: f"{job_id} attempt 1] started" in self.log(),
            message=f"the worker to start job {job_id}",
        )

    def terminate_and_wait(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit after SIGTERM:\n{self.log()}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def worker_process(scheduler: Any, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        process = WorkerProcess(scheduler.target, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(process)
        process.wait_connected()
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()


@pytest.mark.slow
def test_sigterm_lets_a_short_job_finish_and_exits_zero(
    producer: Producer, worker_process: Callable[..., WorkerProcess]
) -> None:
    worker = worker_process("--drain-grace", "30")
    job_id = producer.submit("text", {"text": "ab"})
    worker.wait_started(job_id)
    code = worker.terminate_and_wait()
    assert code == 0, worker.log()
    job = producer.get(job_id)
    assert job.state == SUCCEEDED, worker.log()
    assert json.loads(job.result.data) == "ab"


@pytest.mark.slow
def test_sigterm_hands_back_a_job_beyond_the_drain_grace(
    producer: Producer, worker_process: Callable[..., WorkerProcess]
) -> None:
    worker = worker_process("--drain-grace", "1")
    job_id = producer.submit("text", {"text": "abcdefghijklmnop"})
    worker.wait_started(job_id)
    started = time.monotonic()
    code = worker.terminate_and_wait()
    assert code == 0, worker.log()
    assert time.monotonic() - started < 10  # not the 16 s the text would take
    job = producer.get(job_id)
    assert job.state == PENDING, worker.log()
    assert job.attempts[-1].outcome == job_pb2.ATTEMPT_OUTCOME_RELEASED


def test_worker_command_runs_handlers_from_an_imported_module(
    producer: Producer,
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = tmp_path / "shout_handlers.py"
    module.write_text(
        "from jobwire.worker import handler\n"
        "\n"
        "@handler('shout')\n"
        "async def shout(payload, ctx):\n"
        "    return payload['text'].upper() + '!'\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    worker = worker_process("--import", "shout_handlers", "--no-builtins")
    job_id = producer.submit("shout", {"text": "hey"})
    job = producer.wait_state(job_id, SUCCEEDED)
    assert json.loads(job.result.data) == "HEY!"
    assert worker.terminate_and_wait() == 0
