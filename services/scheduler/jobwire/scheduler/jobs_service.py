"""The Jobs gRPC service: protobuf in, domain calls, protobuf out. No SQL here."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from jobwire.v1 import jobs_pb2, jobs_pb2_grpc

from . import convert, validation
from .batching import GroupCommit, flatten, regroup
from .dispatch import Dispatcher, JobChanges
from .errors import InvalidArgument, SchedulerError
from .model import Job, ListFilter, NewJob, QueueStats, State, Submitted
from .page_tokens import PageTokens
from .status import code_of, unary
from .store import Store

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
# Submits of at most this many jobs (and no idempotency key) are merged by group commit.
MERGEABLE_SUBMIT = 10
MAX_PAGE_SIZE = 500


def trace_id_from(context: Context) -> str:
    """The caller's trace id (W3C traceparent or x-request-id), or a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            parts = value.split("-")
            if len(parts) >= 2 and _TRACE_ID.fullmatch(parts[1]) and parts[1] != "0" * 32:
                return parts[1]
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


# W3C Trace Context's trace-id; a request id of printable ASCII, as it ends up in log lines.
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_REQUEST_ID = re.compile(r"[!-~]{1,128}")


def transitions(job: Job) -> list[tuple[State, int]]:
    """Every state the job has entered, in order, rebuilt from its attempt history."""
    seen: list[tuple[State, int]] = [(State.PENDING, 0)]
    for attempt in job.attempts:
        seen.append((State.RUNNING, attempt.number))
        if attempt.next_state is not None:
            seen.append((attempt.next_state, attempt.number))
    if job.state.terminal and seen[-1][0] is not job.state:
        seen.append((job.state, job.attempt))  # cancelled while pending
    return seen


