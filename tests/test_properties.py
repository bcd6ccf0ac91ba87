"""Property tests against a real scheduler on a real PostgreSQL.

1. A state machine drives jobs through submit, lease, extend, ack, nack, cancel, lease
   expiry and retry, with stale tokens thrown in, and checks after every step that the
   scheduler (through Get and through SQL) agrees with a small model and keeps the job
   invariants of the design.
2. Generated malformed, boundary and oversized messages for every RPC: the server answers
   with the status the contract names, a refused request writes nothing, and the server
   keeps serving.
3. The smallest reproductions of what 1 and 2 found, one test each.

Runs are reproducible (derandomize, no example database) and need no other test's state:
each part has a scheduler and a database of its own for the module.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from jobwire.v1 import job_pb2, jobs_pb2, leases_pb2
from psycopg.conninfo import make_conninfo

from tests import strategies
from tests.strategies import IdForm
from tests.support import SchedulerThread, StreamClient, wait_for

pytestmark = pytest.mark.slow

Code = grpc.StatusCode
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
STATE_NAMES = {v: k.removeprefix("JOB_STATE_") for k, v in job_pb2.JobState.items()}
OUTCOME_NAMES = {v: k.removeprefix("ATTEMPT_OUTCOME_") for k, v in job_pb2.AttemptOutcome.items()}


# -- a scheduler per module, on its own database ---------------------------------------------


@dataclass
class Running:
    scheduler: SchedulerThread
    database_url: str


def _start_scheduler(postgres_url: str, template_database: str) -> Iterator[Running]:
    name = f"jobwire_props_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = make_conninfo(postgres_url, dbname=name)
    scheduler = SchedulerThread(
        url, stream_grace=timedelta(seconds=1), reaper_interval=0.2, poll_interval=0.2
    )
    scheduler.start()
    try:
        yield Running(scheduler, url)
    finally:
        scheduler.stop()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def machine_scheduler(postgres_url: str, template_database: str) -> Iterator[Running]:
    yield from _start_scheduler(postgres_url, template_database)


def call(fn: Callable[[], Any]) -> tuple[Code, Any]:
    """Runs one RPC; returns its status code and response (or the error)."""
    try:
        return Code.OK, fn()
    except grpc.RpcError as exc:
        return exc.code(), exc


# -- part 1: the job state machine -----------------------------------------------------------


@dataclass
class ModelJob:
    id: str
    queue: str
    priority: int
    max_attempts: int
    payload: bytes
    key: str | None
    ready: int  # step at which it last became ready: leasing order after priority
    retried_from: str = ""
    state: str = "PENDING"
    attempt: int = 0
    released: int = 0
    token: str | None = None
    cancel_requested: bool = False
    result: bytes | None = None
    error_kind: str | None = None
    outcomes: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    retried: bool = False
    final: tuple[Any, ...] | None = None  # the SQL row once terminal: must never change

    @property
    def spec_key(self) -> tuple[Any, ...]:
        return (self.queue, self.priority, self.max_attempts, self.payload)

    def order(self) -> tuple[int, int, uuid.UUID]:
        return (-self.priority, self.ready, uuid.UUID(self.id))


JOB_COLUMNS = (
    "id::text, state::text, attempt, released, lease_token::text, lease_deadline, "
    "cancel_requested, result, error_message, error_kind, finished_at, updated_at, "
    "retried_from::text, started_at, run_at"
)
ATTEMPT_COLUMNS = "a.job_id::text, a.number, a.outcome::text, a.lease_token::text, a.finished_at"
NO_BACKOFF = job_pb2.BackoffPolicy(initial=Duration(), max=Duration())

machine_runs = itertools.count(1)


def no_ties(specs: list[tuple[int, int, int, str | None, bytes]]) -> bool:
    """Jobs of one batch share run_at: two new ones of the same queue and priority would be
    leased in the order of their random ids. A run must be reproducible, so a batch has no
    such pair (items with one idempotency key are one job, or a conflict)."""
    for a, b in itertools.combinations(specs, 2):
        if a[:2] == b[:2] and (a[3] is None or a[3] != b[3]):
            return False
    return True


class JobMachine(RuleBasedStateMachine):
    """Jobs in two queues, one stream worker per queue that takes a job per credit."""

    running: ClassVar[Running]

    def __init__(self) -> None:
        super().__init__()
        run = next(machine_runs)
        self.sched = self.running.scheduler
        self.queues = (f"props{run}-a", f"props{run}-b")
        self.channel = self.sched.channel()
        self.jobs_stub = self.sched.jobs(self.channel)
        self.leases_stub = self.sched.leases(self.channel)
        self.db = psycopg.connect(self.running.database_url, autocommit=True)
        self.workers = {
            q: StreamClient(self.sched.target, worker_id=f"props{run}-{q}", queues=(q,), credits=0)
            for q in self.queues
        }
        self.seen = {q: {"job": 0, "result": 0, "cancel": 0} for q in self.queues}
        self.model: dict[str, ModelJob] = {}
        self.keys: dict[tuple[str, str], str] = {}
        self.step = 0
        self.touched: set[str] = set()

    def teardown(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.channel.close()
        self.db.close()

    # -- helpers ------------------------------------------------------------------------------

    def _tick(self) -> int:
        self.step += 1
        return self.step

    # Choices are drawn from lists in creation order: ids are random, so sorting by them
    # would make a run irreproducible.
    def _in(self, *states: str) -> list[str]:
        return [j.id for j in self.model.values() if j.state in states]

    def _stale(self) -> list[tuple[str, int]]:
        return [
            (j.id, i)
            for j in self.model.values()
            for i, outcome in enumerate(j.outcomes)
            if outcome != "RUNNING"
        ]

    def _some(self, data: st.DataObject) -> list[str]:
        """The RUNNING jobs (three times in four, when there are any), or all jobs."""
        running = self._in("RUNNING")
        return running if running and data.draw(st.integers(0, 3)) else list(self.model)

    def _row(self, job_id: str) -> tuple[Any, ...]:
        row = self.db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobwire_jobs WHERE id = %s", (job_id,)
        ).fetchone()
        assert row is not None, f"job {job_id} vanished"
        return tuple(row)

    def _next(self, queue: str, kind: str) -> Any:
        worker, index = self.workers[queue], self.seen[queue][kind]
        items = wait_for(
            lambda: len(worker.of_kind(kind)) > index and worker.of_kind(kind),
            timeout=10,
            message=f"{kind} #{index} on the stream of {queue}",
        )
        self.seen[queue][kind] += 1
        return items[index]

    def _end_attempt(self, job: ModelJob, *, outcome: str, retryable: bool, kind: str) -> None:
        """The model of jobwire_end_attempt: what a failed, released or expired attempt leads to."""
        step = self._tick()
        if job.cancel_requested:
            job.state, job.outcomes[-1], job.error_kind = "CANCELLED", "CANCELLED", "cancelled"
        elif outcome == "RELEASED":
            job.state, job.outcomes[-1] = "PENDING", "RELEASED"
            job.released += 1
            job.ready = step
        else:
            job.outcomes[-1] = outcome
            job.error_kind = kind
            left = job.attempt - job.released < job.max_attempts
            job.state = "PENDING" if retryable and left else "FAILED"
            job.ready = step
        job.token = None

    def _new_job(self, spec: job_pb2.JobSpec, job_id: str, ready: int) -> ModelJob:
        job = ModelJob(
            id=job_id,
            queue=spec.queue,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            payload=spec.payload.data,
            key=spec.idempotency_key or None,
            ready=ready,
        )
        self.model[job_id] = job
        return job

    # -- rules --------------------------------------------------------------------------------

    @precondition(lambda self: len(self._in("PENDING", "RUNNING")) < 6)
    @rule(
        specs=st.lists(
            st.tuples(
                st.integers(0, 1),
                st.one_of(st.integers(-2, 2), st.sampled_from([-1000, 1000])),
                st.integers(1, 3),
                st.sampled_from([None, None, "k1", "k2"]),
                st.sampled_from([b"{}", b'"x"']),
            ),
            min_size=1,
            max_size=3,
        ).filter(no_ties),
        again=st.sampled_from([None, None, None, "same", "changed"]),
        data=st.data(),
    )
    def submit(
        self,
        specs: list[tuple[int, int, int, str | None, bytes]],
        again: str | None,
        data: st.DataObject,
    ) -> None:
        keyed = [j for j in self.model.values() if j.key]
        if again and keyed:
            # The same idempotency key again: the same spec finds the job, another is refused.
            job = data.draw(st.sampled_from(keyed))
            change = again == "changed"
            self._submit(
                jobs_pb2.SubmitRequest(
                    jobs=[
                        job_pb2.JobSpec(
                            queue=job.queue,
                            type="echo",
                            payload=job_pb2.Payload(
                                data=job.payload, content_type="application/json"
                            ),
                            priority=job.priority
                            + (0 if not change else 1 if job.priority < 1000 else -1),
                            max_attempts=job.max_attempts,
                            backoff=NO_BACKOFF,
                            idempotency_key=job.key or "",
                        )
                    ]
                )
            )
            return
        request = jobs_pb2.SubmitRequest(
            jobs=[
                job_pb2.JobSpec(
                    queue=self.queues[q],
                    type="echo",
                    payload=job_pb2.Payload(data=body, content_type="application/json"),
                    priority=priority,
                    max_attempts=attempts,
                    backoff=NO_BACKOFF,
                    idempotency_key=key or "",
                )
                for q, priority, attempts, key, body in specs
            ]
        )
        self._submit(request)

    def _submit(self, request: jobs_pb2.SubmitRequest) -> None:
        # The model's answer first: which items find an existing job, or a conflict.
        keys = self.keys
        expected: list[str | None] = []  # existing id, or None for a new job
        conflict = False
        pending: dict[tuple[str, str], job_pb2.JobSpec] = {}
        for spec in request.jobs:
            if not spec.idempotency_key:
                expected.append(None)
                continue
            key = (spec.queue, spec.idempotency_key)
            spec_key = (spec.queue, spec.priority, spec.max_attempts, spec.payload.data)
            if key in keys:
                if self.model[keys[key]].spec_key != spec_key:
                    conflict = True
                expected.append(keys[key])
            elif key in pending:
                first = pending[key]
                if (first.priority, first.payload.data, first.max_attempts) != (
                    spec.priority,
                    spec.payload.data,
                    spec.max_attempts,
                ):
                    conflict = True
                expected.append("earlier")
            else:
                pending[key] = spec
                expected.append(None)
        code, response = call(lambda: self.jobs_stub.Submit(request))
        step = self._tick()
        if conflict:
            assert code == Code.ALREADY_EXISTS, (code, response)
            return
        assert code == Code.OK, (code, response)
        results = response.results
        assert len(results) == len(request.jobs)
        made: dict[tuple[str, str], str] = {}
        for spec, want, result in zip(request.jobs, expected, results, strict=True):
            key = (spec.queue, spec.idempotency_key)
            if want is None:
                assert result.created, result
                assert result.job.state == job_pb2.JOB_STATE_PENDING
                assert result.job.id not in self.model
                self._new_job(spec, result.job.id, step)
                if spec.idempotency_key:
                    made[key] = result.job.id
            else:
                # Idempotent resubmission: the same job, not a new one.
                same = made[key] if want == "earlier" else want
                assert not result.created and result.job.id == same, (result, same)
                assert STATE_NAMES[result.job.state] == self.model[same].state
            self.touched.add(result.job.id)
        self.keys.update(made)

    @precondition(lambda self: any(j.state == "PENDING" for j in self.model.values()))
    @rule(data=st.data(), credits=st.integers(1, 3))
    def lease(self, data: st.DataObject, credits: int) -> None:
        """Gives credit to a queue's worker: it receives that queue's first ready jobs, in
        order (priority, then the time they became ready), one per credit."""
        queue = data.draw(
            st.sampled_from(sorted({self.model[i].queue for i in self._in("PENDING")}))
        )
        line = sorted(
            (j for j in self.model.values() if j.queue == queue and j.state == "PENDING"),
            key=ModelJob.order,
        )[:credits]
        self.workers[queue].send(
            leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=len(line)))
        )
        got = [self._next(queue, "job") for _ in line]
        self._tick()
        for first, leased in zip(line, got, strict=True):
            assert leased.job.id == first.id, (
                f"leased {leased.job.id} (priority {leased.job.spec.priority}) but {first.id} "
                f"(priority {first.priority}) was next in line"
            )
            assert leased.job.attempt == first.attempt + 1
            assert leased.job.state == job_pb2.JOB_STATE_RUNNING
            assert leased.lease_token and leased.lease_token not in first.tokens
            first.state, first.attempt = "RUNNING", first.attempt + 1
            first.token = leased.lease_token
            first.outcomes.append("RUNNING")
            first.tokens.append(leased.lease_token)
            self.touched.add(first.id)

    @precondition(lambda self: any(j.state == "RUNNING" for j in self.model.values()))
    @rule(
        data=st.data(),
        extend_by=st.one_of(st.none(), st.integers(60, 3600)),
        on_stream=st.booleans(),
    )
    def extend(self, data: st.DataObject, extend_by: int | None, on_stream: bool) -> None:
        job = self.model[data.draw(st.sampled_from(self._in("RUNNING")))]
        assert job.token is not None
        item = leases_pb2.ExtendItem(job_id=job.id, lease_token=job.token)
        if extend_by is not None:
            item.extend_by.seconds = extend_by
        before = datetime.now(UTC)
        if on_stream:
            self.workers[job.queue].send(
                leases_pb2.LeaseRequest(extend=leases_pb2.ExtendRequest(items=[item]))
            )
            answer = self._next(job.queue, "result")
            assert answer.kind == leases_pb2.SETTLE_KIND_EXTEND and answer.job_id == job.id
            assert answer.code == Code.OK.value[0], answer.message
            deadline, cancel_requested = answer.lease_deadline, answer.cancel_requested
        else:
            code, response = call(
                lambda: self.leases_stub.Extend(leases_pb2.ExtendRequest(items=[item]))
            )
            assert code == Code.OK, response
            [extended] = response.results
            assert extended.job_id == job.id
            deadline, cancel_requested = extended.lease_deadline, extended.cancel_requested
        after = datetime.now(UTC)
        self._tick()
        assert cancel_requested == job.cancel_requested
        by = timedelta(seconds=extend_by if extend_by is not None else 30)
        got = deadline.ToDatetime(tzinfo=UTC)
        assert before + by - timedelta(seconds=1) <= got <= after + by + timedelta(seconds=1)
        self.touched.add(job.id)

    @precondition(lambda self: any(j.state == "RUNNING" for j in self.model.values()))
    @rule(data=st.data(), result=st.binary(max_size=8), on_stream=st.booleans())
    def ack(self, data: st.DataObject, result: bytes, on_stream: bool) -> None:
        job = self.model[data.draw(st.sampled_from(self._in("RUNNING")))]
        assert job.token is not None
        item = leases_pb2.AckItem(
            job_id=job.id,
            lease_token=job.token,
            result=job_pb2.Payload(data=result, content_type="application/octet-stream"),
        )
        code = self._settle("ack", item, on_stream)
        self._tick()
        assert code == Code.OK
        # Success wins even over a cancel request that came while the handler ran.
        job.state, job.result, job.token, job.error_kind = "SUCCEEDED", result, None, None
        job.outcomes[-1] = "SUCCEEDED"
        self.touched.add(job.id)

    @precondition(lambda self: any(j.state == "RUNNING" for j in self.model.values()))
    @rule(
        data=st.data(),
        retryable=st.booleans(),
        release=st.sampled_from([False, False, False, True]),
        on_stream=st.booleans(),
    )
    def nack(self, data: st.DataObject, retryable: bool, release: bool, on_stream: bool) -> None:
        job = self.model[data.draw(st.sampled_from(self._in("RUNNING")))]
        assert job.token is not None
        item = leases_pb2.NackItem(
            job_id=job.id,
            lease_token=job.token,
            error=job_pb2.JobError(message="boom", kind="Boom", details="trace"),
            retryable=retryable,
            retry_delay=Duration(),
            release=release,
        )
        code = self._settle("nack", item, on_stream)
        assert code == Code.OK
        self._end_attempt(
            job, outcome="RELEASED" if release else "FAILED", retryable=retryable, kind="Boom"
        )
        self.touched.add(job.id)

    def _settle(self, kind: str, item: Any, on_stream: bool) -> Code:
        if on_stream:
            queue = self.model[item.job_id].queue
            self.workers[queue].send(leases_pb2.LeaseRequest(**{kind: item}))
            answer = self._next(queue, "result")
            want = {"ack": leases_pb2.SETTLE_KIND_ACK, "nack": leases_pb2.SETTLE_KIND_NACK}[kind]
            assert (answer.kind, answer.job_id, answer.lease_token) == (
                want,
                item.job_id,
                item.lease_token,
            )
            return Code(next(c for c in Code if c.value[0] == answer.code))
        stub = {"ack": self.leases_stub.Ack, "nack": self.leases_stub.Nack}[kind]
        request = {"ack": leases_pb2.AckRequest, "nack": leases_pb2.NackRequest}[kind]
        code, _ = call(lambda: stub(request(items=[item])))
        return code

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), reason=st.sampled_from(["", "no longer needed"]))
    def cancel(self, data: st.DataObject, reason: str) -> None:
        self._cancel(self.model[data.draw(st.sampled_from(self._some(data)))], reason)

    def _cancel(self, job: ModelJob, reason: str) -> None:
        code, response = call(
            lambda: self.jobs_stub.Cancel(jobs_pb2.CancelRequest(id=job.id, reason=reason))
        )
        self._tick()
        self.touched.add(job.id)
        if job.state in ("SUCCEEDED", "FAILED"):
            assert code == Code.FAILED_PRECONDITION, (job.state, code)
            return
        assert code == Code.OK, response
        if job.state == "PENDING":
            job.state, job.error_kind = "CANCELLED", "cancelled"
        elif job.state == "RUNNING" and not job.cancel_requested:
            job.cancel_requested = True
            # The worker holding the lease is told, with the lease's token.
            worker = self.workers[job.queue]
            wait_for(
                lambda: any(
                    (n.job_id, n.lease_token, n.reason) == (job.id, job.token, reason)
                    for n in worker.of_kind("cancel")
                ),
                timeout=5,
                message=f"a cancel notice for {job.id} on the stream holding it",
            )
        assert STATE_NAMES[response.job.state] == job.state
        assert response.job.cancel_requested == job.cancel_requested

    @precondition(lambda self: any(j.state == "RUNNING" for j in self.model.values()))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """Moves a lease deadline into the past and lets the reaper end the attempt."""
        job = self.model[data.draw(st.sampled_from(self._in("RUNNING")))]
        self.db.execute(
            "UPDATE jobwire_jobs SET lease_deadline = now() - interval '1 second' "
            "WHERE id = %s AND lease_token = %s",
            (job.id, job.token),
        )
        store = self.sched.scheduler.store
        self.sched.call(lambda: store.expire_leases(limit=500))
        token = job.token
        wait_for(
            lambda: self._row(job.id)[4] != token,
            timeout=5,
            message=f"the reaper to end attempt {job.attempt} of {job.id}",
        )
        self._end_attempt(job, outcome="LEASE_EXPIRED", retryable=True, kind="lease_expired")
        self.touched.add(job.id)

    @precondition(lambda self: any(j.state in ("FAILED", "CANCELLED") for j in self.model.values()))
    @rule(data=st.data(), any_job=st.booleans())
    def retry(self, data: st.DataObject, any_job: bool) -> None:
        """Retry of a FAILED or CANCELLED job; of any job (mostly refused) half the time."""
        choices = list(self.model) if any_job else self._in("FAILED", "CANCELLED")
        old = self.model[data.draw(st.sampled_from(choices))]
        code, response = call(lambda: self.jobs_stub.Retry(jobs_pb2.RetryRequest(id=old.id)))
        step = self._tick()
        if old.state not in ("FAILED", "CANCELLED") or old.retried:
            assert code == Code.FAILED_PRECONDITION, (old.state, old.retried, code)
            return
        assert code == Code.OK, response
        new = response.job
        assert new.retried_from == old.id and new.id not in self.model
        assert new.state == job_pb2.JOB_STATE_PENDING and new.attempt == 0
        assert not new.spec.idempotency_key
        old.retried = True
        job = self._new_job(new.spec, new.id, step)
        job.retried_from, job.key = old.id, None
        assert job.spec_key == (old.queue, old.priority, old.max_attempts, old.payload)
        self.touched.update((old.id, new.id))

    @precondition(lambda self: bool(self.model))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["ack", "nack", "extend"]),
        foreign=st.booleans(),
        on_stream=st.booleans(),
        then_cancel=st.booleans(),
    )
    def stale_settle(
        self, data: st.DataObject, kind: str, foreign: bool, on_stream: bool, then_cancel: bool
    ) -> None:
        """A token of an attempt that already ended is refused with FAILED_PRECONDITION (or
        is a harmless repeat of the same outcome); a token the job never had is
        INVALID_ARGUMENT. Either way nothing changes: if the job runs, its current holder
        still holds it, and a cancel (half the time, right away) still reaches it."""
        job_id = self._stale_settle(data, kind, foreign, on_stream)
        job = self.model[job_id]
        if then_cancel and job.state == "RUNNING" and not job.cancel_requested:
            self._cancel(job, "after a stale settle")

    def _stale_settle(self, data: st.DataObject, kind: str, foreign: bool, on_stream: bool) -> str:
        stale = self._stale()
        if foreign or not stale:
            job_id = data.draw(st.sampled_from(self._some(data)))
            before = self._row(job_id)
            code = self._send_one(kind, job_id, str(uuid.uuid4()), on_stream)
            self._tick()
            assert code == Code.INVALID_ARGUMENT, f"{kind} with a foreign token: {code}"
            assert self._row(job_id) == before, "a settle with a foreign token changed the job"
            return job_id
        job_id, index = data.draw(st.sampled_from(stale))
        job = self.model[job_id]
        token, outcome = job.tokens[index], job.outcomes[index]
        before = self._row(job_id)
        code = self._send_one(kind, job_id, token, on_stream)
        self._tick()
        repeat = (kind == "ack" and outcome == "SUCCEEDED") or (
            kind == "nack" and outcome in ("FAILED", "CANCELLED", "RELEASED")
        )
        want = Code.OK if repeat else Code.FAILED_PRECONDITION
        assert code == want, f"{kind} with the token of attempt {index + 1} ({outcome}): {code}"
        assert self._row(job_id) == before, "a settle with an old token changed the job"
        self.touched.add(job_id)
        return job_id

    @precondition(
        lambda self: any(j.state == "RUNNING" for j in self.model.values()) and bool(self._stale())
    )
    @rule(data=st.data(), stale_first=st.booleans())
    def mixed_ack_batch(self, data: st.DataObject, stale_first: bool) -> None:
        """One current and one old token in one Ack: all or nothing."""
        live = self.model[data.draw(st.sampled_from(self._in("RUNNING")))]
        stale = [(i, n) for i, n in self._stale() if i != live.id]
        if not stale:
            return
        old_id, index = data.draw(st.sampled_from(stale))
        old = self.model[old_id]
        assert live.token is not None
        items = [
            leases_pb2.AckItem(job_id=live.id, lease_token=live.token),
            leases_pb2.AckItem(job_id=old.id, lease_token=old.tokens[index]),
        ]
        if stale_first:
            items.reverse()
        before = (self._row(live.id), self._row(old.id))
        code, _ = call(lambda: self.leases_stub.Ack(leases_pb2.AckRequest(items=items)))
        self._tick()
        if old.outcomes[index] == "SUCCEEDED":  # a repeat: the batch applies
            assert code == Code.OK
            live.state, live.result, live.token, live.error_kind = "SUCCEEDED", b"", None, None
            live.outcomes[-1] = "SUCCEEDED"
        else:
            assert code == Code.FAILED_PRECONDITION, code
            assert (self._row(live.id), self._row(old.id)) == before
        self.touched.update((live.id, old.id))

    def _send_one(self, kind: str, job_id: str, token: str, on_stream: bool) -> Code:
        if kind == "extend":
            item: Any = leases_pb2.ExtendItem(job_id=job_id, lease_token=token)
            if on_stream:
                queue = self.model[job_id].queue
                self.workers[queue].send(
                    leases_pb2.LeaseRequest(extend=leases_pb2.ExtendRequest(items=[item]))
                )
                answer = self._next(queue, "result")
                assert answer.kind == leases_pb2.SETTLE_KIND_EXTEND
                return Code(next(c for c in Code if c.value[0] == answer.code))
            code, _ = call(lambda: self.leases_stub.Extend(leases_pb2.ExtendRequest(items=[item])))
            return code
        if kind == "ack":
            item = leases_pb2.AckItem(job_id=job_id, lease_token=token)
        else:
            item = leases_pb2.NackItem(
                job_id=job_id,
                lease_token=token,
                error=job_pb2.JobError(message="late", kind="Late"),
                retryable=True,
            )
        return self._settle(kind, item, on_stream)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def agrees_with_sql(self) -> None:
        rows = {
            r[0]: tuple(r)
            for r in self.db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobwire_jobs WHERE queue = ANY(%s)",
                (list(self.queues),),
            )
        }
        # No accepted job is lost, and none appears that the model does not know.
        assert set(rows) == set(self.model), set(rows) ^ set(self.model)
        attempts: dict[str, list[tuple[Any, ...]]] = {}
        for a in self.db.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM jobwire_attempt_history a JOIN jobwire_jobs j "
            "ON j.id = a.job_id WHERE j.queue = ANY(%s) ORDER BY a.job_id, a.number",
            (list(self.queues),),
        ):
            attempts.setdefault(a[0], []).append(tuple(a))
        for job_id, job in self.model.items():
            row = rows[job_id]
            state, attempt, released, token, deadline, cancel_requested = row[1:7]
            result, error_message, error_kind, finished_at = row[7:11]
            retried_from, started_at = row[12:14]
            where = f"job {job_id}"
            assert state == job.state, f"{where}: {state}, model says {job.state}"
            assert attempt == job.attempt and released == job.released, where
            assert cancel_requested == job.cancel_requested, where
            assert (retried_from or "") == job.retried_from, where
            # result is set if and only if SUCCEEDED; error is set on FAILED (and CANCELLED).
            assert (result is not None) == (state == "SUCCEEDED"), where
            if result is not None:
                assert bytes(result) == job.result, where
            if state in ("FAILED", "CANCELLED"):
                assert error_message is not None, where
            assert error_kind == job.error_kind, f"{where}: error kind {error_kind}"
            assert (finished_at is not None) == (state in TERMINAL), where
            assert (started_at is not None) == (attempt > 0), where
            # The lease: present exactly while RUNNING, and it is the model's current token.
            assert (token is not None) == (state == "RUNNING") == (deadline is not None), where
            assert token == job.token, where
            # History: attempts 1..n, at most one RUNNING, which is the job's current lease.
            history = attempts.get(job_id, [])
            assert [a[1] for a in history] == list(range(1, attempt + 1)), where
            assert [a[2] for a in history] == job.outcomes, f"{where}: {history}"
            assert [a[3] for a in history] == job.tokens, where
            live = [a for a in history if a[2] == "RUNNING"]
            assert len(live) <= 1, where
            if live:
                assert state == "RUNNING" and live[0][3] == token and live[0][1] == attempt, where
                assert live[0][4] is None, where
            # Terminal states are final: the row never changes again.
            if state in TERMINAL:
                if job.final is None:
                    job.final = row
                assert row == job.final, f"{where} changed after reaching {job.final[1]}"

    @invariant()
    def agrees_with_get(self) -> None:
        for job_id in sorted(self.touched):
            job = self.model[job_id]
            got = self.jobs_stub.Get(jobs_pb2.GetRequest(id=job_id)).job
            where = f"Get {job_id}"
            assert STATE_NAMES[got.state] == job.state, where
            assert got.attempt == job.attempt and got.cancel_requested == job.cancel_requested
            assert got.HasField("result") == (job.state == "SUCCEEDED"), where
            if job.result is not None:
                assert got.result.data == job.result, where
            assert got.HasField("error") == (job.error_kind is not None), where
            if job.error_kind is not None:
                assert got.error.kind == job.error_kind, where
            assert [OUTCOME_NAMES[a.outcome] for a in got.attempts] == job.outcomes, where
            assert [a.number for a in got.attempts] == list(range(1, job.attempt + 1)), where
            assert got.HasField("lease_deadline") == (job.state == "RUNNING"), where
            assert got.HasField("finished_at") == (job.state in TERMINAL), where
            assert got.retried_from == job.retried_from, where
            assert got.spec.priority == job.priority and got.spec.queue == job.queue, where
            assert got.spec.max_attempts == job.max_attempts, where
            assert (got.spec.idempotency_key or None) == job.key, where
        self.touched.clear()

    @invariant()
    def one_live_attempt_everywhere(self) -> None:
        # An attempt's row is written when it ends: none is stored while it runs.
        stored = self.db.execute(
            "SELECT job_id FROM jobwire_attempts WHERE outcome = 'RUNNING' OR finished_at IS NULL"
        ).fetchall()
        assert not stored, stored
        rows = self.db.execute(
            "SELECT a.job_id FROM jobwire_attempt_history a JOIN jobwire_jobs j"
            " ON j.id = a.job_id WHERE a.outcome = 'RUNNING' AND (j.state <> 'RUNNING'"
            " OR j.lease_token IS DISTINCT FROM a.lease_token OR j.attempt <> a.number"
            " OR a.started_at IS NULL)"
            " UNION ALL SELECT job_id FROM jobwire_attempt_history WHERE outcome = 'RUNNING'"
            " GROUP BY job_id HAVING count(*) > 1"
        ).fetchall()
        assert not rows, rows


def test_job_state_machine(machine_scheduler: Running) -> None:
    class Machine(JobMachine):
        running = machine_scheduler

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,
            database=None,
        ),
    )


# -- part 2: generated malformed, boundary and oversized input -------------------------------

ALL_OK = frozenset({Code.OK})
INVALID = frozenset({Code.INVALID_ARGUMENT})
# An unparsable message never reaches the service code: grpcio answers by itself.
UNPARSABLE = frozenset({Code.INVALID_ARGUMENT, Code.INTERNAL, Code.UNKNOWN})
FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
)
SEED_QUEUE = "seed"
FRESH_QUEUE = "fresh"
HOLDER = "seed holder"  # not a valid worker name: no fuzzed Lease stream can share it
PROBE_QUEUE_PREFIX = "hz"  # queues no fuzzed Submit uses: a fuzzed worker leases nothing
TRANSPORT_LIMIT = 16 * 1024 * 1024 + strategies.PAYLOAD_LIMIT  # the server's receive limit


class FuzzEnv:
    """A scheduler with one job in each state, and SQL to judge requests by."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.channel = running.scheduler.channel()
        self.db = psycopg.connect(running.database_url, autocommit=True)
        self.jobs = running.scheduler.jobs(self.channel)
        self.leases = running.scheduler.leases(self.channel)
        self.seeds: dict[str, str] = {}  # state name -> job id
        self.page_token = ""  # a List token made for the default filters

    def __repr__(self) -> str:
        return "FuzzEnv(...)"

    @property
    def sched(self) -> SchedulerThread:
        return self.running.scheduler

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes with any insert, delete or update: the guard trigger stamps updated_at on
        every update of a job, and an attempt only changes with its job."""
        row = self.db.execute(
            "SELECT (SELECT count(*) FROM jobwire_jobs),"
            " (SELECT max(updated_at) FROM jobwire_jobs),"
            " (SELECT count(*) FROM jobwire_attempts),"
            " (SELECT count(*) FROM jobwire_attempts WHERE outcome = 'RUNNING')"
        ).fetchone()
        assert row is not None
        return tuple(row)

    def lease_one(self, queue: str) -> tuple[str, str]:
        store = self.sched.scheduler.store
        [job] = self.sched.call(
            lambda: store.lease(queue=queue, types=["echo"], worker_id=HOLDER, limit=1)
        )
        return str(job.id), str(job.lease_token)

    def fresh_running(self) -> tuple[str, str]:
        """A new RUNNING job and its token (a lease of an hour: it never expires by itself)."""
        self.jobs.Submit(
            jobs_pb2.SubmitRequest(
                jobs=[
                    job_pb2.JobSpec(
                        queue=FRESH_QUEUE, type="echo", lease_timeout=Duration(seconds=3600)
                    )
                ]
            )
        )
        return self.lease_one(FRESH_QUEUE)

    def job_state(self, job_id: uuid.UUID) -> str | None:
        row = self.db.execute("SELECT state::text FROM jobwire_jobs WHERE id = %s", (job_id,))
        found = row.fetchone()
        return found[0] if found else None

    def check_alive(self) -> None:
        got = self.jobs.Get(jobs_pb2.GetRequest(id=self.seeds["PENDING"]), timeout=10)
        assert got.job.id == self.seeds["PENDING"]


@pytest.fixture(scope="module")
def fuzz_env(postgres_url: str, template_database: str) -> Iterator[FuzzEnv]:
    for running in _start_scheduler(postgres_url, template_database):
        env = FuzzEnv(running)
        spec = job_pb2.JobSpec(
            queue=SEED_QUEUE, type="echo", lease_timeout=Duration(seconds=3600), max_attempts=1
        )
        ids = [r.job.id for r in env.jobs.Submit(jobs_pb2.SubmitRequest(jobs=[spec] * 5)).results]
        leased = dict(env.lease_one(SEED_QUEUE) for _ in range(3))
        done, failed, running_id = sorted(leased)
        env.leases.Ack(
            leases_pb2.AckRequest(items=[leases_pb2.AckItem(job_id=done, lease_token=leased[done])])
        )
        env.leases.Nack(
            leases_pb2.NackRequest(
                items=[
                    leases_pb2.NackItem(
                        job_id=failed,
                        lease_token=leased[failed],
                        error=job_pb2.JobError(message="seeded failure"),
                    )
                ]
            )
        )
        pending, cancelled = sorted(set(ids) - set(leased))
        env.jobs.Cancel(jobs_pb2.CancelRequest(id=cancelled))
        env.seeds = {
            "PENDING": pending,
            "RUNNING": running_id,
            "SUCCEEDED": done,
            "FAILED": failed,
            "CANCELLED": cancelled,
        }
        env.page_token = env.jobs.List(jobs_pb2.ListRequest(page_size=1)).next_page_token
        assert env.page_token
        try:
            yield env
        finally:
            env.db.close()
            env.channel.close()


def judge(
    env: FuzzEnv,
    allowed: frozenset[Code],
    run: Callable[[], Any],
    what: Any,
) -> tuple[Code, Any]:
    """Runs one request: its status must be allowed; if refused, nothing was written; and
    the server still answers afterwards."""
    before = env.fingerprint()
    code, response = call(run)
    if currently_in_test_context():
        event(f"status {code.name}")
    shown = str(what)[:600]
    detail = response.details() if isinstance(response, grpc.RpcError) else ""
    assert code in allowed, f"{code} ({detail}) not in {sorted(c.name for c in allowed)}: {shown}"
    if code != Code.OK:
        assert env.fingerprint() == before, f"refused with {code} but wrote: {shown}"
    env.check_alive()
    return code, response


# ---- Jobs ----------------------------------------------------------------------------------
#
# expect_* give the statuses the contract allows for a message, judged from the message and
# (for well-formed ids) the job's row in SQL. The raw-bytes test below reuses them.


def expect_submit(env: FuzzEnv, request: jobs_pb2.SubmitRequest) -> frozenset[Code]:
    now = strategies.utc_now()
    if request.ByteSize() > TRANSPORT_LIMIT:
        return frozenset({Code.RESOURCE_EXHAUSTED})  # gRPC's own limit, before any of ours
    if not 1 <= len(request.jobs) <= strategies.MAX_BATCH:
        return INVALID
    if not all(strategies.spec_ok(s, now) for s in request.jobs):
        return INVALID
    if any(s.idempotency_key for s in request.jobs):
        return frozenset({Code.OK, Code.ALREADY_EXISTS})
    return ALL_OK


def expect_by_id(
    env: FuzzEnv, value: str, decide: Callable[[uuid.UUID, str | None], frozenset[Code]]
) -> frozenset[Code]:
    form, parsed = strategies.id_form(value)
    if form is IdForm.MALFORMED:
        return INVALID
    assert parsed is not None
    allowed = decide(parsed, env.job_state(parsed))
    return allowed | INVALID if form is IdForm.SPELLING else allowed


def expect_get(env: FuzzEnv, request: jobs_pb2.GetRequest) -> frozenset[Code]:
    return expect_by_id(
        env, request.id, lambda _, state: ALL_OK if state else frozenset({Code.NOT_FOUND})
    )


def expect_watch(env: FuzzEnv, request: jobs_pb2.WatchRequest) -> frozenset[Code]:
    def decide(_: uuid.UUID, state: str | None) -> frozenset[Code]:
        if state is None:
            return frozenset({Code.NOT_FOUND})
        # A job that is not finished is followed until the call's deadline.
        return ALL_OK if state in TERMINAL else frozenset({Code.DEADLINE_EXCEEDED})

    return expect_by_id(env, request.id, decide)


def expect_cancel(env: FuzzEnv, request: jobs_pb2.CancelRequest) -> frozenset[Code]:
    if not strategies.text_ok(request.reason, 1024):
        return INVALID

    def decide(_: uuid.UUID, state: str | None) -> frozenset[Code]:
        if state is None:
            return frozenset({Code.NOT_FOUND})
        if state in ("SUCCEEDED", "FAILED"):
            return frozenset({Code.FAILED_PRECONDITION})
        return ALL_OK

    return expect_by_id(env, request.id, decide)


def expect_retry(env: FuzzEnv, request: jobs_pb2.RetryRequest) -> frozenset[Code]:
    def decide(parsed: uuid.UUID, state: str | None) -> frozenset[Code]:
        if state is None:
            return frozenset({Code.NOT_FOUND})
        retried = env.db.execute(
            "SELECT 1 FROM jobwire_jobs WHERE retried_from = %s", (parsed,)
        ).fetchone()
        if state in ("FAILED", "CANCELLED") and not retried:
            return ALL_OK
        return frozenset({Code.FAILED_PRECONDITION})

    return expect_by_id(env, request.id, decide)


def expect_list(env: FuzzEnv, request: jobs_pb2.ListRequest) -> frozenset[Code]:
    default_filters = not (request.queue or request.type or request.states or request.tenant)
    ok = (
        (request.queue == "" or strategies.name_ok(request.queue))
        and (request.type == "" or strategies.name_ok(request.type))
        and all(s in STATE_NAMES and s != job_pb2.JOB_STATE_UNSPECIFIED for s in request.states)
        and "\x00" not in request.tenant
        and len(request.tenant) <= 128
        and 0 <= request.page_size <= 500
        # A page token is one this service made, for the same filters.
        and (request.page_token == "" or (request.page_token == env.page_token and default_filters))
    )
    return ALL_OK if ok else INVALID


def expect_stats(env: FuzzEnv, request: jobs_pb2.StatsRequest) -> frozenset[Code]:
    return ALL_OK if request.queue == "" or strategies.name_ok(request.queue) else INVALID


def check_submitted(request: jobs_pb2.SubmitRequest, response: jobs_pb2.SubmitResponse) -> None:
    assert len(response.results) == len(request.jobs)
    for spec, result in zip(request.jobs, response.results, strict=True):
        job = result.job
        uuid.UUID(job.id)
        assert job.spec.queue == (spec.queue or "default") and job.spec.type == spec.type
        assert job.spec.idempotency_key == spec.idempotency_key
        if result.created:
            assert job.state == job_pb2.JOB_STATE_PENDING and job.attempt == 0
            assert job.spec.priority == spec.priority
            assert job.spec.max_attempts == (spec.max_attempts or 3)
            assert job.spec.payload.data == spec.payload.data
            assert dict(job.spec.labels) == dict(spec.labels)


@FUZZ
@given(request=strategies.submit_requests(strategies.utc_now()))
def test_submit_input(fuzz_env: FuzzEnv, request: jobs_pb2.SubmitRequest) -> None:
    for spec in request.jobs:
        if spec.queue.startswith(PROBE_QUEUE_PREFIX):  # kept for the Lease stream test
            spec.queue = "q" + spec.queue[1:]
    code, response = judge(
        fuzz_env,
        expect_submit(fuzz_env, request),
        lambda: fuzz_env.jobs.Submit(request, timeout=30),
        request,
    )
    if code == Code.OK:
        check_submitted(request, response)


SEEDS = st.sampled_from([f"@seed:{state}" for state in ("PENDING", "RUNNING", *TERMINAL)])


def job_ids() -> st.SearchStrategy[str]:
    """A seeded job (written "@seed:STATE", resolved in the test), a random UUID, another
    spelling of one, or anything that is not a UUID."""
    return strategies.weighted(
        (3, SEEDS),
        (2, strategies.canonical_ids()),
        (1, strategies.uuid_spellings()),
        (4, strategies.malformed_ids()),
    )


def resolve(env: FuzzEnv, value: str) -> str:
    if value.startswith("@seed:"):
        return env.seeds[value.removeprefix("@seed:")]
    return value


def same_id(a: str, b: str) -> bool:
    return strategies.id_form(a)[1] == strategies.id_form(b)[1]


@FUZZ
@given(value=job_ids())
def test_get_input(fuzz_env: FuzzEnv, value: str) -> None:
    request = jobs_pb2.GetRequest(id=resolve(fuzz_env, value))
    code, response = judge(
        fuzz_env, expect_get(fuzz_env, request), lambda: fuzz_env.jobs.Get(request), request
    )
    if code == Code.OK:
        assert same_id(response.job.id, request.id)


def watch(env: FuzzEnv, request: jobs_pb2.WatchRequest, events: list[Any]) -> None:
    events.extend(env.jobs.Watch(request, timeout=0.3))


@settings(FUZZ, max_examples=50)
@given(value=job_ids())
def test_watch_input(fuzz_env: FuzzEnv, value: str) -> None:
    request = jobs_pb2.WatchRequest(id=resolve(fuzz_env, value))
    events: list[jobs_pb2.WatchEvent] = []
    code, _ = judge(
        fuzz_env, expect_watch(fuzz_env, request), lambda: watch(fuzz_env, request, events), request
    )
    if code in (Code.OK, Code.DEADLINE_EXCEEDED):
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events and events[0].state == job_pb2.JOB_STATE_PENDING
    if code == Code.OK:
        assert STATE_NAMES[events[-1].state] in TERMINAL


@FUZZ
@given(
    value=job_ids(),
    reason=st.one_of(st.just(""), strategies.any_text(), st.sampled_from(["r" * 1024, "r" * 1025])),
)
def test_cancel_input(fuzz_env: FuzzEnv, value: str, reason: str) -> None:
    request = jobs_pb2.CancelRequest(id=resolve(fuzz_env, value), reason=reason)
    judge(
        fuzz_env, expect_cancel(fuzz_env, request), lambda: fuzz_env.jobs.Cancel(request), request
    )


@FUZZ
@given(value=job_ids())
def test_retry_input(fuzz_env: FuzzEnv, value: str) -> None:
    request = jobs_pb2.RetryRequest(id=resolve(fuzz_env, value))
    code, response = judge(
        fuzz_env, expect_retry(fuzz_env, request), lambda: fuzz_env.jobs.Retry(request), request
    )
    if code == Code.OK:
        assert same_id(response.job.retried_from, request.id)
        assert response.job.state == job_pb2.JOB_STATE_PENDING


STATE_VALUES = st.one_of(
    st.sampled_from(sorted(STATE_NAMES)), st.sampled_from([6, 99, -1]), strategies.int32()
)


@st.composite
def list_requests(draw: st.DrawFn) -> jobs_pb2.ListRequest:
    """Valid filters and paging, but for up to two fields that get any value."""
    fuzzed = draw(
        st.sets(st.sampled_from(["queue", "type", "states", "tenant", "size", "token"]), max_size=2)
    )
    pick = lambda name, valid, anything: draw(anything if name in fuzzed else valid)  # noqa: E731
    return jobs_pb2.ListRequest(
        queue=pick("queue", st.sampled_from(["", "", SEED_QUEUE]), strategies.names()),
        type=pick("type", st.sampled_from(["", "", "echo"]), strategies.names()),
        states=pick(
            "states",
            st.lists(st.sampled_from(sorted(set(STATE_NAMES) - {0})), max_size=2),
            st.lists(STATE_VALUES, max_size=3),
        ),
        tenant=pick("tenant", st.just(""), strategies.any_text()),
        page_size=pick("size", st.integers(0, 500), strategies.int32(0, 1, 500, 501)),
        page_token=pick(
            "token",
            st.sampled_from(["", "", "@token"]),
            st.one_of(st.just("@altered"), strategies.any_text()),
        ),
    )


@FUZZ
@given(request=list_requests())
def test_list_input(fuzz_env: FuzzEnv, request: jobs_pb2.ListRequest) -> None:
    token = fuzz_env.page_token
    if request.page_token == "@token":
        request.page_token = token
    elif request.page_token == "@altered":
        request.page_token = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    code, response = judge(
        fuzz_env, expect_list(fuzz_env, request), lambda: fuzz_env.jobs.List(request), request
    )
    if code == Code.OK:
        assert len(response.jobs) <= (request.page_size or 50)
        for job in response.jobs:
            assert not request.queue or job.spec.queue == request.queue
            assert not request.type or job.spec.type == request.type
            assert not request.states or job.state in request.states
            assert not job.attempts


@FUZZ
@given(queue=st.one_of(st.just(""), st.just(SEED_QUEUE), strategies.names()))
def test_stats_input(fuzz_env: FuzzEnv, queue: str) -> None:
    request = jobs_pb2.StatsRequest(queue=queue)
    code, response = judge(
        fuzz_env, expect_stats(fuzz_env, request), lambda: fuzz_env.jobs.Stats(request), request
    )
    if code == Code.OK:
        names = [q.queue for q in response.queues]
        assert names == sorted(names) and (not queue or set(names) <= {queue})
        for q in response.queues:
            assert min(q.ready, q.scheduled, q.running, q.succeeded, q.failed, q.cancelled) >= 0


# ---- Leases: Ack, Nack, Extend -------------------------------------------------------------

_SAME_OUTCOME = {"ack": {"SUCCEEDED"}, "nack": {"FAILED", "CANCELLED", "RELEASED"}, "extend": set()}
_ITEM = {"ack": leases_pb2.AckItem, "nack": leases_pb2.NackItem, "extend": leases_pb2.ExtendItem}
_REQUEST = {
    "ack": leases_pb2.AckRequest,
    "nack": leases_pb2.NackRequest,
    "extend": leases_pb2.ExtendRequest,
}


def lease_job_refs() -> st.SearchStrategy[str]:
    return strategies.weighted((4, st.just("@fresh")), (2, SEEDS), (3, job_ids()))


def token_refs() -> st.SearchStrategy[str]:
    return strategies.weighted(
        (5, st.just("@current")),
        (3, st.just("@old")),
        (1, st.just("@random")),
        (1, strategies.canonical_ids()),
        (1, strategies.uuid_spellings()),
        (2, strategies.malformed_ids()),
    )


@st.composite
def settle_fields(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """The fields of one item besides the job and token: valid, or (a third of the time)
    fuzzed."""
    fuzz = draw(st.integers(0, 2)) == 0
    text = strategies.any_text
    if kind == "ack":
        return {
            "result": job_pb2.Payload(
                data=draw(strategies.payload_bytes() if fuzz else st.binary(max_size=8)),
                content_type=draw(text() if fuzz else st.just("application/json")),
            )
        }
    if kind == "nack":
        fields: dict[str, Any] = {
            "error": job_pb2.JobError(
                message=draw(
                    st.one_of(text(), st.sampled_from(["m" * 4096, "m" * 4097]))
                    if fuzz
                    else st.just("boom")
                ),
                kind=draw(
                    st.one_of(text(), st.sampled_from(["k" * 128, "k" * 129]))
                    if fuzz
                    else st.just("E")
                ),
                details=draw(
                    st.one_of(text(), st.sampled_from(["d" * 65536, "d" * 65537]))
                    if fuzz
                    else st.just("")
                ),
            ),
            "retryable": draw(st.booleans()),
            "release": draw(st.booleans()),
        }
        delay = draw(
            strategies.durations(7 * 86400, 7 * 86400 + 1) if fuzz else st.just(Duration(seconds=5))
        )
        if delay is not None:
            fields["retry_delay"] = delay
        return fields
    extend_by = draw(
        strategies.durations(3600, 3601) if fuzz else st.sampled_from([None, Duration(seconds=60)])
    )
    return {} if extend_by is None else {"extend_by": extend_by}


@st.composite
def settle_batches(draw: st.DrawFn, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Items as (job ref, token ref, other fields): a few, none, or more than a thousand."""
    shape = draw(st.integers(0, 9))
    if shape == 9:
        return []
    if shape < 7:
        return draw(
            st.lists(
                st.tuples(lease_job_refs(), token_refs(), settle_fields(kind)),
                min_size=1,
                max_size=3,
            )
        )
    count = draw(st.sampled_from([strategies.MAX_BATCH, strategies.MAX_BATCH + 1]))
    seed = draw(st.integers(0, 2**32))
    plain: dict[str, Any] = {"error": job_pb2.JobError(message="boom")} if kind == "nack" else {}
    items = [
        (str(uuid.UUID(int=(seed << 64) + i, version=4)), str(uuid.UUID(int=i, version=4)), plain)
        for i in range(count - 1)
    ]
    special = draw(st.tuples(lease_job_refs(), token_refs(), settle_fields(kind)))
    items.insert(draw(st.integers(0, count - 1)), special)
    return items


