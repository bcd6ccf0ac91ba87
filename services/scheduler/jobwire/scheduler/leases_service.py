"""The Leases gRPC service: the workers' stream and the unary settle calls. No SQL here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

import grpc
from jobwire.v1 import leases_pb2, leases_pb2_grpc

from . import convert, model, validation
from .batching import GroupCommit, flatten, regroup
from .dispatch import Dispatcher, JobChanges, Session
from .errors import FailedPrecondition, InvalidArgument, SchedulerError
from .model import Extension
from .status import code_of, unary
from .store import Store

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_CREDIT = 10_000
ItemT = TypeVar("ItemT", leases_pb2.AckItem, leases_pb2.NackItem)
OutcomeT = TypeVar("OutcomeT", model.Ack, model.Nack)
_OK = grpc.StatusCode.OK.value[0]
# Seconds a stopping scheduler waits for the streams it ended to end their sessions.
_CLEANUP_WAIT = 5.0


def _hello(message: leases_pb2.LeaseRequest) -> Session:
    if message.WhichOneof("kind") != "hello":
        raise InvalidArgument("the first message on a Lease stream must be a hello")
    hello = message.hello
    worker_id = validation.name(hello.worker_id, "hello.worker_id")
    if not 1 <= len(hello.queues) <= 64:
        raise InvalidArgument("hello.queues: must name 1 to 64 queues")
    if not 1 <= len(hello.types) <= 256:
        raise InvalidArgument("hello.types: must name 1 to 256 job types")
    queues = tuple(dict.fromkeys(validation.name(q, "hello.queues") for q in hello.queues))
    types = tuple(dict.fromkeys(validation.name(t, "hello.types") for t in hello.types))
    if not 0 <= hello.credits <= MAX_CREDIT:
        raise InvalidArgument(f"hello.credits: must be between 0 and {MAX_CREDIT}")
    return Session(
        worker_id=worker_id,
        queues=queues,
        types=types,
        credit=hello.credits,
        batches=hello.batches,
    )


class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        changes: JobChanges,
        *,
        limits: validation.Limits,
        stream_grace: timedelta,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._changes = changes
        self._limits = limits
        self._stream_grace = stream_grace
        self.stopping = False
        self._cleanups: set[asyncio.Task[None]] = set()
        # One entry per stream message, which holds up to MAX_BATCH outcomes.
        self._acks = GroupCommit(self._write_acks, size=len, name="acks")
        self._nacks = GroupCommit(self._write_nacks, size=len, name="nacks")
        self._extensions = GroupCommit(self._write_extensions, name="extensions")
        # (worker, the jobs its other live streams hold) per stream lost.
        self._pull_ins = GroupCommit(self._write_pull_ins, name="pull-ins")

    # -- the stream -----------------------------------------------------------------------

    async def Lease(
        self, request_iterator: AsyncIterator[leases_pb2.LeaseRequest], context: Context
    ) -> AsyncIterator[leases_pb2.LeaseResponse]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        try:
            session = _hello(first)
        except SchedulerError as exc:
            await context.abort(code_of(exc), str(exc))
            return
        log.info("worker %s connected (queues %s)", session.worker_id, ",".join(session.queues))
        self._dispatcher.add(session)
        reader = asyncio.create_task(self._read(request_iterator, session))
        try:
            while (message := await session.outbox.get()) is not None:
                if session.batches:
                    for merged in _merge(message, session):
                        yield merged
                else:
                    yield message
        finally:
            # Not awaited here: gRPC may be closing this generator, and a closing generator
            # must not wait on the database.
            task = asyncio.create_task(self._end_session(session, reader))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)

    async def _end_session(self, session: Session, reader: asyncio.Task[None]) -> None:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        self._dispatcher.remove(session)
        if not self.stopping:
            await self._pull_in(session)
        log.info("worker %s disconnected", session.worker_id)

    async def _pull_in(self, session: Session) -> None:
        """The worker is gone: its leases end after the grace unless it extends them."""
        try:
            await self._pull_ins.submit(
                (session.worker_id, self._dispatcher.held_elsewhere(session))
            )
        except SchedulerError as exc:
            # The leases keep their full deadline; the reaper still ends them.
            log.warning("could not shorten leases of %s: %s", session.worker_id, exc)

    async def _read(
        self, requests: AsyncIterator[leases_pb2.LeaseRequest], session: Session
    ) -> None:
        try:
            async for message in requests:
                await self._handle(message, session)
            # The worker half-closed: answer everything it sent before the stream ends.
            if session.in_flight:
                await asyncio.wait(set(session.in_flight), timeout=30)
                await asyncio.sleep(0)  # let the answers' callbacks run first
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:  # the stream must end rather than hang on a bug
            log.exception("lease stream of %s failed", session.worker_id)
        finally:
            session.close()

    async def _handle(self, message: leases_pb2.LeaseRequest, session: Session) -> None:
        """Takes one message off the stream. Outcomes and extensions are handed to group
        commit and answered when their batch is written, so the reader never waits on the
        database and one stream's items share round trips with every other stream's."""
        kind = message.WhichOneof("kind")
        if kind == "credit":
            if not 1 <= message.credit.credits <= MAX_CREDIT:
                return  # ignored: a worker cannot shrink or overflow its credit
            if not session.draining:
                session.credit = min(session.credit + message.credit.credits, MAX_CREDIT)
                self._dispatcher.credit_returned()
        elif kind == "drain":
            session.draining = True
            session.credit = 0
        elif kind == "ack":
            self._settle_acks(session, [message.ack])
        elif kind == "nack":
            self._settle_nacks(session, [message.nack])
        elif kind == "extend":
            for i, item in enumerate(message.extend.items[: validation.MAX_BATCH]):
                self._extend(session, item, f"extend.items[{i}]")
        elif kind == "batch":
            batch = message.batch
            if batch.acks:
                self._settle_acks(session, batch.acks[: validation.MAX_BATCH])
            if batch.nacks:
                self._settle_nacks(session, batch.nacks[: validation.MAX_BATCH])
            if 1 <= batch.credits <= MAX_CREDIT and not session.draining:
                session.credit = min(session.credit + batch.credits, MAX_CREDIT)
                self._dispatcher.credit_returned()
        # A second hello or an unknown kind is ignored: newer workers may send more.

    def _settle_acks(self, session: Session, items: Sequence[leases_pb2.AckItem]) -> None:
        def parse(item: leases_pb2.AckItem) -> model.Ack:
            return validation.ack(item, "ack", self._limits)

        self._settle(session, leases_pb2.SETTLE_KIND_ACK, items, parse, self._acks)

    def _settle_nacks(self, session: Session, items: Sequence[leases_pb2.NackItem]) -> None:
        def parse(item: leases_pb2.NackItem) -> model.Nack:
            return validation.nack(item, "nack", self._limits)

        self._settle(session, leases_pb2.SETTLE_KIND_NACK, items, parse, self._nacks)

    def _settle(
        self,
        session: Session,
        kind: int,
        items: Sequence[ItemT],
        parse: Callable[[ItemT], OutcomeT],
        batcher: GroupCommit[list[OutcomeT], list[Exception | None]],
    ) -> None:
        """Hands a message's valid outcomes of one kind to group commit as one entry and
        answers them in one message once written, rather than one future, callback and
        message per outcome; invalid ones are answered at once."""
        parsed, results = _parse(session, kind, items, parse)
        if not parsed:
            return

        def settled(done: asyncio.Future[list[Exception | None]]) -> None:
            if done.cancelled():
                return
            failure = done.exception()
            errors = [failure] * len(parsed) if failure else done.result()
            for outcome, result, error in zip(parsed, results, errors, strict=True):
                self._dispatcher.release(outcome.job_id, outcome.lease_token)
                self._changes.changed(outcome.job_id)
                _answered(result, error)
            session.answer(results)

        written = batcher.submit(parsed)
        session.track(written)
        written.add_done_callback(settled)

    def _extend(self, session: Session, item: leases_pb2.ExtendItem, where: str) -> None:
        result = leases_pb2.SettleResult(
            kind=leases_pb2.SETTLE_KIND_EXTEND, job_id=item.job_id, lease_token=item.lease_token
        )
        try:
            parsed = validation.extension(item, where, self._limits)
        except SchedulerError as exc:
            session.answer([_answered(result, exc)])
            return
        parsed = replace(parsed, worker_id=session.worker_id)
        future = self._extensions.submit(parsed)

        def extended(done: asyncio.Future[model.Extended | Exception]) -> None:
            if done.cancelled():
                return
            outcome = done.exception() or done.result()
            if isinstance(outcome, model.Extended):
                self._dispatcher.hold(session, parsed.job_id, parsed.lease_token)
                result.lease_deadline.CopyFrom(convert.timestamp(outcome.lease_deadline))
                result.cancel_requested = outcome.cancel_requested
                session.answer([_answered(result, None)])
            else:
                session.answer([_answered(result, outcome)])

        session.track(future)
        future.add_done_callback(extended)

    # -- group commit ---------------------------------------------------------------------

    async def _write_acks(
        self, messages: Sequence[list[model.Ack]]
    ) -> list[list[Exception | None]]:
        items = flatten(messages)
        return regroup(messages, _per_item(items, await self._store.ack(items, atomic=False)))

    async def _write_nacks(
        self, messages: Sequence[list[model.Nack]]
    ) -> list[list[Exception | None]]:
        items = flatten(messages)
        refusals, ready = await self._store.nack(items, atomic=False)
        if ready:  # a job that waits out a backoff is found by the poll tick instead
            self._dispatcher.wake(ready)
        return regroup(messages, _per_item(items, refusals))

    async def _write_extensions(
        self, items: Sequence[Extension]
    ) -> list[model.Extended | Exception]:
        extended, refusals = await self._store.extend(items, atomic=False)
        done = {(e.job_id, e.lease_token): e for e in extended}
        errors = _per_item(items, refusals)
        return [
            done.get((item.job_id, item.lease_token))
            or error
            or FailedPrecondition(f"lease {item.lease_token} of job {item.job_id} was not extended")
            for item, error in zip(items, errors, strict=True)
        ]

    async def _write_pull_ins(self, lost: Sequence[tuple[str, set[UUID]]]) -> list[None]:
        # Jobs have one worker each, so one set of jobs to keep serves every worker.
        await self._store.pull_in_leases(
            workers=[worker for worker, _ in lost],
            grace=self._stream_grace,
            keep=set().union(*(held for _, held in lost)),
        )
        return [None] * len(lost)

    async def close(self) -> None:
        # Streams the server ended on its way down still have their sessions to end; left
        # pending, those tasks would be destroyed with the event loop, mid-way.
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=_CLEANUP_WAIT)
        for batcher in (self._acks, self._nacks, self._extensions, self._pull_ins):
            await batcher.close()

    # -- unary calls ----------------------------------------------------------------------

    @unary
    async def Ack(self, request: leases_pb2.AckRequest, context: Context) -> leases_pb2.AckResponse:
        items = validation.acks(list(request.items), self._limits)
        await self._store.ack(items, atomic=True)
        self._settled(items)
        return leases_pb2.AckResponse()

    @unary
    async def Nack(
        self, request: leases_pb2.NackRequest, context: Context
    ) -> leases_pb2.NackResponse:
        items = validation.nacks(list(request.items), self._limits)
        _, ready = await self._store.nack(items, atomic=True)
        self._settled(items)
        if ready:
            self._dispatcher.wake(ready)
        return leases_pb2.NackResponse()

    @unary
    async def Extend(
        self, request: leases_pb2.ExtendRequest, context: Context
    ) -> leases_pb2.ExtendResponse:
        items = validation.extensions(list(request.items), self._limits)
        extended, _ = await self._store.extend(items, atomic=True)
        by_id = {e.job_id: e for e in extended}
        return leases_pb2.ExtendResponse(
            results=[
                leases_pb2.ExtendResult(
                    job_id=str(item.job_id),
                    lease_deadline=convert.timestamp(by_id[item.job_id].lease_deadline),
                    cancel_requested=by_id[item.job_id].cancel_requested,
                )
                for item in items
                if item.job_id in by_id
            ]
        )

    def _settled(self, items: Sequence[model.Ack | model.Nack]) -> None:
        for item in items:
            self._dispatcher.release(item.job_id, item.lease_token)
            self._changes.changed(item.job_id)


def _merge(first: leases_pb2.LeaseResponse, session: Session) -> list[leases_pb2.LeaseResponse]:
    """Everything already waiting in the outbox, with single jobs packed into one message:
    fewer, larger writes when a worker is busy, the same latency when not. (Answers come
    packed already, see `Session.answer`.) Other messages (cancel notices, answers,
    ready-made job batches) keep their place, so a cancel never overtakes the job it is
    about."""
    merged: list[leases_pb2.LeaseResponse] = []
    jobs: list[leases_pb2.LeasedJob] = []

    def flush() -> None:
        if jobs:
            merged.append(leases_pb2.LeaseResponse(jobs=leases_pb2.LeasedJobs(jobs=jobs)))
            jobs.clear()

    message: leases_pb2.LeaseResponse | None = first
    while message is not None:
        if message.WhichOneof("kind") == "job":
            jobs.append(message.job)
        else:
            flush()
            merged.append(message)
        try:
            message = session.outbox.get_nowait()
        except asyncio.QueueEmpty:
            break
        if message is None:  # the stream is ending: send what we have, then stop
            session.outbox.put_nowait(None)
            break
    flush()
    return merged


def _parse(
    session: Session,
    kind: int,
    items: Sequence[ItemT],
    parse: Callable[[ItemT], OutcomeT],
) -> tuple[list[OutcomeT], list[leases_pb2.SettleResult]]:
    """One message's outcomes of one kind: the valid ones, and the results still to
    answer for them, in the same order. Invalid ones are answered at once."""
    parsed: list[OutcomeT] = []
    pending: list[leases_pb2.SettleResult] = []
    refused: list[leases_pb2.SettleResult] = []
    for item in items:
        result = leases_pb2.SettleResult(
            kind=kind,  # type: ignore[arg-type]
            job_id=item.job_id,
            lease_token=item.lease_token,
        )
        try:
            parsed.append(parse(item))
        except SchedulerError as exc:
            refused.append(_answered(result, exc))
        else:
            pending.append(result)
    if refused:
        session.answer(refused)
    return parsed, pending


def _per_item(
    items: Sequence[model.Ack | model.Nack | Extension], refusals: Sequence[model.Refusal]
) -> list[Exception | None]:
    """One entry per item: None when it was applied (or was a harmless repeat)."""
    errors = {(r.job_id, r.lease_token): r.error for r in refusals}
    return [errors.get((item.job_id, item.lease_token)) for item in items]


def _answered(
    result: leases_pb2.SettleResult, error: BaseException | None
) -> leases_pb2.SettleResult:
    """`result` with the code and message of `error` (None: done)."""
    if error is None:
        result.code = _OK
    elif isinstance(error, SchedulerError):
        result.code = code_of(error).value[0]
        result.message = str(error)
    else:
        log.error("settling %s failed: %r", result.job_id, error)
        result.code = grpc.StatusCode.INTERNAL.value[0]
        result.message = "internal error"
    return result
