"""Log lines for machines (one JSON object per line) and for people (`--log-format text`).

Job identity travels in a record's `extra` fields (see `JOB_FIELDS`), set by the worker's
job logger and by the scheduler where a line concerns one job. The JSON formatter puts
them at the top level under stable names; the text formatter prefixes the message with
them, so a person can grep a job id either way.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

__all__ = ["JOB_FIELDS", "LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure"]

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")

# Record attribute -> JSON key. `job_type` because `type` reads badly as an attribute.
JOB_FIELDS: dict[str, str] = {
    "job_id": "job_id",
    "queue": "queue",
    "job_type": "type",
    "attempt": "attempt",
    "worker_id": "worker_id",
    "trace_id": "trace_id",
}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "event", job fields..., "error"}`, one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for attribute, key in JOB_FIELDS.items():
            value = record.__dict__.get(attribute)
            if value not in (None, ""):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: [type job-id attempt N] message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        job_id = record.__dict__.get("job_id")
        if not job_id:
            return line
        head, _, message = line.partition(": ")
        job = f"{record.__dict__.get('job_type') or 'job'} {job_id}"
        attempt = record.__dict__.get("attempt")
        if attempt:
            job += f" attempt {attempt}"
        return f"{head}: [{job}] {message}"


def _utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def configure(
    level: str | int = "INFO", fmt: LogFormat = "json", stream: TextIO | None = None
) -> None:
    """Sends every log line to `stream` (stderr) in the given format, replacing handlers
    set before (a process configures logging once, at start)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    root.setLevel(level)
