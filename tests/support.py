"""Helpers shared by the tests: a scheduler running in a thread, and waiting with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import psycopg
from jobwire.v1 import job_pb2, jobs_pb2_grpc, leases_pb2, leases_pb2_grpc
from psycopg.conninfo import make_conninfo

T = TypeVar("T")


@contextlib.contextmanager
def scratch_database(postgres_url: str, *, template: str | None = None) -> Iterator[str]:
    """A new database on the server, empty or a copy of `template`; dropped after."""
    name = f"jobwire_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """Status and body of a GET; status 0 when nothing listens (yet, or any more)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


class SchedulerThread:
    """A real scheduler (gRPC server on a loopback port) on its own event loop thread."""

    def __init__(self, database_url: str, port: int = 0, **settings: Any) -> None:
        self.database_url = database_url
        self._port = port
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.scheduler: Any = None
        self.target = ""

    def start(self) -> None:
        from jobwire.scheduler.app import Scheduler, Settings

        settings = Settings(
            database_url=self.database_url,
            listen=f"127.0.0.1:{self._port}",
            migrate=False,
            **{"watch_poll_interval": 0.2, **self._settings},
        )
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self.scheduler = Scheduler(settings)
            try:
                loop.run_until_complete(self.scheduler.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.scheduler.stop(grace=0.5))
            loop.close()

        self._thread = threading.Thread(target=run, name="scheduler", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        self._port = self.scheduler.port
        self.target = f"127.0.0.1:{self._port}"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop = None

    def restart(self) -> None:
        """Stops and starts again on the same port (workers reconnect to the same address)."""
        self.stop()
        self.start()

    def call(self, coro_factory: Callable[[], Any]) -> Any:
        """Runs a coroutine on the scheduler's loop (for direct store access in tests)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro_factory(), self._loop).result(30)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def jobs(self, channel: grpc.Channel | None = None) -> jobs_pb2_grpc.JobsStub:
        return jobs_pb2_grpc.JobsStub(channel or self.channel())

    def leases(self, channel: grpc.Channel | None = None) -> leases_pb2_grpc.LeasesStub:
        return leases_pb2_grpc.LeasesStub(channel or self.channel())


class StreamClient:
    """A worker built from the generated stubs alone, as a client in another language would.

    Requests go through a queue feeding the stream; responses are collected by a thread.
    """

    def __init__(
        self,
        target: str,
        *,
        worker_id: str = "stub-worker",
        queues: tuple[str, ...] = ("default",),
        types: tuple[str, ...] = ("echo",),
        credits: int = 1,
    ) -> None:
        self._requests: queue.Queue[leases_pb2.LeaseRequest | None] = queue.Queue()
        self.responses: list[leases_pb2.LeaseResponse] = []
        self._lock = threading.Lock()
        self.error: grpc.RpcError | None = None
        self._channel = grpc.insecure_channel(target)
        self.send(
            leases_pb2.LeaseRequest(
                hello=leases_pb2.Hello(
                    worker_id=worker_id, queues=list(queues), types=list(types), credits=credits
                )
            )
        )
        self._call = leases_pb2_grpc.LeasesStub(self._channel).Lease(self._iter())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _iter(self) -> Iterator[leases_pb2.LeaseRequest]:
        while (item := self._requests.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    self.responses.append(response)
        except grpc.RpcError as exc:
            self.error = exc

    def send(self, message: leases_pb2.LeaseRequest) -> None:
        self._requests.put(message)

    def of_kind(self, kind: str) -> list[Any]:
        with self._lock:
            return [getattr(r, kind) for r in self.responses if r.WhichOneof("kind") == kind]

    def next_job(self, timeout: float = 10.0, index: int = 0) -> leases_pb2.LeasedJob:
        jobs = wait_for(
            lambda: len(self.of_kind("job")) > index and self.of_kind("job"),
            timeout=timeout,
            message="a leased job",
        )
        return jobs[index]  # type: ignore[no-any-return]

    def result_for(self, job_id: str, kind: int, timeout: float = 10.0) -> leases_pb2.SettleResult:
        def find() -> leases_pb2.SettleResult | None:
            for r in self.of_kind("result"):
                if r.job_id == job_id and r.kind == kind:
                    return r  # type: ignore[no-any-return]
            return None

        return wait_for(find, timeout=timeout, message=f"settle result for {job_id}")

    def ack(self, job: leases_pb2.LeasedJob, data: bytes = b'"ok"') -> leases_pb2.SettleResult:
        self.send(
            leases_pb2.LeaseRequest(
                ack=leases_pb2.AckItem(
                    job_id=job.job.id,
                    lease_token=job.lease_token,
                    result=job_pb2.Payload(data=data, content_type="application/json"),
                )
            )
        )
        return self.result_for(job.job.id, leases_pb2.SETTLE_KIND_ACK)

    def nack(self, job: leases_pb2.LeasedJob, **fields: Any) -> leases_pb2.SettleResult:
        """Reports a failure (by default a retryable-looking RuntimeError; `fields` are
        NackItem's) and waits for the answer."""
        fields.setdefault("error", job_pb2.JobError(message="boom", kind="RuntimeError"))
        self.send(
            leases_pb2.LeaseRequest(
                nack=leases_pb2.NackItem(job_id=job.job.id, lease_token=job.lease_token, **fields)
            )
        )
        return self.result_for(job.job.id, leases_pb2.SETTLE_KIND_NACK)

    def cut(self) -> None:
        """Ends the stream from the client side, as a crashed worker's connection would."""
        self._call.cancel()
        self._requests.put(None)
        self._channel.close()

    def close(self) -> None:
        self._requests.put(None)
        self._reader.join(5)
        self._channel.close()


__all__ = ["SchedulerThread", "StreamClient", "timedelta", "wait_for"]
