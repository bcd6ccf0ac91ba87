"""The job commands: parsing and formatting without I/O, then against a real scheduler,
in-process and as a subprocess."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
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
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    exit_code_for,
    format_job,
    format_stats,
    format_table,
    format_time,
    humanize,
    parse_label,
    parse_run_at,
)
from jobwire.client import (
    Attempt,
    AttemptOutcome,
    Client,
    ClientError,
    Job,
    JobError,
    JobState,
    QueueStats,
)
from jobwire.v1 import job_pb2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobwire")
    sub = parser.add_subparsers(dest="command", required=True)
    jobs_commands.register(sub)
    return parser


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = make_parser().parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


# -- parsing ---------------------------------------------------------------------------------


def test_every_command_is_registered_with_target_and_json() -> None:
    parser = make_parser()
    for argv in (
        ["submit", "t"],
        ["get", "x"],
        ["list"],
        ["watch", "x"],
        ["cancel", "x"],
        ["retry", "x"],
        ["stats"],
    ):
        args = parser.parse_args([*argv, "--target", "h:1", "--json"])
        assert args.target == "h:1" and args.json is True
        assert callable(args.func)


def test_target_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_TARGET", "sched:7000")
    assert make_parser().parse_args(["stats"]).target == "sched:7000"
    monkeypatch.delenv("JOBWIRE_TARGET")
    assert make_parser().parse_args(["stats"]).target == "127.0.0.1:50051"


def test_submit_arguments() -> None:
    args = make_parser().parse_args(
        [
            "submit",
            "uppercase",
            '{"text": "hi"}',
            "--queue",
            "q",
            "--priority",
            "-3",
            "--run-at",
            "+90",
            "--max-attempts",
            "5",
            "--idempotency-key",
            "k",
            "--label",
            "a=1",
            "--label",
            "b=x=y",
            "--wait",
            "--timeout",
            "2.5",
        ]
    )
    assert args.type == "uppercase" and args.payload == '{"text": "hi"}'
    assert (args.queue, args.priority, args.max_attempts) == ("q", -3, 5)
    assert args.run_at == timedelta(seconds=90)
    assert args.idempotency_key == "k"
    assert args.label == [("a", "1"), ("b", "x=y")]
    assert args.wait and args.timeout == 2.5


def test_list_states_accept_many_forms() -> None:
    args = make_parser().parse_args(
        ["list", "--state", "pending", "RUNNING", "--state", "failed", "--limit", "7"]
    )
    assert args.state == [JobState.PENDING, JobState.RUNNING, JobState.FAILED]
    assert args.limit == 7


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--state", "done"],
        ["list", "--limit", "0"],
        ["submit", "t", "--label", "novalue"],
        ["submit", "t", "--run-at", "tomorrow"],
        ["submit", "t", "--max-attempts", "x"],
        ["get"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        make_parser().parse_args(argv)
    assert caught.value.code == 2
    assert "error" in capsys.readouterr().err


def test_parse_run_at() -> None:
    assert parse_run_at("+30") == timedelta(seconds=30)
    assert parse_run_at("+1.5") == timedelta(seconds=1.5)
    assert parse_run_at("+5m") == timedelta(minutes=5)
    assert parse_run_at("+2h") == timedelta(hours=2)
    assert parse_run_at("+1d") == timedelta(days=1)
    assert parse_run_at("2030-01-02T03:04:05Z") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    local = parse_run_at("2030-01-02T03:04:05")
    assert isinstance(local, datetime) and local.tzinfo is not None
    assert local == datetime(2030, 1, 2, 3, 4, 5).astimezone()
    for bad in ("+", "+x", "+-5", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_run_at(bad)


def test_parse_label() -> None:
    assert parse_label("k=v") == ("k", "v")
    assert parse_label("k=") == ("k", "")
    for bad in ("k", "=v"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_label(bad)


# -- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (-2, "0.0s"),
        (3.24, "3.2s"),
        (42.9, "42s"),
        (300, "5m"),
        (3599, "59m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "1d"),
        (2 * 86400 + 4 * 3600 + 59, "2d4h"),
    ],
)
def test_humanize(seconds: float, text: str) -> None:
    assert humanize(seconds) == text
    assert humanize(timedelta(seconds=seconds)) == text


def test_format_time_is_local_iso_without_microseconds() -> None:
    value = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    text = format_time(value)
    assert "." not in text
    assert datetime.fromisoformat(text) == value.replace(microsecond=0)
    assert datetime.fromisoformat(text).utcoffset() == value.astimezone().utcoffset()
    assert format_time(None) == "-"


def test_format_table_aligns_columns() -> None:
    text = format_table(["A", "NUM"], [["long value", "1"], ["x", "1234"]], right=[1])
    assert text.splitlines() == [
        "A            NUM",
        "long value     1",
        "x           1234",
    ]


def sample_job(**changes: Any) -> Job:
    start = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    fields: dict[str, Any] = dict(
        id="6f1b4c1e-0000-4000-8000-000000000001",
        queue="default",
        type="uppercase",
        state=JobState.FAILED,
        attempt=2,
        max_attempts=2,
        payload={"text": "hi"},
        payload_content_type="application/json",
        error=JobError(message="boom", kind="ValueError", details="Traceback (most recent)"),
        labels={"team": "a"},
        trace_id="t1",
        created_at=start,
        updated_at=start + timedelta(seconds=5),
        started_at=start + timedelta(seconds=1),
        finished_at=start + timedelta(seconds=5),
        attempts=(
            Attempt(
                number=1,
                worker_id="w1",
                started_at=start + timedelta(seconds=1),
                finished_at=start + timedelta(seconds=2.5),
                outcome=AttemptOutcome.FAILED,
                error=JobError(message="boom", kind="ValueError"),
            ),
            Attempt(
                number=2,
                worker_id="w2",
                started_at=start + timedelta(seconds=4),
                finished_at=start + timedelta(seconds=5),
                outcome=AttemptOutcome.FAILED,
                error=JobError(message="boom", kind="ValueError"),
            ),
        ),
    )
    fields.update(changes)
    return Job(**fields)


def test_format_job_block() -> None:
    job = sample_job()
    text = format_job(job, now=job.created_at + timedelta(minutes=5))
    lines = text.splitlines()
    assert lines[0].split() == ["id", job.id]
    assert any(line.split() == ["state", "FAILED"] for line in lines)
    assert any(line.split() == ["attempt", "2", "of", "2"] for line in lines)
    assert f"created   {format_time(job.created_at)}  (5m ago)" in text
    assert 'payload   {"text": "hi"}' in text
    assert "error     ValueError: boom" in text
    assert "labels    team=a" in text
    header = next(line for line in lines if line.lstrip().startswith("#"))
    assert header.split() == ["#", "OUTCOME", "WORKER", "STARTED", "TOOK", "ERROR"]
    assert any(line.split()[:3] == ["1", "FAILED", "w1"] and "1.5s" in line for line in lines)
    assert lines[-1] == "Traceback (most recent)"
    # The value column starts at the same place on every field line.
    field_lines = lines[: lines.index("")]
    assert all(line[8:10] == "  " and line[10] != " " for line in field_lines)


def test_format_job_shows_result_and_binary_payload() -> None:
    job = sample_job(
        state=JobState.SUCCEEDED,
        error=None,
        result="HI",
        result_content_type="application/json",
        payload=b"\x00" * 10,
        payload_content_type="application/octet-stream",
        attempts=(),
    )
    text = format_job(job)
    assert 'result    "HI"' in text
    assert "<10 bytes, application/octet-stream>" in text
    assert "error" not in text


def test_format_stats() -> None:
    text = format_stats(
        [
            QueueStats(queue="default", ready=3, running=1, oldest_ready_age=timedelta(seconds=75)),
            QueueStats(queue="emails", succeeded=1200, failed=4, connected_workers=2),
        ]
    )
    header, first, second, total = text.splitlines()
    assert header.split() == [
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
    assert first.split() == ["default", "3", "0", "1", "0", "0", "0", "1m15s", "0"]
    assert second.split() == ["emails", "0", "0", "0", "4", "1,200", "0", "-", "2"]
    # Workers are not added up: one worker may serve several queues.
    assert total.split() == ["(total)", "3", "0", "1", "4", "1,200", "0", "1m15s", "-"]
    assert len(header) == len(first) == len(second) == len(total)
    assert len(format_stats([QueueStats(queue="q")]).splitlines()) == 2


@pytest.mark.parametrize(
    ("result", "content_type", "printed"),
    [
        ("HI", "application/json", "HI\n"),
        ({"a": [1, 2]}, "application/json", json.dumps({"a": [1, 2]}, indent=2) + "\n"),
        (42, "application/json", "42\n"),
        (None, "application/json", "null\n"),
        ("plain text", "text/plain", "plain text\n"),
    ],
)
def test_result_printing(
    result: Any, content_type: str, printed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = sample_job(state=JobState.SUCCEEDED, result=result, result_content_type=content_type)
    jobs_commands._print_result(job)
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, EXIT_REFUSED),
        (grpc.StatusCode.NOT_FOUND, EXIT_REFUSED),
        (grpc.StatusCode.ALREADY_EXISTS, EXIT_REFUSED),
        (grpc.StatusCode.FAILED_PRECONDITION, EXIT_REFUSED),
        (grpc.StatusCode.PERMISSION_DENIED, EXIT_REFUSED),
        (grpc.StatusCode.UNAVAILABLE, EXIT_UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, EXIT_UNAVAILABLE),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, EXIT_UNAVAILABLE),
        (grpc.StatusCode.INTERNAL, EXIT_FAILED),
    ],
)
def test_exit_codes(code: grpc.StatusCode, exit_code: int) -> None:
    assert exit_code_for(ClientError("x", code=code)) == exit_code


def test_unreachable_scheduler_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["get", str(uuid.uuid4()), "--target", "127.0.0.1:1"], capsys)
    assert code == EXIT_UNAVAILABLE
    assert out == ""
    assert err.startswith("error: UNAVAILABLE: cannot reach the scheduler at 127.0.0.1:1")


def test_invalid_json_payload_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any call, so no scheduler is needed.
    code, _, err = run(["submit", "t", "{not json", "--target", "127.0.0.1:1"], capsys)
    assert code == EXIT_REFUSED
    assert "not valid JSON" in err


# -- against the real scheduler --------------------------------------------------------------


@pytest.fixture
def target(scheduler: Any) -> str:
    return str(scheduler.target)


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    with Client(target) as c:
        yield c


def test_submit_prints_the_id(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["submit", "uppercase", '{"text": "hi"}', "--label", "k=v", "--target", target], capsys
    )
    assert code == EXIT_OK
    job_id = out.strip()
    assert uuid.UUID(job_id) and "created" in err
    job = client.get(job_id)
    assert job.payload == {"text": "hi"} and job.labels == {"k": "v"}

    argv = ["submit", "t", "[1]", "--idempotency-key", "k1", "--target", target, "--json"]
    code, out, _ = run(argv, capsys)
    first = json.loads(out)
    assert code == EXIT_OK and first["created"] is True and first["job"]["payload"] == [1]
    code, out, _ = run(argv, capsys)
    again = json.loads(out)
    assert again["created"] is False and again["job"]["id"] == first["job"]["id"]

    code, out, err = run(
        ["submit", "t", "[2]", "--idempotency-key", "k1", "--target", target], capsys
    )
    assert code == EXIT_REFUSED and out == ""
    assert err.startswith("error: ALREADY_EXISTS: ")


def test_submit_run_at_and_priority(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    before = datetime.now(UTC)
    _, out, _ = run(
        ["submit", "t", "--run-at", "+3600", "--priority", "9", "--target", target], capsys
    )
    job = client.get(out.strip())
    assert job.priority == 9 and job.run_at is not None
    assert timedelta(minutes=59) < job.run_at - before < timedelta(minutes=61)
    assert client.stats()[0].scheduled == 1


def test_get_not_found_and_malformed(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["get", str(uuid.uuid4()), "--target", target], capsys)
    assert code == EXIT_REFUSED and out == "" and err.startswith("error: NOT_FOUND: ")
    code, _, err = run(["get", "nope", "--target", target], capsys)
    assert code == EXIT_REFUSED and err.startswith("error: INVALID_ARGUMENT: ")


def test_get_shows_the_job(target: str, client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = client.submit("uppercase", {"text": "hi"}).id
    code, out, _ = run(["get", job_id, "--target", target], capsys)
    assert code == EXIT_OK
    assert out.splitlines()[0].split() == ["id", job_id]
    assert "PENDING" in out and '{"text": "hi"}' in out
    code, out, _ = run(["get", job_id, "--target", target, "--json"], capsys)
    document = json.loads(out)
    assert document["id"] == job_id and document["state"] == "PENDING"


def test_list_with_filters_limit_and_token(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [client.submit("x", queue="la").id for _ in range(5)]
    client.submit("y", queue="lb")
    client.cancel(ids[0])

    code, out, _ = run(["list", "--queue", "la", "--limit", "3", "--target", target], capsys)
    lines = out.splitlines()
    assert code == EXIT_OK
    assert lines[0].split() == [
        "ID",
        "QUEUE",
        "TYPE",
        "STATE",
        "ATTEMPT",
        "PRIORITY",
        "CREATED",
        "AGE",
    ]
    assert [line.split()[0] for line in lines[1:4]] == ids[::-1][:3]
    assert lines[4].startswith("more: --page-token ")
    token = lines[4].split()[-1]

    code, out, _ = run(
        ["list", "--queue", "la", "--page-token", token, "--target", target, "--json"], capsys
    )
    document = json.loads(out)
    assert [j["id"] for j in document["jobs"]] == ids[::-1][3:]
    assert document["next_page_token"] is None

    code, out, _ = run(["list", "--state", "cancelled", "--target", target, "--json"], capsys)
    assert [j["id"] for j in json.loads(out)["jobs"]] == [ids[0]]
    code, out, _ = run(["list", "--type", "y", "--target", target, "--json"], capsys)
    assert [j["queue"] for j in json.loads(out)["jobs"]] == ["lb"]
    code, out, _ = run(["list", "--queue", "empty", "--target", target], capsys)
    assert out == "no jobs\n"


def test_cancel_retry_and_stats(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = client.submit("t", queue="cq").id
    code, out, _ = run(["cancel", job_id, "--reason", "stop", "--target", target], capsys)
    assert code == EXIT_OK and out.split() == [job_id, "CANCELLED"]

    code, out, err = run(["retry", job_id, "--target", target], capsys)
    new_id = out.strip()
    assert code == EXIT_OK and new_id != job_id and job_id in err
    assert client.get(new_id).retried_from == job_id

    code, _, err = run(["retry", new_id, "--target", target], capsys)
    assert code == EXIT_REFUSED and err.startswith("error: FAILED_PRECONDITION: ")

    code, out, _ = run(["stats", "--target", target], capsys)
    _, row = out.splitlines()
    assert row.split()[:7] == ["cq", "1", "0", "0", "0", "0", "1"]
    code, out, _ = run(["stats", "--queue", "cq", "--target", target, "--json"], capsys)
    (queue,) = json.loads(out)["queues"]
    assert (queue["queue"], queue["ready"], queue["cancelled"]) == ("cq", 1, 1)


def test_watch_prints_changes_until_terminal(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = client.submit("t").id

    # Either way round the output is the same: the watch replays the history first.
    timer = threading.Timer(0.3, lambda: client.cancel(job_id, reason="enough"))
    timer.start()
    try:
        code, out, _ = run(["watch", job_id, "--target", target, "--json"], capsys)
    finally:
        timer.join()
    events = [json.loads(line) for line in out.splitlines()]
    assert code == EXIT_FAILED  # a cancelled job is not a success
    assert [e["state"] for e in events] == ["PENDING", "CANCELLED"]
    assert [e["sequence"] for e in events] == [1, 2]

    code, out, _ = run(["watch", job_id, "--target", target], capsys)
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["PENDING", "CANCELLED"]
    assert datetime.fromisoformat(lines[0].split()[0]).tzinfo is not None


def test_watch_timeout_exits_4(
    target: str, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = client.submit("t").id
    code, out, err = run(["watch", job_id, "--timeout", "0.3", "--target", target], capsys)
    assert code == EXIT_TIMEOUT and "PENDING" in out and err.startswith("error: ")


def _work(target: str, ack: bytes | None) -> threading.Thread:
    """A stub worker that takes one job and acks it with `ack`, or fails it for good."""
    from tests.support import StreamClient

    def work() -> None:
        worker = StreamClient(target, types=("uppercase",))
        try:
            leased = worker.next_job(timeout=30)
            if ack is not None:
                worker.ack(leased, ack)
                return
            worker.nack(
                leased,
                error=job_pb2.JobError(message="no good", kind="ValueError"),
                retryable=False,
            )
        finally:
            worker.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _cli(target: str, *argv: str) -> subprocess.CompletedProcess[str]:
    # The same parser `jobwire` builds, in a separate process with real stdout/stderr.
    driver = (
        "import argparse, sys\n"
        "from jobwire.cli import jobs_commands\n"
        "p = argparse.ArgumentParser(prog='jobwire')\n"
        "jobs_commands.register(p.add_subparsers(dest='command', required=True))\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "sys.exit(a.func(a))\n"
    )
    env = {**os.environ, "JOBWIRE_TARGET": target}
    return subprocess.run(
        [sys.executable, "-c", driver, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_submit_wait_prints_a_string_result_bare(target: str) -> None:
    worker = _work(target, b'"HI"')
    done = _cli(target, "submit", "uppercase", '{"text": "hi"}', "--wait", "--timeout", "30")
    worker.join(10)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == "HI\n"


def test_submit_wait_prints_other_json_as_json(target: str) -> None:
    worker = _work(target, b'{"upper": "HI", "n": 1}')
    done = _cli(target, "submit", "uppercase", "{}", "--wait", "--json")
    worker.join(10)
    assert done.returncode == EXIT_OK, done.stderr
    document = json.loads(done.stdout)
    assert document["created"] is True
    assert document["job"]["state"] == "SUCCEEDED"
    assert document["job"]["result"] == {"upper": "HI", "n": 1}


def test_submit_wait_on_a_failed_job_exits_1(target: str) -> None:
    worker = _work(target, None)
    done = _cli(target, "submit", "uppercase", "--max-attempts", "1", "--wait")
    worker.join(10)
    assert done.returncode == EXIT_FAILED
    assert done.stdout == ""
    assert "FAILED" in done.stderr and "ValueError: no good" in done.stderr


def test_subprocess_unreachable_exits_3() -> None:
    done = _cli("127.0.0.1:1", "stats")
    assert done.returncode == EXIT_UNAVAILABLE
    assert "cannot reach the scheduler at 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("jobwire.cli.main") is None, reason="jobwire.cli.main not present"
)
def test_jobwire_main_runs_the_job_commands(target: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobwire.cli.main", "stats", "--target", target, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"queues": []}
