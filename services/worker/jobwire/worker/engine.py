"""The worker's side of the Lease protocol: take jobs within the credit, run them,
report and re-report outcomes, extend leases, obey cancels, drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable
from datetime import UTC

from jobwire.v1 import job_pb2, leases_pb2

from . import metrics, outcomes
from .connection import Connection
from .execution import Execution, StopReason
from .outcomes import Outcome, OutcomeKey, UnsettledOutcomes
from .registry import HandlerRegistry
from .settings import WorkerSettings
from .threads import DaemonThreadPool
from .transport import Transport

__all__ = ["Engine"]

log = logging.getLogger("jobwire.worker")
# Sent after every job: one message serves every time, as nothing changes a request once
# queued (the writer reads it, folds it into a batch or serializes it).
_ONE_CREDIT = leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1))

# google.rpc.Code values used in SettleResult.code.
OK = 0
DEADLINE_EXCEEDED = 4
UNAVAILABLE = 14

MAX_EXTEND_ITEMS = 1000  # per ExtendRequest, as the contract allows
CLOSE_WAIT = 1.0  # for the scheduler to end a half-closed stream


class Engine:
    """One run of a worker: made by `Worker.run()` inside its event loop."""

    def __init__(self, settings: WorkerSettings, registry: HandlerRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._rng = random.Random()
        self._draining = False
        self._closing = False
        self._held: dict[str, Execution] = {}  # by lease token: outcome not decided yet
        # The same executions by job id, the latest lease of each job: a job leased again
        # is found without going over every held lease, for every job that arrives.
        self._held_jobs: dict[str, Execution] = {}
        # Prefetched jobs waiting for a slot (also in _held: their leases are extended).
        self._waiting: deque[Execution] = deque()
        self._held_empty = asyncio.Event()
        self._held_empty.set()
        self._leases_changed = asyncio.Event()
        # Loop time the heartbeat sleeps until (None: until a lease arrives). A lease due
        # no sooner does not wake it: with a long prefetch it would, for every job, go
        # over every held lease for nothing.
        self._next_extension: float | None = None
        self._slots = 0  # handlers that have not returned, stopped ones included
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsettled = UnsettledOutcomes()
        self._pool = DaemonThreadPool(settings.concurrency, name=f"jobwire-{settings.worker_id}")
        self._transport = Transport(
            settings.target,
            credentials=settings.credentials,
            metadata=settings.metadata,
            options=settings.channel_options,
        )
        self.connection = Connection(
            self._transport,
            target=settings.target,
            backoff=settings.backoff,
            greeting=self._greeting,
            on_message=self._dispatch,
            while_connected=self._heartbeat,
            rng=self._rng,
        )

    @property
    def _room(self) -> int:
        """Jobs this worker may still take: its slots plus its prefetch, less the jobs
        running (stopped ones included) and waiting."""
        return self.settings.concurrency + self.settings.prefetch - self._slots - len(self._waiting)

    @property
    def active_jobs(self) -> int:
        return len(self._held) - len(self._waiting)

    @property
    def prefetched_jobs(self) -> int:
        return len(self._waiting)

    @property
    def running_handlers(self) -> int:
        """Handlers that have not returned, stopped ones included."""
        return self._slots

    @property
    def unsettled_outcomes(self) -> int:
        return len(self._unsettled)

    async def run(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        """Serves until `stop` is set, then drains; `force` cuts the drain grace short.

        Cancelling this coroutine instead skips the drain: running jobs are dropped
        and run again once their leases expire."""
        connection = asyncio.create_task(
            self.connection.run(), name=f"jobwire-worker-{self.settings.worker_id}"
        )
        stopping = asyncio.create_task(stop.wait())
        metrics.ENGINES.watch(self)
        try:
            await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                connection.result()  # re-raises whatever ended it
                raise RuntimeError("the connection loop ended on its own")
            await self._drain(force)
        finally:
            stopping.cancel()
            self._closing = True
            await self.connection.close(connection, wait=CLOSE_WAIT)
            await self._settle_leftovers()
            # Handlers that ignore cancellation are not waited for: their jobs have
            # been handed back, and their threads do not keep the process alive.
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._transport.close()
            self._pool.shutdown()
            metrics.ENGINES.unwatch(self)

    # -- what opens every stream -------------------------------------------------------

    def _greeting(self) -> list[leases_pb2.LeaseRequest]:
        settings = self.settings
        credits = 0 if self._draining else max(self._room, 0)
        hello = leases_pb2.Hello(
            worker_id=settings.worker_id,
            queues=settings.queues,
            types=self.registry.types,
            credits=credits,
            batches=True,
        )
        messages = [leases_pb2.LeaseRequest(hello=hello)]
        if self._draining:
            messages.append(leases_pb2.LeaseRequest(drain=leases_pb2.Drain()))
        # Outcomes whose answer may have been lost with the previous stream. Held
        # leases are extended next, by the heartbeat that starts with the stream.
        messages.extend(outcome.request for outcome in self._unsettled)
        return messages

    # -- messages from the scheduler -----------------------------------------------------

    def _dispatch(self, response: leases_pb2.LeaseResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "job":
            self._on_job(response.job)
        elif kind == "cancel":
            self._on_cancel(response.cancel)
        elif kind == "result":
            self._on_settle(response.result)
        elif kind == "jobs":
            for leased in response.jobs.jobs:
                self._on_job(leased)
        elif kind == "results":
            for result in response.results.results:
                self._on_settle(result)
        else:
            log.debug("ignoring an unknown message from the scheduler: %s", kind)

    def _on_job(self, leased: leases_pb2.LeasedJob) -> None:
        job = leased.job
        token = leased.lease_token
        if token in self._held:
            return  # the same lease delivered twice
        if self._draining:
            log.info("job %s arrived while draining: handing it back", job.id, extra=_fields(job))
            self._report(outcomes.release(job.id, token, "worker is shutting down"))
            return
        if self._room <= 0:
            log.warning(
                "job %s arrived beyond the credit granted: handing it back",
                job.id,
                extra=_fields(job),
            )
            self._report(outcomes.release(job.id, token, "worker has no free slot"))
            return
        spec = self.registry.get(job.spec.type)
        if spec is None:
            log.warning(
                "job %s has type %r, which this worker does not run",
                job.id,
                job.spec.type,
                extra=_fields(job),
            )
            self._report(
                outcomes.nack(
                    job.id,
                    token,
                    message=f"worker {self.settings.worker_id} has no handler for "
                    f"{job.spec.type!r}",
                    kind="unknown_type",
                    retryable=True,
                )
            )
            self._grant_credit()  # the slot this job would have used is still free
            return
        earlier = self._held_jobs.get(job.id)
        if earlier is not None:
            # Leased again under a new token: the old attempt cannot settle any more.
            self._stop(earlier, StopReason.LOST, "job leased again")
        execution = Execution(leased, spec, worker_id=self.settings.worker_id, pool=self._pool)
        self._held[token] = execution
        self._held_jobs[job.id] = execution
        self._held_empty.clear()
        due = execution.extended_at + self._extend_interval(execution)
        if self._next_extension is None or due < self._next_extension:
            self._leases_changed.set()
        if self._slots < self.settings.concurrency:
            self._launch(execution)
        else:
            self._waiting.append(execution)

    def _launch(self, execution: Execution) -> None:
        self._slots += 1
        task = asyncio.create_task(
            self._execute(execution), name=f"jobwire-attempt-{execution.job_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop(self, execution: Execution, reason: StopReason, detail: str) -> bool:
        """Stops an attempt, running or prefetched. A prefetched one never started: its
        outcome (handed back, cancelled, dropped) is decided and logged here, without
        taking a slot, decoding its payload or counting a handler run. Returns whether a
        running handler is being stopped, which the caller logs with its reason."""
        if not execution.stop(reason, detail):
            return False
        if execution in self._waiting:
            self._waiting.remove(execution)
            self._forget(execution)
            outcome = execution.stopped_outcome()
            self._finish(execution, outcome, elapsed=None)
            if not self._draining and not self._closing:
                self._grant_credit()  # the room it held is free again
            return False
        return True

    def _start_waiting(self) -> None:
        while self._waiting and self._slots < self.settings.concurrency:
            self._launch(self._waiting.popleft())

    def _on_cancel(self, notice: leases_pb2.CancelNotice) -> None:
        execution = self._held.get(notice.lease_token)
        if execution is None or execution.job_id != notice.job_id:
            log.debug("cancel for job %s, which is not running here", notice.job_id)
            return
        if self._stop(execution, StopReason.CANCELLED, notice.reason or "cancelled"):
            execution.logger.info("cancelled by the producer, stopping the handler")

    def _on_settle(self, result: leases_pb2.SettleResult) -> None:
        if result.kind == leases_pb2.SETTLE_KIND_EXTEND:
            self._on_extended(result)
            return
        key: OutcomeKey = (result.kind, result.job_id, result.lease_token)
        if result.code == UNAVAILABLE:
            if key in self._unsettled:
                delay = 0.5 + self._rng.random()
                log.info(
                    "scheduler could not record the outcome of job %s yet; resending in %.1f s",
                    result.job_id,
                    delay,
                )
                asyncio.get_running_loop().call_later(delay, self._resend, key)
            return
        outcome = self._unsettled.pop(key)
        if outcome is None:
            return  # the answer to a resent copy
        if result.code == OK:
            log.debug("outcome of job %s recorded (%s)", result.job_id, outcome.label)
            return
        metrics.SETTLE_REFUSED.labels(kind=_settle_kind_name(result.kind)).inc()
        log.warning(
            "scheduler refused the %s outcome of job %s (code %d): %s",
            outcome.label,
            result.job_id,
            result.code,
            result.message or "no reason given",
        )

    def _resend(self, key: OutcomeKey) -> None:
        outcome = self._unsettled.get(key)
        if outcome is not None:
            self.connection.send(outcome.request)

    def _on_extended(self, result: leases_pb2.SettleResult) -> None:
        execution = self._held.get(result.lease_token)
        if execution is None or execution.job_id != result.job_id:
            return  # settled meanwhile
        if result.code == UNAVAILABLE:
            return  # the next heartbeat tries again
        if result.code != OK:
            if self._stop(execution, StopReason.LOST, result.message or f"code {result.code}"):
                execution.logger.warning(
                    "lease lost (code %d: %s); stopping the handler and dropping the job",
                    result.code,
                    result.message or "no reason given",
                )
            return
        if result.HasField("lease_deadline"):
            execution.update_deadline(result.lease_deadline.ToDatetime(tzinfo=UTC))
        if result.cancel_requested and self._stop(execution, StopReason.CANCELLED, "cancelled"):
            execution.logger.info("cancelled by the producer, stopping the handler")

    # -- running jobs ----------------------------------------------------------------------

    async def _execute(self, execution: Execution) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        execution.log(logging.INFO, "started")
        try:
            outcome = await execution.run()
            self._forget(execution)
            elapsed = loop.time() - started
            metrics.HANDLER_SECONDS_SERIES(execution.job_type).observe(elapsed)
            self._finish(execution, outcome, elapsed=elapsed)
            await execution.finished()
        finally:
            self._forget(execution)
            self._slots -= 1
            if not self._draining and not self._closing:
                self._start_waiting()
                self._grant_credit()

    def _finish(
        self, execution: Execution, outcome: Outcome | None, *, elapsed: float | None
    ) -> None:
        """Counts, logs and reports an attempt's outcome (None: its lease was lost);
        `elapsed` is the handler's run time, None if it never started."""
        label = outcome.label if outcome is not None else "lost"
        metrics.JOBS_SERIES(execution.job_type, label).inc()
        _log_outcome(execution, outcome, elapsed)
        if outcome is not None:
            self._report(outcome)

    def _forget(self, execution: Execution) -> None:
        if self._held_jobs.get(execution.job_id) is execution:
            del self._held_jobs[execution.job_id]
        if self._held.get(execution.lease_token) is execution:
            del self._held[execution.lease_token]
            if not self._held:
                self._held_empty.set()

    def _report(self, outcome: Outcome) -> None:
        # Recorded before sending: if there is no stream now, the next one resends it.
        self._unsettled.add(outcome)
        self.connection.send(outcome.request)

    def _grant_credit(self) -> None:
        # Without a stream the next Hello carries the free slots instead.
        self.connection.send(_ONE_CREDIT)

    # -- heartbeat -------------------------------------------------------------------------

    def _extend_interval(self, execution: Execution) -> float:
        return max(min(execution.lease_timeout / 3, self.settings.max_extend_interval), 0.1)

    async def _heartbeat(self) -> None:
        """Extends every held lease in one request whenever any of them is due, and at
        once when a stream opens, so that leases survive a reconnect within the
        scheduler's grace period."""
        loop = asyncio.get_running_loop()
        due_now = True
        while True:
            now = loop.time()
            held = list(self._held.values())
            timeout: float | None = None
            if held:
                due = min(ex.extended_at + self._extend_interval(ex) for ex in held)
                if due_now or now >= due:
                    self._extend(held, now)
                    due_now = False
                    continue
                timeout = due - now
            due_now = False
            self._leases_changed.clear()
            self._next_extension = None if timeout is None else now + timeout
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._leases_changed.wait(), timeout)
            finally:
                self._next_extension = None

    def _extend(self, held: list[Execution], now: float) -> None:
        for start in range(0, len(held), MAX_EXTEND_ITEMS):
            items = [
                leases_pb2.ExtendItem(job_id=ex.job_id, lease_token=ex.lease_token)
                for ex in held[start : start + MAX_EXTEND_ITEMS]
            ]
            self.connection.send(
                leases_pb2.LeaseRequest(extend=leases_pb2.ExtendRequest(items=items))
            )
        for ex in held:
            ex.extended_at = now

    # -- stopping ----------------------------------------------------------------------------

    async def _drain(self, force: asyncio.Event) -> None:
        self._draining = True
        # Said before the hand-backs below: the scheduler must know this stream takes no
        # more jobs by the time a handed-back job is ready again, or it may lease it here.
        self.connection.send(leases_pb2.LeaseRequest(drain=leases_pb2.Drain()))
        # Prefetched jobs have not started: they go back to the queue at once.
        for execution in list(self._waiting):
            self._stop(execution, StopReason.RELEASED, "worker is shutting down")
        grace = self.settings.drain_grace
        log.info("draining: %d job(s) running, up to %g s to finish", len(self._held), grace)
        await _until_any(self._held_empty.wait(), force.wait(), limit=grace)
        if self._held:
            log.warning("handing back %d job(s) still running", len(self._held))
            for execution in list(self._held.values()):
                self._stop(execution, StopReason.RELEASED, "worker is shutting down")
            # Deciding a stopped attempt's outcome does not wait for its handler.
            await _until_any(self._held_empty.wait(), limit=self.settings.settle_timeout)
        await _until_any(self._unsettled.wait_empty(), limit=self.settings.settle_timeout)

    async def _settle_leftovers(self) -> None:
        """Outcomes still unconfirmed once the stream is closed (jobs that arrived
        after the stream stopped taking messages, answers that never came) go
        through the unary Ack and Nack calls, one item each, so that one refused
        item cannot hold the others back."""
        if not self._unsettled:
            return
        deadline = max(self.settings.settle_timeout, 0.5)

        async def settle(outcome: Outcome) -> None:
            code = await self._transport.settle(outcome.request, deadline=deadline)
            if code != UNAVAILABLE and code != DEADLINE_EXCEEDED:
                self._unsettled.pop(outcome.key)
                if code != OK:
                    log.warning(
                        "scheduler refused the %s outcome of job %s (code %d)",
                        outcome.label,
                        outcome.job_id,
                        code,
                    )

        await asyncio.gather(*(settle(outcome) for outcome in self._unsettled))
        if self._unsettled:
            log.error(
                "%d outcome(s) not confirmed by the scheduler; their leases will expire "
                "and those jobs run again",
                len(self._unsettled),
            )


