"""Conversions at the protobuf edge: payloads, timestamps and durations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from jobwire.v1 import job_pb2

__all__ = [
    "JSON",
    "OCTET_STREAM",
    "decode_payload",
    "encode_payload",
    "from_duration",
    "from_timestamp",
    "is_json_type",
    "is_text_type",
    "to_duration",
    "to_timestamp",
]

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

Seconds = float | int | timedelta


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def is_json_type(content_type: str) -> bool:
    """True for application/json and structured types such as application/problem+json."""
    media = _media_type(content_type)
    return media == JSON or media.endswith("+json")


def is_text_type(content_type: str) -> bool:
    return _media_type(content_type).startswith("text/")


def encode_payload(value: Any, content_type: str | None = None) -> job_pb2.Payload:
    """Bytes on the wire for a payload.

    Without a content type, bytes are sent as application/octet-stream and anything else
    is encoded as JSON. With one, bytes are sent untouched (the caller encoded them), a
    str is encoded in the type's charset, and a JSON type encodes any other value.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return job_pb2.Payload(data=bytes(value), content_type=content_type or OCTET_STREAM)
    if content_type is None or is_json_type(content_type):
        # Compact and not key-sorted: handlers may rely on the order of object keys
        # (the csv job type takes its columns from it).
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return job_pb2.Payload(data=data, content_type=content_type or JSON)
    if isinstance(value, str):
        return job_pb2.Payload(data=value.encode(_charset(content_type)), content_type=content_type)
    raise TypeError(
        f"payload of type {type(value).__name__} cannot be sent as {content_type!r}; "
        "pass bytes or str"
    )


def decode_payload(payload: job_pb2.Payload | None) -> Any:
    """The value of a payload: JSON decoded, text as str, anything else as bytes.

    None when there is no payload. A JSON payload that does not parse, or text that is
    not in its charset, comes back as bytes rather than failing the whole call.
    """
    if payload is None:
        return None
    content_type = payload.content_type or OCTET_STREAM
    data = payload.data
    if is_json_type(content_type):
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data
    if is_text_type(content_type):
        try:
            return data.decode(_charset(content_type))
        except (LookupError, UnicodeDecodeError):
            return data
    return data


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp; naive datetimes are taken as local time, as `datetime.timestamp` does."""
    if value.tzinfo is None:
        value = value.astimezone()
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def to_duration(value: Seconds) -> duration_pb2.Duration:
    if not isinstance(value, timedelta):
        value = timedelta(seconds=value)
    if value < timedelta(0):
        raise ValueError(f"duration must not be negative, got {value}")
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def from_duration(d: duration_pb2.Duration) -> timedelta:
    return d.ToTimedelta()
