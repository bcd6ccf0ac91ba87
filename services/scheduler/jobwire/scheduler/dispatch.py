"""Leasing rules between the gRPC streams and the store: who gets which ready job, when.

Each connected worker stream is a `Session` with a credit (free slots it granted). One
`Dispatcher` task per scheduler leases for every session with credit whenever something
may have become ready: a local submit, a NOTIFY from another replica, a failed attempt
back in the queue, or (as a fallback for scheduled jobs and lost notifications) a poll
tick. Returned credit alone claims only where the last claim left jobs behind: a queue
found empty stays empty until one of those events, so an idle system runs one claim per
job instead of one per job and per credit.

A submit of jobs due now for a queue where a stream sits idle (its last claim found the
queue empty) does not wait for that claim: the stream's claim runs in the submit's own
transaction (`Dispatcher.submit`), so the job is leased with the insert's commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from jobwire.v1 import leases_pb2

from . import convert, metrics
from .errors import SchedulerError
from .model import Claim, ErrorInfo, Job, Nack, NewJob, Submitted
from .store import Store

log = logging.getLogger(__name__)

# Most jobs claimed by one statement. A stream with more credit than this gets several
# claims in a row, so its worker starts on the first jobs while the next are claimed,
# instead of each side waiting for the other's whole batch.
LEASE_CHUNK = 128
# Queues whose readiness is tracked one by one; beyond, every queue starts over together.
MAX_QUEUE_GENERATIONS = 10_000


@dataclass(eq=False, kw_only=True)
class Session:
    """One worker's Lease stream as the scheduler sees it."""

    worker_id: str
    queues: tuple[str, ...]
    types: tuple[str, ...]
    credit: int
    # The worker reads LeasedJobs and SettleResults (several items per message).
    batches: bool = False
    draining: bool = False
    closed: bool = False
    outbox: asyncio.Queue[leases_pb2.LeaseResponse | None] = field(default_factory=asyncio.Queue)
    # Jobs this stream holds a lease on, to route cancel notices: job id -> lease token.
    held: dict[UUID, UUID] = field(default_factory=dict)
    cancels_sent: set[UUID] = field(default_factory=set)
    # Outcomes and extensions being written, whose answers are still to be sent.
    in_flight: set[asyncio.Future[Any]] = field(default_factory=set)
    # Queue -> the dispatcher's readiness generations (all queues, that queue) in which
    # a claim for this stream came back short: nothing more of that queue is ready for
    # it until one of them moves on.
    exhausted: dict[str, tuple[int, int]] = field(default_factory=dict)
    _answers: list[leases_pb2.SettleResult] = field(default_factory=list)

    @property
    def wants_jobs(self) -> bool:
        return self.credit > 0 and not self.draining and not self.closed

    def track(self, future: asyncio.Future[Any]) -> None:
        self.in_flight.add(future)
        future.add_done_callback(self.in_flight.discard)

    def send(self, message: leases_pb2.LeaseResponse) -> None:
        if not self.closed:
            self.outbox.put_nowait(message)

    def answer(self, results: Sequence[leases_pb2.SettleResult]) -> None:
        """Sends answers to the worker's outcomes and extensions. Those given in the same
        turn of the event loop go out as one message to a worker that reads several per
        message: a batch of acks written for several of its messages is answered once,
        not once per message."""
        if not self.batches:
            for result in results:
                self.send(leases_pb2.LeaseResponse(result=result))
            return
        if not self._answers:
            asyncio.get_running_loop().call_soon(self._send_answers)
        self._answers.extend(results)

    def _send_answers(self) -> None:
        if self._answers:
            answers, self._answers = self._answers, []
            self.send(leases_pb2.LeaseResponse(results=leases_pb2.SettleResults(results=answers)))

    def close(self) -> None:
        if not self.closed:
            self._send_answers()  # given before the end, so they go before it
            self.closed = True
            self.outbox.put_nowait(None)


@dataclass(frozen=True, eq=False)
class Handoff:
    """A stream's claim run in a submit's transaction; `readiness` is its queue's when
    the claim was planned."""

    session: Session
    claim: Claim
    readiness: tuple[int, int]


