"""The operators' HTTP port of a scheduler or worker: `/metrics` for Prometheus,
`/healthz` (the process answers) and `/readyz` (it can do its work) for probes.

A small threaded server of the standard library: probes and scrapes are a few requests a
second, and answering them on their own threads keeps them responsive while the
service's event loop is busy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["OpsServer", "Readiness"]

log = logging.getLogger(__name__)

# Answers (ready, reason); the reason is shown in /readyz's body either way.
Readiness = Callable[[], tuple[bool, str]]


class OpsServer:
    """Serves the endpoints on `host:port` (port 0 picks a free one) from `start()` to
    `stop()`."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._readiness = readiness
        self._registry = registry
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="jobwire-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "jobwire"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._answer(200, encoder(ops._registry), content_type)
                elif path == "/healthz":
                    self._answer(200, b"ok\n")
                elif path == "/readyz":
                    try:
                        ready, reason = ops._readiness()
                    except Exception as exc:  # a probe must answer, whatever went wrong
                        ready, reason = False, f"readiness check failed: {exc}"
                    self._answer(200 if ready else 503, f"{reason}\n".encode())
                else:
                    self._answer(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _answer(
                self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Probes and scrapes every few seconds would drown the service's own lines.
                log.debug("http: " + format, *args)

        return Handler