class JobsService(jobs_pb2_grpc.JobsServicer):
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        changes: JobChanges,
        page_tokens: PageTokens,
        *,
        limits: validation.Limits,
        watch_poll_interval: float,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._changes = changes
        self._page_tokens = page_tokens
        self._limits = limits
        self._watch_poll = watch_poll_interval
        self._small_submits: GroupCommit[tuple[list[NewJob], bool], list[Submitted]] = GroupCommit(
            self._write_small_submits, max_batch=200, name="submits"
        )

    @unary
    async def Submit(
        self, request: jobs_pb2.SubmitRequest, context: Context
    ) -> jobs_pb2.SubmitResponse:
        new = validation.new_jobs(
            list(request.jobs),
            limits=self._limits,
            tenant="",
            trace_id=trace_id_from(context),
            now=datetime.now(UTC),
        )
        keyed = any(job.idempotency_key for job in new)
        if len(new) <= MERGEABLE_SUBMIT and not keyed:
            # Small, key-less submits from many producers share one insert and one commit.
            submitted = await self._small_submits.submit((new, not request.ids_only))
        elif keyed:
            # Alone, as a conflicting key fails its whole transaction; idle workers still
            # get their jobs in it. Their credit waits with it, also behind another
            # transaction that holds the same key (a concurrent submit of it: milliseconds).
            submitted = await self._dispatcher.submit(new, full=not request.ids_only)
        else:
            # A big key-less batch goes in with COPY, several times cheaper per row than
            # the arrays a claim's transaction would take; leasing is woken for it.
            submitted = await self._store.submit(new, full=not request.ids_only)
            self._dispatcher.wake({job.queue for job in new})
        if log.isEnabledFor(logging.DEBUG):
            for job, s in zip(new, submitted, strict=True):
                if s.created:
                    log.debug("submitted", extra=_log_fields(s.job_id, job))
        return convert.message(
            jobs_pb2.SubmitResponse,
            {
                "results": [
                    {
                        "job": {"id": str(s.job_id)}
                        if request.ids_only or s.job is None
                        else convert.job_fields(s.job),
                        "created": s.created,
                    }
                    for s in submitted
                ]
            },
        )

    async def _write_small_submits(
        self, requests: Sequence[tuple[list[NewJob], bool]]
    ) -> list[list[Submitted]]:
        """Writes merged submits; each request is (jobs, whether its caller wants them
        back whole rather than as ids)."""
        # Without idempotency keys nothing in a merged batch can conflict with anything
        # else, so one caller's jobs never fail because of another's.
        groups = [jobs for jobs, _ in requests]
        # Through the dispatcher, which hands jobs to idle workers in the same transaction
        # and wakes leasing for the rest a loop turn sooner than each caller would.
        stored = await self._dispatcher.submit(
            flatten(groups), full=any(full for _, full in requests)
        )
        return regroup(groups, stored)

    async def close(self) -> None:
        await self._small_submits.close()

    @unary
    async def Get(self, request: jobs_pb2.GetRequest, context: Context) -> jobs_pb2.GetResponse:
        job = await self._store.get(validation.job_id(request.id))
        return jobs_pb2.GetResponse(job=convert.job(job))

    @unary
    async def List(self, request: jobs_pb2.ListRequest, context: Context) -> jobs_pb2.ListResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size: must be between 1 and {MAX_PAGE_SIZE}, got {size}")
        states = []
        for value in request.states:
            if value not in convert.STATE_FROM_PROTO:
                raise InvalidArgument(f"states: {value} is not a job state")
            states.append(convert.STATE_FROM_PROTO[value])
        filt = ListFilter(
            queue=validation.name(request.queue, "queue") if request.queue else None,
            type=validation.name(request.type, "type") if request.type else None,
            states=tuple(states),
            tenant=validation.text(request.tenant, "tenant", 128) or None,
        )
        filters_key = repr((filt.queue, filt.type, sorted(s.value for s in states), filt.tenant))
        after = None
        if request.page_token:
            after = self._page_tokens.read(request.page_token, filters=filters_key)
        rows = await self._store.list_jobs(filt, limit=size + 1, after=after)
        page, more = rows[:size], len(rows) > size
        token = ""
        if more:
            last = page[-1]
            token = self._page_tokens.make(
                created_at=last.created_at, job_id=last.id, filters=filters_key
            )
        return jobs_pb2.ListResponse(jobs=[convert.job(j) for j in page], next_page_token=token)

    async def Watch(
        self, request: jobs_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.WatchEvent]:
        try:
            job_id = validation.job_id(request.id)
            sent = 0
            while True:
                job = await self._store.get(job_id)
                seen = transitions(job)
                message = convert.job(job)
                for sequence, (state, attempt) in enumerate(seen[sent:], start=sent + 1):
                    yield jobs_pb2.WatchEvent(
                        sequence=sequence,
                        state=convert.STATE_TO_PROTO[state],
                        attempt=attempt,
                        job=message,
                    )
                sent = len(seen)
                if job.state.terminal:
                    return
                await self._changes.wait(job_id, self._watch_poll)
        except SchedulerError as exc:
            await context.abort(code_of(exc), str(exc))

    @unary
    async def Cancel(
        self, request: jobs_pb2.CancelRequest, context: Context
    ) -> jobs_pb2.CancelResponse:
        job_id = validation.job_id(request.id)
        validation.text(request.reason, "reason", 1024)
        job, tell_worker = await self._store.cancel(job_id, request.reason)
        if tell_worker:
            self._dispatcher.notify_cancel(job_id, request.reason)
        self._changes.changed(job_id)
        return jobs_pb2.CancelResponse(job=convert.job(job))

    @unary
    async def Retry(
        self, request: jobs_pb2.RetryRequest, context: Context
    ) -> jobs_pb2.RetryResponse:
        job = await self._store.retry(validation.job_id(request.id))
        self._dispatcher.wake({job.queue})
        return jobs_pb2.RetryResponse(job=convert.job(job))

    @unary
    async def Stats(
        self, request: jobs_pb2.StatsRequest, context: Context
    ) -> jobs_pb2.StatsResponse:
        queue = validation.name(request.queue, "queue") if request.queue else None
        workers = self._dispatcher.workers_by_queue()
        stats = QueueStats.with_idle(
            await self._store.stats(queue, with_succeeded=True),
            (name for name in workers if queue is None or name == queue),
        )
        return jobs_pb2.StatsResponse(
            queues=[convert.queue_stats(s, workers.get(s.queue, (0, 0))[0]) for s in stats]
        )


def _log_fields(job_id: uuid.UUID, job: NewJob) -> dict[str, str]:
    return {
        "job_id": str(job_id),
        "queue": job.queue,
        "job_type": job.type,
        "trace_id": job.trace_id,
    }