def resolve_items(
    env: FuzzEnv, kind: str, refs: list[tuple[str, str, dict[str, Any]]]
) -> list[Any]:
    items = []
    for job_ref, token_ref, fields in refs:
        token = token_ref
        if job_ref == "@fresh":
            job_id, current = env.fresh_running()
        else:
            job_id = resolve(env, job_ref)
            current = None
            parsed = strategies.id_form(job_id)[1]
            if token_ref == "@current" and parsed is not None:
                row = env.db.execute(
                    "SELECT lease_token::text FROM jobwire_jobs WHERE id = %s", (parsed,)
                ).fetchone()
                current = row[0] if row else None
        if token_ref == "@current":
            token = current or str(uuid.uuid4())
        elif token_ref == "@old":
            parsed = strategies.id_form(job_id)[1]
            row = (
                env.db.execute(
                    "SELECT lease_token::text FROM jobwire_attempts WHERE job_id = %s "
                    "AND outcome <> 'RUNNING' ORDER BY number DESC LIMIT 1",
                    (parsed,),
                ).fetchone()
                if parsed is not None
                else None
            )
            token = row[0] if row else str(uuid.uuid4())
        elif token_ref == "@random":
            token = str(uuid.uuid4())
        items.append(_ITEM[kind](job_id=job_id, lease_token=token, **fields))
    return items