class JobChanges:
    """Wakes Watch calls of this replica when a job they follow changes here."""

    def __init__(self) -> None:
        self._waiters: dict[UUID, set[asyncio.Event]] = {}

    def changed(self, job_id: UUID) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    async def wait(self, job_id: UUID, within: float) -> None:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), within)
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]


class Dispatcher:
    """Leases ready jobs to sessions with credit, in one task per scheduler."""

    def __init__(
        self,
        store: Store,
        changes: JobChanges,
        *,
        poll_interval: float,
    ) -> None:
        self._store = store
        self._changes = changes
        self._poll_interval = poll_interval
        self._sessions: list[Session] = []
        self._wake = asyncio.Event()
        # Readiness generations, advanced by every event that may have made jobs ready
        # (see `wake`): one for every queue, one per queue.
        self._generation = 0
        self._queue_generations: dict[str, int] = {}
        self._holders: dict[UUID, Session] = {}

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions)

    def workers_by_queue(self) -> dict[str, tuple[int, int]]:
        """Open Lease streams and their free credit, per queue they serve. Safe to call
        from another thread (the metrics' scrape): it reads a copy of the sessions."""
        counts: dict[str, tuple[int, int]] = {}
        for session in list(self._sessions):
            if session.closed:
                continue
            for queue in session.queues:
                streams, credit = counts.get(queue, (0, 0))
                counts[queue] = (streams + 1, credit + session.credit)
        return counts

    def add(self, session: Session) -> None:
        self._sessions.append(session)
        # A new stream has found nothing empty yet, so it gets its claims without
        # reopening the queues other streams found empty.
        self.credit_returned()

    def remove(self, session: Session) -> None:
        session.close()
        with contextlib.suppress(ValueError):
            self._sessions.remove(session)
        for job_id in session.held:
            if self._holders.get(job_id) is session:
                del self._holders[job_id]

    def held_elsewhere(self, session: Session) -> set[UUID]:
        """Jobs that other live streams of the same worker hold (it reconnected already)."""
        return {
            job_id
            for other in self._sessions
            if other is not session and other.worker_id == session.worker_id
            for job_id in other.held
        }

    def wake(self, queues: Iterable[str] | None = None) -> None:
        """Jobs may have become ready in `queues` (None: in any): every stream with credit
        that serves one of them gets a claim."""
        if queues is None or len(self._queue_generations) > MAX_QUEUE_GENERATIONS:
            # Past the bound (queue names without end), every queue starts over.
            self._generation += 1
            self._queue_generations.clear()
        else:
            for queue in queues:
                self._queue_generations[queue] = self._queue_generations.get(queue, 0) + 1
        self._wake.set()

    def _readiness(self, queue: str) -> tuple[int, int]:
        return self._generation, self._queue_generations.get(queue, 0)

    def credit_returned(self) -> None:
        """A stream can take more: it gets a claim where its last one came back full."""
        self._wake.set()

    def hold(self, session: Session, job_id: UUID, token: UUID) -> None:
        session.held[job_id] = token
        self._holders[job_id] = session

    def release(self, job_id: UUID, token: UUID) -> None:
        """Forgets who holds the lease `token` of `job_id`. A newer lease of the same job
        (leased again after this one ended) keeps its holder."""
        session = self._holders.get(job_id)
        if session is not None and session.held.get(job_id) == token:
            del self._holders[job_id]
            del session.held[job_id]
            session.cancels_sent.discard(job_id)

    def notify_cancel(self, job_id: UUID, reason: str = "") -> bool:
        """Tells the stream holding `job_id` (on this replica) to stop it, once: the local
        Cancel call and the NOTIFY it also sends for other replicas both end up here."""
        session = self._holders.get(job_id)
        if session is None or job_id in session.cancels_sent:
            return False
        session.cancels_sent.add(job_id)
        token = session.held.get(job_id)
        session.send(
            leases_pb2.LeaseResponse(
                cancel=leases_pb2.CancelNotice(
                    job_id=str(job_id), lease_token=str(token or ""), reason=reason
                )
            )
        )
        return True

    async def submit(self, jobs: Sequence[NewJob], *, full: bool) -> list[Submitted]:
        """Inserts `jobs` (see `Store.submit`). Streams idle on the queue of a job due now
        get their claim in the same transaction; every other stream of the queues of new
        jobs is woken as for any submit. Nothing raises once the insert has committed."""
        handoffs = self._plan_handoffs(jobs)
        if not handoffs:
            submitted = await self._store.submit(jobs, full=full)
            self.wake(_queues_of_new(jobs, submitted))
            return submitted
        try:
            submitted, leased = await self._store.submit_and_lease(
                jobs, [h.claim for h in handoffs], full=full
            )
        except BaseException:
            self._unplan(handoffs)
            raise
        if leased is None:  # the claims failed, or no job was new and they did not run
            self._unplan(handoffs)
            self.wake(_queues_of_new(jobs, submitted))
            return submitted
        # Claims that came back short found every job of their queue that was ready: their
        # streams stay idle there, unless something else became ready meanwhile.
        idle = [
            h
            for h, claimed in zip(handoffs, leased, strict=True)
            if len(claimed) < h.claim.limit and self._readiness(h.claim.queue) == h.readiness
        ]
        # Also the queues of claims that came back full: more may be ready there than the
        # dispatcher knows of (another replica's jobs, or an existing job a reused key
        # names), and the stream's next credit must bring a claim.
        full_claims = {
            h.claim.queue
            for h, claimed in zip(handoffs, leased, strict=True)
            if len(claimed) == h.claim.limit
        }
        self.wake(_queues_of_new(jobs, submitted) | full_claims)
        for handoff in idle:
            handoff.session.exhausted[handoff.claim.queue] = self._readiness(handoff.claim.queue)
        for handoff, claimed in zip(handoffs, leased, strict=True):
            _give_back(handoff.session, handoff.claim.limit - len(claimed))
        for handoff, claimed in zip(handoffs, leased, strict=True):
            await self._deliver(handoff.session, handoff.claim.queue, claimed)
        return submitted

    def _unplan(self, handoffs: Sequence[Handoff]) -> None:
        """The handoffs' claims did not run: their credit is the streams' again. A claim
        woken meanwhile (by another submit) may have found them without it, so leasing is
        woken where it may be wanted."""
        for handoff in handoffs:
            _give_back(handoff.session, handoff.claim.limit)
        self.credit_returned()

    async def _hand_back(self, jobs: Sequence[Job]) -> None:
        """The stream ended while its claim ran, so no worker got these jobs: they go back
        to their queue at once, without using up an attempt (as a worker's hand-back),
        rather than wait out a lease nobody holds."""
        try:
            refusals, due = await self._store.nack([_undelivered(j) for j in jobs], atomic=False)
        except SchedulerError as exc:
            # The reaper ends them when their leases run out.
            log.warning("could not hand back %d undelivered job(s): %s", len(jobs), exc)
            return
        for refusal in refusals:  # pragma: no cover - nothing else knew these leases
            log.warning("could not hand back job %s: %s", refusal.job_id, refusal.error)
        self.wake(due)

    def _plan_handoffs(self, jobs: Sequence[NewJob]) -> list[Handoff]:
        """Claims for streams idle on the queues of `jobs` that are due now, enough of them
        to take those jobs; the streams' credit is set aside until the claims are done, so
        no other claim spends it meanwhile."""
        now = datetime.now(UTC)
        due: dict[str, list[str]] = {}
        for job in jobs:
            if job.run_at is None or job.run_at <= now:
                due.setdefault(job.queue, []).append(job.type)
        handoffs: list[Handoff] = []
        for queue, types in due.items():
            readiness = self._readiness(queue)
            left = len(types)
            for session in self._sessions:
                if left <= 0:
                    break
                if not (
                    session.wants_jobs
                    and session.exhausted.get(queue) == readiness
                    and queue in session.queues
                ):
                    continue
                wanted = sum(1 for t in types if t in session.types)
                if not wanted:
                    continue
                # All the credit a claim of the dispatcher would use: a claim that comes
                # back short shows the queue empty again, as the dispatcher's would.
                limit = min(session.credit, LEASE_CHUNK)
                session.credit -= limit
                left -= min(wanted, limit)
                claim = Claim(
                    queue=queue, types=session.types, worker_id=session.worker_id, limit=limit
                )
                handoffs.append(Handoff(session, claim, readiness))
        return handoffs

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self._poll_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_tick - loop.time()))
            self._wake.clear()
            if loop.time() >= next_tick:
                # Scheduled jobs and backoffs come due without any event, and other
                # replicas' expired leases are not announced: every stream gets a claim at
                # least once per poll interval, however often credit wakes the loop.
                self._generation += 1
                next_tick = loop.time() + self._poll_interval
            try:
                await self._dispatch_once()
            except SchedulerError as exc:
                log.warning("leasing paused: %s", exc)
                await asyncio.sleep(self._poll_interval)
            except Exception:  # an error the store does not expect must not end leasing
                log.exception("leasing failed; trying again in %g s", self._poll_interval)
                await asyncio.sleep(self._poll_interval)

    async def _dispatch_once(self) -> None:
        """Leases for every session with credit, in rounds of at most LEASE_CHUNK jobs per
        session and queue. A session's queue stays in the next round only while its claims
        come back full (more may be ready) and the session has credit left; rounds keep one
        busy stream from starving the others. A queue whose claim came back short is left
        alone until its readiness generation changes."""
        open_pairs = [
            (session, queue)
            for session in list(self._sessions)
            for queue in session.queues
            if session.exhausted.get(queue) != self._readiness(queue)
        ]
        while open_pairs:
            next_round = []
            for session, queue in open_pairs:
                if not session.wants_jobs:
                    continue
                # The readiness before the claim: an event during it may have made jobs
                # ready that the claim did not see, and must bring a new claim.
                readiness = self._readiness(queue)
                limit = min(session.credit, LEASE_CHUNK)
                if await self._lease(session, queue, limit) == limit:
                    next_round.append((session, queue))
                else:
                    session.exhausted[queue] = readiness
            open_pairs = next_round

    async def _lease(self, session: Session, queue: str, limit: int) -> int:
        """Claims up to `limit` jobs of `queue` for `session` and sends them; returns how
        many it claimed. The credit is set aside during the claim, so that a submit's claim
        for another queue of the same stream (see `submit`) cannot spend it too."""
        session.credit -= limit
        try:
            jobs = await self._store.lease(
                queue=queue, types=session.types, worker_id=session.worker_id, limit=limit
            )
        except BaseException:
            _give_back(session, limit)
            raise
        _give_back(session, limit - len(jobs))
        await self._deliver(session, queue, jobs)
        return len(jobs)

    async def _deliver(self, session: Session, queue: str, jobs: Sequence[Job]) -> None:
        """Sends the jobs a claim for `session` leased (none: it came back empty)."""
        metrics.LEASE_CLAIMS.labels(queue, "jobs" if jobs else "empty").inc()
        if jobs and session.closed:
            await self._hand_back(jobs)
            return
        leased: list[dict[str, Any]] = []
        for job in jobs:
            assert job.lease_token is not None
            self.hold(session, job.id, job.lease_token)
            leased.append(convert.leased_job_fields(job))
            self._changes.changed(job.id)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "leased",
                    extra={
                        "job_id": str(job.id),
                        "queue": job.queue,
                        "job_type": job.type,
                        "attempt": job.attempt,
                        "worker_id": session.worker_id,
                        "trace_id": job.trace_id,
                    },
                )
        # Built as one message here, from the jobs' fields, rather than from LeasedJob
        # messages or merged by the stream, either of which would copy every job again.
        if session.batches and len(leased) > 1:
            session.send(convert.message(leases_pb2.LeaseResponse, {"jobs": {"jobs": leased}}))
        else:
            for one in leased:
                session.send(convert.message(leases_pb2.LeaseResponse, {"job": one}))


def _queues_of_new(jobs: Sequence[NewJob], submitted: Sequence[Submitted]) -> set[str]:
    """The queues of the jobs a submit created (a reused idempotency key creates none)."""
    return {job.queue for job, s in zip(jobs, submitted, strict=True) if s.created}


def _undelivered(job: Job) -> Nack:
    assert job.lease_token is not None
    return Nack(
        job_id=job.id,
        lease_token=job.lease_token,
        error=ErrorInfo(message="not delivered: the stream ended"),
        retryable=True,
        release=True,
    )


def _give_back(session: Session, credit: int) -> None:
    """Returns credit set aside for a claim and not used. A stream that started draining
    meanwhile keeps none: it takes no more jobs."""
    if not session.draining:
        session.credit += credit
