"""The scenarios of `jobwire bench`. Each one gets a fresh database, starts the scheduler
and workers it needs as real processes, drives them through the public gRPC API only, reads
the timings PostgreSQL recorded, and returns its figures."""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

import grpc
import psycopg
from jobwire.cli.options import duration
from jobwire.v1 import job_pb2, jobs_pb2, jobs_pb2_grpc
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from .bench_report import Value, percentile
from .bench_sizes import Sizes
from .bench_stack import STAMP_TYPE, BenchError, Proc, Stack
from .queries import QUERIES

POLL_SECONDS = 0.2  # completion is polled no more often than this
STALL_SECONDS = 60.0  # no progress for this long fails the run
QUEUE = "default"
RPC_TIMEOUT = 60.0

COUNT_SUCCEEDED = "SELECT count(*) FROM jobwire_attempts WHERE outcome = 'SUCCEEDED'"
LEASE_CLOCK_NOTE = (
    "submit→lease = jobwire_attempts.started_at (PostgreSQL now(): the START of the "
    "leasing transaction, which for a job handed to an idle worker is the submit's own, "
    "so its commit is not included) minus the producer's clock just before it sent Submit; "
    "one machine, one clock. submit→handler = the worker's clock when the "
    f"`{STAMP_TYPE}` handler started (its result) minus the same send time: the job's "
    "start, which the target is about."
)
INDEX_SCAN = "Index Scan using jobwire_jobs_ready on jobwire_jobs"
BOUND_SLACK = 5.0  # seconds a finished row may outlive retention + prune interval


@dataclass
class RunResult:
    figures: dict[str, Value]
    details: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Bench:
    """What every scenario shares: the stack, the sizes, and how to talk to the user."""

    stack: Stack
    sizes: Sizes
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    label: str = ""

    def bar(self, total: float, unit: str = "jobs") -> tqdm[Any]:
        return tqdm(
            total=total,
            desc=self.label,
            unit=unit,
            leave=False,
            disable=None if self.progress is None else not self.progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def say(self, message: str) -> None:
        tqdm.write(message)

    def worker(self, target: str, worker_id: str, *, stamp: bool = False) -> Proc:
        """One worker process with the benchmark's concurrency and prefetch."""
        return self.stack.worker(
            target,
            worker_id,
            concurrency=self.sizes.concurrency,
            prefetch=self.sizes.prefetch,
            stamp=stamp,
        )


# -- helpers ------------------------------------------------------------------------------


def spec(job_type: str = "noop") -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        queue=QUEUE,
        type=job_type,
        payload=job_pb2.Payload(data=b"{}", content_type="application/json"),
    )


def request(count: int, job_type: str = "noop") -> jobs_pb2.SubmitRequest:
    # The bench's producers need only the ids back, as most producers of big batches do.
    return jobs_pb2.SubmitRequest(jobs=[spec(job_type)] * count, ids_only=True)


def _count(conn: psycopg.Connection[Any], sql: LiteralString, params: Any = None) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def wait_succeeded(
    conn: psycopg.Connection[Any],
    want: int,
    processes: Sequence[Proc],
    bar: tqdm[Any] | None = None,
    *,
    on_first: Callable[[], None] | None = None,
    already: int = 0,
) -> None:
    """Polls a cheap count until `want` attempts have succeeded beyond the `already`
    succeeded before; calls `on_first` as soon as one has. Fails when a process dies or
    nothing moves for STALL_SECONDS."""
    seen = -1
    moved = time.monotonic()
    while True:
        done = _count(conn, COUNT_SUCCEEDED) - already
        if done != seen:
            seen, moved = done, time.monotonic()
            if bar is not None:
                bar.update(min(done, want) - bar.n)
        if done > 0 and on_first is not None:
            on_first()
            on_first = None
        if done >= want:
            return
        for proc in processes:
            proc.check()
        if time.monotonic() - moved > STALL_SECONDS:
            raise BenchError(
                f"no progress for {STALL_SECONDS:.0f} s ({done} of {want} succeeded):\n"
                + "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes)
            )
        time.sleep(POLL_SECONDS)


def submit_batches(stub: jobs_pb2_grpc.JobsStub, total: int, bar: tqdm[Any] | None) -> None:
    full = request(1000)
    left = total
    while left > 0:
        size = min(1000, left)
        stub.Submit(full if size == 1000 else request(size), timeout=RPC_TIMEOUT)
        left -= size
        if bar is not None:
            bar.update(size)