def _log_outcome(execution: Execution, outcome: Outcome | None, elapsed: float | None) -> None:
    when = "before it started" if elapsed is None else f"after {elapsed:.2f} s"
    if outcome is None:
        execution.log(logging.WARNING, "dropped %s: its lease was lost", when)
        return
    if outcome.label == "succeeded":
        execution.log(logging.INFO, "succeeded %s", when)
        return
    if outcome.label == "released":
        execution.log(logging.INFO, "handed back %s", when)
        return
    nack = outcome.request.nack
    execution.log(
        logging.WARNING,
        "%s %s (%s, %s): %s%s",
        outcome.label,
        when,
        nack.error.kind,
        "will retry if attempts remain" if nack.retryable else "final",
        nack.error.message,
        # Tracebacks of unexpected exceptions belong in the log as well as in the job.
        f"\n{nack.error.details.rstrip()}" if nack.error.details.startswith("Traceback") else "",
    )


async def _until_any(*waits: Awaitable[object], limit: float) -> None:
    """Returns when any of `waits` completes or after `limit` seconds."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _settle_kind_name(kind: int) -> str:
    if kind == leases_pb2.SETTLE_KIND_ACK:
        return "ack"
    if kind == leases_pb2.SETTLE_KIND_NACK:
        return "nack"
    return "extend"


def _fields(job: job_pb2.Job) -> dict[str, str]:
    """A job's identity for the log lines the worker writes before a handler runs."""
    return {
        "job_id": job.id,
        "queue": job.spec.queue,
        "job_type": job.spec.type,
        "trace_id": job.trace_id,
    }
