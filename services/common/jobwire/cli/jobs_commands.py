"""The producer and operator commands: submit, get, list, watch, cancel, retry, stats.

Each command prints for people by default and one JSON document with `--json`.
Exit codes: 0 success; 1 the job FAILED or was CANCELLED (submit --wait, watch), some
retries of `retry --all-failed` failed, or an unexpected server error; 2 the request was
refused (bad input, unknown job, state does not allow it, credentials, no confirmation);
3 the scheduler is unreachable or overloaded; 4 `--timeout` passed before the job
finished; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from jobwire.cli.options import add_progress, add_target, env_flag, positive_int, seconds
from jobwire.cli.progress import Progress, isatty
from jobwire.client import (
    Client,
    ClientError,
    FailedPreconditionError,
    Job,
    JobState,
    QueueStats,
    WaitTimeoutError,
    WatchEvent,
)
from jobwire.client.codec import is_json_type

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "exit_code_for",
    "format_age",
    "format_dead_letters",
    "format_job",
    "format_stats",
    "format_table",
    "format_time",
    "humanize",
    "parse_label",
    "parse_run_at",
    "register",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4

_REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
# Worth trying again later: nothing was wrong with the request itself.
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    the job FAILED or was CANCELLED, some retries of --all-failed failed,
       or the scheduler failed unexpectedly
  2    the request was refused: bad input, unknown job, state does not allow it,
       no confirmation
  3    the scheduler is unreachable, too slow or rate limiting
  4    --timeout passed before the job finished
  130  interrupted (Ctrl-C)
"""

Command = Callable[[argparse.Namespace], int]


# -- formatting, kept pure so it can be tested without a scheduler ----------------------


def format_time(value: datetime | None) -> str:
    """Local time in ISO 8601 without microseconds; "-" when unset."""
    if value is None:
        return "-"
    return value.astimezone().replace(microsecond=0).isoformat()


def _seconds(age: timedelta | float) -> float:
    """An age in seconds, never negative (clocks of two machines may disagree)."""
    return max(0.0, age.total_seconds() if isinstance(age, timedelta) else float(age))


def humanize(age: timedelta | float) -> str:
    """A short duration for people: "3.2s", "42s", "5m", "1h30m", "2d4h"."""
    total = _seconds(age)
    if total < 10:
        return f"{total:.1f}s"
    if total < 60:
        return f"{int(total)}s"
    if total < 3600:
        return f"{int(total // 60)}m"
    if total < 86400:
        hours, minutes = divmod(int(total // 60), 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(int(total // 3600), 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    return f"{format_time(value)}  ({humanize(now - value)} ago)"


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()
) -> str:
    """Columns padded to their widest cell; `right` names the columns to right-align."""
    table = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    aligned = set(right)
    lines = []
    for row in table:
        cells = [
            cell.rjust(widths[i]) if i in aligned else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _show_value(value: Any, content_type: str, *, limit: int = 200) -> str:
    # One line, shortened: a block for people, not the data itself (that is --json).
    if value is None and not content_type:
        return "-"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes, {content_type or 'application/octet-stream'}>"
    if isinstance(value, str) and not is_json_type(content_type):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_job(job: Job, *, now: datetime | None = None) -> str:
    """A block of aligned fields describing one job, then its attempts."""
    now = now or datetime.now(UTC)
    fields: list[tuple[str, str]] = [
        ("id", job.id),
        ("type", job.type),
        ("queue", job.queue),
        ("state", job.state.value + ("  (cancel requested)" if job.cancel_requested else "")),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("created", _ago(job.created_at, now)),
        ("updated", _ago(job.updated_at, now)),
    ]
    if job.run_at is not None and job.state is JobState.PENDING:
        due = job.run_at - now
        when = f"in {humanize(due)}" if due.total_seconds() > 0 else "ready"
        fields.append(("run at", f"{format_time(job.run_at)}  ({when})"))
    if job.started_at is not None:
        fields.append(("started", _ago(job.started_at, now)))
    if job.finished_at is not None:
        fields.append(("finished", _ago(job.finished_at, now)))
        if job.started_at is not None:
            fields.append(("ran for", humanize(job.finished_at - job.started_at)))
    if job.lease_deadline is not None:
        fields.append(("lease until", format_time(job.lease_deadline)))
    if job.tenant:
        fields.append(("tenant", job.tenant))
    if job.idempotency_key:
        fields.append(("idempotency", job.idempotency_key))
    if job.retried_from:
        fields.append(("retried from", job.retried_from))
    if job.trace_id:
        fields.append(("trace id", job.trace_id))
    if job.labels:
        fields.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))))
    fields.append(("payload", _show_value(job.payload, job.payload_content_type)))
    if job.state is JobState.SUCCEEDED:
        fields.append(("result", _show_value(job.result, job.result_content_type)))
    if job.error is not None:
        fields.append(("error", str(job.error)))
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {value}" for name, value in fields]
    if job.attempts:
        lines.append("")
        rows = [
            [
                str(a.number),
                a.outcome.value,
                a.worker_id or "-",
                format_time(a.started_at),
                humanize(a.duration) if a.duration is not None else "-",
                str(a.error) if a.error else "",
            ]
            for a in job.attempts
        ]
        lines.append(
            format_table(["#", "OUTCOME", "WORKER", "STARTED", "TOOK", "ERROR"], rows, right=[0, 4])
        )
    if job.error is not None and job.error.details:
        lines += ["", "error details:", job.error.details.rstrip()]
    return "\n".join(lines)