def item_fields_ok(kind: str, item: Any) -> bool:
    if kind == "ack":
        return len(item.result.data) <= strategies.PAYLOAD_LIMIT and strategies.text_ok(
            item.result.content_type, 256
        )
    if kind == "nack":
        e = item.error
        return (
            strategies.text_ok(e.message, 4096)
            and (bool(e.message) or item.release)
            and strategies.text_ok(e.kind, 128)
            and strategies.text_ok(e.details, 65536)
            and (
                not item.HasField("retry_delay")
                or strategies.duration_ok(item.retry_delay, timedelta(0), timedelta(days=7))
            )
        )
    return not item.HasField("extend_by") or strategies.duration_ok(
        item.extend_by, timedelta(seconds=1), timedelta(hours=1)
    )


def item_verdict(env: FuzzEnv, kind: str, job_id: uuid.UUID, token: uuid.UUID) -> Code:
    """What one well-formed item gets, by the contract, from the job's state in SQL."""
    row = env.db.execute(
        "SELECT j.state::text, j.lease_token, a.outcome::text FROM jobwire_jobs j "
        "LEFT JOIN jobwire_attempts a ON a.job_id = j.id AND a.lease_token = %s "
        "WHERE j.id = %s",
        (token, job_id),
    ).fetchone()
    if row is None:
        return Code.NOT_FOUND
    state, current, outcome = row
    if state == "RUNNING" and current == token:
        return Code.OK
    if outcome is None:
        return Code.INVALID_ARGUMENT  # a token this job never had
    return Code.OK if outcome in _SAME_OUTCOME[kind] else Code.FAILED_PRECONDITION


