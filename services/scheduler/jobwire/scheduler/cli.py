"""The `jobwire scheduler`, `jobwire migrate` and `jobwire dev` commands.

Kept free of database imports at module level: a worker-only install lists these
commands too, and only running one needs the `scheduler` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from datetime import timedelta
from typing import Any

from jobwire.cli.options import duration, env_flag
from jobwire.ops.options import add_http_flags

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_HTTP_PORT = 8080


def _database_url(parser: argparse.ArgumentParser, *, required: bool) -> None:
    env_flag(
        parser,
        "--database-url",
        env="JOBWIRE_DATABASE_URL",
        default=None,
        help="PostgreSQL URL, e.g. postgresql://user:pass@host/db"
        + ("" if required else " (default: the embedded server)"),
    )


def _scheduler_tuning(parser: argparse.ArgumentParser) -> None:
    env_flag(
        parser,
        "--listen",
        env="JOBWIRE_LISTEN",
        default=DEFAULT_LISTEN,
        help="gRPC address to listen on, host:port",
    )
    env_flag(
        parser,
        "--stream-grace",
        env="JOBWIRE_STREAM_GRACE",
        default=5.0,
        type=float,
        help="seconds a worker that lost its stream has to come back before its jobs "
        "are leased again",
    )
    env_flag(
        parser,
        "--reaper-interval",
        env="JOBWIRE_REAPER_INTERVAL",
        default=1.0,
        type=float,
        help="seconds between sweeps for expired leases",
    )
    env_flag(
        parser,
        "--poll-interval",
        env="JOBWIRE_POLL_INTERVAL",
        default=1.0,
        type=float,
        help="seconds between checks for jobs that became ready by time",
    )
    env_flag(
        parser,
        "--max-payload-bytes",
        env="JOBWIRE_MAX_PAYLOAD_BYTES",
        default=1024 * 1024,
        type=int,
        help="largest payload or result accepted",
    )
    env_flag(
        parser,
        "--retention",
        env="JOBWIRE_RETENTION",
        default=7 * 86400.0,
        type=duration,
        help="how long finished jobs are kept, e.g. 7d, 12h, 900s",
    )
    env_flag(
        parser,
        "--prune-interval",
        env="JOBWIRE_PRUNE_INTERVAL",
        default=10.0,
        type=duration,
        help="time between retention sweeps",
    )
    env_flag(
        parser,
        "--pool-size",
        env="JOBWIRE_POOL_SIZE",
        default=10,
        type=int,
        help="most database connections",
    )


def register(subparsers: Any) -> None:
    scheduler = subparsers.add_parser(
        "scheduler",
        help="run the scheduler (gRPC server on PostgreSQL)",
        description="Run one scheduler replica. Several may share one database.",
    )
    _database_url(scheduler, required=True)
    _scheduler_tuning(scheduler)
    env_flag(
        scheduler,
        "--migrate",
        env="JOBWIRE_MIGRATE",
        default=True,
        type=bool,
        help="apply pending migrations at start-up",
    )
    add_http_flags(scheduler, env_prefix="JOBWIRE", default_port=DEFAULT_HTTP_PORT)
    env_flag(
        scheduler,
        "--stats-interval",
        env="JOBWIRE_STATS_INTERVAL",
        default=10.0,
        type=duration,
        help="time between readings of the queue depths for the metrics",
    )
    scheduler.set_defaults(func=run_scheduler)

    migrate = subparsers.add_parser("migrate", help="apply pending database migrations")
    _database_url(migrate, required=True)
    migrate.set_defaults(func=run_migrate)

    dev = subparsers.add_parser(
        "dev",
        help="run PostgreSQL (embedded), a scheduler and a worker on this machine",
        description="Everything on one machine with nothing but Python: an embedded "
        "PostgreSQL whose data stays in --data-dir, the scheduler, and one worker with the "
        "built-in job types. Ctrl-C stops it all.",
    )
    env_flag(
        dev,
        "--data-dir",
        env="JOBWIRE_DATA_DIR",
        default=".jobwire",
        help="folder for the embedded database",
    )
    _database_url(dev, required=False)
    _scheduler_tuning(dev)
    env_flag(
        dev,
        "--concurrency",
        env="JOBWIRE_CONCURRENCY",
        default=8,
        type=int,
        help="jobs the dev worker runs at once",
    )
    dev.set_defaults(func=run_dev)


def _need_database_url(args: argparse.Namespace) -> str:
    if not args.database_url:
        print("error: --database-url (or JOBWIRE_DATABASE_URL) is required", file=sys.stderr)
        raise SystemExit(2)
    return str(args.database_url)


def settings_from(args: argparse.Namespace, database_url: str) -> Any:
    from .app import Settings
    from .validation import Limits

    return Settings(
        database_url=database_url,
        listen=args.listen,
        migrate=getattr(args, "migrate", True),
        stream_grace=timedelta(seconds=args.stream_grace),
        reaper_interval=args.reaper_interval,
        poll_interval=args.poll_interval,
        pool_max_size=args.pool_size,
        retention=timedelta(seconds=args.retention),
        prune_interval=args.prune_interval,
        limits=Limits(max_payload_bytes=args.max_payload_bytes),
        http_host=getattr(args, "http_host", "0.0.0.0"),
        http_port=getattr(args, "http_port", 0) or None,
        stats_interval=getattr(args, "stats_interval", 10.0),
    )


def run_scheduler(args: argparse.Namespace) -> int:
    from .app import serve

    settings = settings_from(args, _need_database_url(args))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except OSError as exc:  # a port in use, an address that is not ours
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from . import migrate

    applied = migrate.apply(_need_database_url(args))
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    if not applied:
        print("the schema is up to date")
    return 0


def run_dev(args: argparse.Namespace) -> int:
    from .dev import run

    return run(args)