def _epoch(conn: psycopg.Connection[Any], sql: LiteralString, params: Any = None) -> float:
    row = conn.execute(sql, params).fetchone()
    if not row or row[0] is None:
        raise BenchError(f"no timing found by: {sql}")
    return float(row[0])


@contextlib.contextmanager
def database(bench: Bench) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """A fresh database and an autocommit connection to it; stops this run's processes
    before the database goes."""
    with bench.stack.database() as url:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                yield url, conn
        finally:
            bench.stack.stop_processes()


def producers(
    target: str,
    calls: int,
    per_call: int,
    threads: int,
    bar: tqdm[Any],
    *,
    make_call: Callable[[grpc.Channel], Callable[[], object]] | None = None,
) -> tuple[float, int]:
    """`threads` producers, each with its own channel, make `calls` calls between them: a
    Submit of `per_call` jobs, or what `make_call(channel)` returns. Returns (seconds from
    the common start to the last reply, items sent: jobs, or calls with `make_call`)."""
    shares = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]
    done = [0] * threads
    ends = [0.0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def submit(channel: grpc.Channel) -> Callable[[], object]:
        stub = jobs_pb2_grpc.JobsStub(channel)
        req = request(per_call)
        return lambda: stub.Submit(req, timeout=RPC_TIMEOUT)

    def produce(index: int) -> None:
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
                call = (make_call or submit)(channel)
                start.wait()
                for _ in range(shares[index]):
                    call()
                    done[index] += per_call
                ends[index] = time.perf_counter()
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    workers = [
        threading.Thread(target=produce, args=(i,), daemon=True, name=f"producer-{i}")
        for i in range(threads)
    ]
    for thread in workers:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    began = time.perf_counter()
    for thread in workers:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            bar.update(sum(done) - bar.n)
    if errors:
        raise BenchError(f"a producer failed: {errors[0]!r}")
    return max(ends) - began, sum(done)


# -- scenarios ----------------------------------------------------------------------------


def drain(bench: Bench) -> RunResult:
    """N jobs submitted first, then one worker: jobs/s from the first lease to the last
    success, as PostgreSQL recorded them."""
    stack, n = bench.stack, bench.sizes.drain_jobs
    with database(bench) as (url, conn):
        scheduler, target = stack.scheduler(url)
        with bench.bar(n, "submitted") as bar, grpc.insecure_channel(target) as channel:
            submit_batches(jobs_pb2_grpc.JobsStub(channel), n, bar)
        worker = bench.worker(target, "bench-drain")
        meter = stack.meter(scheduler=scheduler.pid, worker=worker.pid)
        with bench.bar(n) as bar:
            wait_succeeded(conn, n, [scheduler, worker], bar, on_first=meter.start)
        cpu = meter.stop()
        seconds = _epoch(
            conn,
            "SELECT extract(epoch FROM (SELECT max(finished_at) FROM jobwire_jobs)"
            " - (SELECT min(started_at) FROM jobwire_attempts))",
        )
    return RunResult({"jobs_per_s": n / seconds}, {"jobs": n, "seconds": round(seconds, 4)}, cpu)


def _submit_throughput(bench: Bench, *, jobs: int, per_call: int, threads: int) -> RunResult:
    stack = bench.stack
    calls = -(-jobs // per_call)
    with database(bench) as (url, conn):
        scheduler, target = stack.scheduler(url)
        meter = stack.meter(scheduler=scheduler.pid)
        meter.start()
        with bench.bar(calls * per_call) as bar:
            seconds, submitted = producers(target, calls, per_call, threads, bar)
        cpu = meter.stop()
        stored = _count(conn, "SELECT count(*) FROM jobwire_jobs")
        if stored != submitted:
            raise BenchError(f"{submitted} jobs submitted but {stored} stored")
    return RunResult(
        {"jobs_per_s": submitted / seconds},
        {
            "jobs": submitted,
            "jobs_per_call": per_call,
            "producers": threads,
            "seconds": round(seconds, 4),
        },
        cpu,
    )


def submit_single(bench: Bench) -> RunResult:
    """Concurrent producers, one job per Submit call; no worker."""
    s = bench.sizes
    return _submit_throughput(bench, jobs=s.single_jobs, per_call=1, threads=s.single_producers)


def submit_batch(bench: Bench) -> RunResult:
    """A few producers sending batches of jobs per Submit call; no worker."""
    s = bench.sizes
    return _submit_throughput(
        bench, jobs=s.batch_jobs, per_call=s.batch_size, threads=s.batch_producers
    )


def _ms(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p90_ms": percentile(ordered, 0.90) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def paced(count: int, rate: float) -> Iterator[int]:
    """0 to count - 1, each no sooner than its turn at `rate` per second."""
    began = time.monotonic()
    for i in range(count):
        pause = began + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        yield i


def _paced_submits(
    stub: jobs_pb2_grpc.JobsStub, count: int, rate: float, job_type: str, bar: tqdm[Any]
) -> dict[str, float]:
    """Submits `count` jobs one per call at `rate` per second; returns job id -> the
    producer's clock (time.time()) just before the call was sent."""
    req = request(1, job_type)
    sent: dict[str, float] = {}
    for _ in paced(count, rate):
        at = time.time()
        reply = stub.Submit(req, timeout=RPC_TIMEOUT)
        sent[reply.results[0].job.id] = at
        bar.update(1)
    return sent


def latency(bench: Bench) -> RunResult:
    """One idle worker; jobs submitted one at a time at a steady rate; the time from
    sending Submit to the lease (PostgreSQL's clock) and to the handler's start (the
    worker's clock, from a handler that answers with it)."""
    stack, s = bench.stack, bench.sizes
    warmup = 20
    with database(bench) as (url, conn):
        scheduler, target = stack.scheduler(url)
        worker = bench.worker(target, "bench-latency", stamp=True)
        procs = [scheduler, worker]
        with grpc.insecure_channel(target) as channel:
            stub = jobs_pb2_grpc.JobsStub(channel)
            # Warm-up: the worker is connected and every code path has run once.
            for job_type in ("noop", STAMP_TYPE) * (warmup // 2):
                stub.Submit(request(1, job_type), timeout=RPC_TIMEOUT)
            wait_succeeded(conn, warmup, procs)
            time.sleep(0.5)  # back to idle
            meter = stack.meter(scheduler=scheduler.pid, worker=worker.pid)
            meter.start()
            with bench.bar(2 * s.latency_jobs) as bar:
                noop_sent = _paced_submits(stub, s.latency_jobs, s.latency_rate, "noop", bar)
                wait_succeeded(conn, warmup + s.latency_jobs, procs)
                time.sleep(0.5)
                stamp_sent = _paced_submits(stub, s.latency_jobs, s.latency_rate, STAMP_TYPE, bar)
                wait_succeeded(conn, warmup + 2 * s.latency_jobs, procs)
            cpu = meter.stop()
        leased = {
            str(job_id): float(at)
            for job_id, at in conn.execute(
                "SELECT job_id, extract(epoch FROM started_at)::float8 FROM jobwire_attempts"
                " WHERE number = 1 AND job_id = ANY(%s::uuid[])",
                (list(noop_sent),),
            )
        }
        started = {
            str(job_id): float(json.loads(bytes(result)))
            for job_id, result in conn.execute(
                "SELECT id, result FROM jobwire_jobs WHERE id = ANY(%s::uuid[])",
                (list(stamp_sent),),
            )
        }
    if len(leased) != len(noop_sent) or len(started) != len(stamp_sent):
        raise BenchError("some measured jobs have no lease or no result")
    lease = _ms([leased[i] - at for i, at in noop_sent.items()])
    handler = _ms([started[i] - at for i, at in stamp_sent.items()])
    figures: dict[str, Value] = {f"lease_{k}": v for k, v in lease.items()}
    figures.update({f"handler_{k}": v for k, v in handler.items()})
    return RunResult(
        figures,
        {
            "jobs_per_variant": s.latency_jobs,
            "rate_per_s": s.latency_rate,
            "clock": LEASE_CLOCK_NOTE,
        },
        cpu,
    )


# The backlog looks as if it had been submitted one job a millisecond: run_at is the
# submission time, and the id is a UUIDv7 of that millisecond as the scheduler makes it
# (written out rather than uuidv7(), which only PostgreSQL 18 has). Random ids would
# spread the drain over the whole of the big indexes, which no scheduler-made backlog does.
BACKLOG = """
INSERT INTO jobwire_jobs (
    id, queue, type, payload, payload_type, run_at, max_attempts,
    backoff_initial, backoff_max, backoff_multiplier, backoff_jitter, lease_timeout
)
SELECT encode(set_byte(raw, 6, get_byte(raw, 6) + 48), 'hex')::uuid,  -- version 4 -> 7
       %(queue)s, 'noop', '{}'::bytea, 'application/json', submitted, 3,
       interval '1 second', interval '5 minutes', 2.0, 0.2, interval '30 seconds'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
     LATERAL (SELECT now() - make_interval(secs => (%(rows)s - g) * 0.001) AS submitted) AS t,
     LATERAL (
         -- 48 bits of milliseconds, then the last 10 bytes of a random (version 4) UUID
         SELECT substring(int8send(floor(extract(epoch FROM submitted) * 1000)::bigint) FROM 3)
                || substring(uuid_send(gen_random_uuid()) FROM 7) AS raw
     ) AS r
"""


def explain_lease(url: str, limit: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the leasing query, in a transaction rolled back."""
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS) " + QUERIES["lease_jobs"],
                {"queue": QUEUE, "types": ["noop"], "limit": limit, "worker_id": "bench-explain"},
            ).fetchall()
        finally:
            conn.rollback()
    return "\n".join(str(row[0]) for row in rows)


def growth(bench: Bench) -> RunResult:
    """The same drain twice in one run, back to back: from a table holding just the jobs
    drained, then from a large backlog (both inserted with SQL: setup, not measured), with
    the leasing plan on the backlog. The machine's speed drifts over minutes, so the
    backlog's figure is compared with the one taken right before it rather than with the
    drain scenario's."""
    s = bench.sizes
    rows = s.growth_rows
    n = min(s.growth_drain, rows)
    with database(bench) as (url, conn):
        _backlog(conn, n, bench.bar(n, "rows inserted"))
        small_seconds, _ = _drain_backlog(bench, url, conn, n, already=0)
        began = time.monotonic()
        _backlog(conn, rows, bench.bar(rows, "rows inserted"))
        setup_seconds = time.monotonic() - began
        plan = explain_lease(url, s.concurrency)
        seconds, cpu = _drain_backlog(bench, url, conn, n, already=n)
    return RunResult(
        {
            "index_scan": INDEX_SCAN in plan,
            "jobs_per_s": n / seconds,
            "small_jobs_per_s": n / small_seconds,
            "vs_drain_pct": 100.0 * small_seconds / seconds,
        },
        {
            "rows": rows,
            "drained": n,
            "seconds": round(seconds, 4),
            "small_table_seconds": round(small_seconds, 4),
            "setup_seconds": round(setup_seconds, 2),
            "plan": plan,
        },
        cpu,
    )


def _backlog(conn: psycopg.Connection[Any], rows: int, bar: tqdm[Any]) -> None:
    """`rows` pending jobs, as if submitted one a millisecond until now; then VACUUM
    ANALYZE, so that the plan is the one of a table at rest, and a CHECKPOINT. The
    million rows' WAL (about 800 MB) sets off a checkpoint of its own, which would
    otherwise still be writing them out through the drain measured next (it did in
    every growth run watched) while the small table's drain has none: the drain would
    pay for this setup, not for the jobs pending."""
    chunk = 100_000
    with bar:
        for first in range(1, rows + 1, chunk):
            last = min(rows, first + chunk - 1)
            conn.execute(BACKLOG, {"queue": QUEUE, "rows": rows, "first": first, "last": last})
            bar.update(last - first + 1)
    conn.execute("VACUUM (ANALYZE) jobwire_jobs")
    # A --database-url role may lack the right (superuser or pg_checkpoint): then the
    # figure includes the checkpoint, which can only make it worse.
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def _drain_backlog(
    bench: Bench, url: str, conn: psycopg.Connection[Any], n: int, *, already: int
) -> tuple[float, dict[str, float]]:
    """A scheduler and one worker drain `n` jobs (`already` having succeeded before);
    returns the seconds from the first lease to the n-th success, as PostgreSQL recorded
    them, and the processes' CPU. Both processes stop after."""
    stack = bench.stack
    since = _epoch(conn, "SELECT extract(epoch FROM clock_timestamp())")
    scheduler, target = stack.scheduler(url)
    worker = bench.worker(target, "bench-growth")
    meter = stack.meter(scheduler=scheduler.pid, worker=worker.pid)
    with bench.bar(n) as bar:
        wait_succeeded(conn, n, [scheduler, worker], bar, on_first=meter.start, already=already)
    cpu = meter.stop()
    stack.stop_processes()
    seconds = _epoch(
        conn,
        "SELECT extract(epoch FROM (SELECT finished_at FROM jobwire_jobs"
        " WHERE finished_at >= to_timestamp(%(since)s) ORDER BY finished_at"
        " OFFSET %(n)s - 1 LIMIT 1)"
        " - (SELECT min(started_at) FROM jobwire_attempts"
        " WHERE started_at >= to_timestamp(%(since)s)))",
        {"since": since, "n": n},
    )
    return seconds, cpu


_WINDOW = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
       (SELECT count(*) FROM jobwire_jobs),
       (SELECT count(*) FROM jobwire_jobs WHERE state = 'PENDING'),
       (SELECT extract(epoch FROM now() - min(finished_at))::float8
        FROM jobwire_jobs WHERE finished_at IS NOT NULL)
FROM (SELECT extract(epoch FROM a.started_at - j.created_at)::float8 * 1000 AS ms
      -- The history with the running attempts, whose rows are written when they end.
      FROM jobwire_attempt_history a JOIN jobwire_jobs j ON j.id = a.job_id
      WHERE a.number = 1 AND a.started_at > %(since)s AND a.started_at <= %(until)s) AS w
"""


class _SteadyProducer(threading.Thread):
    """Submits at `rate` jobs/s for `seconds`: every 10 ms, the jobs that are due, in one
    Submit call."""

    TICK = 0.01

    def __init__(self, target: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True, name="steady-producer")
        self.target, self.rate, self.seconds = target, rate, seconds
        self.sent = 0
        self.elapsed = 0.0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        requests: dict[int, jobs_pb2.SubmitRequest] = {}
        try:
            with grpc.insecure_channel(self.target) as channel:
                stub = jobs_pb2_grpc.JobsStub(channel)
                began = time.monotonic()
                tick = began
                while not self.stop.is_set():
                    elapsed = time.monotonic() - began
                    if elapsed >= self.seconds:
                        break
                    due = min(1000, int(self.rate * elapsed) - self.sent)
                    if due > 0:
                        req = requests.get(due) or requests.setdefault(due, request(due))
                        stub.Submit(req, timeout=RPC_TIMEOUT)
                        self.sent += due
                    tick += self.TICK
                    pause = tick - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    else:
                        tick = time.monotonic()
                self.elapsed = time.monotonic() - began
        except BaseException as exc:
            self.error = exc


def mixed(bench: Bench) -> RunResult:
    """Steady submits while one worker drains, with pruning on: submit-to-lease latency per
    window and the table's size over time."""
    stack, s = bench.stack, bench.sizes
    extra = ["--retention", s.mixed_retention, "--prune-interval", s.mixed_prune_interval]
    with database(bench) as (url, conn):
        scheduler, target = stack.scheduler(url, extra)
        worker = bench.worker(target, "bench-mixed")
        procs = [scheduler, worker]
        with grpc.insecure_channel(target) as channel:
            jobs_pb2_grpc.JobsStub(channel).Submit(request(10), timeout=RPC_TIMEOUT)
        wait_succeeded(conn, 10, procs)

        def clock() -> Any:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            return row[0]

        windows: list[dict[str, Any]] = []
        producer = _SteadyProducer(target, s.mixed_rate, s.mixed_seconds)
        meter = stack.meter(scheduler=scheduler.pid, worker=worker.pid)
        since = clock()
        began = time.monotonic()
        meter.start()
        producer.start()
        next_sample = began + s.mixed_window
        last_sample = began

        def sample() -> None:
            nonlocal since, last_sample
            until = clock()
            row = conn.execute(_WINDOW, {"since": since, "until": until}).fetchone()
            assert row is not None
            count, p50, p99, rows, pending, oldest = row
            now = time.monotonic()
            windows.append(
                {
                    "t": round(now - began, 2),
                    "jobs": int(count),
                    "p50_ms": None if p50 is None else round(float(p50), 3),
                    "p99_ms": None if p99 is None else round(float(p99), 3),
                    "rows": int(rows),
                    "pending": int(pending),
                    # Leased or finished: what retention keeps the size of.
                    "retained": int(rows) - int(pending),
                    "oldest_finished_s": None if oldest is None else round(float(oldest), 2),
                }
            )
            since, last_sample = until, now

        try:
            with bench.bar(round(s.mixed_seconds), "s") as bar:
                while producer.is_alive():
                    producer.join(POLL_SECONDS)
                    for proc in procs:
                        proc.check()
                    now = time.monotonic()
                    bar.update(min(round(now - began), bar.total) - bar.n)
                    if now >= next_sample:
                        sample()
                        next_sample += s.mixed_window
                if time.monotonic() - last_sample >= 0.5 or not windows:
                    sample()
        finally:
            producer.stop.set()
            producer.join(10)
        cpu = meter.stop()
        if producer.error is not None:
            raise BenchError(f"the producer failed: {producer.error!r}")

    # Growth is a trend: the windows of the first third of the run against those of the
    # last, each side by its median window. One window's p99 is the slowest 1 % of five
    # seconds, which a single pause (a checkpoint, a vacuum) can make ten times the rest
    # at any point of the run, the last window included.
    measured = [w for w in windows if w["jobs"] > 0]
    third = max(1, len(measured) // 3)
    early, late = _median_windows(measured[:third]), _median_windows(measured[-third:])
    grew: bool | None = None
    if early is not None and late is not None:
        grew = late["p50_ms"] > 1.5 * early["p50_ms"] + 0.5 or (
            late["p99_ms"] > 1.5 * early["p99_ms"] + 1.0
        )
    # Bounded: no finished row outlives the retention by more than a prune interval and
    # some slack, so finished rows are at most (finish rate x that age). A backlog of
    # pending jobs (producers faster than the worker) is reported apart: it is no pruning
    # matter.
    ages = [w["oldest_finished_s"] for w in windows if w["oldest_finished_s"] is not None]
    allowed = duration(s.mixed_retention) + duration(s.mixed_prune_interval) + BOUND_SLACK
    oldest = max(ages) if ages else None
    bounded = None if oldest is None else oldest <= allowed
    leased = sum(w["jobs"] for w in windows)
    spanned = windows[-1]["t"]
    return RunResult(
        {
            "early_p50_ms": early["p50_ms"] if early else None,
            "late_p50_ms": late["p50_ms"] if late else None,
            "early_p99_ms": early["p99_ms"] if early else None,
            "late_p99_ms": late["p99_ms"] if late else None,
            "worst_p99_ms": max((w["p99_ms"] for w in measured), default=None),
            "latency_grew": grew,
            "submitted_per_s": producer.sent / producer.elapsed if producer.elapsed else None,
            "leased_per_s": leased / spanned if spanned > 0 else None,
            "rows_max": float(max(w["rows"] for w in windows)),
            "retained_max": float(max(w["retained"] for w in windows)),
            "oldest_finished_s": oldest,
            "backlog_last": float(windows[-1]["pending"]),
            "rows_bounded": bounded,
        },
        {
            "rate_per_s": s.mixed_rate,
            "seconds": s.mixed_seconds,
            "window_seconds": s.mixed_window,
            "retention": s.mixed_retention,
            "prune_interval": s.mixed_prune_interval,
            "submitted": producer.sent,
            "windows": windows,
            "latency_grew_rule": "over the first and the last third of the windows, each "
            "the median of its windows' figures: late p50 > 1.5 x early p50 + 0.5 ms, or late "
            "p99 > 1.5 x early p99 + 1 ms",
            "rows_bounded_rule": "the oldest finished row, sampled every window, is never "
            f"older than retention + prune interval + {BOUND_SLACK:g} s ({allowed:g} s)",
            "latency_clock": "attempts.started_at - jobs.created_at (both PostgreSQL now())",
        },
        cpu,
    )


def _median_windows(windows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The median p50 and p99 of some windows (None: no window had a job)."""
    if not windows:
        return None
    return {
        "p50_ms": statistics.median(w["p50_ms"] for w in windows),
        "p99_ms": statistics.median(w["p99_ms"] for w in windows),
    }


SCENARIOS: dict[str, Callable[[Bench], RunResult]] = {
    "drain": drain,
    "submit-single": submit_single,
    "submit-batch": submit_batch,
    "latency": latency,
    "growth": growth,
    "mixed": mixed,
}