def expect_settle(env: FuzzEnv, kind: str, items: list[Any]) -> frozenset[Code]:
    if not 1 <= len(items) <= strategies.MAX_BATCH:
        return INVALID
    maybe_invalid = False
    parsed: list[tuple[uuid.UUID, uuid.UUID]] = []
    for item in items:
        (job_form, job_id), (token_form, token) = (
            strategies.id_form(item.job_id),
            strategies.id_form(item.lease_token),
        )
        if IdForm.MALFORMED in (job_form, token_form) or not item_fields_ok(kind, item):
            return INVALID
        maybe_invalid |= IdForm.SPELLING in (job_form, token_form)
        assert job_id is not None and token is not None
        parsed.append((job_id, token))
    if len({job_id for job_id, _ in parsed}) < len(parsed):
        return INVALID  # one job twice in one batch
    # All or nothing: the first item refused (in request order) decides the status.
    verdicts = [item_verdict(env, kind, j, t) for j, t in parsed]
    verdict = next((v for v in verdicts if v != Code.OK), Code.OK)
    return frozenset({verdict}) | (INVALID if maybe_invalid else frozenset())


def _settle_test(env: FuzzEnv, kind: str, refs: list[tuple[str, str, dict[str, Any]]]) -> None:
    items = resolve_items(env, kind, refs)
    request = _REQUEST[kind](items=items)
    method = {"ack": env.leases.Ack, "nack": env.leases.Nack, "extend": env.leases.Extend}[kind]
    allowed = expect_settle(env, kind, items)
    shown = [str(i)[:300] for i in items[:4]]
    code, response = judge(env, allowed, lambda: method(request, timeout=30), shown)
    if code == Code.OK and kind == "extend":
        assert [r.job_id for r in response.results] == [
            str(uuid.UUID(i.job_id.strip("{}").removeprefix("urn:uuid:"))) for i in items
        ]


