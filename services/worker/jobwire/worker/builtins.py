"""Built-in job types, registered by `register_builtins` (and by `jobwire worker`
unless --no-builtins is given).

=============  ===========================================  ============================
type           payload                                      result
=============  ===========================================  ============================
uppercase      {"text": str}                                the text upper-cased (JSON)
reverse        {"text": str}                                the text reversed (JSON)
csv            {"rows": [{...}, ...]} or                    CSV text, "text/csv"
               {"rows": [[...], ...], "header": [...]}
text           {"text": str}, 1-30 characters               the text, after one second
                                                            per character
fail           {"message": str, "retryable": bool}          always fails as asked
=============  ===========================================  ============================

A payload of the wrong shape is a non-retryable failure of kind "invalid_payload":
running it again cannot help.
"""

from __future__ import annotations

import asyncio
import csv as csv_module
import io
import json
from collections.abc import Callable
from typing import Any, Protocol

from .context import JobContext
from .errors import JobFailed
from .payloads import Result

__all__ = [
    "BUILTIN_TYPES",
    "TEXT_MAX_LENGTH",
    "csv",
    "fail",
    "noop",
    "register_builtins",
    "reverse",
    "text",
    "uppercase",
]

TEXT_MAX_LENGTH = 30
# Seconds per character of the `text` job; a module attribute so tests can shorten it.
TEXT_DELAY = 1.0
CSV_CONTENT_TYPE = "text/csv"


class _Registers(Protocol):
    def register(self, type_name: str, func: Callable[..., Any]) -> object: ...


def _invalid(message: str) -> JobFailed:
    return JobFailed(message, retryable=False, kind="invalid_payload")


def _object(payload: Any, job_type: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise _invalid(f"{job_type} expects a JSON object payload, got {_describe(payload)}")
    return payload


def _text_field(payload: Any, job_type: str) -> str:
    body = _object(payload, job_type)
    if "text" not in body:
        raise _invalid(f'{job_type} expects {{"text": "..."}}: the "text" field is missing')
    value = body["text"]
    if not isinstance(value, str):
        raise _invalid(f'{job_type}: "text" must be a string, got {_describe(value)}')
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, bytes):
        return "raw bytes (submit it as application/json)"
    names = {
        str: "a string",
        int: "a number",
        float: "a number",
        list: "an array",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def uppercase(payload: Any) -> str:
    """{"text": "hi"} -> "HI"."""
    return _text_field(payload, "uppercase").upper()


def reverse(payload: Any) -> str:
    """{"text": "abc"} -> "cba"."""
    return _text_field(payload, "reverse")[::-1]


def _cell(value: Any) -> str:
    # Strings go in as they are; other JSON values keep their JSON spelling
    # (true, 1.5, {"a":1}) rather than Python's (True, ...); null is an empty cell.
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _header(body: dict[str, Any]) -> list[str] | None:
    if "header" not in body or body["header"] is None:
        return None
    header = body["header"]
    if not isinstance(header, list) or not all(isinstance(name, str) for name in header):
        raise _invalid('csv: "header" must be an array of strings')
    return header


def csv(payload: Any) -> Result:
    """JSON rows to CSV.

    Objects: the header is the union of their keys in first-seen order, or the given
    "header" (then every key must be in it). Arrays: written as they are, after the
    given "header" if any (then every row must have its length).
    """
    body = _object(payload, "csv")
    if "rows" not in body:
        raise _invalid('csv expects {"rows": [...]}: the "rows" field is missing')
    rows = body["rows"]
    if not isinstance(rows, list):
        raise _invalid(f'csv: "rows" must be an array, got {_describe(rows)}')
    header = _header(body)
    out = io.StringIO()
    writer = csv_module.writer(out)
    if all(isinstance(row, dict) for row in rows):
        if header is None:
            header = list(dict.fromkeys(key for row in rows for key in row))
        else:
            for number, row in enumerate(rows, 1):
                extra = [key for key in row if key not in header]
                if extra:
                    raise _invalid(f"csv: row {number} has keys not in the header: {extra}")
        if header:
            writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(row.get(key)) for key in header])
    elif all(isinstance(row, list) for row in rows):
        if header is not None:
            for number, row in enumerate(rows, 1):
                if len(row) != len(header):
                    raise _invalid(
                        f"csv: row {number} has {len(row)} values but the header has {len(header)}"
                    )
            writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(value) for value in row])
    else:
        raise _invalid('csv: "rows" must be all objects or all arrays')
    return Result(data=out.getvalue().encode("utf-8"), content_type=CSV_CONTENT_TYPE)


async def text(payload: Any, ctx: JobContext) -> str:
    """Types the text out slowly: one second per character, at most 30 characters.
    A demo to watch, and a handy long job for trying cancellation and draining."""
    value = _text_field(payload, "text")
    if not value:
        raise _invalid('text: "text" must not be empty')
    if len(value) > TEXT_MAX_LENGTH:
        raise _invalid(
            f'text: "text" has {len(value)} characters; at most {TEXT_MAX_LENGTH} are allowed'
        )
    for typed in range(1, len(value) + 1):
        await asyncio.sleep(TEXT_DELAY)  # cancelling the task ends the job here
        ctx.logger.debug("typed %d of %d characters", typed, len(value))
    return value


def fail(payload: Any) -> None:
    """Fails on purpose: {"message": "...", "retryable": true}."""
    body = {} if payload is None else _object(payload, "fail")
    message = body.get("message", "simulated failure")
    if not isinstance(message, str):
        raise _invalid(f'fail: "message" must be a string, got {_describe(message)}')
    retryable = body.get("retryable", True)
    if not isinstance(retryable, bool):
        raise _invalid(f'fail: "retryable" must be true or false, got {_describe(retryable)}')
    raise JobFailed(message or "simulated failure", retryable=retryable, kind="simulated")


async def noop(payload: Any) -> None:
    """Does nothing: for benchmarks and smoke tests of a deployment."""
    return None


BUILTIN_TYPES: dict[str, Callable[..., Any]] = {
    "uppercase": uppercase,
    "reverse": reverse,
    "csv": csv,
    "text": text,
    "fail": fail,
    "noop": noop,
}


def register_builtins(target: _Registers) -> None:
    """Registers every built-in job type on a Worker or a HandlerRegistry."""
    for type_name, func in BUILTIN_TYPES.items():
        target.register(type_name, func)
