"""Command-line options shared by every `jobwire` command: each flag has a JOBWIRE_* variable."""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_TARGET = "127.0.0.1:50051"


def _whole_number(raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
    return value


def positive_int(raw: str) -> int:
    """argparse type: a whole number of at least 1."""
    return _whole_number(raw, 1)


def non_negative_int(raw: str) -> int:
    """argparse type: a whole number of at least 0."""
    return _whole_number(raw, 0)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(raw: str) -> float:
    """argparse type: seconds, or a number with a unit s, m, h or d ("90", "15m", "7d")."""
    text = str(raw).strip().lower()
    factor = _UNITS.get(text[-1:])
    number = text[:-1] if factor is not None else text
    try:
        value = float(number) * (factor or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {raw!r} (use seconds or 30s, 15m, 12h, 7d)"
        ) from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {raw!r}")
    return value


def _number(raw: str, what: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {raw!r}") from None


def positive_float(raw: str) -> float:
    """argparse type: a number more than 0."""
    value = _number(raw, "a number")
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be more than 0, not {raw}")
    return value


def seconds(raw: str) -> float:
    """argparse type: a duration in seconds, zero or more."""
    value = _number(raw, "a number of seconds")
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be zero or more seconds, not {raw}")
    return value


def env_flag(
    parser: argparse.ArgumentParser | Any,
    flag: str,
    *,
    env: str,
    default: Any = None,
    type: Any = str,
    help: str = "",
    **kwargs: Any,
) -> None:
    """Adds `flag` whose default comes from the environment variable `env`, then `default`."""
    raw = os.environ.get(env)
    value = type(raw) if raw is not None and type is not bool else default
    if type is bool:
        if raw is not None:
            value = raw.strip().lower() in {"1", "true", "yes", "on"}
        parser.add_argument(
            flag,
            default=value,
            action=argparse.BooleanOptionalAction,
            help=f"{help} [{env}]",
            **kwargs,
        )
        return
    parser.add_argument(flag, default=value, type=type, help=f"{help} [{env}]", **kwargs)


def add_target(parser: argparse.ArgumentParser) -> None:
    """The scheduler address that clients and workers connect to."""
    env_flag(
        parser,
        "--target",
        env="JOBWIRE_TARGET",
        default=DEFAULT_TARGET,
        help="scheduler gRPC address host:port",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    """`--progress/--no-progress` for long operations; unset means "when stderr is a
    terminal"."""
    parser.add_argument(
        "--progress",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="show progress on stderr (default: only when stderr is a terminal)",
    )