@FUZZ
@given(refs=settle_batches("ack"))
def test_ack_input(fuzz_env: FuzzEnv, refs: list[tuple[str, str, dict[str, Any]]]) -> None:
    _settle_test(fuzz_env, "ack", refs)


@FUZZ
@given(refs=settle_batches("nack"))
def test_nack_input(fuzz_env: FuzzEnv, refs: list[tuple[str, str, dict[str, Any]]]) -> None:
    _settle_test(fuzz_env, "nack", refs)


@FUZZ
@given(refs=settle_batches("extend"))
def test_extend_input(fuzz_env: FuzzEnv, refs: list[tuple[str, str, dict[str, Any]]]) -> None:
    _settle_test(fuzz_env, "extend", refs)


# ---- Leases: the stream's first message ----------------------------------------------------


def _hello_names(count_edges: list[int]) -> st.SearchStrategy[list[str]]:
    return st.one_of(
        st.lists(strategies.names(), max_size=3),
        st.builds(
            lambda name, n: [name] * n, strategies.valid_names(), st.sampled_from(count_edges)
        ),
    )


# Every kind of message a worker may send; only a hello may come first.
LEASE_KINDS = [f.name for f in leases_pb2.LeaseRequest.DESCRIPTOR.oneofs_by_name["kind"].fields]
HELLO_FIELDS = leases_pb2.Hello.DESCRIPTOR.fields_by_name


