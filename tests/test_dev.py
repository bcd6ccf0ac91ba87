"""`jobwire dev` as a person runs it: one command up, a submit from another process prints the
result, Ctrl-C stops everything, and the data is still there on the next start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import wait_for

pytestmark = pytest.mark.slow


class DevStack:
    def __init__(self, data_dir: Path) -> None:
        env = {**os.environ, "JOBWIRE_DATA_DIR": str(data_dir)}
        env.pop("JOBWIRE_TEST_DATABASE_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobwire.cli.main", "dev", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def target(self) -> str:
        def find() -> str | None:
            match = re.search(r"scheduler\s+(127\.0\.0\.1:\d+)", self.output)
            return match.group(1) if match else None

        return wait_for(find, timeout=60, message=f"jobwire dev to start:\n{self.output}")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(60)
        finally:
            self._reader.join(10)
            assert self.process.stdout is not None
            self.process.stdout.close()


def jobwire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobwire.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_stack_runs_a_job_and_keeps_its_data(tmp_path: Path) -> None:
    stack = DevStack(tmp_path / "data")
    try:
        target = stack.target()
        assert "PostgreSQL" in stack.output and "worker" in stack.output
        done = jobwire("submit", "uppercase", '{"text": "hi"}', "--wait", "--target", target)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "HI"
        listed = jobwire("list", "--json", "--target", target)
        assert listed.returncode == 0, listed.stderr
    finally:
        code = stack.interrupt()
    assert code == 0, stack.output
    assert "Traceback" not in stack.output, stack.output

    # The data survives a restart of the whole stack.
    again = DevStack(tmp_path / "data")
    try:
        target = again.target()
        listed = jobwire("list", "--type", "uppercase", "--json", "--target", target)
        assert listed.returncode == 0, listed.stderr
        assert "uppercase" in listed.stdout
    finally:
        assert again.interrupt() == 0, again.output
