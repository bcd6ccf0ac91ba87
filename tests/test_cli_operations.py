"""The operator commands against a real scheduler: stats, the dead-letter view of list,
and retry --all-failed with its confirmation, progress and summary."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from jobwire.cli import jobs_commands
from jobwire.cli.jobs_commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    format_age,
    format_time,
)
from jobwire.cli.progress import Progress
from jobwire.client import (
    Client,
    FailedPreconditionError,
    Job,
    JobError,
    JobState,
    NotFoundError,
    UnavailableError,
)
from jobwire.v1 import job_pb2

from tests.support import StreamClient, wait_for
from tests.test_cli import make_parser, run

_DRIVER = (
    "import argparse, sys\n"
    "from jobwire.cli import jobs_commands\n"
    "p = argparse.ArgumentParser(prog='jobwire')\n"
    "jobs_commands.register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def cli(target: str, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The job commands in a process of their own, with real standard streams."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [sys.executable, "-c", _DRIVER, *argv, "--target", target],
        text=True,
        timeout=60,
        env=env,
        **kwargs,
    )


def read_all(fd: int) -> str:
    """Everything written to a pseudo-terminal whose other side is closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO once the other side is gone and all is read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.fixture
def target(scheduler: Any) -> str:
    return str(scheduler.target)


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    with Client(target) as c:
        yield c


def fail_jobs(
    target: str,
    client: Client,
    count: int,
    *,
    queue: str = "dlq",
    type: str = "t",
    kind: str = "ValueError",
    message: str = "no good",
) -> list[str]:
    """`count` jobs of `queue` made FAILED the way a worker does it: leased, then a
    non-retryable nack."""
    ids = [client.submit(type, {"n": i}, queue=queue, max_attempts=1).id for i in range(count)]
    worker = StreamClient(target, queues=(queue,), types=(type,), credits=count)
    try:
        for index in range(count):
            worker.nack(
                worker.next_job(index=index),
                error=job_pb2.JobError(message=message, kind=kind),
                retryable=False,
            )
    finally:
        worker.close()
    assert {client.get(i).state for i in ids} == {JobState.FAILED}
    return ids


def retries_of(client: Client, queue: str) -> list[Job]:
    return [j for j in client.iter_jobs(queue=queue) if j.retried_from]


def rows(out: str) -> dict[str, list[str]]:
    """A table's rows by their first cell."""
    return {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}


# -- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (-1, "0.0s"),
        (3.24, "3.2s"),
        (42.9, "42s"),
        (65, "1m05s"),
        (252, "4m12s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (2 * 3600 + 3 * 60 + 59, "2h03m"),
        (3 * 86400 + 7 * 3600, "3d07h"),
    ],
)
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text
    assert format_age(timedelta(seconds=seconds)) == text


def test_dead_letters_are_cut_to_the_width_and_kept_on_one_line() -> None:
    job = Job(
        id="6f1b4c1e-0000-4000-8000-000000000001",
        queue="q",
        type="t",
        state=JobState.FAILED,
        attempt=3,
        max_attempts=3,
        finished_at=datetime(2030, 1, 1, tzinfo=UTC),
        error=JobError(message="line one\nline two " + "x" * 200, kind="IOError"),
    )
    # Piped: one line per job, nothing cut.
    header, full = jobs_commands.format_dead_letters([job]).splitlines()
    assert header.split() == ["ID", "QUEUE", "TYPE", "ATTEMPTS", "FAILED", "AT", "KIND", "ERROR"]
    assert full.split()[:6] == [job.id, "q", "t", "3/3", format_time(job.finished_at), "IOError"]
    assert full.endswith("IOError  line one line two " + "x" * 200)

    # A wide terminal: the same line, cut to its width.
    _, row = jobs_commands.format_dead_letters([job], width=140).splitlines()
    assert len(row) == 140 and row.endswith("...")
    assert row[:-3] == full[:137]

    # A narrow one: the error on a line of its own under the job.
    header, row, error = jobs_commands.format_dead_letters([job], width=80).splitlines()
    assert header.split() == ["ID", "QUEUE", "TYPE", "ATTEMPTS"]
    assert row.split() == [job.id, "q", "t", "3/3"]
    assert error.startswith(f"    {format_time(job.finished_at)}  IOError: line one line two x")
    assert len(error) == 80 and error.endswith("...")