@st.composite
def first_messages(draw: st.DrawFn) -> leases_pb2.LeaseRequest | None:
    kind = draw(
        st.sampled_from(["hello"] * 6 + ["none"] + [k for k in LEASE_KINDS if k != "hello"])
    )
    if kind == "none":
        return None
    message = leases_pb2.LeaseRequest()
    if kind == "hello":
        valid = draw(st.booleans())
        hello = message.hello
        hello.worker_id = draw(strategies.valid_names() if valid else strategies.names())
        hello.queues.extend(
            draw(
                st.lists(strategies.valid_names(), min_size=1, max_size=2)
                if valid
                else _hello_names([0, 64, 65, 1000])
            )
        )
        hello.types.extend(
            draw(
                st.lists(strategies.valid_names(), min_size=1, max_size=2)
                if valid
                else _hello_names([0, 256, 257])
            )
        )
        hello.credits = draw(
            st.integers(0, 10_000) if valid else strategies.int32(0, 10_000, 10_001)
        )
        for name, spec in HELLO_FIELDS.items():  # flags added to Hello later
            if spec.type == spec.TYPE_BOOL:
                setattr(hello, name, draw(st.booleans()))
        return message
    job_id = str(uuid.uuid4())
    if kind == "credit":
        message.credit.credits = draw(strategies.int32())
    elif kind == "ack":
        message.ack.job_id, message.ack.lease_token = job_id, job_id
    elif kind == "nack":
        message.nack.job_id, message.nack.lease_token = job_id, job_id
        message.nack.release = True
    elif kind == "extend":
        message.extend.items.add(job_id=job_id, lease_token=job_id)
    else:
        getattr(message, kind).SetInParent()
    return message


