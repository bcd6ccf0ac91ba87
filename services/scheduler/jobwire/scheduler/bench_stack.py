"""What `jobwire bench` runs against: PostgreSQL (embedded unless a URL is given), a
scheduler process and worker processes, each started as a real `jobwire` command, plus
CPU accounting of those processes from /proc. Everything is stopped and the temporary
folder removed by `Stack.close()`, also after Ctrl-C or a failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import make_conninfo

from . import migrate
from .embedded import EmbeddedPostgres

# The tables a benchmark fills; emptied between scenarios on an external database.
BENCH_TABLES = ("jobwire_attempts", "jobwire_jobs")

# Every job type the latency scenario's end-to-end variant needs: a handler that answers
# with the worker's clock when it starts. Written into the temporary folder and imported
# by the worker from there (`--import`), so that the worker imports nothing but
# jobwire.worker, as in production.
STAMP_TYPE = "bench.stamp"
STAMP_MODULE = "jobwire_bench_stamp"
_STAMP_SOURCE = f'''"""`{STAMP_TYPE}`: answers with the worker's clock when the handler starts."""

import time

from jobwire.worker import handler


@handler("{STAMP_TYPE}")
async def stamp(payload):
    return time.time()
'''


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a wait timed out)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Proc:
    """One `python -m jobwire.cli.main ...` process in its own session (so that Ctrl-C
    reaches the bench only, which then stops it in order); output goes to `log`."""

    def __init__(
        self, name: str, args: Sequence[str], log: Path, *, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log = log
        # Text logs for the bench's error messages; no HTTP port, whose fixed default
        # would clash between the bench's processes.
        command = [
            sys.executable, "-m", "jobwire.cli.main",
            "--log-level", "WARNING", "--log-format", "text",
            *args, "--http-port", "0",
        ]  # fmt: skip
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with status {self.popen.returncode}:\n{self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """SIGTERM, once: a second one tells a worker to stop without draining."""
        with contextlib.suppress(ProcessLookupError):
            if self.alive():
                self.popen.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 20.0) -> None:
        """Waits for the exit, with SIGKILL if it is still there after `timeout` seconds."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(10)


def health(target: str) -> int | None:
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
    except grpc.RpcError:
        return None


# -- CPU accounting ---------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].decode().split()


def _cpu(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) of a process; with `reaped_children`, also of its
    children that ended and were waited for (PostgreSQL backends that came and went)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def _machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat, all but idle and iowait)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    # cpu user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in first[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU used by named processes between `start()` and `stop()`, as % of one core, and
    by everything else on the machine meanwhile ("other": a busy neighbour skews figures).

    Reads /proc twice per measurement, so it costs nothing while the benchmark runs."""

    def __init__(self, pids: dict[str, int], postmaster: int | None) -> None:
        self.pids = pids
        self.postmaster = postmaster
        self._begin: dict[str, float] = {}
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        if not Path("/proc/self/stat").exists():
            return {}
        sample = {name: _cpu(pid) for name, pid in self.pids.items()}
        sample["bench"] = _cpu(os.getpid())
        if self.postmaster is not None:
            sample["postgres"] = _cpu(self.postmaster, reaped_children=True) + sum(
                _cpu(child) for child in _children(self.postmaster)
            )
        sample["machine"] = _machine_busy()
        return sample

    def start(self) -> None:
        self._begin = self._sample()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        wall = time.monotonic() - self._t0
        if wall <= 0 or not end:
            return {}
        used = {
            name: round(100.0 * (end[name] - self._begin.get(name, 0.0)) / wall, 1) for name in end
        }
        # What the rest of the machine used meanwhile (other programs sharing the cores).
        ours = sum(v for k, v in used.items() if k != "machine")
        used["other"] = round(max(0.0, used.pop("machine") - ours), 1)
        return used


# -- the stack ----------------------------------------------------------------------------


class Stack:
    """PostgreSQL and a temporary folder for the whole run; a database, a scheduler and
    workers per scenario run."""

    def __init__(self, database_url: str | None = None, *, keep: bool = False) -> None:
        self.external_url = database_url
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="jobwire-bench-"))
        self.postgres: EmbeddedPostgres | None = None
        self.server_url = ""
        self.template = f"jobwire_bench_template_{os.getpid()}"
        self.processes: list[Proc] = []
        self.handlers_dir = self.tmp / "handlers"
        self._databases: list[str] = []

    # PostgreSQL ------------------------------------------------------------------------

    def open(self, *, allow_truncate: bool = False) -> None:
        if self.external_url:
            migrate.apply(self.external_url)
            if not allow_truncate:
                with psycopg.connect(self.external_url) as conn:
                    row = conn.execute("SELECT EXISTS (SELECT 1 FROM jobwire_jobs)").fetchone()
                if row and row[0]:
                    raise BenchError(
                        "the database given with --database-url has jobs, and the bench "
                        "empties jobwire_jobs between scenarios: use a scratch database, "
                        "or pass --allow-truncate"
                    )
        else:
            self.postgres = EmbeddedPostgres(self.tmp / "pg")
            self.server_url = self.postgres.start()
            with psycopg.connect(self.server_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.template}"')
            migrate.apply(make_conninfo(self.server_url, dbname=self.template))
        self.handlers_dir.mkdir()
        (self.handlers_dir / f"{STAMP_MODULE}.py").write_text(_STAMP_SOURCE, "utf-8")

    @property
    def postmaster_pid(self) -> int | None:
        if self.postgres is None:
            return None
        try:
            return int((self.tmp / "pg" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A migrated database with no jobs, for one scenario run."""
        if self.external_url:
            self._truncate(self.external_url)
            yield self.external_url
            return
        name = f"jobwire_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self._databases.append(name)
        try:
            yield make_conninfo(self.server_url, dbname=name)
        finally:
            self._drop(name)

    def _truncate(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(BENCH_TABLES)}")

    def _drop(self, name: str) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._databases:
            self._databases.remove(name)

    # processes -----------------------------------------------------------------------

    def scheduler(self, database_url: str, extra: Sequence[str] = ()) -> tuple[Proc, str]:
        """Starts `jobwire scheduler` on a free loopback port; returns it once SERVING."""
        target = f"127.0.0.1:{free_port()}"
        proc = Proc(
            "scheduler",
            [
                "scheduler",
                "--database-url", database_url,
                "--listen", target,
                "--no-migrate",
                *extra,
            ],
            self.tmp / f"scheduler-{len(self.processes)}.log",
        )  # fmt: skip
        self.processes.append(proc)
        deadline = time.monotonic() + 60
        while health(target) != health_pb2.HealthCheckResponse.SERVING:
            proc.check()
            if time.monotonic() > deadline:
                raise BenchError(f"the scheduler did not become SERVING:\n{proc.tail()}")
            time.sleep(0.1)
        return proc, target

    def worker(
        self,
        target: str,
        worker_id: str,
        *,
        concurrency: int = 32,
        prefetch: int = 0,
        stamp: bool = False,
    ) -> Proc:
        """Starts `jobwire worker` with the built-in job types (and the stamp handler)."""
        args = [
            "worker",
            "--target", target,
            "--concurrency", str(concurrency),
            "--prefetch", str(prefetch),
            "--worker-id", worker_id,
            "--drain-grace", "5",
        ]  # fmt: skip
        if stamp:
            args += ["--import", STAMP_MODULE]
        proc = Proc(
            f"worker {worker_id}",
            args,
            self.tmp / f"{worker_id}-{len(self.processes)}.log",
            cwd=self.handlers_dir,
        )
        self.processes.append(proc)
        return proc

    def stop_processes(self) -> None:
        """Workers first (they drain against a live scheduler), then schedulers."""
        workers = [p for p in self.processes if p.name.startswith("worker")]
        others = [p for p in self.processes if p not in workers]
        for group in (workers, others):
            for proc in group:
                proc.terminate()
            for proc in group:
                proc.wait_stopped()
        self.processes.clear()

    def meter(self, **pids: int) -> CpuMeter:
        return CpuMeter(pids, self.postmaster_pid)

    def close(self) -> None:
        """Stops everything this stack started and removes the temporary folder."""
        try:
            self.stop_processes()
        finally:
            try:
                if self.postgres is not None:
                    for name in list(self._databases):
                        with contextlib.suppress(Exception):
                            self._drop(name)
                    self.postgres.stop()
                    self.postgres = None
            finally:
                if not self.keep:
                    shutil.rmtree(self.tmp, ignore_errors=True)