def _format_jobs(jobs: Sequence[Job], now: datetime) -> str:
    rows = [
        [
            j.id,
            j.queue,
            j.type,
            j.state.value,
            f"{j.attempt}/{j.max_attempts}",
            str(j.priority),
            format_time(j.created_at),
            humanize(now - j.created_at),
        ]
        for j in jobs
    ]
    headers = ["ID", "QUEUE", "TYPE", "STATE", "ATTEMPT", "PRIORITY", "CREATED", "AGE"]
    return format_table(headers, rows, right=[4, 5, 7])


def format_age(age: timedelta | float) -> str:
    """A duration to the second for ages that are watched: "3.2s", "42s", "4m12s",
    "2h03m", "3d07h"."""
    total = _seconds(age)
    if total < 10:
        return f"{total:.1f}s"
    whole = int(total)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


_STATS_HEADERS = [
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


def format_stats(queues: Sequence[QueueStats]) -> str:
    """One row per queue: jobs by state (FAILED is the dead-letter queue), the age of the
    oldest ready job, connected workers; then a total row when there are several queues."""

    def counts(q: QueueStats) -> list[str]:
        return [
            f"{n:,}" for n in (q.ready, q.scheduled, q.running, q.failed, q.succeeded, q.cancelled)
        ]

    rows = [
        [
            q.queue,
            *counts(q),
            format_age(q.oldest_ready_age) if q.ready else "-",
            f"{q.connected_workers:,}",
        ]
        for q in queues
    ]
    if len(queues) > 1:
        ready = [q.oldest_ready_age for q in queues if q.ready]
        total = QueueStats(
            queue="(total)",
            ready=sum(q.ready for q in queues),
            scheduled=sum(q.scheduled for q in queues),
            running=sum(q.running for q in queues),
            failed=sum(q.failed for q in queues),
            succeeded=sum(q.succeeded for q in queues),
            cancelled=sum(q.cancelled for q in queues),
        )
        # Workers are not summed: one worker may serve several queues.
        rows.append([total.queue, *counts(total), format_age(max(ready)) if ready else "-", "-"])
    return format_table(_STATS_HEADERS, rows, right=range(1, len(_STATS_HEADERS)))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cut(line: str, width: int | None) -> str:
    if width is None or len(line) <= width:
        return line
    return line[: max(0, width - 3)] + "..."


# Below this many columns left for the error, it goes on a line of its own.
_MIN_ERROR_WIDTH = 30


def format_dead_letters(jobs: Sequence[Job], *, width: int | None = None) -> str:
    """FAILED jobs as an operator looks at them: where, how many attempts, when, and why.

    One line per job with the error last, on one line. With a `width` (the terminal's),
    lines are cut to it; when that would leave the error too little room, when and why
    each job failed go on an indented line under it instead.
    """
    rows = [[j.id, j.queue, j.type, f"{j.attempt}/{j.max_attempts}"] for j in jobs]
    times = [format_time(j.finished_at) for j in jobs]
    kinds = [_cut(_one_line(j.error.kind), 40) if j.error and j.error.kind else "-" for j in jobs]
    messages = [_one_line(j.error.message) if j.error else "-" for j in jobs]
    headers = ["ID", "QUEUE", "TYPE", "ATTEMPTS"]
    wide = format_table(
        [*headers, "FAILED AT", "KIND", "ERROR"],
        [[*r, *rest] for r, *rest in zip(rows, times, kinds, messages, strict=True)],
        right=[3],
    ).splitlines()
    if width is None or width - wide[0].rindex("ERROR") >= _MIN_ERROR_WIDTH:
        return "\n".join(_cut(line, width) for line in wide)
    narrow = format_table(headers, rows, right=[3]).splitlines()
    lines = [_cut(narrow[0], width)]
    for line, when, kind, message in zip(narrow[1:], times, kinds, messages, strict=True):
        why = f"{kind}: {message}" if kind != "-" else message
        lines += [_cut(line, width), _cut(f"    {when}  {why}", width)]
    return "\n".join(lines)


def _event_time(event: WatchEvent) -> datetime:
    # The event carries the job as it is now; date the change itself from the history.
    job = event.job
    attempt = next((a for a in job.attempts if a.number == event.attempt), None)
    if event.state.terminal and job.finished_at is not None:
        return job.finished_at
    if event.state is JobState.RUNNING and attempt and attempt.started_at:
        return attempt.started_at
    if event.state is JobState.PENDING:
        if event.attempt == 0:
            return job.created_at
        if attempt and attempt.finished_at:
            return attempt.finished_at
    return job.updated_at


def _format_event(event: WatchEvent) -> str:
    line = f"{format_time(_event_time(event))}  {event.state.value:<9}  attempt {event.attempt}"
    job = event.job
    if event.state is JobState.PENDING and event.attempt:
        failed = next((a for a in job.attempts if a.number == event.attempt), None)
        if failed is not None and failed.error is not None:
            line += f"  (attempt failed: {failed.error})"
    if event.state.terminal and job.error is not None and event.state is not JobState.SUCCEEDED:
        line += f"  {job.error}"
    return line


# -- output helpers ---------------------------------------------------------------------


def _out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _dump(document: Any, *, compact: bool = False) -> None:
    if compact:
        _out(json.dumps(document, ensure_ascii=False, separators=(",", ":")))
    else:
        _out(json.dumps(document, ensure_ascii=False, indent=2))


def _print_result(job: Job) -> None:
    """The result alone, as a script wants it: a JSON string bare, other JSON as JSON,
    text as text, bytes as they are."""
    value = job.result
    if isinstance(value, bytes):
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            sys.stdout.flush()
            buffer.write(value)
            buffer.flush()
        else:
            _out(value.decode("utf-8", "replace"))
        return
    if isinstance(value, str):
        _out(value)
    elif isinstance(value, dict | list):
        _dump(value)
    else:
        _out(json.dumps(value, ensure_ascii=False))


def exit_code_for(error: ClientError) -> int:
    """The process exit code for a failed call."""
    if error.code in _REFUSED:
        return EXIT_REFUSED
    if error.code in _TRANSIENT:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def _report(error: ClientError, target: str) -> int:
    status = error.status or "ERROR"
    if error.code is grpc.StatusCode.UNAVAILABLE:
        _err(
            f"error: {status}: cannot reach the scheduler at {target} "
            f"(is it running? set --target or JOBWIRE_TARGET): {error.message}"
        )
    elif error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        _err(f"error: {status}: the scheduler at {target} did not answer in time")
    else:
        _err(f"error: {status}: {error.message}")
        retry_after = getattr(error, "retry_after", None)
        if retry_after:
            _err(f"retry after {retry_after:g} s")
    return exit_code_for(error)


def _run(body: Callable[[argparse.Namespace, Client], int]) -> Command:
    """Wraps a command: opens the client, turns errors into messages and exit codes."""

    def command(args: argparse.Namespace) -> int:
        try:
            with Client(args.target, token=args.token or None) as client:
                return body(args, client)
        except WaitTimeoutError as error:
            _err(f"error: {error.message}")
            return EXIT_TIMEOUT
        except ClientError as error:
            return _report(error, args.target)
        except ValueError as error:
            # Checks the client makes before sending, such as a negative duration.
            _err(f"error: {error}")
            return EXIT_REFUSED
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            # The reader (head, less) went away: stop quietly, and keep Python from
            # complaining again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILED

    command.__name__ = body.__name__
    command.__doc__ = body.__doc__
    return command


# -- argument types ---------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_run_at(text: str) -> datetime | timedelta:
    """`+SECONDS` (or +5m, +2h, +1d) as a delay from now, or an ISO 8601 time; a time
    without an offset is local time."""
    text = text.strip()
    if text.startswith("+"):
        number, unit = text[1:], "s"
        if number and number[-1].lower() in _UNITS:
            number, unit = number[:-1], number[-1].lower()
        try:
            amount = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a delay: {text!r}") from None
        if amount < 0:
            raise argparse.ArgumentTypeError(f"delay must not be negative: {text!r}")
        return timedelta(seconds=amount * _UNITS[unit])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or +SECONDS delay: {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.astimezone()


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label must be KEY=VALUE: {text!r}")
    return key, value


def _parse_state(text: str) -> JobState:
    try:
        return JobState.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# -- commands ---------------------------------------------------------------------------


def _read_payload(args: argparse.Namespace) -> Any:
    raw: str | None = args.payload
    if raw == "-":
        raw = sys.stdin.read()
    content_type: str | None = args.content_type
    if raw is None:
        return None
    if content_type and not is_json_type(content_type):
        return raw
    try:
        return json.loads(raw)
    except ValueError as error:
        raise ValueError(
            f"payload is not valid JSON ({error}); quote it for the shell, "
            'e.g. \'{"text": "hi"}\', or pass --content-type text/plain'
        ) from None


def _submit(args: argparse.Namespace, client: Client) -> int:
    """Submit a job and print its id; with --wait, print its result."""
    submitted = client.submit(
        args.type,
        _read_payload(args),
        queue=args.queue,
        priority=args.priority,
        run_at=args.run_at,
        max_attempts=args.max_attempts,
        lease_timeout=args.lease_timeout,
        execution_timeout=args.execution_timeout,
        idempotency_key=args.idempotency_key,
        labels=dict(args.label or ()),
        content_type=args.content_type,
    )
    job = submitted.job
    if not args.wait:
        if args.json:
            _dump({"created": submitted.created, "job": job.to_dict()})
            return EXIT_OK
        # The id alone on stdout, so that ID=$(jobwire submit ...) works; the note for
        # people goes to stderr.
        _out(job.id)
        _err(_submit_note(submitted.created, job))
        return EXIT_OK
    if not args.json:
        _err(f"{job.id} {_submit_note(submitted.created, job)}, waiting...")
    job = client.wait(job.id, timeout=args.timeout)
    if args.json:
        _dump({"created": submitted.created, "job": job.to_dict()})
    elif job.state is JobState.SUCCEEDED:
        _print_result(job)
    return _finish(job)


def _submit_note(created: bool, job: Job) -> str:
    if created:
        return f"created in queue {job.queue}"
    return f"already existed with this idempotency key ({job.state.value})"


def _finish(job: Job) -> int:
    if job.state is JobState.SUCCEEDED:
        return EXIT_OK
    reason = f": {job.error}" if job.error else ""
    _err(f"error: job {job.id} {job.state.value}{reason}")
    return EXIT_FAILED


def _get(args: argparse.Namespace, client: Client) -> int:
    """Show one job with its attempt history."""
    job = client.get(args.id)
    if args.json:
        _dump(job.to_dict())
    else:
        _out(format_job(job))
    return EXIT_OK


# Jobs per List call when a command walks many pages: the most the scheduler gives.
_PAGE = 500


def _terminal_width() -> int | None:
    """Columns of the terminal stdout writes to ($COLUMNS first); None when stdout is not
    a terminal, so that piped output is never cut."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if not isatty(sys.stdout):
        return None
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return None


def _list(args: argparse.Namespace, client: Client) -> int:
    """List jobs newest first; `--state failed` is the dead-letter queue."""
    limit: int | None = None if args.all else args.limit
    jobs: list[Job] = []
    token: str | None = args.page_token
    # Progress only for what takes several calls: a one-page listing is over at once.
    several = limit is None or limit > _PAGE
    with Progress("listing", enabled=args.progress if several else False) as progress:
        while limit is None or len(jobs) < limit:
            # Pages sized to what is still wanted, so the token left over resumes exactly
            # where this listing stops.
            size = _PAGE if limit is None else min(limit - len(jobs), _PAGE)
            page = client.list(
                queue=args.queue,
                type=args.type,
                states=args.state,
                tenant=args.tenant,
                page_size=size,
                page_token=token,
            )
            jobs.extend(page.jobs)
            token = page.next_page_token
            progress.update(len(jobs))
            if not token or not page.jobs:
                break
    if args.json:
        _dump({"jobs": [j.to_dict() for j in jobs], "next_page_token": token})
        return EXIT_OK
    dead_letters = bool(args.state) and all(s is JobState.FAILED for s in args.state)
    if not jobs:
        _out("no failed jobs" if dead_letters else "no jobs")
    elif dead_letters:
        _out(format_dead_letters(jobs, width=_terminal_width()))
    else:
        _out(_format_jobs(jobs, datetime.now(UTC)))
    if token:
        _out(f"more: --page-token {token}")
    return EXIT_OK


def _watch(args: argparse.Namespace, client: Client) -> int:
    """Print each state change of a job until it finishes."""
    last: WatchEvent | None = None
    for event in client.watch(args.id, timeout=args.timeout):
        last = event
        if args.json:
            _dump(event.to_dict(), compact=True)
        else:
            _out(_format_event(event))
    if last is None:
        return EXIT_OK
    if not args.json and last.state is JobState.SUCCEEDED:
        _out(f"result: {_show_value(last.job.result, last.job.result_content_type)}")
    return EXIT_OK if last.state is JobState.SUCCEEDED else EXIT_FAILED


def _cancel(args: argparse.Namespace, client: Client) -> int:
    """Cancel a job."""
    job = client.cancel(args.id, args.reason)
    if args.json:
        _dump(job.to_dict())
    elif job.state is JobState.CANCELLED:
        _out(f"{job.id}  CANCELLED")
    else:
        _out(f"{job.id}  {job.state.value}, cancel requested: it stops when its worker does")
    return EXIT_OK


def _retry(args: argparse.Namespace, client: Client) -> int:
    """Run a FAILED or CANCELLED job again as a new job, or every FAILED job of a queue."""
    if args.all_failed:
        if args.id is not None:
            raise ValueError("give either a job id or --all-failed, not both")
        if not args.queue:
            raise ValueError("--all-failed needs --queue QUEUE")
        return _retry_all_failed(args, client)
    if args.id is None:
        raise ValueError("give the id of a job to retry, or --all-failed --queue QUEUE")
    if args.queue or args.type or args.yes:
        raise ValueError("--queue, --type and --yes go with --all-failed")
    job = client.retry(args.id)
    if args.json:
        _dump(job.to_dict())
    else:
        _out(job.id)
        _err(f"retry of {args.id} created in queue {job.queue}")
    return EXIT_OK


# Retry calls in flight at once during `retry --all-failed`: one per thread.
_RETRIES_IN_FLIGHT = 4


@dataclass
class _Tally:
    """What became of the jobs of a `retry --all-failed`."""

    retried: list[tuple[str, str]] = field(default_factory=list)  # (failed id, new id)
    skipped: list[str] = field(default_factory=list)  # retried before, by anyone
    errors: list[tuple[str, ClientError]] = field(default_factory=list)
    unavailable: ClientError | None = None  # the scheduler went away: stopped there
    interrupted: bool = False

    @property
    def settled(self) -> int:
        return len(self.retried) + len(self.skipped) + len(self.errors)

    def summary(self) -> str:
        errors = len(self.errors)
        return (
            f"retried {len(self.retried):,}, skipped {len(self.skipped):,} already retried, "
            f"{errors:,} error{'' if errors == 1 else 's'}"
        )

    def note(self) -> str:
        return f"skipped {len(self.skipped):,}  errors {len(self.errors):,}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "retried": [{"id": old, "new_id": new} for old, new in self.retried],
            "skipped": self.skipped,
            "errors": [
                {"id": job_id, "status": error.status, "message": error.message}
                for job_id, error in self.errors
            ],
            "interrupted": self.interrupted,
        }


def _confirm(question: str) -> bool:
    """Asks on the terminal; only "y" or "yes" is a yes."""
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:  # end of input: finish the prompt's line
        sys.stderr.write("\n")
    return answer.strip().lower() in {"y", "yes"}


def _retry_all_failed(args: argparse.Namespace, client: Client) -> int:
    """Retries every FAILED job of a queue, with the existing calls: List, then Retry per
    job. Running it again is safe: a job already retried is refused a second retry, and
    counted as skipped."""
    what = f"queue {args.queue}" + (f" of type {args.type}" if args.type else "")
    ids: list[str] = []
    with Progress("listing failed jobs", enabled=args.progress) as progress:
        for job in client.iter_jobs(
            queue=args.queue, type=args.type, states=[JobState.FAILED], page_size=_PAGE
        ):
            ids.append(job.id)
            progress.update(len(ids))
    ids.reverse()  # oldest first, so that the new jobs come roughly in the same order
    tally = _Tally()

    def report(confirmed: bool) -> None:
        if args.json:
            _dump(
                {
                    "queue": args.queue,
                    "type": args.type,
                    "found": len(ids),
                    "confirmed": confirmed,
                    **tally.to_dict(),
                    "not_attempted": len(ids) - tally.settled,
                }
            )

    if not ids:
        report(True)
        if not args.json:
            _out(f"no failed jobs in {what}")
        return EXIT_OK
    if args.yes:
        _err(f"retrying {len(ids):,} failed jobs in {what}")
    elif not isatty(sys.stdin):
        _err(
            f"error: found {len(ids):,} failed jobs in {what}, but stdin is not a terminal "
            "to confirm on: pass --yes to retry them"
        )
        return EXIT_REFUSED
    elif not _confirm(f"Retry {len(ids):,} failed jobs in {what}? [y/N] "):
        _err("nothing retried")
        report(False)
        return EXIT_OK

    with Progress("retrying", total=len(ids), enabled=args.progress) as progress:
        _retry_each(client, ids, tally, progress)
    report(True)
    if not args.json:
        _out(tally.summary())
    if tally.interrupted or tally.unavailable is not None:
        left = len(ids) - tally.settled
        why = "interrupted" if tally.interrupted else "stopped"
        _err(f"{why} with {left:,} jobs not tried; run the same command again to go on")
    if tally.interrupted:
        return 130
    if tally.unavailable is not None:
        return _report(tally.unavailable, args.target)
    return EXIT_FAILED if tally.errors else EXIT_OK


def _retry_each(client: Client, ids: Sequence[str], tally: _Tally, progress: Progress) -> None:
    """Retries `ids` into `tally` from a few threads. Stops taking more when the scheduler
    becomes unavailable or on Ctrl-C; the calls already sent are waited for and counted
    either way, since each thread records its own outcomes."""
    lock = threading.Lock()
    stop = threading.Event()
    todo = iter(ids)

    def record(job_id: str, outcome: Job | ClientError) -> None:
        if isinstance(outcome, Job):
            tally.retried.append((job_id, outcome.id))
        elif isinstance(outcome, FailedPreconditionError) and "already retried" in outcome.message:
            tally.skipped.append(job_id)
        else:
            tally.errors.append((job_id, outcome))
            if outcome.code in _TRANSIENT:
                tally.unavailable = tally.unavailable or outcome
                stop.set()
            else:
                progress.write(f"error: {job_id}: {outcome}")
        progress.update(tally.settled, note=tally.note())

    def work() -> None:
        while not stop.is_set():
            with lock:
                job_id = next(todo, None)
            if job_id is None:
                return
            try:
                outcome: Job | ClientError = client.retry(job_id)
            except ClientError as error:
                outcome = error
            with lock:
                record(job_id, outcome)

    # Daemon threads: a second Ctrl-C while waiting for them below ends the process.
    threads = [
        threading.Thread(target=work, name=f"jobwire-retry-{n}", daemon=True)
        for n in range(_RETRIES_IN_FLIGHT)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        tally.interrupted = True
        stop.set()
        # The calls already sent end within the client's timeout.
        for thread in threads:
            if thread.ident is not None:
                thread.join()


def _interval(raw: str) -> float:
    value = seconds(raw)
    if value < 0.1:
        raise argparse.ArgumentTypeError(f"must be at least 0.1 seconds, not {raw}")
    return value


def _stats(args: argparse.Namespace, client: Client) -> int:
    """Show job counts per queue: depth, oldest ready age, dead letters, workers."""
    if args.count is not None and args.watch is None:
        raise ValueError("--count goes with --watch")
    if args.watch is not None:
        return _watch_stats(args, client)
    queues = client.stats(args.queue)
    if args.json:
        _dump({"queues": [q.to_dict() for q in queues]})
    elif not queues:
        _out("no queues")
    else:
        _out(format_stats(queues))
    return EXIT_OK


_CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _watch_stats(args: argparse.Namespace, client: Client) -> int:
    """Stats again every `--watch` seconds, like top: the screen redrawn on a terminal,
    one block (or, with --json, one line) after another elsewhere. A scheduler that is
    briefly away is shown and waited for; Ctrl-C ends it."""
    redraw = isatty(sys.stdout) and not args.json
    shown = 0
    try:
        while True:
            now = datetime.now(UTC)
            try:
                queues: list[QueueStats] | None = client.stats(args.queue)
                problem = ""
            except ClientError as error:
                if error.code not in _TRANSIENT:
                    raise
                queues, problem = None, f"error: {error} (trying again)"
            if args.json:
                if queues is None:
                    _err(problem)
                else:
                    document = {"at": now.isoformat(), "queues": [q.to_dict() for q in queues]}
                    _dump(document, compact=True)
            else:
                heading = f"{format_time(now)}  {args.target}  every {args.watch:g}s"
                body = format_stats(queues) if queues else "no queues"
                if redraw:
                    sys.stdout.write(_CLEAR_SCREEN)
                    _out(f"{heading}\n\n{problem or body}")
                elif problem:
                    _err(problem)
                else:
                    gap = "\n" if shown else ""  # a blank line between refreshes
                    _out(f"{gap}{heading}\n{body}")
            shown += 1
            if args.count is not None and shown >= args.count:
                return EXIT_OK
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK


# -- registration -----------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    add_target(parser)
    env_flag(parser, "--token", env="JOBWIRE_TOKEN", default=None, help="bearer token")
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of text"
    )


def _add(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    body: Callable[[argparse.Namespace, Client], int],
    description: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=(body.__doc__ or "").strip().splitlines()[0],
        description=description,
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.set_defaults(func=_run(body))
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the job commands to a `jobwire` subcommand parser."""
    p = _add(
        subparsers,
        "submit",
        _submit,
        "Submit a job. Prints its id (the note on stderr says whether it was created or\n"
        "matched an earlier job by idempotency key). With --wait, prints the result instead:\n"
        "a JSON string bare, other JSON as JSON, text as text.",
    )
    p.add_argument("type", help="job type: the handler a worker runs it with")
    p.add_argument(
        "payload", nargs="?", help="payload as JSON (default null); '-' reads it from stdin"
    )
    p.add_argument("--queue", default="default", help="queue (default: %(default)s)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument(
        "--run-at",
        type=parse_run_at,
        metavar="ISO|+SECONDS",
        help="not before this time, or this long from now (+30, +5m, +2h)",
    )
    p.add_argument("--max-attempts", type=positive_int, metavar="N")
    p.add_argument("--lease-timeout", type=seconds, metavar="SECONDS")
    p.add_argument("--execution-timeout", type=seconds, metavar="SECONDS")
    p.add_argument("--idempotency-key", metavar="KEY")
    p.add_argument(
        "--label",
        type=parse_label,
        action="append",
        metavar="KEY=VALUE",
        help="tag the job; repeat for more",
    )
    p.add_argument(
        "--content-type",
        metavar="TYPE",
        help="send the payload as this media type instead of JSON, e.g. text/plain",
    )
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.add_argument(
        "--timeout", type=seconds, metavar="SECONDS", help="with --wait: give up after this"
    )

    p = _add(subparsers, "get", _get, "Show a job, its payload, result or error, and attempts.")
    p.add_argument("id", help="job id")

    p = _add(
        subparsers,
        "list",
        _list,
        "List jobs, newest first. With --state failed alone, the dead-letter view: attempts,\n"
        "when each job failed, and its error (cut to the terminal's width).",
    )
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--type", help="only this job type")
    p.add_argument(
        "--state",
        type=_parse_state,
        nargs="+",
        action="extend",
        metavar="STATE",
        help="only these states: pending running succeeded failed cancelled",
    )
    p.add_argument("--tenant", help="only this tenant")
    many = p.add_mutually_exclusive_group()
    many.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="at most N jobs (50)"
    )
    many.add_argument("--all", action="store_true", help="every matching job, page after page")
    p.add_argument("--page-token", metavar="TOKEN", help="continue a previous listing")
    add_progress(p)

    p = _add(
        subparsers,
        "watch",
        _watch,
        "Print each state change of a job as it happens, until it finishes.\n"
        "With --json, one JSON object per line.",
    )
    p.add_argument("id", help="job id")
    p.add_argument("--timeout", type=seconds, metavar="SECONDS", help="give up after this")

    p = _add(
        subparsers,
        "cancel",
        _cancel,
        "Cancel a job: a pending one at once, a running one when its worker stops it.",
    )
    p.add_argument("id", help="job id")
    p.add_argument("--reason", default="", help="recorded in the job's error")

    p = _add(
        subparsers,
        "retry",
        _retry,
        "Run a FAILED or CANCELLED job again as a new job (prints the new id).\n"
        "\n"
        "With --all-failed --queue QUEUE, retry every FAILED job of the queue: they are\n"
        "listed, counted and, after a confirmation on the terminal (or --yes), retried\n"
        "oldest first, a few at a time. A job is retried once only: jobs retried before\n"
        "are skipped, so the command can be interrupted and run again. Prints a summary;\n"
        "exits 1 if any retry failed.",
    )
    p.add_argument("id", nargs="?", help="id of the failed or cancelled job")
    p.add_argument(
        "--all-failed", action="store_true", help="every FAILED job of --queue instead of one id"
    )
    p.add_argument("--queue", help="with --all-failed: the queue (required)")
    p.add_argument("--type", help="with --all-failed: only jobs of this type")
    p.add_argument(
        "--yes", "-y", action="store_true", help="with --all-failed: do not ask for confirmation"
    )
    add_progress(p)

    p = _add(
        subparsers,
        "stats",
        _stats,
        "Show per queue: jobs READY to run now, SCHEDULED for later, RUNNING, FAILED (the\n"
        "dead-letter queue: jobwire list --state failed), SUCCEEDED and CANCELLED (until\n"
        "retention prunes them), how long the OLDEST ready job has waited, and the WORKERS\n"
        "connected to the scheduler replica that answered.",
    )
    p.add_argument("--queue", help="only this queue")
    p.add_argument(
        "--watch",
        type=_interval,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    p.add_argument(
        "--count", type=positive_int, metavar="N", help="with --watch: stop after N refreshes"
    )
