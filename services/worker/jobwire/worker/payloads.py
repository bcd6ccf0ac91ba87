"""How job payloads reach handlers and how handler return values become results."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any

from jobwire.v1 import job_pb2

__all__ = [
    "JSON",
    "OCTET_STREAM",
    "PayloadError",
    "Result",
    "decode_payload",
    "encode_result",
]

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

# One encoder for every result: json.dumps with any option set builds a new one per call.
_RESULT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    """A handler's output given as bytes with an explicit media type, for results
    that are neither JSON nor opaque bytes (CSV, plain text, images...)."""

    data: bytes
    content_type: str = OCTET_STREAM

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes | bytearray | memoryview):
            raise TypeError(f"Result.data must be bytes, not {type(self.data).__name__}")
        if not self.content_type:
            raise ValueError("Result.content_type must not be empty")


class PayloadError(ValueError):
    """A payload that cannot be decoded or a value that cannot be encoded.

    Retrying does not change the bytes, so the executor reports it as a
    non-retryable failure."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _media_type(content_type: str) -> str:
    # Parameters such as "; charset=utf-8" do not change how the bytes decode.
    return content_type.split(";", 1)[0].strip().lower()


def decode_payload(payload: job_pb2.Payload) -> Any:
    """Decoded JSON for JSON payloads (and untyped ones that parse as JSON), else bytes.

    An empty JSON payload is None, so a job submitted without input still runs.
    """
    media_type = _media_type(payload.content_type)
    data = payload.data
    is_json = media_type == JSON or media_type.endswith("+json")
    if not is_json and media_type:
        return bytes(data)
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        if not media_type:
            # Untyped payloads default to JSON in the SDKs, but the contract calls
            # them opaque bytes, so one that is not JSON is passed on as it came.
            return bytes(data)
        raise PayloadError(f"payload is not valid JSON: {exc}", kind="invalid_payload") from exc


def encode_result(value: Any) -> job_pb2.Payload:
    """The result payload for a handler's return value: `Result` as given, bytes as
    application/octet-stream, anything else as JSON."""
    if isinstance(value, Result):
        return job_pb2.Payload(data=bytes(value.data), content_type=value.content_type)
    if isinstance(value, bytes | bytearray | memoryview):
        return job_pb2.Payload(data=bytes(value), content_type=OCTET_STREAM)
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never awaited: close it so Python does not warn later
        raise PayloadError(
            "handler returned an awaitable; declare it with `async def` so it is awaited",
            kind="invalid_result",
        )
    try:
        text = _RESULT_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"handler result is not JSON-serializable: {exc}; return bytes or a Result "
            "for other formats",
            kind="invalid_result",
        ) from exc
    return job_pb2.Payload(data=text.encode("utf-8"), content_type=JSON)