def hello_ok(hello: leases_pb2.Hello) -> bool:
    return (
        strategies.name_ok(hello.worker_id)
        and 1 <= len(hello.queues) <= 64
        and all(strategies.name_ok(q) for q in hello.queues)
        and 1 <= len(hello.types) <= 256
        and all(strategies.name_ok(t) for t in hello.types)
        and 0 <= hello.credits <= 10_000
    )


def _isolate(message: leases_pb2.LeaseRequest) -> None:
    """A valid hello must not lease the other tests' jobs: every queue it names gets a prefix
    no other test uses (a valid name stays valid, an invalid one invalid)."""
    if message.WhichOneof("kind") != "hello":
        return
    queues = [
        (PROBE_QUEUE_PREFIX + q)[:128] if strategies.name_ok(q) else PROBE_QUEUE_PREFIX + q
        for q in message.hello.queues
    ]
    if queues:
        del message.hello.queues[:]
        message.hello.queues.extend(q if q != PROBE_QUEUE_PREFIX else "" for q in queues)


def lease_first(env: FuzzEnv, first: leases_pb2.LeaseRequest | None) -> list[Any]:
    """Opens a Lease stream with `first` and, after it, a probe: the extension of an unknown
    job. An accepted stream answers the probe; then the client half-closes and the stream
    ends. A refused one ends at once with its status."""
    probe_id = str(uuid.uuid4())
    answered = threading.Event()

    def requests() -> Iterator[leases_pb2.LeaseRequest]:
        if first is None:
            return
        yield first
        yield leases_pb2.LeaseRequest(
            extend=leases_pb2.ExtendRequest(
                items=[leases_pb2.ExtendItem(job_id=probe_id, lease_token=probe_id)]
            )
        )
        answered.wait(10)

    responses = []
    try:
        for response in env.leases.Lease(requests(), timeout=10):
            responses.append(response)
            answered.set()
    finally:
        answered.set()
    return responses


def expect_first_message(env: FuzzEnv, first: leases_pb2.LeaseRequest | None) -> frozenset[Code]:
    if first is None:
        return ALL_OK  # a stream closed before its hello just ends
    if first.WhichOneof("kind") != "hello" or not hello_ok(first.hello):
        return INVALID
    return ALL_OK


@FUZZ
@given(first=first_messages())
def test_lease_stream_first_message(
    fuzz_env: FuzzEnv, first: leases_pb2.LeaseRequest | None
) -> None:
    if first is not None:
        _isolate(first)
    code, responses = judge(
        fuzz_env,
        expect_first_message(fuzz_env, first),
        lambda: lease_first(fuzz_env, first),
        first,
    )
    if code == Code.OK:
        if first is None:
            assert responses == []
        else:
            # Nothing leased, just the probe's answer (alone, or in a batch of answers).
            [answer] = [r for message in responses for r in settle_results(message)]
            assert answer.kind == leases_pb2.SETTLE_KIND_EXTEND
            assert answer.code == Code.NOT_FOUND.value[0]


def settle_results(message: leases_pb2.LeaseResponse) -> list[Any]:
    kind = message.WhichOneof("kind")
    if kind == "result":
        return [message.result]
    if kind == "results":
        return list(message.results.results)
    raise AssertionError(f"unexpected {kind} on a stream that holds nothing: {message}")


# ---- bytes that may not be a message at all ------------------------------------------------


@dataclass(frozen=True)
class Method:
    path: str
    request: Any
    expect: Callable[[FuzzEnv, Any], frozenset[Code]]
    shape: str = "unary"


METHODS = [
    Method("/jobwire.v1.Jobs/Submit", jobs_pb2.SubmitRequest, expect_submit),
    Method("/jobwire.v1.Jobs/Get", jobs_pb2.GetRequest, expect_get),
    Method("/jobwire.v1.Jobs/List", jobs_pb2.ListRequest, expect_list),
    Method("/jobwire.v1.Jobs/Watch", jobs_pb2.WatchRequest, expect_watch, "server-stream"),
    Method("/jobwire.v1.Jobs/Cancel", jobs_pb2.CancelRequest, expect_cancel),
    Method("/jobwire.v1.Jobs/Retry", jobs_pb2.RetryRequest, expect_retry),
    Method("/jobwire.v1.Jobs/Stats", jobs_pb2.StatsRequest, expect_stats),
    Method(
        "/jobwire.v1.Leases/Ack",
        leases_pb2.AckRequest,
        lambda env, m: expect_settle(env, "ack", list(m.items)),
    ),
    Method(
        "/jobwire.v1.Leases/Nack",
        leases_pb2.NackRequest,
        lambda env, m: expect_settle(env, "nack", list(m.items)),
    ),
    Method(
        "/jobwire.v1.Leases/Extend",
        leases_pb2.ExtendRequest,
        lambda env, m: expect_settle(env, "extend", list(m.items)),
    ),
    Method("/jobwire.v1.Leases/Lease", leases_pb2.LeaseRequest, expect_first_message, "bidi"),
]

# Valid encodings to corrupt: field 1 (a string or a message) holding a UUID-sized string.
_SAMPLE = b"\x0a\x24" + b"00000000-0000-4000-8000-000000000000"


