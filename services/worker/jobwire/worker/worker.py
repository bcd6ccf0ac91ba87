"""The Worker: the public face of the SDK. Registration, settings and lifecycle live
here; the Lease protocol itself is in `engine`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from .backoff import Backoff
from .engine import Engine
from .errors import ConfigurationError, WorkerError
from .registry import HandlerRegistry, HandlerSpec
from .settings import WorkerSettings, default_worker_id

__all__ = ["Worker"]

log = logging.getLogger("jobwire.worker")

F = TypeVar("F", bound=Callable[..., Any])

MAX_TYPES = 256  # job types one Hello may announce


class Worker:
    """Runs handlers for jobs leased from a jobwire scheduler.

    ::

        worker = Worker("127.0.0.1:50051", queues=["default"], concurrency=8)

        @worker.handler("resize")
        async def resize(payload, ctx):
            ...

        worker.run_forever()  # until SIGTERM or SIGINT, then drains

    `concurrency` is how many jobs run at once (plain handlers run in that many
    threads). `prefetch` is how many more jobs it leases ahead, to start as soon as
    a slot frees instead of after a round trip to the scheduler: worth it for many
    short jobs, unfair for long ones (they wait here, their leases extended, while
    another worker may be idle); 0 by default. `drain_grace` is how long running
    jobs may take to finish once shutdown starts before they are handed back
    (prefetched ones go back at once); `settle_timeout` bounds the wait
    for the scheduler to confirm outcomes while stopping. `max_extend_interval`
    caps the time between lease extensions. `credentials` (grpc.ChannelCredentials)
    turn on TLS; `metadata` is sent with the stream, for example a bearer token;
    `channel_options` are passed to the gRPC channel.
    """

    def __init__(
        self,
        target: str,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 8,
        prefetch: int = 0,
        worker_id: str | None = None,
        drain_grace: float = 30.0,
        settle_timeout: float = 5.0,
        max_extend_interval: float = 10.0,
        backoff: Backoff | None = None,
        credentials: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if isinstance(queues, str):
            raise ConfigurationError("queues must be a sequence of names, not one string")
        self.settings = WorkerSettings(
            target=target,
            queues=tuple(dict.fromkeys(queues)),
            concurrency=concurrency,
            prefetch=prefetch,
            worker_id=worker_id or default_worker_id(),
            drain_grace=drain_grace,
            settle_timeout=settle_timeout,
            max_extend_interval=max_extend_interval,
            backoff=backoff or Backoff(),
            credentials=credentials,
            metadata=tuple(metadata),
            channel_options=tuple(channel_options),
        )
        self.registry = HandlerRegistry()
        self._engine: Engine | None = None
        self._started = False
        self._shutdown_requested = False
        self._hand_back_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None

    # -- settings, for reading -------------------------------------------------------

    @property
    def target(self) -> str:
        return self.settings.target

    @property
    def queues(self) -> tuple[str, ...]:
        return self.settings.queues

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @property
    def drain_grace(self) -> float:
        return self.settings.drain_grace

    # -- registration ----------------------------------------------------------------

    def handler(self, type_name: str) -> Callable[[F], F]:
        """Decorator: `@worker.handler("type")` on an `async def` or plain function
        taking `(payload)` or `(payload, ctx)`. Checked at once."""
        return self.registry.handler(type_name)

    def register(self, type_name: str, func: Callable[..., Any]) -> HandlerSpec:
        """Registers `func` for `type_name` without decorator syntax."""
        return self.registry.register(type_name, func)

    def include(self, registry: HandlerRegistry) -> None:
        """Adds every handler of another registry, such as `default_registry`."""
        self.registry.include(registry)

    @property
    def handler_types(self) -> tuple[str, ...]:
        return self.registry.types

    # -- state, for watching -----------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the worker runs on, once it runs."""
        return self._loop

    @property
    def connected(self) -> bool:
        """True while a Lease stream is open and its Hello has been written."""
        return self._engine is not None and self._engine.connection.connected

    @property
    def active_jobs(self) -> int:
        """Attempts running whose outcome has not been decided yet."""
        return self._engine.active_jobs if self._engine is not None else 0

    @property
    def prefetched_jobs(self) -> int:
        """Jobs leased ahead (`prefetch`) that wait for a free slot."""
        return self._engine.prefetched_jobs if self._engine is not None else 0

    @property
    def unsettled_outcomes(self) -> int:
        """Outcomes the scheduler has not confirmed yet (nonzero after `run()` means
        some leases are left to expire; those jobs will run again)."""
        return self._engine.unsettled_outcomes if self._engine is not None else 0

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Connects, runs jobs until `shutdown()`, drains, and returns."""
        self._check_ready()
        self._started = True
        self._bind_loop()
        self._engine = Engine(self.settings, self.registry)
        log.info(
            "worker %s starting: scheduler %s, queues %s, concurrency %d, job types %s",
            self.worker_id,
            self.target,
            ",".join(self.queues),
            self.concurrency,
            ",".join(self.handler_types),
        )
        try:
            await self._engine.run(self._stop, self._force)
        finally:
            log.info("worker %s stopped", self.worker_id)

    def shutdown(self) -> None:
        """Starts draining: no new jobs, running ones get `drain_grace` seconds to
        finish, the rest are handed back. Idempotent, and safe from any thread."""
        self._shutdown_requested = True
        self._signal(self._stop)

    def hand_back_now(self) -> None:
        """Shuts down without waiting out the drain grace: running jobs are handed
        back at once. Idempotent, and safe from any thread."""
        self._hand_back_requested = True
        self.shutdown()
        self._signal(self._force)

    async def __aenter__(self) -> Worker:
        self._check_ready()
        self._run_task = asyncio.create_task(self.run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
        if self._run_task is not None:
            await self._run_task

    def run_forever(self) -> None:
        """Runs in a new event loop until SIGTERM or SIGINT, then drains and returns.
        A second signal hands running jobs back without waiting out the grace."""
        asyncio.run(self._run_with_signals())

    # -- internals -------------------------------------------------------------------

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signal support on this platform
            installed.append(sig)
        try:
            await self.run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._shutdown_requested:
            log.info(
                "%s received: draining (grace %g s); send it again to hand running jobs "
                "back at once",
                sig.name,
                self.drain_grace,
            )
            self.shutdown()
        else:
            log.warning("%s received again: handing running jobs back now", sig.name)
            self.hand_back_now()

    def _check_ready(self) -> None:
        if self._started:
            raise WorkerError("this Worker has already run; create a new one")
        if not self.registry:
            raise ConfigurationError("no handlers registered: nothing to run")
        if len(self.registry) > MAX_TYPES:
            raise ConfigurationError(f"a worker can serve at most {MAX_TYPES} job types")

    def _bind_loop(self) -> None:
        # The loop is published last: shutdown() from another thread either sees it
        # (and sets the event through it) or has set its flag, which is read here.
        self._loop_thread = threading.get_ident()
        self._loop = asyncio.get_running_loop()
        if self._shutdown_requested:
            self._stop.set()
        if self._hand_back_requested:
            self._force.set()

    def _signal(self, event: asyncio.Event) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not running: run() reads the flags when it starts
        if threading.get_ident() == self._loop_thread:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)
