"""The operators' HTTP port of a scheduler or worker: `/metrics` for Prometheus,
`/healthz` (the process answers) and `/readyz` (it can do its work) for probes.

A small threaded server of the standard library: probes and scrapes are a few requests a
second, and answering them on their own threads keeps them responsive while the
service's event loop is busy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["LOOP_TIMEOUT", "Check", "OpsServer", "loop_responds"]

log = logging.getLogger(__name__)

# Answers (ok, reason); the reason is shown in the probe's body either way.
Check = Callable[[], tuple[bool, str]]

# How long the service's event loop may take to run a no-op before /healthz fails: longer
# than any pause of a healthy loop, short enough for a liveness probe to act on.
LOOP_TIMEOUT = 5.0


def loop_responds(
    loop: Callable[[], asyncio.AbstractEventLoop | None], timeout: float = LOOP_TIMEOUT
) -> Check:
    """A liveness check: the event loop (once there is one) runs a no-op within `timeout`.
    A loop blocked by a stuck handler or a busy wait fails it, and only a restart helps."""

    def check() -> tuple[bool, str]:
        running = loop()
        if running is None or running.is_closed():
            return True, "ok: starting"
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), running).result(timeout)
        except concurrent.futures.TimeoutError:
            return False, f"event loop unresponsive for {timeout:g} s"
        return True, "ok"

    return check


class OpsServer:
    """Serves the endpoints on `host:port` (port 0 picks a free one) from `start()` to
    `stop()`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: Check,
        liveness: Check = lambda: (True, "ok"),
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        """Binds the port at once: a port in use fails here, as an OSError naming it."""
        self._readiness = readiness
        self._liveness = liveness
        self._registry = registry
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot serve HTTP on {host}:{port}: {exc.strerror}"
            ) from None
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
                    self._probe(ops._liveness)
                elif path == "/readyz":
                    self._probe(ops._readiness)
                else:
                    self._answer(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _probe(self, check: Check) -> None:
                try:
                    ok, reason = check()
                except Exception as exc:  # a probe must answer, whatever went wrong
                    ok, reason = False, f"check failed: {exc}"
                self._answer(200 if ok else 503, f"{reason}\n".encode())

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
