"""The one owner of SQL: every statement the scheduler runs goes through `Store`.

Driver errors are translated here, at the boundary: a lost database becomes `Unavailable`,
a refused write the matching `SchedulerError`. Callers never see psycopg.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, JsonbBinaryDumper
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import metrics
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SchedulerError,
    Unavailable,
)
from .ids import new_id, new_ids
from .model import (
    Ack,
    Attempt,
    Claim,
    Expired,
    Extended,
    Extension,
    Job,
    ListFilter,
    Nack,
    NewJob,
    Outcome,
    QueueStats,
    Refusal,
    State,
    Submitted,
)
from .queries import QUERIES

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[dict[str, Any]]

# Key-less batches of this many jobs or more, whose producer wants ids only, go in with
# COPY: it costs a few more round trips than one INSERT, and saves ~6 µs per row.
COPY_FROM = 100
# The column types of copy_jobs, in its order.
_COPY_TYPES = (
    "uuid", "text", "text", "text", "bytea", "text", "int4", "timestamptz", "int4",
    "interval", "interval", "float8", "float8", "interval", "interval", "jsonb", "text",
)  # fmt: skip

# The columns of insert_job (a job's values) and insert_jobs (arrays of them), but for
# `id` and `spec_digest`, which the store makes.
_JOB_COLUMNS: dict[str, Callable[[NewJob], Any]] = {
    "queue": attrgetter("queue"),
    "type": attrgetter("type"),
    "tenant": attrgetter("tenant"),
    "payload": attrgetter("payload"),
    "payload_type": attrgetter("payload_type"),
    "priority": attrgetter("priority"),
    "run_at": attrgetter("run_at"),
    "max_attempts": attrgetter("max_attempts"),
    "backoff_initial": attrgetter("backoff.initial"),
    "backoff_max": attrgetter("backoff.max"),
    "backoff_multiplier": attrgetter("backoff.multiplier"),
    "backoff_jitter": attrgetter("backoff.jitter"),
    "lease_timeout": attrgetter("lease_timeout"),
    "execution_timeout": attrgetter("execution_timeout"),
    "idempotency_key": attrgetter("idempotency_key"),
    "labels": lambda job: Jsonb(dict(job.labels)),
    "trace_id": attrgetter("trace_id"),
}

# Outcomes that a repeated settle of the same kind may find already recorded.
_SAME_ACK = {Outcome.SUCCEEDED}
# The metrics' outcome of an attempt that ended without success, by the state it left
# the job in.
_END_OUTCOMES = {"PENDING": "retried", "FAILED": "failed", "CANCELLED": "cancelled"}
_SAME_NACK = {Outcome.FAILED, Outcome.CANCELLED, Outcome.RELEASED}


async def _in_utc(conn: Conn) -> None:
    """Puts the session in UTC, whatever zone the server or the operator set. psycopg
    then returns timestamps with datetime.timezone.utc, whose offset Python reads in C,
    where a zoneinfo zone costs a Python call each time a job's timestamps are turned
    into protobuf. Interval arithmetic in SQL counts a day as 24 hours, and timestamps
    written into messages (a lease's expiry) read +00."""
    await conn.execute("SET TimeZone TO 'UTC'")


async def _in_utc_unflushed(conn: Conn) -> None:
    await _in_utc(conn)
    await conn.execute("SET synchronous_commit TO off")


def _translate(exc: Exception) -> SchedulerError:
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return AlreadyExists(str(exc.diag.message_primary or exc))
    if isinstance(exc, psycopg.errors.IntegrityError | psycopg.errors.DataError):
        return InvalidArgument(str(exc.diag.message_primary or exc))
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return Unavailable(f"database statement timed out: {exc}")
    if isinstance(exc, psycopg.OperationalError | PoolTimeout | OSError):
        return Unavailable(f"database unavailable: {exc}")
    raise exc


class Store:
    """Async access to the jobs tables through a connection pool."""

    def __init__(self, database_url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.database_url = database_url
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=5.0,
            kwargs={"autocommit": True, "row_factory": dict_row},
            # Session settings are SET once a connection is made rather than passed as
            # `options`, which would replace the operator's own (in the URL or PGOPTIONS).
            configure=_in_utc,
            name="jobwire",
        )
        # Leases and lease extensions commit without waiting for the WAL flush. Losing one
        # in a database crash is harmless: the job is PENDING again and runs again (at least
        # once), and the lost token is refused if its worker reports. Outcomes and submits,
        # which a client is told are recorded, always wait for the flush.
        self._relaxed_pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=max(2, max_size // 3),
            open=False,
            timeout=5.0,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_in_utc_unflushed,
            name="jobwire-leases",
        )
        self._checking: asyncio.Task[None] | None = None
        # Names this scheduler in the notifications of its submits (see
        # `submitted_elsewhere`).
        self.origin = uuid.uuid4().hex

    async def open(self) -> None:
        await self._pool.open(wait=False)
        await self._relaxed_pool.open(wait=False)

    async def close(self) -> None:
        await self._relaxed_pool.close()
        await self._pool.close()

    @asynccontextmanager
    async def _conn(self, *, relaxed: bool = False) -> AsyncIterator[Conn]:
        pool = self._relaxed_pool if relaxed else self._pool
        try:
            async with pool.connection() as conn:
                yield conn
        except SchedulerError:
            raise
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            if isinstance(exc, psycopg.OperationalError):
                self._flush_broken()
            raise _translate(exc) from exc

    def _flush_broken(self) -> None:
        """After a lost connection (a database restart), test the idle ones in the background
        so that the next requests get live connections instead of failing one by one."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._check_pools())

    async def _check_pools(self) -> None:
        await self._pool.check()
        await self._relaxed_pool.check()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        async with self._conn() as conn, conn.transaction():
            yield conn

    async def _rows(self, conn: Conn, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        cur = await conn.execute(QUERIES[name], params)
        return await cur.fetchall()

    # -- health ---------------------------------------------------------------------------

    async def applied_migrations(self) -> set[int]:
        async with self._conn() as conn:
            return {r["version"] for r in await self._rows(conn, "applied_migrations", {})}

    async def page_token_secret(self) -> bytes:
        async with self._conn() as conn:
            rows = await self._rows(conn, "page_token_secret", {})
        if not rows:
            raise Unavailable("the page token secret is missing: run `jobwire migrate`")
        return bytes(rows[0]["value"])

    # -- producers ------------------------------------------------------------------------

    async def submit(self, jobs: Sequence[NewJob], *, full: bool = True) -> list[Submitted]:
        """Inserts all jobs or none; reused idempotency keys return the existing job.

        With `full=False` new jobs come back as ids only (`Submitted.job` is None).
        """
        ids = new_ids(len(jobs))
        keyed = any(job.idempotency_key for job in jobs)
        if not full and not keyed and len(jobs) >= COPY_FROM:
            await self._copy_in(jobs, ids)
            _count_submitted(jobs)
            return [Submitted(job_id=i, job=None, created=True) for i in ids]
        if keyed:
            results, _ = await self._submit_keyed(jobs, ids, full=full)
        else:
            # Nothing can conflict: one statement inserts and notifies, atomic by itself.
            insert, params = self._insert(jobs, ids, [None] * len(jobs))
            async with self._conn() as conn:
                rows = await self._rows(conn, _notifying(insert, full=full), params)
            results = _submitted(ids, rows, full=full)
        _count_submitted([job for job, r in zip(jobs, results, strict=True) if r.created])
        return results

    async def submit_and_lease(
        self, jobs: Sequence[NewJob], claims: Sequence[Claim], *, full: bool = True
    ) -> tuple[list[Submitted], list[list[Job]] | None]:
        """Inserts `jobs` as `submit` does, then leases `claims` in the same transaction:
        jobs handed to idle workers cost one commit instead of two, and their start waits
        for no claim after the submit's. The claims are the ordinary ones (priority order,
        skip locked), so an older or more urgent ready job still goes first. A conflicting
        idempotency key fails the whole transaction, claims included. Returns the submits
        and, per claim, the jobs it leased; or None instead of the leases when the claims
        did not run: the transaction failed in PostgreSQL (rolled back whole) and the jobs
        went in alone, as the claims' trouble must not cost the producer its submit, or
        every key was reused and no job was new."""
        ids = new_ids(len(jobs))
        try:
            if any(job.idempotency_key for job in jobs):
                results, leased = await self._submit_keyed(jobs, ids, full=full, claims=claims)
            else:
                results, leased = await self._submit_keyless_and_lease(jobs, ids, claims, full=full)
        except (SchedulerError, psycopg.Error) as exc:
            failure = exc if isinstance(exc, psycopg.Error) else exc.__cause__
            if not isinstance(failure, psycopg.Error) or failure.sqlstate is None:
                raise  # a refused key, or not reported by PostgreSQL (a lost connection)
            log.warning("a submit with leases failed (%s); submitting without them", exc)
            return await self.submit(jobs, full=full), None
        _count_submitted([job for job, r in zip(jobs, results, strict=True) if r.created])
        if leased is None:
            return results, None
        for claim, claimed in zip(claims, leased, strict=True):
            _count_leased(claim.queue, claimed)
        if full:
            # A job handed over was RUNNING when the transaction committed: say so, as Get
            # would, rather than return the insert's PENDING row.
            running = {job.id: job for claimed in leased for job in claimed}
            results = [
                replace(r, job=running[r.job_id]) if r.job_id in running else r for r in results
            ]
        return results, leased

    async def _submit_keyless_and_lease(
        self, jobs: Sequence[NewJob], ids: list[UUID], claims: Sequence[Claim], *, full: bool
    ) -> tuple[list[Submitted], list[list[Job]]]:
        """Key-less jobs and the claims, pipelined: one round trip, one commit. Other
        replicas hear only of the queues where a job is still pending after the claims."""
        insert, params = self._insert(jobs, ids, [None] * len(jobs))
        async with self._conn() as conn:
            # Pipelined: the statements go out together and PostgreSQL runs everything
            # before the pipeline's one Sync as one transaction, committed at the Sync (or
            # rolled back whole if a statement fails). One round trip, one flush.
            async with conn.pipeline():
                inserting = await conn.execute(
                    QUERIES[insert if full else insert + "_returning_id"], params
                )
                leasing = [await conn.execute(QUERIES["lease_jobs"], _claim(c)) for c in claims]
                await conn.execute(
                    QUERIES["notify_still_pending"], {"ids": ids, "origin": self.origin}
                )
            results = _submitted(ids, await inserting.fetchall(), full=full)
            leased = [[Job.from_row(r) for r in await cursor.fetchall()] for cursor in leasing]
        return results, leased

    def _insert(
        self, jobs: Sequence[NewJob], ids: list[UUID], digests: list[bytes | None]
    ) -> tuple[str, dict[str, Any]]:
        """The insert statement for `jobs` and its parameters: scalar for one job, arrays
        for several."""
        if len(jobs) == 1:
            insert = "insert_job"
            params = {column: get(jobs[0]) for column, get in _JOB_COLUMNS.items()}
            params.update(id=ids[0], spec_digest=digests[0])
        else:
            insert = "insert_jobs"
            params = {column: [get(job) for job in jobs] for column, get in _JOB_COLUMNS.items()}
            params.update(id=ids, spec_digest=digests)
        params["origin"] = self.origin
        return insert, params

    async def _copy_in(self, jobs: Sequence[NewJob], ids: list[UUID]) -> None:
        """Inserts a big key-less batch with COPY: about half the client CPU per row of
        insert_jobs, whose arrays psycopg builds element by element in Python."""
        async with self._transaction() as conn:
            now = (await self._rows(conn, "transaction_start", {}))[0]["now"]
            cursor = conn.cursor()
            cursor.adapters.register_dumper(None, _LabelsDumper)
            async with cursor.copy(QUERIES["copy_jobs"]) as copy:
                copy.set_types(_COPY_TYPES)
                for job, job_id in zip(jobs, ids, strict=True):
                    await copy.write_row(
                        (
                            job_id,
                            job.queue,
                            job.type,
                            job.tenant,
                            job.payload,
                            job.payload_type,
                            job.priority,
                            job.run_at or now,
                            job.max_attempts,
                            job.backoff.initial,
                            job.backoff.max,
                            job.backoff.multiplier,
                            job.backoff.jitter,
                            job.lease_timeout,
                            job.execution_timeout,
                            job.labels,
                            job.trace_id,
                        )
                    )
            queues = sorted({job.queue for job in jobs})
            await conn.execute(
                QUERIES["notify_submitted"], {"queues": queues, "origin": self.origin}
            )

    async def _submit_keyed(
        self,
        jobs: Sequence[NewJob],
        ids: list[UUID],
        *,
        full: bool,
        claims: Sequence[Claim] = (),
    ) -> tuple[list[Submitted], list[list[Job]] | None]:
        """A batch with idempotency keys: insert what is new, look up the jobs whose key
        was taken, then run `claims` (see `submit_and_lease`), all in one transaction.
        Returns the submits and, per claim, the jobs it leased; None instead when no job
        was new and the claims did not run."""
        digests = [job.digest() if job.idempotency_key else None for job in jobs]
        insert, params = self._insert(jobs, ids, digests)
        async with self._transaction() as conn:
            # The notification of the inserted rows' queues goes out at commit, not at all
            # when a conflicting key rolls the batch back.
            inserted: dict[UUID, Job | None] = {
                row["id"]: Job.from_row(row) if full else None
                for row in await self._rows(conn, _notifying(insert, full=full), params)
            }
            # Rows whose key was taken (by an older job or earlier in this batch).
            skipped = [i for i, job_id in enumerate(ids) if job_id not in inserted]
            existing: dict[tuple[str, str, str], Job] = {}
            if skipped:
                rows = await self._rows(
                    conn,
                    "jobs_by_idempotency_key",
                    {
                        "tenant": [jobs[i].tenant for i in skipped],
                        "queue": [jobs[i].queue for i in skipped],
                        "idempotency_key": [jobs[i].idempotency_key for i in skipped],
                    },
                )
                for row in rows:
                    existing[(row["tenant"], row["queue"], row["idempotency_key"])] = Job.from_row(
                        row
                    )
            results = []
            for i, job in enumerate(jobs):
                if ids[i] in inserted:
                    results.append(Submitted(job_id=ids[i], job=inserted[ids[i]], created=True))
                    continue
                key = job.idempotency_key or ""
                found = existing.get((job.tenant, job.queue, key))
                if found is None:  # pragma: no cover - the unique index guarantees a match
                    raise Unavailable("idempotency key lookup raced; retry")
                if found.spec_digest != digests[i]:
                    raise AlreadyExists(
                        f"jobs[{i}]: idempotency key {key!r} of queue {job.queue!r} was used "
                        f"for a different job ({found.id})"
                    )
                results.append(Submitted(job_id=found.id, job=found, created=False))
            # Without a new job there is nothing new to claim: the streams were idle on these
            # queues when the claims were planned. A producer retrying with its key costs
            # no claim.
            leased = (
                [
                    [Job.from_row(r) for r in await self._rows(conn, "lease_jobs", _claim(c))]
                    for c in claims
                ]
                if inserted or not claims
                else None
            )
        return results, leased

    async def get(self, job_id: UUID, *, with_attempts: bool = True) -> Job:
        async with self._conn() as conn:
            rows = await self._rows(conn, "get_job", {"id": job_id})
            if not rows:
                raise NotFound(f"no job with id {job_id}")
            attempts: tuple[Attempt, ...] = ()
            if with_attempts:
                attempts = tuple(
                    Attempt.from_row(r)
                    for r in await self._rows(conn, "get_attempts", {"id": job_id})
                )
        return Job.from_row(rows[0], attempts)

    async def list_jobs(
        self, filt: ListFilter, *, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Job]:
        params = {
            "queue": filt.queue,
            "type": filt.type,
            "tenant": filt.tenant,
            "states": [s.value for s in filt.states] or None,
            "after_created": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        }
        async with self._conn() as conn:
            return [Job.from_row(r) for r in await self._rows(conn, "list_jobs", params)]

    async def cancel(self, job_id: UUID, reason: str) -> tuple[Job, bool]:
        """Cancels or flags the job; returns it and whether a running worker must be told."""
        async with self._transaction() as conn:
            rows = await self._rows(conn, "cancel_job", {"id": job_id, "reason": reason})
            if rows:
                job = Job.from_row(rows[0])
                if job.state is State.RUNNING:
                    await conn.execute(QUERIES["notify_cancel"], {"id": job_id, "reason": reason})
                return job, job.state is State.RUNNING
        job = await self.get(job_id, with_attempts=False)
        if job.state is State.CANCELLED or (job.state is State.RUNNING and job.cancel_requested):
            return job, False  # asked before: the same answer again
        raise FailedPrecondition(f"job {job_id} is {job.state} and cannot be cancelled")

    async def retry(self, job_id: UUID) -> Job:
        async with self._transaction() as conn:
            rows = await self._rows(conn, "retry_job", {"id": job_id, "new_id": new_id()})
            if rows:
                job = Job.from_row(rows[0])
                await conn.execute(
                    QUERIES["notify_submitted"], {"queues": [job.queue], "origin": self.origin}
                )
        if rows:
            metrics.JOBS_SUBMITTED.labels(job.queue, job.type).inc()
            return job
        async with self._conn() as conn:
            again = await self._rows(conn, "retry_of", {"id": job_id})
        if again:
            raise FailedPrecondition(f"job {job_id} was already retried as {again[0]['id']}")
        job = await self.get(job_id, with_attempts=False)
        raise FailedPrecondition(
            f"job {job_id} is {job.state}; only FAILED or CANCELLED jobs can be retried"
        )

    async def stats(self, queue: str | None, *, with_succeeded: bool) -> list[QueueStats]:
        """Job counts per queue (one queue, or every queue with a job it counts).
        Succeeded jobs are counted only `with_succeeded`, which reads every one that
        retention keeps; without it, a queue holding only succeeded jobs has no entry."""
        params = {"queue": queue, "with_succeeded": with_succeeded}
        async with self._conn() as conn:
            rows = await self._rows(conn, "queue_stats", params)
        return [
            QueueStats(
                queue=r["queue"],
                ready=r["ready"],
                scheduled=r["scheduled"],
                running=r["running"],
                succeeded=r["succeeded"] if with_succeeded else None,
                failed=r["failed"],
                cancelled=r["cancelled"],
                oldest_ready_age=timedelta(seconds=float(r["oldest_ready_seconds"] or 0)),
            )
            for r in rows
        ]

    # -- workers --------------------------------------------------------------------------

    async def lease(
        self, *, queue: str, types: Sequence[str], worker_id: str, limit: int
    ) -> list[Job]:
        params = _claim(Claim(queue=queue, types=tuple(types), worker_id=worker_id, limit=limit))
        async with self._conn(relaxed=True) as conn:
            jobs = [Job.from_row(r) for r in await self._rows(conn, "lease_jobs", params)]
        _count_leased(queue, jobs)
        return jobs

    async def ack(self, items: Sequence[Ack], *, atomic: bool) -> list[Refusal]:
        params = {
            "id": [i.job_id for i in items],
            "token": [i.lease_token for i in items],
            "result": [i.result for i in items],
            "result_type": [i.result_type for i in items],
        }

        settled: list[dict[str, Any]] = []

        async def run(conn: Conn) -> set[tuple[UUID, UUID]]:
            settled[:] = await self._rows(conn, "ack_jobs", params)
            return {(r["id"], r["token"]) for r in settled}

        def record() -> None:
            _record_settled(settled, ["succeeded"] * len(settled))

        return await self._settle(items, run, _SAME_ACK, atomic=atomic, on_committed=record)

    async def nack(self, items: Sequence[Nack], *, atomic: bool) -> tuple[list[Refusal], set[str]]:
        """Ends the attempts; returns the refusals, and the queues where a job is ready to
        run again now (rather than after a backoff, or never): leasing needs waking there."""
        params = {
            "id": [i.job_id for i in items],
            "token": [i.lease_token for i in items],
            "release": [i.release for i in items],
            "retryable": [i.retryable for i in items],
            "delay": [i.retry_delay for i in items],
            "message": [i.error.message for i in items],
            "kind": [i.error.kind for i in items],
            "details": [i.error.details for i in items],
        }

        settled: list[dict[str, Any]] = []

        async def run(conn: Conn) -> set[tuple[UUID, UUID]]:
            rows = await self._rows(conn, "nack_jobs", params)
            settled[:] = [r for r in rows if r["next_state"] is not None]
            return {(r["id"], r["token"]) for r in settled}

        def record() -> None:
            released = {(i.job_id, i.lease_token) for i in items if i.release}
            _record_settled(
                settled,
                [
                    # A hand-back of a job whose cancel was asked for ends it CANCELLED.
                    "released"
                    if r["next_state"] == "PENDING" and (r["id"], r["token"]) in released
                    else _END_OUTCOMES[r["next_state"]]
                    for r in settled
                ],
            )

        refusals = await self._settle(items, run, _SAME_NACK, atomic=atomic, on_committed=record)
        return refusals, {r["queue"] for r in settled if _due_now(r)}

    async def extend(
        self, items: Sequence[Extension], *, atomic: bool
    ) -> tuple[list[Extended], list[Refusal]]:
        params = {
            "id": [i.job_id for i in items],
            "token": [i.lease_token for i in items],
            "extend_by": [i.extend_by for i in items],
            "worker_id": [i.worker_id for i in items],
        }
        extended: list[Extended] = []

        async def run(conn: Conn) -> set[tuple[UUID, UUID]]:
            rows = await self._rows(conn, "extend_leases", params)
            extended[:] = [
                Extended(
                    job_id=r["id"],
                    lease_token=r["token"],
                    lease_deadline=r["lease_deadline"],
                    cancel_requested=r["cancel_requested"],
                )
                for r in rows
            ]
            return {(r["id"], r["token"]) for r in rows}

        refusals = await self._settle(items, run, set(), atomic=atomic)
        return extended, refusals

    async def _settle(
        self,
        items: Sequence[Ack | Nack | Extension],
        run: Callable[[Conn], Any],
        same_outcome: set[Outcome],
        *,
        atomic: bool,
        on_committed: Callable[[], None] | None = None,
    ) -> list[Refusal]:
        """Applies a guarded batch and explains every item it did not apply.

        Atomic batches are rolled back whole when any item is refused. Others (the stream's
        group commits, on the hot path) need no transaction around the guarded statement:
        it is atomic by itself, and what explains a refusal (which attempt a token named,
        how it ended) is history that no longer changes.

        `on_committed` runs once what was applied is committed: at once without a
        transaction, after the commit with one, never when an atomic batch is refused.
        """
        async with self._transaction() if atomic else self._conn() as conn:
            applied: set[tuple[UUID, UUID]] = await run(conn)
            if on_committed is not None and not atomic:
                on_committed()
            missed = [i for i in items if (i.job_id, i.lease_token) not in applied]
            refusals: list[Refusal] = []
            if missed:
                rows = await self._rows(
                    conn,
                    "explain_refusals",
                    {
                        "id": [i.job_id for i in missed],
                        "token": [i.lease_token for i in missed],
                    },
                )
                explained = {(r["id"], r["token"]): _refusal(r, same_outcome) for r in rows}
                # In the order of the request: the first refused item decides an atomic call.
                refusals = [explained[(i.job_id, i.lease_token)] for i in missed]
                if atomic:
                    first = next((r for r in refusals if r.error is not None), None)
                    if first is not None and first.error is not None:
                        raise first.error
        if on_committed is not None and atomic:
            on_committed()
        return refusals

    async def expire_leases(self, *, limit: int) -> list[Expired]:
        """Ends attempts whose lease deadline passed."""
        async with self._transaction() as conn:
            rows = await self._rows(conn, "expire_leases", {"limit": limit})
        ended = [r for r in rows if r["next_state"]]
        metrics.count(metrics.LEASE_EXPIRIES, ((r["queue"],) for r in ended))
        metrics.count(
            metrics.JOBS_SETTLED,
            ((r["queue"], r["type"], _END_OUTCOMES[r["next_state"]]) for r in ended),
        )
        metrics.count(
            metrics.JOB_RETRIES,
            (
                (r["queue"], r["type"], "lease_expired")
                for r in ended
                if r["next_state"] == "PENDING"
            ),
        )
        return [
            Expired(
                job_id=r["id"],
                queue=r["queue"],
                lease_token=r["lease_token"],
                next_state=State(r["next_state"]),
                due_now=_due_now(r),
            )
            for r in rows
            if r["next_state"]
        ]

    async def prune_finished(self, *, retention: timedelta, limit: int) -> int:
        """Deletes up to `limit` jobs finished longer than `retention` ago; returns how many."""
        async with self._conn() as conn:
            cur = await conn.execute(
                QUERIES["prune_finished"], {"retention": retention, "limit": limit}
            )
            return cur.rowcount

    async def pull_in_leases(
        self, *, workers: Iterable[str], grace: timedelta, keep: Iterable[UUID] = ()
    ) -> int:
        """Shortens the leases of `workers` to `grace` from now, except those of the jobs
        in `keep`; returns how many it shortened."""
        params = {"workers": sorted(set(workers)), "grace": grace, "keep": list(keep)}
        async with self._conn() as conn:
            cur = await conn.execute(QUERIES["pull_in_leases"], params)
            return cur.rowcount

    # -- notifications --------------------------------------------------------------------

    def submitted_elsewhere(self, payload: str) -> str | None:
        """The queue of a jobwire_submitted notification from another replica; None for
        this scheduler's own submits, whose callers woke its dispatcher already; "" when
        the payload names no queue (an older version's), which means any queue."""
        origin, _, queue = payload.partition(" ")
        return None if origin == self.origin else queue

    async def listen(self, channels: Iterable[str]) -> AsyncIterator[tuple[str, str]]:
        """Yields (channel, payload) from LISTEN on a dedicated connection until it breaks."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        try:
            for channel in channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            async for notify in conn.notifies():
                yield notify.channel, notify.payload
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        finally:
            await conn.close()


class _LabelsDumper(JsonbBinaryDumper):
    """The labels column of copy_jobs: most jobs have none, and their `{}` need not go
    through json.dumps for every row."""

    def dump(self, obj: Any) -> Buffer | None:
        return b"\x01{}" if not obj else super().dump(obj)


def _due_now(row: dict[str, Any]) -> bool:
    """Whether an ended attempt's job is ready to run again at once (see due_at_once in
    nack_jobs and expire_leases)."""
    return bool(row["next_state"] == "PENDING" and row["due_at_once"])


def _count_submitted(jobs: Iterable[NewJob]) -> None:
    metrics.count(metrics.JOBS_SUBMITTED, ((job.queue, job.type) for job in jobs))


def _notifying(insert: str, *, full: bool) -> str:
    """The statement inserting jobs and notifying other replicas of them, returning the
    rows whole or their ids only."""
    return insert + ("_notify" if full else "_notify_returning_id")


def _submitted(ids: list[UUID], rows: list[dict[str, Any]], *, full: bool) -> list[Submitted]:
    """Key-less jobs as inserted: all created, whole or ids only as the caller asked."""
    stored = {row["id"]: Job.from_row(row) if full else None for row in rows}
    return [Submitted(job_id=i, job=stored[i], created=True) for i in ids]


def _claim(claim: Claim) -> dict[str, Any]:
    """The parameters of lease_jobs."""
    return {
        "queue": claim.queue,
        "types": list(claim.types),
        "worker_id": claim.worker_id,
        "limit": claim.limit,
    }


def _count_leased(queue: str, jobs: Sequence[Job]) -> None:
    if not jobs:
        return
    metrics.count(metrics.JOBS_LEASED, ((queue, j.type) for j in jobs))
    latency = metrics.JOB_START_LATENCY.labels(queue)
    for j in jobs:
        # The database's clock on both ends: the lease began at deadline - timeout.
        assert j.lease_deadline is not None
        latency.observe(max(0.0, (j.lease_deadline - j.lease_timeout - j.ready_at).total_seconds()))


def _refusal(row: dict[str, Any], same_outcome: set[Outcome]) -> Refusal:
    job_id, token = row["id"], row["token"]
    error: Exception | None
    if not row["job_exists"]:
        error = NotFound(f"no job with id {job_id}")
    elif row["attempt"] is None:
        error = InvalidArgument(f"lease token {token} was never issued for job {job_id}")
    elif row["outcome"] in same_outcome:
        error = None  # the same outcome again: a resend after a lost reply
    elif row["outcome"] == Outcome.RUNNING:  # pragma: no cover - the guarded update applies
        error = FailedPrecondition(f"lease {token} of job {job_id} could not be settled")
    else:
        error = FailedPrecondition(
            f"lease {token} of job {job_id} is no longer current: attempt {row['attempt']} "
            f"ended {row['outcome']}; the job is {row['state']} at attempt {row['job_attempt']}"
        )
    return Refusal(job_id=job_id, lease_token=token, error=error)


def _record_settled(rows: Sequence[dict[str, Any]], outcomes: Sequence[str]) -> None:
    """Counts settled attempts and their run time, once their statement committed."""
    if not rows:
        return
    labels = [(r["queue"], r["type"], o) for r, o in zip(rows, outcomes, strict=True)]
    metrics.count(metrics.JOBS_SETTLED, labels)
    metrics.count(metrics.JOB_RETRIES, ((q, t, "failed") for q, t, o in labels if o == "retried"))
    for row, outcome in zip(rows, outcomes, strict=True):
        if row["run_seconds"] is not None:
            metrics.JOB_RUN_SECONDS_SERIES(row["queue"], row["type"], outcome).observe(
                max(0.0, row["run_seconds"])
            )
