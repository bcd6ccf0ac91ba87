"""The `floors` scenario of `jobwire bench`: what this machine gives the parts jobwire is
built from, before jobwire does any work of its own. A target beyond a floor cannot be
met on the machine by any change to jobwire's code; the other figures read against these.

- No-op RPCs: Health/Check on the scheduler, which runs its interceptors and nothing else,
  from as many producers as submit-single: the most unary calls per second the scheduler's
  gRPC server takes, and the CPU each one costs it.
- PostgreSQL alone: the lease and ack statements the scheduler runs, back to back on a
  backlog from two connections of the bench itself: the most jobs per second the database
  leases and settles, and the CPU it spends per job.
- Paced at the latency scenario's rate, so that every process sleeps in between as it does
  there: a no-op RPC there and back, and a committed one-row insert.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.rows import dict_row

from .bench_report import percentile
from .bench_scenarios import BACKLOG, QUEUE, Bench, RunResult, database, paced, producers
from .bench_stack import BenchError, CpuMeter
from .dispatch import LEASE_CHUNK
from .queries import QUERIES

Conn = psycopg.Connection[dict[str, Any]]
Cpu = dict[str, float]

# PostgreSQL's loop leases as many jobs per statement as the dispatcher does at most.
CLAIM = LEASE_CHUNK


def floors(bench: Bench) -> RunResult:
    stack, s = bench.stack, bench.sizes
    with database(bench) as (url, conn):
        scheduler, target = stack.scheduler(url)
        meter = stack.meter(scheduler=scheduler.pid)
        meter.start()
        with bench.bar(s.floor_calls, "calls") as bar:
            seconds, calls = producers(
                target, s.floor_calls, 1, s.single_producers, bar, make_call=_health_check
            )
        rpc_cpu = meter.stop()
        with grpc.insecure_channel(target) as channel:
            rtt = _paced(_health_check(channel), s.floor_paced, s.latency_rate)
        stack.stop_processes()

        # A logged table (a temporary one's commits skip the WAL flush), dropped again:
        # with --database-url the database is the user's scratch one, used again.
        conn.execute("CREATE TABLE IF NOT EXISTS jobwire_bench_commits (at timestamptz)")
        try:
            commit = _paced(
                lambda: conn.execute("INSERT INTO jobwire_bench_commits VALUES (now())"),
                s.floor_paced,
                s.latency_rate,
            )
        finally:
            conn.execute("DROP TABLE jobwire_bench_commits")

        jobs = s.floor_jobs
        conn.execute(BACKLOG, {"queue": QUEUE, "rows": jobs, "first": 1, "last": jobs})
        conn.execute("VACUUM (ANALYZE) jobwire_jobs")
        db_seconds, settled, db_cpu = _lease_and_ack(url, stack.meter(), connections=2)
    if settled != jobs:
        raise BenchError(f"PostgreSQL's loop settled {settled} of {jobs} jobs")
    return RunResult(
        {
            "noop_rpc_per_s": calls / seconds,
            "noop_rpc_us": _per_item_us(rpc_cpu.get("scheduler"), seconds, calls),
            "db_jobs_per_s": settled / db_seconds,
            "db_us_per_job": _per_item_us(db_cpu.get("postgres"), db_seconds, settled),
            "rpc_rtt_ms": rtt,
            "commit_ms": commit,
        },
        {
            "noop_rpcs": calls,
            "producers": s.single_producers,
            "db_jobs": settled,
            "db_connections": 2,
            "paced_per_s": s.latency_rate,
            "paced_samples": s.floor_paced,
            "cpu_of_the_rpcs": rpc_cpu,
        },
        db_cpu,
    )


def _health_check(channel: grpc.Channel) -> Callable[[], object]:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    return lambda: stub.Check(request, timeout=10)


def _per_item_us(cpu_pct: float | None, seconds: float, items: int) -> float | None:
    """CPU per item in µs, from a process's share of a core over `seconds`."""
    if cpu_pct is None or not items:
        return None
    return cpu_pct / 100 * seconds / items * 1e6


def _paced(call: Callable[[], object], count: int, rate: float) -> float:
    """The median time of `call` in ms, made `count` times at `rate` per second."""
    times: list[float] = []
    for _ in paced(count, rate):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return percentile(sorted(times), 0.50) * 1000


def _lease_and_ack(url: str, meter: CpuMeter, *, connections: int) -> tuple[float, int, Cpu]:
    """Leases and acks the whole backlog, CLAIM jobs at a time, from `connections`
    threads, each with a leasing connection (commits not waiting for the WAL flush, as
    the scheduler's) and an acking one (waiting). Returns (seconds, jobs settled, CPU);
    the meter runs while the connections' backends are alive, which it counts."""
    settled = [0] * connections
    errors: list[BaseException] = []
    lease_params = {"queue": QUEUE, "types": ["noop"], "worker_id": "floor", "limit": CLAIM}

    def loop(index: int, leasing: Conn, acking: Conn) -> None:
        try:
            leasing.execute("SET synchronous_commit = off")
            while rows := leasing.execute(QUERIES["lease_jobs"], lease_params).fetchall():
                acked = acking.execute(QUERIES["ack_jobs"], _acks(rows)).fetchall()
                settled[index] += len(acked)
        except BaseException as exc:
            errors.append(exc)

    with contextlib.ExitStack() as open_connections:

        def connect() -> Conn:
            return open_connections.enter_context(
                psycopg.connect(url, autocommit=True, row_factory=dict_row)
            )

        threads = [
            threading.Thread(target=loop, args=(i, connect(), connect()), daemon=True)
            for i in range(connections)
        ]
        meter.start()
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
        cpu = meter.stop()
    if errors:
        raise BenchError(f"PostgreSQL's loop failed: {errors[0]!r}")
    return seconds, sum(settled), cpu


def _acks(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {
        "id": [row["id"] for row in rows],
        "token": [row["lease_token"] for row in rows],
        "result": [b"null"] * len(rows),
        "result_type": ["application/json"] * len(rows),
    }
