"""The operator flags that the scheduler and the worker share."""

from __future__ import annotations

import argparse

from jobwire.cli.options import env_flag

__all__ = ["add_http_flags", "port"]


def port(raw: str) -> int:
    """argparse type: a TCP port, 0 to 65535."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def add_http_flags(parser: argparse.ArgumentParser, *, env_prefix: str, default_port: int) -> None:
    """--http-host and --http-port: where /metrics, /healthz and /readyz are served."""
    env_flag(
        parser,
        "--http-host",
        env=f"{env_prefix}_HTTP_HOST",
        default="0.0.0.0",
        help="address of the HTTP port for /metrics, /healthz and /readyz",
    )
    env_flag(
        parser,
        "--http-port",
        env=f"{env_prefix}_HTTP_PORT",
        default=default_port,
        type=port,
        help="HTTP port for /metrics, /healthz and /readyz; 0 turns it off",
    )
