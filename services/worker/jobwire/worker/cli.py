"""`jobwire worker`: run a worker with the built-in job types and handlers imported
from modules, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from jobwire.cli.options import add_target, env_flag, positive_int, seconds

from .builtins import register_builtins
from .errors import HandlerDefinitionError, WorkerError
from .registry import default_registry
from .worker import Worker

__all__ = ["register", "run"]

log = logging.getLogger("jobwire.worker")


def _names(raw: str) -> list[str]:
    """Comma-separated names, as accepted by --queue, --import and their variables."""
    return [name.strip() for name in raw.split(",") if name.strip()]


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {value}")
    return value


class _Names(argparse.Action):
    """Repeatable, comma-separated list option whose first use on the command line
    replaces the default (from the environment or built in) instead of adding to it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        seen = f"_{self.dest}_given"
        current = list(getattr(namespace, self.dest)) if getattr(namespace, seen, False) else []
        current.extend(values if isinstance(values, list) else [values])
        setattr(namespace, self.dest, current)
        setattr(namespace, seen, True)


def register(subparsers: Any) -> None:
    """Adds the `worker` subcommand to an argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a worker",
        description=(
            "Lease jobs from the scheduler and run them with the built-in job types and "
            "the handlers of the modules given with --import (registered with "
            "@jobwire.worker.handler). SIGTERM or SIGINT drains: no new jobs, running "
            "ones get --drain-grace seconds, the rest are handed back."
        ),
    )
    add_target(parser)
    env_flag(
        parser,
        "--queue",
        env="JOBWIRE_QUEUES",
        default=["default"],
        type=_names,
        action=_Names,
        dest="queues",
        metavar="QUEUE",
        help="queue to lease from; repeat or separate with commas (default: default)",
    )
    env_flag(
        parser,
        "--concurrency",
        env="JOBWIRE_CONCURRENCY",
        default=8,
        type=positive_int,
        help="jobs run at once (default: 8)",
    )
    env_flag(
        parser,
        "--import",
        env="JOBWIRE_IMPORTS",
        default=[],
        type=_names,
        action=_Names,
        dest="imports",
        metavar="MODULE",
        help="module whose @jobwire.worker.handler functions to run; repeatable",
    )
    env_flag(
        parser,
        "--builtins",
        env="JOBWIRE_BUILTINS",
        default=True,
        type=bool,
        help="run the built-in job types uppercase, reverse, csv, text and fail",
    )
    env_flag(
        parser,
        "--drain-grace",
        env="JOBWIRE_DRAIN_GRACE",
        default=30.0,
        type=seconds,
        metavar="SECONDS",
        help="on shutdown, how long running jobs may take before they are handed back",
    )
    env_flag(
        parser,
        "--worker-id",
        env="JOBWIRE_WORKER_ID",
        default=None,
        help="name shown in the jobs' attempt history (default: host-pid-random)",
    )
    env_flag(
        parser,
        "--metrics-port",
        env="JOBWIRE_WORKER_METRICS_PORT",
        default=0,
        type=_port,
        help="serve Prometheus metrics on this port; 0 turns them off",
    )
    parser.set_defaults(func=run)


def _import_handlers(modules: Sequence[str]) -> None:
    # Like the worker commands of Celery and RQ: modules are found from the current
    # directory even when started through the `jobwire` script.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        importlib.import_module(module)


def run(args: argparse.Namespace) -> int:
    """Runs the worker described by parsed `jobwire worker` arguments; returns the
    exit code: 0 after a clean drain."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        _import_handlers(args.imports)
    except Exception as exc:
        log.error("cannot import handlers: %s: %s", type(exc).__name__, exc)
        return 2
    try:
        worker = Worker(
            args.target,
            queues=args.queues,
            concurrency=args.concurrency,
            worker_id=args.worker_id,
            drain_grace=args.drain_grace,
        )
        if args.builtins:
            register_builtins(worker)
        try:
            worker.include(default_registry)
        except HandlerDefinitionError as exc:
            hint = " (--no-builtins frees the built-in names)" if args.builtins else ""
            log.error("%s%s", exc, hint)
            return 2
        if not worker.handler_types:
            log.error("no job types to run: give --import MODULE or leave the built-ins on")
            return 2
    except WorkerError as exc:
        log.error("%s", exc)
        return 2
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
        log.info("metrics on port %d", args.metrics_port)
    worker.run_forever()
    if worker.unsettled_outcomes:
        return 1
    return 0