def raw_messages() -> st.SearchStrategy[bytes]:
    def corrupt(data: bytes, position: int, byte: int, how: int) -> bytes:
        position %= len(data) + 1
        if how == 0:
            return data[:position] + bytes([byte]) + data[position + 1 :]
        if how == 1:
            return data[:position]
        return data[:position] + bytes([byte]) + data[position:]

    return st.one_of(
        st.binary(max_size=48),
        st.builds(
            corrupt, st.just(_SAMPLE), st.integers(0, 40), st.integers(0, 255), st.integers(0, 2)
        ),
        st.sampled_from(
            [
                b"\x0a\x02\xff\xfe",  # field 1 with bytes that are not UTF-8
                b"\x0a\x04\x12\x02\xc3\x28",  # the same one level down (JobSpec.type)
                b"\x0a\xff\xff\xff\xff\x0f",  # a length of 4 GiB
                b"\x0a\x80",  # a truncated varint
                b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an 11-byte varint
                b"\x0b\x0c",  # a group
                b"\x07",  # field 0
                b"\x0a" * 1000,
                b"\x22\x00" * 2000,  # field 4 (a message or string) repeated
            ]
        ),
    )


def send_raw(env: FuzzEnv, method: Method, data: bytes) -> Any:
    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    if method.shape == "unary":
        return env.channel.unary_unary(method.path, **raw)(data, timeout=30)
    if method.shape == "server-stream":
        return list(env.channel.unary_stream(method.path, **raw)(data, timeout=0.3))
    return list(env.channel.stream_stream(method.path, **raw)(iter([data]), timeout=10))


@settings(FUZZ, max_examples=150)
@given(method=st.sampled_from(METHODS), data=raw_messages())
def test_bytes_that_are_not_a_message(fuzz_env: FuzzEnv, method: Method, data: bytes) -> None:
    try:
        parsed = method.request.FromString(data)
    except DecodeError:
        allowed = UNPARSABLE
    else:
        if method.shape == "bidi":
            _isolate(parsed)
            data = parsed.SerializeToString()
        allowed = method.expect(fuzz_env, parsed)
    judge(fuzz_env, allowed, lambda: send_raw(fuzz_env, method, data), (method.path, data[:80]))


def test_message_over_the_transport_limit(fuzz_env: FuzzEnv) -> None:
    """Larger than gRPC's own receive limit (payload limit + 16 MiB): refused before any code
    of ours runs, and the server goes on."""
    spec = job_pb2.JobSpec(type="echo", payload=job_pb2.Payload(data=b"x" * (18 * 1024 * 1024)))
    judge(
        fuzz_env,
        frozenset({Code.RESOURCE_EXHAUSTED}),
        lambda: fuzz_env.jobs.Submit(jobs_pb2.SubmitRequest(jobs=[spec]), timeout=30),
        "an 18 MiB Submit",
    )


# -- smallest reproductions of what the properties above found -------------------------------


def refused_with(call_: Callable[[], Any]) -> Code:
    code, _ = call(call_)
    return code


@pytest.mark.parametrize(
    "request_",
    [
        jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(type="echo\n")]),
        jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(type="echo", queue="default\n")]),
        jobs_pb2.StatsRequest(queue="default\n"),
    ],
    ids=["submit type", "submit queue", "stats queue"],
)
def test_a_name_with_a_trailing_newline_is_refused(
    scheduler: SchedulerThread, request_: Any
) -> None:
    """Names are 1-128 characters of [A-Za-z0-9_.:-]; "echo\\n" is not one of them."""
    stub = scheduler.jobs()
    method = stub.Submit if isinstance(request_, jobs_pb2.SubmitRequest) else stub.Stats
    assert refused_with(lambda: method(request_)) == Code.INVALID_ARGUMENT


def test_a_worker_name_with_a_trailing_newline_is_refused(scheduler: SchedulerThread) -> None:
    hello = leases_pb2.Hello(worker_id="worker\n", queues=["default"], types=["echo"])
    stream = scheduler.leases().Lease(iter([leases_pb2.LeaseRequest(hello=hello)]), timeout=10)
    assert refused_with(lambda: list(stream)) == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "job_id",
    [
        "\u0660" * 32,  # ARABIC-INDIC DIGIT ZERO, 32 times
        "\uff10" * 32,  # FULLWIDTH DIGIT ZERO
        "0" * 31 + " ",
        "0" * 31 + "-" * 5 + "0",
        "0_" + "0" * 30,
    ],
    ids=[
        "arabic-indic digits",
        "fullwidth digits",
        "trailing space",
        "stray hyphens",
        "underscore",
    ],
)
def test_an_id_that_is_no_uuid_is_refused(scheduler: SchedulerThread, job_id: str) -> None:
    """Each of these is read as the UUID 00000000-0000-0000-0000-000000000000 and answered
    NOT_FOUND; none is a UUID."""
    code = refused_with(lambda: scheduler.jobs().Get(jobs_pb2.GetRequest(id=job_id)))
    assert code == Code.INVALID_ARGUMENT


def test_the_first_refused_item_decides_the_status_of_a_batch(scheduler: SchedulerThread) -> None:
    """leases.proto: "All items or none are applied; the first refused item decides the
    status." Here the first item carries a token its job never had (INVALID_ARGUMENT), the
    second the token of an attempt that already failed (FAILED_PRECONDITION)."""
    spec = job_pb2.JobSpec(type="echo", max_attempts=1)
    scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[spec, spec]))
    store = scheduler.scheduler.store
    running, failed = scheduler.call(
        lambda: store.lease(queue="default", types=["echo"], worker_id="w", limit=2)
    )
    scheduler.leases().Nack(
        leases_pb2.NackRequest(
            items=[
                leases_pb2.NackItem(
                    job_id=str(failed.id),
                    lease_token=str(failed.lease_token),
                    error=job_pb2.JobError(message="boom"),
                )
            ]
        )
    )
    never_issued = leases_pb2.AckItem(job_id=str(running.id), lease_token=str(uuid.uuid4()))
    ended = leases_pb2.AckItem(job_id=str(failed.id), lease_token=str(failed.lease_token))

    def ack(*items: leases_pb2.AckItem) -> Code:
        return refused_with(lambda: scheduler.leases().Ack(leases_pb2.AckRequest(items=items)))

    assert ack(ended, never_issued) == Code.FAILED_PRECONDITION
    assert ack(never_issued, ended) == Code.INVALID_ARGUMENT


def test_outcomes_sent_just_before_a_half_close_are_answered(scheduler: SchedulerThread) -> None:
    """leases.proto: the scheduler "answers every outcome and extension with a SettleResult".
    A worker that acks its last job and then closes its side of the stream (as on shutdown)
    must still get the answer; the ack itself is recorded."""
    job = (
        scheduler.jobs()
        .Submit(jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(type="echo")]))
        .results[0]
        .job
    )
    store = scheduler.scheduler.store
    [leased] = scheduler.call(
        lambda: store.lease(queue="default", types=["echo"], worker_id="w", limit=1)
    )
    messages = [
        leases_pb2.LeaseRequest(
            hello=leases_pb2.Hello(worker_id="w", queues=["idle"], types=["echo"])
        ),
        leases_pb2.LeaseRequest(
            ack=leases_pb2.AckItem(job_id=job.id, lease_token=str(leased.lease_token))
        ),
    ]
    responses = list(scheduler.leases().Lease(iter(messages), timeout=10))
    wait_for(
        lambda: (
            scheduler.jobs().Get(jobs_pb2.GetRequest(id=job.id)).job.state
            == job_pb2.JOB_STATE_SUCCEEDED
        ),
        message="the ack to be recorded",
    )
    answers = [r for message in responses for r in settle_results(message)]
    assert [(a.job_id, a.code) for a in answers] == [(job.id, Code.OK.value[0])]


@pytest.mark.parametrize(
    "extend_by",
    [Duration(seconds=3600, nanos=1), Duration(nanos=999_999_999)],
    ids=["a nanosecond over an hour", "a nanosecond under a second"],
)
def test_an_extension_a_nanosecond_out_of_range_is_refused(
    scheduler: SchedulerThread, extend_by: Duration
) -> None:
    """extend_by is "1 s to 1 h". The check runs on a timedelta, which holds microseconds:
    3600 s + 1 ns is truncated to 1 h first, and passes."""
    scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(type="echo")]))
    store = scheduler.scheduler.store
    [leased] = scheduler.call(
        lambda: store.lease(queue="default", types=["echo"], worker_id="w", limit=1)
    )
    item = leases_pb2.ExtendItem(
        job_id=str(leased.id), lease_token=str(leased.lease_token), extend_by=extend_by
    )
    code = refused_with(lambda: scheduler.leases().Extend(leases_pb2.ExtendRequest(items=[item])))
    assert code == Code.INVALID_ARGUMENT


def test_a_negative_retry_delay_is_refused(scheduler: SchedulerThread) -> None:
    """retry_delay is "0 to 7 days"; -1 ns is truncated towards zero, to 0, and passes."""
    scheduler.jobs().Submit(jobs_pb2.SubmitRequest(jobs=[job_pb2.JobSpec(type="echo")]))
    store = scheduler.scheduler.store
    [leased] = scheduler.call(
        lambda: store.lease(queue="default", types=["echo"], worker_id="w", limit=1)
    )
    item = leases_pb2.NackItem(
        job_id=str(leased.id),
        lease_token=str(leased.lease_token),
        error=job_pb2.JobError(message="boom"),
        retryable=True,
        retry_delay=Duration(nanos=-1),
    )
    code = refused_with(lambda: scheduler.leases().Nack(leases_pb2.NackRequest(items=[item])))
    assert code == Code.INVALID_ARGUMENT
