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
email          {"to": str | [str], "subject": str,          {"message_id": str,
               "text": str, optional "html": str,            "accepted": [str],
               "cc", "bcc", "reply_to": str | [str],         "refused": [{"address",
               "from": str}                                  "code", "reply"}]}
noop           anything                                     null, at once
=============  ===========================================  ============================

A payload of the wrong shape is a non-retryable failure of kind "invalid_payload":
running it again cannot help.

`email` sends through the SMTP server configured by JOBWIRE_SMTP_* variables; see
`jobwire.worker.mailer` for them and for how SMTP failures end the job.
"""

from __future__ import annotations

import asyncio
import csv as csv_module
import functools
import io
import json
from collections.abc import Callable
from email.headerregistry import Address
from typing import Any, Protocol

from .context import JobContext
from .errors import ConfigurationError, JobFailed
from .mailer import AddressError, SmtpSettings, compose, header_text_problem, parse_address, send
from .payloads import Result

__all__ = [
    "BUILTIN_TYPES",
    "EMAIL_MAX_RECIPIENTS",
    "TEXT_MAX_LENGTH",
    "csv",
    "email",
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
# RFC 5321 has servers accept at least 100 recipients per message, so more could be
# refused by some of them; bigger mailings belong in several jobs.
EMAIL_MAX_RECIPIENTS = 100


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


_EMAIL_FIELDS = ("to", "cc", "bcc", "reply_to", "from", "subject", "text", "html")


def _addresses(body: dict[str, Any], name: str, *, required: bool = False) -> list[Address]:
    # Here and in _string, a field given as null counts as absent, as JSON producers
    # often send optional fields.
    value = body.get(name)
    if value is None:
        if required:
            raise _invalid(f'email: the "{name}" field is missing')
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _invalid(
            f'email: "{name}" must be an address or an array of addresses, got {_describe(value)}'
        )
    if required and not items:
        raise _invalid(f'email: "{name}" must hold at least one address')
    parsed = []
    for item in items:
        if not isinstance(item, str):
            raise _invalid(f'email: "{name}" must hold strings, got {_describe(item)}')
        try:
            parsed.append(parse_address(item))
        except AddressError as exc:
            raise _invalid(f'email: "{name}": {exc}') from None
    return parsed


def _string(body: dict[str, Any], name: str, *, header: bool) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f'email: "{name}" must be a string, got {_describe(value)}')
    problem = header_text_problem(value) if header else None
    if problem is not None:
        raise _invalid(f'email: "{name}" {problem}')
    return value


def _required_string(body: dict[str, Any], name: str, *, header: bool) -> str:
    value = _string(body, name, header=header)
    if value is None:
        raise _invalid(f'email: the "{name}" field is missing')
    return value


def email(payload: Any, ctx: JobContext, *, smtp: SmtpSettings | None = None) -> dict[str, Any]:
    """Sends an e-mail and returns its Message-ID::

        {"to": "ann@example.com" or [...], "subject": "...", "text": "...",
         "html": "...", "cc": [...], "bcc": [...], "reply_to": [...], "from": "..."}

    Addresses are `user@example.com` or `Name <user@example.com>`. "from" defaults to
    JOBWIRE_SMTP_FROM. Blind copies receive the message without appearing in it. The
    result is {"message_id": "<...>", "accepted": [addresses], "refused": [{"address",
    "code", "reply"}]}: a message accepted for some recipients and refused for others
    succeeds with the refused ones listed, since trying again would mail the others
    twice. How SMTP failures end the job: see `jobwire.worker.mailer`.

    `smtp` is where to send; without it the JOBWIRE_SMTP_* variables are read for each
    job. A plain function: the worker runs it in its thread pool, since smtplib blocks.
    """
    body = _object(payload, "email")
    unknown = sorted(set(body) - set(_EMAIL_FIELDS))
    if unknown:
        raise _invalid(
            f"email: unknown fields {unknown}; the fields are {', '.join(_EMAIL_FIELDS)}"
        )
    to = _addresses(body, "to", required=True)
    cc = _addresses(body, "cc")
    bcc = _addresses(body, "bcc")
    reply_to = _addresses(body, "reply_to")
    subject = _required_string(body, "subject", header=True)
    text_body = _required_string(body, "text", header=False)
    html = _string(body, "html", header=False)
    sender_value = _string(body, "from", header=True)
    if smtp is None:
        try:
            smtp = SmtpSettings.from_env()
        except ConfigurationError as exc:
            raise JobFailed(str(exc), retryable=False, kind="smtp_config") from None
    if sender_value is None:
        sender_value = smtp.sender
    if sender_value is None:
        raise _invalid('email: "from" is missing and JOBWIRE_SMTP_FROM is not set')
    try:
        sender = parse_address(sender_value)
    except AddressError as exc:
        raise _invalid(f'email: "from": {exc}') from None
    # Envelope recipients: every address once, in the order given.
    recipients = list(dict.fromkeys(address.addr_spec for address in (*to, *cc, *bcc)))
    if len(recipients) > EMAIL_MAX_RECIPIENTS:
        raise _invalid(
            f"email: {len(recipients)} recipients; at most {EMAIL_MAX_RECIPIENTS} are allowed "
            "(to, cc and bcc together)"
        )
    message = compose(
        sender=sender, to=to, cc=cc, reply_to=reply_to, subject=subject, text=text_body, html=html
    )
    delivery = send(
        smtp,
        message,
        envelope_from=sender.addr_spec,
        recipients=recipients,
        cancelled=ctx.cancelled,
    )
    if delivery.refused:
        ctx.logger.warning(
            "sent %s, but %d of %d recipients were refused: %s",
            delivery.message_id,
            len(delivery.refused),
            len(recipients),
            ", ".join(f"{r.address} ({r.code} {r.reply})" for r in delivery.refused),
        )
    else:
        ctx.logger.info("sent %s to %d recipients", delivery.message_id, len(recipients))
    return {
        "message_id": delivery.message_id,
        "accepted": list(delivery.accepted),
        "refused": [
            {"address": r.address, "code": r.code, "reply": r.reply} for r in delivery.refused
        ],
    }


BUILTIN_TYPES: dict[str, Callable[..., Any]] = {
    "uppercase": uppercase,
    "reverse": reverse,
    "csv": csv,
    "text": text,
    "fail": fail,
    "email": email,
    "noop": noop,
}


def register_builtins(target: _Registers, *, smtp: SmtpSettings | None = None) -> None:
    """Registers every built-in job type on a Worker or a HandlerRegistry.

    `email` sends through `smtp`, or else through the server the JOBWIRE_SMTP_*
    variables describe. Those are read here, once, and not for each job: a worker
    whose mail settings are unusable fails to start (ConfigurationError; `jobwire
    worker` exits 2 with the reason) instead of failing every e-mail job it leases.
    """
    settings = smtp if smtp is not None else SmtpSettings.from_env()
    for type_name, func in BUILTIN_TYPES.items():
        if func is email:
            func = functools.partial(email, smtp=settings)
        target.register(type_name, func)
