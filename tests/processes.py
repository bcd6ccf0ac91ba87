"""Real processes for fault tests: schedulers and workers started as `jobwire` commands,
with their output kept in a file for the failure message, and a restartable PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Text logs, which the tests read, and no operators' HTTP port (whose fixed default port
# would clash between processes); a test that wants them sets them again.
QUIET = {"JOBWIRE_LOG_FORMAT": "text", "JOBWIRE_HTTP_PORT": "0", "JOBWIRE_WORKER_HTTP_PORT": "0"}


class Process:
    """A `jobwire` command in its own process; output goes to `log`."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._env = {**os.environ, **QUIET, **(env or {}), "PYTHONPATH": str(ROOT)}
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "jobwire.cli.main", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup."""
        if self.alive():
            self.signal(signal.SIGKILL)
            self.wait(10)

    def wait(self, timeout: float = 30) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class SchedulerProcess(Process):
    """`jobwire scheduler` on a fixed loopback port, so that it can restart on the same one."""

    def __init__(
        self,
        database_url: str,
        log: Path,
        *,
        port: int | None = None,
        extra: list[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        args = [
            "scheduler",
            "--database-url", database_url,
            "--listen", self.target,
            "--stream-grace", "1",
            "--reaper-interval", "0.2",
            "--poll-interval", "0.2",
            *extra,
        ]  # fmt: skip
        super().__init__(args, log, env)
        self.wait_serving()

    def health(self) -> int | None:
        try:
            with grpc.insecure_channel(self.target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
        except grpc.RpcError:
            return None

    def wait_serving(self, timeout: float = 30) -> None:
        def serving() -> bool:
            if not self.alive():
                raise AssertionError(f"scheduler exited:\n{self.output()}")
            return self.health() == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, timeout=timeout, message="scheduler SERVING")

    def restart(self) -> None:
        self.start()
        self.wait_serving()


class WorkerProcess(Process):
    """`jobwire worker` with the test handlers of tests/handlers.py and the built-ins."""

    def __init__(
        self,
        target: str,
        log: Path,
        *,
        worker_id: str,
        concurrency: int = 4,
        queues: tuple[str, ...] = ("default",),
        drain_grace: float = 10,
        env: dict[str, str] | None = None,
        imports: tuple[str, ...] = ("tests.handlers",),
    ) -> None:
        self.worker_id = worker_id
        args = [
            "worker",
            "--target", target,
            "--worker-id", worker_id,
            "--concurrency", str(concurrency),
            "--drain-grace", str(drain_grace),
        ]  # fmt: skip
        for module in imports:
            args += ["--import", module]
        for queue in queues:
            args += ["--queue", queue]
        super().__init__(args, log, env)


class RestartablePostgres:
    """A PostgreSQL server of its own (embedded), for tests that stop and start it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = ""
        self.start()

    def _ctl(self, action: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tests.pgctl", action, str(self.data_dir)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def start(self) -> None:
        self.url = self._ctl("start").splitlines()[-1]

    def stop(self) -> None:
        self._ctl("stop")


__all__ = ["Process", "RestartablePostgres", "SchedulerProcess", "WorkerProcess"]
