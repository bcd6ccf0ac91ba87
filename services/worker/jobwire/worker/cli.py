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

from jobwire.cli.options import add_target, env_flag, non_negative_int, positive_int, seconds
from jobwire.ops.http import OpsServer, loop_responds
from jobwire.ops.logs import configure as configure_logs
from jobwire.ops.memory import freeze_startup_objects
from jobwire.ops.options import add_http_flags

from .builtins import register_builtins
from .errors import HandlerDefinitionError, WorkerError
from .registry import default_registry
from .worker import Worker

__all__ = ["register", "run"]

log = logging.getLogger("jobwire.worker")

DEFAULT_HTTP_PORT = 8081


def _names(raw: str) -> list[str]:
    """Comma-separated names, as accepted by --queue, --import and their variables."""
    return [name.strip() for name in raw.split(",") if name.strip()]


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
        "--prefetch",
        env="JOBWIRE_PREFETCH",
        default=0,
        type=non_negative_int,
        help="jobs leased ahead of free slots, so short jobs start without waiting for "
        "the scheduler; leave 0 for long jobs (default: 0)",
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
        help="run the built-in job types (uppercase, reverse, csv, text, email, fail, noop)",
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
    add_http_flags(parser, env_prefix="JOBWIRE_WORKER", default_port=DEFAULT_HTTP_PORT)
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
        configure_logs("INFO", "text")
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
            prefetch=args.prefetch,
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
    ops = None
    if args.http_port:
        try:
            ops = OpsServer(
                args.http_host,
                args.http_port,
                readiness=lambda: _readiness(worker),
                liveness=loop_responds(lambda: worker.loop),
            )
        except OSError as exc:
            log.error("%s (--http-port, JOBWIRE_WORKER_HTTP_PORT; 0 turns it off)", exc.strerror)
            return 2
        ops.start()
        log.info("metrics and probes on http://%s:%d", args.http_host, ops.port)
    freeze_startup_objects()
    try:
        worker.run_forever()
    finally:
        if ops is not None:
            ops.stop()
    if worker.unsettled_outcomes:
        return 1
    return 0


def _readiness(worker: Worker) -> tuple[bool, str]:
    """Ready while a Lease stream to the scheduler is open: a worker does its work
    through the scheduler, never through a database."""
    if worker.connected:
        return True, f"ready: connected to {worker.target}"
    return False, f"not ready: not connected to {worker.target}"
