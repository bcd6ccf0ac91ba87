"""`jobwire dev`: PostgreSQL, a scheduler and a worker on this machine, in one command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from . import migrate
from .app import Scheduler
from .cli import settings_from
from .embedded import EmbeddedPostgres

DEV_DATABASE = "jobwire"


def _ensure_database(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DEV_DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DEV_DATABASE}"')
    return make_conninfo(server_url, dbname=DEV_DATABASE)


def _start_worker(target: str, concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobwire.cli.main",
            "worker",
            "--target",
            target,
            "--concurrency",
            str(concurrency),
            "--worker-id",
            f"dev-worker-{os.getpid()}",
            "--http-port",
            "0",
        ],
        # Its own process group: Ctrl-C reaches us, and we drain the worker in order.
        start_new_session=True,
    )


async def _run_stack(args: argparse.Namespace, database_url: str, where: str) -> int:
    scheduler = Scheduler(settings_from(args, database_url))
    await scheduler.start()
    worker = _start_worker(scheduler.target, args.concurrency)
    print(
        "jobwire dev is running\n"
        f"  PostgreSQL  {where}\n"
        f"  scheduler   {scheduler.target}  (gRPC: jobwire.v1.Jobs, jobwire.v1.Leases, "
        "grpc.health.v1.Health, reflection)\n"
        f"  worker      pid {worker.pid}, {args.concurrency} slots, queue 'default', "
        "types uppercase reverse csv text fail\n"
        "In another terminal, with the same environment:\n"
        '  jobwire submit uppercase \'{"text": "hi"}\' --wait\n'
        "Ctrl-C stops everything.",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker_exit = asyncio.create_task(asyncio.to_thread(worker.wait))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({worker_exit, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if worker.poll() is None:
        print("stopping: draining the worker…", file=sys.stderr, flush=True)
        worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker_exit, 40)
        except TimeoutError:
            worker.kill()
    else:
        print(f"the worker exited with status {worker.returncode}", file=sys.stderr)
        code = 1
    stopper.cancel()
    await scheduler.stop()
    return code


def run(args: argparse.Namespace) -> int:
    postgres = None
    if args.database_url:
        database_url, where = args.database_url, "external database (--database-url)"
    else:
        data = Path(args.data_dir) / "postgres"
        postgres = EmbeddedPostgres(data)
        database_url = _ensure_database(postgres.start())
        where = f"embedded, data in {data}  ({database_url})"
    try:
        migrate.apply(database_url)
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_run_stack(args, database_url, where))
        return 0
    finally:
        if postgres is not None:
            postgres.stop()