def test_progress_is_silent_off_a_terminal_and_plain_when_asked() -> None:
    quiet = io.StringIO()
    with Progress("work", total=2, stream=quiet) as progress:
        progress.update(advance=2)
    assert quiet.getvalue() == ""

    forced = io.StringIO()
    with Progress("work", total=4, stream=forced, enabled=True) as progress:
        progress.update(1, note="skipped 0")
        progress.write("a line of its own")
        progress.update(4)
    lines = forced.getvalue().splitlines()
    assert "\r" not in forced.getvalue()
    assert lines[0] == "work: 1/4 (25%)  skipped 0"
    assert lines[1] == "a line of its own"
    assert lines[-1] == "work: 4/4 (100%)  skipped 0"


def test_progress_on_a_terminal_rewrites_one_line_and_erases_it() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    ticks = iter(range(100))
    with Progress("work", total=10, stream=screen, clock=lambda: next(ticks)) as progress:
        for _ in range(10):
            progress.update(advance=1)
    text = screen.getvalue()
    assert "\n" not in text
    assert text.count("\r") >= 10 and "work: 10/10 (100%)" in text
    assert text.endswith("\r") and text.rstrip("\r").endswith(" ")


# -- stats -----------------------------------------------------------------------------------


def test_stats_shows_depth_oldest_age_running_failed_and_workers(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    fail_jobs(target, client, 1, queue="work")
    for _ in range(3):
        client.submit("t", queue="work", max_attempts=1)
    client.submit("t", queue="work", run_at=timedelta(hours=1))
    # Due 75 seconds before it was submitted, in a queue nobody serves: it has waited
    # since its submission only.
    client.submit("t", queue="old", run_at=datetime.now(UTC) - timedelta(seconds=75))
    worker = StreamClient(target, queues=("work",), types=("t",), credits=1)
    try:
        worker.next_job()  # held: RUNNING
        # The stream worker that failed the first job has gone; this one is connected.
        wait_for(
            lambda: [(q.running, q.connected_workers) for q in client.stats("work")] == [(1, 1)],
            message="one running job and one worker",
        )
        code, out, _ = run(["stats", "--target", target], capsys)
        assert code == EXIT_OK
        header = out.splitlines()[0].split()
        assert header == [
            "QUEUE",
            "READY",
            "SCHEDULED",
            "RUNNING",
            "FAILED",
            "SUCCEEDED",
            "CANCELLED",
            "OLDEST",
            "WORKERS",
        ]
        table = rows(out)
        work, old, total = table["work"], table["old"], table["(total)"]
        assert work[1:7] == ["2", "1", "1", "1", "0", "0"]
        assert work[8] == "1"  # the stream worker
        assert work[7].endswith("s") and float(work[7][:-1]) < 10
        assert old[1:7] == ["1", "0", "0", "0", "0", "0"] and old[8] == "0"
        assert old[7].endswith("s") and float(old[7][:-1]) < 10
        assert total[1:7] == ["3", "1", "1", "1", "0", "0"]
        assert total[7] in (old[7], work[7]) and total[8] == "-"

        code, out, _ = run(["stats", "--queue", "work", "--target", target, "--json"], capsys)
        (stats,) = json.loads(out)["queues"]
        assert (stats["queue"], stats["ready"], stats["running"]) == ("work", 2, 1)
        assert (stats["failed"], stats["scheduled"], stats["connected_workers"]) == (1, 1, 1)
    finally:
        worker.close()


def test_stats_watch_refreshes_until_the_count(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    client.submit("t", queue="w")
    code, out, _ = run(["stats", "--watch", "0.1", "--count", "2", "--target", target], capsys)
    assert code == EXIT_OK
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2
    for block in blocks:
        heading, header, row = block.splitlines()
        assert target in heading and "every 0.1s" in heading
        assert header.split()[0] == "QUEUE" and row.split()[:2] == ["w", "1"]
    assert "\x1b" not in out  # no screen clearing when stdout is not a terminal

    code, out, _ = run(
        ["stats", "--watch", "0.1", "--count", "3", "--json", "--target", target], capsys
    )
    documents = [json.loads(line) for line in out.splitlines()]
    assert code == EXIT_OK and len(documents) == 3
    assert all(d["queues"][0]["ready"] == 1 and d["at"] for d in documents)

    code, _, err = run(["stats", "--count", "2", "--target", target], capsys)
    assert code == EXIT_REFUSED and "--count goes with --watch" in err
    with pytest.raises(SystemExit) as caught:
        make_parser().parse_args(["stats", "--watch", "0"])
    assert caught.value.code == 2


def test_stats_watch_redraws_the_screen_of_a_terminal(target: str, client: Client) -> None:
    client.submit("t", queue="w")
    master, slave = pty.openpty()
    try:
        done = cli(target, "stats", "--watch", "0.1", "--count", "2", stdout=slave)
        os.close(slave)
        screen = read_all(master)
    finally:
        os.close(master)
    assert done.returncode == EXIT_OK, done.stderr
    frames = screen.split("\x1b[H\x1b[2J")
    assert frames[0] == "" and len(frames) == 3
    for frame in frames[1:]:
        lines = frame.splitlines()
        assert target in lines[0] and lines[1] == "" and lines[2].split()[0] == "QUEUE"
        assert lines[3].split()[:2] == ["w", "1"]


# -- list --state failed ---------------------------------------------------------------------


def test_list_failed_is_the_dead_letter_view(
    target: str,
    client: Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    long = "the remote end closed the connection " + "while we were reading " * 10
    first = fail_jobs(target, client, 1, kind="ConnectionError", message=long)
    second = fail_jobs(target, client, 2, queue="mail", type="email", kind="SMTPError")
    client.submit("t", queue="dlq")  # pending: not a dead letter
    monkeypatch.delenv("COLUMNS", raising=False)

    code, out, _ = run(["list", "--state", "failed", "--target", target], capsys)
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "QUEUE",
        "TYPE",
        "ATTEMPTS",
        "FAILED",
        "AT",
        "KIND",
        "ERROR",
    ]
    table = rows(out)
    assert list(table) == [*second[::-1], *first]  # newest first
    row = table[first[0]]
    assert row[1:4] == ["dlq", "t", "1/1"]
    assert datetime.fromisoformat(row[4]).tzinfo is not None
    assert row[5] == "ConnectionError"
    # Piped: nothing is cut.
    assert " ".join(row[6:]) == long.strip()
    assert table[second[0]][1:4] == ["mail", "email", "1/1"]
    assert table[second[0]][5:] == ["SMTPError", "no", "good"]

    # On a terminal the error is cut to its width, on the job's line when it is wide...
    monkeypatch.setenv("COLUMNS", "150")
    code, out, _ = run(["list", "--state", "failed", "--queue", "dlq", "--target", target], capsys)
    (line,) = out.splitlines()[1:]
    assert len(line) == 150 and line.endswith("...") and "ConnectionError  the remote" in line
    # ... under it when it is narrow.
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(["list", "--state", "failed", "--queue", "dlq", "--target", target], capsys)
    (line, error) = out.splitlines()[1:]
    assert line.split()[:2] == [first[0], "dlq"]
    assert error.split()[1:5] == ["ConnectionError:", "the", "remote", "end"]
    assert len(error) == 80 and error.endswith("...")

    # Other states together keep the usual columns.
    code, out, _ = run(["list", "--state", "failed", "pending", "--target", target], capsys)
    assert out.splitlines()[0].split()[3] == "STATE"
    code, out, _ = run(["list", "--state", "failed", "--queue", "none", "--target", target], capsys)
    assert out == "no failed jobs\n"


def test_list_all_follows_every_page_with_progress(
    target: str,
    client: Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [client.submit("t", queue="many").id for _ in range(7)]
    monkeypatch.setattr(jobs_commands, "_PAGE", 2)

    code, out, err = run(["list", "--all", "--json", "--target", target], capsys)
    document = json.loads(out)
    assert code == EXIT_OK and err == ""  # stderr is not a terminal: no progress
    assert [j["id"] for j in document["jobs"]] == ids[::-1]
    assert document["next_page_token"] is None

    code, out, err = run(["list", "--all", "--progress", "--target", target], capsys)
    assert code == EXIT_OK and len(out.splitlines()) == 8 and "more:" not in out
    assert err.splitlines()[0] == "listing: 2" and err.splitlines()[-1].startswith("listing: 7")

    with pytest.raises(SystemExit) as caught:
        make_parser().parse_args(["list", "--all", "--limit", "3"])
    assert caught.value.code == 2


# -- retry --all-failed ----------------------------------------------------------------------


def test_retry_all_failed_with_yes_then_again_skips_them(
    target: str,
    client: Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = fail_jobs(target, client, 5)
    elsewhere = fail_jobs(target, client, 1, queue="other")
    monkeypatch.setattr(jobs_commands, "_PAGE", 2)  # several pages to follow

    argv = ["retry", "--all-failed", "--queue", "dlq", "--yes", "--target", target]
    code, out, err = run(argv, capsys)
    assert code == EXIT_OK, err
    assert out == "retried 5, skipped 0 already retried, 0 errors\n"
    assert "retrying 5 failed jobs in queue dlq" in err
    new = retries_of(client, "dlq")
    assert sorted(j.retried_from or "" for j in new) == sorted(failed)
    assert {j.state for j in new} == {JobState.PENDING}
    assert retries_of(client, "other") == [] and client.get(elsewhere[0]).state is JobState.FAILED

    # Run again (after an interruption, say): every job was retried already.
    code, out, _ = run(argv, capsys)
    assert code == EXIT_OK
    assert out == "retried 0, skipped 5 already retried, 0 errors\n"
    assert len(retries_of(client, "dlq")) == 5

    code, out, _ = run([*argv, "--json"], capsys)
    document = json.loads(out)
    assert code == EXIT_OK
    assert (document["queue"], document["found"], document["confirmed"]) == ("dlq", 5, True)
    assert sorted(document["skipped"]) == sorted(failed)
    assert document["retried"] == [] and document["errors"] == []
    assert document["not_attempted"] == 0


def test_retry_all_failed_by_type(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    wanted = fail_jobs(target, client, 2, type="a")
    fail_jobs(target, client, 1, type="b")
    argv = ["retry", "--all-failed", "--queue", "dlq", "--type", "a", "-y", "--json"]
    code, out, _ = run([*argv, "--target", target], capsys)
    document = json.loads(out)
    assert code == EXIT_OK and document["found"] == 2
    assert sorted(r["id"] for r in document["retried"]) == sorted(wanted)
    assert {client.get(r["new_id"]).type for r in document["retried"]} == {"a"}
    assert len(retries_of(client, "dlq")) == 2


def test_retry_all_failed_with_nothing_failed(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    client.submit("t", queue="dlq")
    code, out, _ = run(["retry", "--all-failed", "--queue", "dlq", "--target", target], capsys)
    assert code == EXIT_OK and out == "no failed jobs in queue dlq\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["retry"], "give the id of a job to retry"),
        (["retry", str(uuid.uuid4()), "--all-failed", "--queue", "q"], "not both"),
        (["retry", "--all-failed"], "--all-failed needs --queue"),
        (["retry", str(uuid.uuid4()), "--yes"], "go with --all-failed"),
        (["retry", str(uuid.uuid4()), "--queue", "q"], "go with --all-failed"),
    ],
)
def test_retry_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before any call: no scheduler needed.
    code, out, err = run([*argv, "--target", "127.0.0.1:1"], capsys)
    assert code == EXIT_REFUSED and out == ""
    assert err.startswith("error: ") and message in err


def test_retry_all_failed_refuses_without_yes_when_stdin_is_not_a_terminal(
    target: str, client: Client
) -> None:
    failed = fail_jobs(target, client, 2)
    done = cli(target, "retry", "--all-failed", "--queue", "dlq")
    assert done.returncode == EXIT_REFUSED
    assert done.stdout == ""
    assert "found 2 failed jobs in queue dlq" in done.stderr and "--yes" in done.stderr
    assert "Traceback" not in done.stderr
    assert retries_of(client, "dlq") == []
    assert {client.get(i).state for i in failed} == {JobState.FAILED}


@pytest.mark.parametrize(("answer", "retried"), [("n\n", False), ("y\n", True), ("", False)])
def test_retry_all_failed_asks_on_the_terminal(
    target: str, client: Client, answer: str, retried: bool
) -> None:
    failed = fail_jobs(target, client, 2)
    # A real pseudo-terminal as stdin, the answer typed into it.
    master, slave = pty.openpty()
    try:
        if answer:
            os.write(master, answer.encode())
        else:
            os.write(master, b"\x04")  # Ctrl-D: end of input
        done = cli(target, "retry", "--all-failed", "--queue", "dlq", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == EXIT_OK, done.stderr
    assert "Retry 2 failed jobs in queue dlq? [y/N] " in done.stderr
    if retried:
        assert done.stdout == "retried 2, skipped 0 already retried, 0 errors\n"
        assert sorted(j.retried_from or "" for j in retries_of(client, "dlq")) == sorted(failed)
    else:
        assert done.stdout == "" and "nothing retried" in done.stderr
        assert retries_of(client, "dlq") == []


def test_retry_progress_on_a_terminal_forced_or_not_at_all(target: str, client: Client) -> None:
    fail_jobs(target, client, 3)
    fail_jobs(target, client, 3, queue="dlq2")
    fail_jobs(target, client, 3, queue="dlq3")

    # stderr a terminal: the line rewritten with \r, erased at the end.
    master, slave = pty.openpty()
    try:
        done = cli(target, "retry", "--all-failed", "--queue", "dlq", "--yes", stderr=slave)
        os.close(slave)
        screen = read_all(master)
    finally:
        os.close(master)
    assert done.returncode == EXIT_OK
    assert done.stdout == "retried 3, skipped 0 already retried, 0 errors\n"
    assert "\rretrying: " in screen and "retrying 3 failed jobs" in screen

    # Piped stderr: no progress unless asked for; then plain lines.
    done = cli(target, "retry", "--all-failed", "--queue", "dlq2", "--yes")
    assert done.returncode == EXIT_OK
    assert "retrying:" not in done.stderr and "\r" not in done.stderr
    assert done.stderr == "retrying 3 failed jobs in queue dlq2\n"

    done = cli(target, "retry", "--all-failed", "--queue", "dlq3", "--yes", "--progress")
    assert done.returncode == EXIT_OK and "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("listing failed jobs: ")
    assert lines[-1].startswith("retrying: 3/3 (100%)  skipped 0  errors 0")


# -- retry --all-failed when calls fail: a client that fails on cue ----------------------------


class FlakyClient:
    """Lists the given failed jobs and answers each Retry as told: a job id, or an error."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def iter_jobs(self, **_: Any) -> Iterator[Job]:
        for job_id in reversed(list(self.answers)):  # newest first, like the scheduler
            yield Job(id=job_id, queue="q", type="t", state=JobState.FAILED)

    def retry(self, job_id: str) -> Job:
        self.asked.append(job_id)
        answer = self.answers[job_id]
        if isinstance(answer, Exception):
            raise answer
        return Job(id=answer, queue="q", type="t", state=JobState.PENDING)


def retry_all(client: FlakyClient, *extra: str) -> int:
    argv = ["retry", "--all-failed", "--queue", "q", "--yes", "--target", "127.0.0.1:1"]
    args = make_parser().parse_args([*argv, *extra])
    return jobs_commands._retry_all_failed(args, client)  # type: ignore[arg-type]


def test_retry_errors_are_counted_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    answers: dict[str, Any] = {
        "a": "a2",
        "b": FailedPreconditionError(
            "job b was already retried as b2", code=grpc.StatusCode.FAILED_PRECONDITION
        ),
        "c": NotFoundError("job c not found", code=grpc.StatusCode.NOT_FOUND),
        "d": "d2",
    }
    assert retry_all(FlakyClient(answers)) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == "retried 2, skipped 1 already retried, 1 error\n"
    assert "error: c: NOT_FOUND: job c not found" in err

    assert retry_all(FlakyClient(answers), "--json") == EXIT_FAILED
    document = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in document["retried"]) == ["a", "d"]
    assert document["skipped"] == ["b"]
    assert document["errors"] == [{"id": "c", "status": "NOT_FOUND", "message": "job c not found"}]


def test_retry_stops_when_the_scheduler_goes_away(capsys: pytest.CaptureFixture[str]) -> None:
    answers: dict[str, Any] = {f"j{i}": f"n{i}" for i in range(20)}
    answers["j1"] = UnavailableError("connection refused", code=grpc.StatusCode.UNAVAILABLE)
    client = FlakyClient(answers)
    assert retry_all(client) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    # Nothing sent after the failure was seen, apart from calls already in flight.
    assert len(client.asked) < 20
    assert "not tried; run the same command again to go on" in err
    assert "error: UNAVAILABLE: cannot reach the scheduler at 127.0.0.1:1" in err
    assert out.startswith("retried ") and out.endswith(" 1 error\n")


def test_retry_interrupted_counts_what_was_sent_and_exits_130(
    capsys: pytest.CaptureFixture[str],
) -> None:
    answers: dict[str, Any] = {f"j{i}": f"n{i}" for i in range(40)}

    class Interrupting(FlakyClient):
        def retry(self, job_id: str) -> Job:
            if job_id == "j5":
                # Ctrl-C, while the main thread waits for the answers.
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                time.sleep(0.2)
            return super().retry(job_id)

    client = Interrupting(answers)
    assert retry_all(client) == 130
    out, err = capsys.readouterr()
    asked = len(client.asked)
    assert 6 <= asked < 40
    # Every call sent was waited for and counted, j5 included.
    assert out == f"retried {asked}, skipped 0 already retried, 0 errors\n"
    assert f"interrupted with {40 - asked} jobs not tried" in err
