"""The scheduler process: wires the store, leasing, the reaper and the gRPC services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from jobwire.ops.http import OpsServer, loop_responds
from jobwire.ops.memory import freeze_startup_objects
from jobwire.v1 import jobs_pb2, jobs_pb2_grpc, leases_pb2, leases_pb2_grpc

from . import metrics, migrate
from .dispatch import Dispatcher, JobChanges
from .errors import SchedulerError
from .interceptor import MetricsInterceptor
from .jobs_service import JobsService
from .leases_service import LeasesService
from .model import QueueStats, State
from .page_tokens import PageTokens
from .store import Store
from .validation import Limits

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
    leases_pb2.DESCRIPTOR.services_by_name["Leases"].full_name,
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str
    listen: str = "127.0.0.1:50051"
    migrate: bool = True
    # How long a worker that lost its stream has to come back and extend its leases.
    stream_grace: timedelta = timedelta(seconds=5)
    reaper_interval: float = 1.0
    # Fallback for jobs that become ready by time (run_at, backoff) or on another replica.
    poll_interval: float = 1.0
    watch_poll_interval: float = 1.0
    health_interval: float = 2.0
    # The operators' HTTP port (/metrics, /healthz, /readyz): None is not served, 0 picks a
    # free port (the command line's 0 means None).
    http_host: str = "0.0.0.0"
    http_port: int | None = None
    # How often queue depths are read for the metrics (one grouped query per replica).
    stats_interval: float = 10.0
    # Finished jobs are deleted this long after they finished, a batch at a time.
    retention: timedelta = timedelta(days=7)
    prune_interval: float = 10.0
    prune_batch: int = 500
    pool_min_size: int = 2
    pool_max_size: int = 10
    limits: Limits = field(default_factory=Limits)


class Scheduler:
    """One scheduler replica. `await start()`, then `await stop()` (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(
            settings.database_url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
        )
        self.changes = JobChanges()
        self.dispatcher = Dispatcher(
            self.store,
            self.changes,
            poll_interval=settings.poll_interval,
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._leases: LeasesService | None = None
        self._jobs: JobsService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port: int = 0
        self._stopped = False
        self._http: OpsServer | None = None
        # What /readyz answers; the health watcher keeps it current.
        self._readiness: tuple[bool, str] = (False, "starting")

    @property
    def http_port(self) -> int:
        """The port of /metrics, /healthz and /readyz; 0 when they are not served."""
        return self._http.port if self._http is not None else 0

    @property
    def target(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        if self.settings.http_port is not None:
            # First: a port in use stops the start before anything else is opened.
            loop = asyncio.get_running_loop()
            self._http = OpsServer(
                self.settings.http_host,
                self.settings.http_port,
                readiness=lambda: self._readiness,
                liveness=loop_responds(lambda: loop),
            )
        if self.settings.migrate:
            await asyncio.to_thread(migrate.apply, self.settings.database_url)
        await self.store.open()
        secret = await self.store.page_token_secret()
        limits = self.settings.limits
        # gRPC's own size limit sits above the payload limit so that an oversized payload
        # reaches validation and gets a readable INVALID_ARGUMENT.
        max_message = 16 * 1024 * 1024 + limits.max_payload_bytes
        server = grpc.aio.server(
            interceptors=[MetricsInterceptor()],
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        self._jobs = JobsService(
            self.store,
            self.dispatcher,
            self.changes,
            PageTokens(secret),
            limits=limits,
            watch_poll_interval=self.settings.watch_poll_interval,
        )
        jobs_pb2_grpc.add_JobsServicer_to_server(self._jobs, server)
        self._leases = LeasesService(
            self.store,
            self.dispatcher,
            self.changes,
            limits=limits,
            stream_grace=self.settings.stream_grace,
        )
        leases_pb2_grpc.add_LeasesServicer_to_server(self._leases, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server = server
        self._readiness = await self._check_readiness()
        await self._set_health(
            health_pb2.HealthCheckResponse.SERVING
            if self._readiness[0]
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        metrics.WORKERS.watch(self.dispatcher)
        if self._http is not None:
            self._http.start()
            log.info("metrics and probes on http://%s:%d", self.settings.http_host, self.http_port)
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(self._reap(), name="reaper"),
            asyncio.create_task(self._prune(), name="retention"),
            asyncio.create_task(self._listen(), name="listener"),
            asyncio.create_task(self._watch_health(), name="health"),
            asyncio.create_task(self._read_queue_stats(), name="queue-stats"),
        ]
        log.info("scheduler listening on %s", self.target)

    async def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._leases is not None:
            # Workers are not gone, the scheduler is: keep their leases' full deadlines.
            self._leases.stopping = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._readiness = (False, "stopping")
        for session in self.dispatcher.sessions:
            session.close()
        if self._server is not None:
            await self._server.stop(grace)
        if self._leases is not None:
            await self._leases.close()
        if self._jobs is not None:
            await self._jobs.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()
        metrics.WORKERS.unwatch(self.dispatcher)
        if self._http is not None:
            self._http.stop()

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _reap(self) -> None:
        """Ends expired leases; safe on every replica (rows are claimed with SKIP LOCKED)."""
        while True:
            try:
                while True:
                    ended = await self.store.expire_leases(limit=500)
                    for expired in ended:
                        log.info(
                            "lease expired: the job %s",
                            "runs again" if expired.next_state is State.PENDING else "failed",
                            extra={"job_id": str(expired.job_id), "queue": expired.queue},
                        )
                        self.dispatcher.release(expired.job_id, expired.lease_token)
                        self.changes.changed(expired.job_id)
                        if expired.due_now:
                            self.dispatcher.wake({expired.queue})
                    if len(ended) < 500:
                        break
            except SchedulerError as exc:
                log.warning("reaper paused: %s", exc)
            await asyncio.sleep(self.settings.reaper_interval)

    async def _prune(self) -> None:
        """Keeps the hot table small: small batches, so no lock or transaction lasts long."""
        settings = self.settings
        while True:
            await asyncio.sleep(settings.prune_interval)
            pruned = 0
            try:
                while (
                    deleted := await self.store.prune_finished(
                        retention=settings.retention, limit=settings.prune_batch
                    )
                ) > 0:
                    pruned += deleted
                    if deleted < settings.prune_batch:
                        break
                    await asyncio.sleep(0)  # let leasing and acks in between batches
            except SchedulerError as exc:
                log.warning("retention paused: %s", exc)
            if pruned:
                log.info("pruned %d finished jobs older than %s", pruned, settings.retention)

    async def _listen(self) -> None:
        """Hears submits and cancels made on other replicas."""
        while True:
            try:
                async for channel, payload in self.store.listen(
                    ("jobwire_submitted", "jobwire_cancel")
                ):
                    if channel == "jobwire_submitted":
                        queue = self.store.submitted_elsewhere(payload)
                        if queue is not None:
                            self.dispatcher.wake({queue} if queue else None)
                    elif channel == "jobwire_cancel":
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            cancel = json.loads(payload)
                            self.dispatcher.notify_cancel(UUID(cancel["id"]), cancel["reason"])
            except SchedulerError as exc:
                log.warning("notifications paused: %s", exc)
            await asyncio.sleep(self.settings.poll_interval)

    async def _check_readiness(self) -> tuple[bool, str]:
        """Ready while the database answers and has every migration this version ships."""
        try:
            missing = {m.version for m in migrate.available()} - (
                await self.store.applied_migrations()
            )
        except SchedulerError as exc:
            return False, f"not ready: database unreachable: {exc}"
        if missing:
            return False, f"not ready: migrations {sorted(missing)} not applied"
        return True, "ready: database reachable, schema up to date"

    async def _watch_health(self) -> None:
        """Keeps the gRPC health status and /readyz current."""
        serving = self._readiness[0]
        while True:
            await asyncio.sleep(self.settings.health_interval)
            self._readiness = await self._check_readiness()
            ok, reason = self._readiness
            if ok != serving:
                serving = ok
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                log.warning("%s", reason)
                await self._set_health(status)

    async def _read_queue_stats(self) -> None:
        """Refreshes the queue depth metrics: one grouped query per interval, whatever
        the number of scrapes."""
        while True:
            try:
                stats = await self.store.stats(None, with_succeeded=False)
                metrics.QUEUES.update(
                    QueueStats.with_idle(stats, self.dispatcher.workers_by_queue())
                )
            except SchedulerError as exc:
                log.warning("queue statistics paused: %s", exc)
            await asyncio.sleep(self.settings.stats_interval)


async def serve(settings: Settings) -> None:
    """Runs a scheduler until SIGTERM or SIGINT, then stops it gracefully."""
    scheduler = Scheduler(settings)
    try:
        await scheduler.start()
    except BaseException:
        await scheduler.stop(grace=0)
        raise
    freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("scheduler stopping")
    finally:
        await scheduler.stop()
