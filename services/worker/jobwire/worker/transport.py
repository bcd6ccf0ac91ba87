"""The gRPC channel to the scheduler and the Lease stream, behind a small typed surface.

The stream is opened by method path rather than through the generated stub so that
the rest of the SDK deals only in protobuf messages and plain Python types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import aio  # type: ignore[import-untyped, unused-ignore]
from jobwire.v1 import leases_pb2

__all__ = ["DEFAULT_CHANNEL_OPTIONS", "LeaseStream", "Transport", "describe_error"]

_LEASES = leases_pb2.DESCRIPTOR.services_by_name["Leases"]


def _method(name: str) -> str:
    return f"/{_LEASES.full_name}/{_LEASES.methods_by_name[name].name}"


LEASE_METHOD = _method("Lease")

DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # gRPC's own reconnect backoff has a 120 s ceiling by default; the worker retries
    # on its own schedule and needs the channel ready to connect just as quickly.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
    # An idle worker writes nothing, so without pings it would never notice a
    # scheduler that vanished without closing the connection (host lost, network
    # cut) and would wait for jobs that cannot come. The scheduler accepts pings
    # this often.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def describe_error(exc: BaseException) -> str:
    """A one-line description of a stream failure for logs."""
    if isinstance(exc, aio.AioRpcError):
        code: Any = exc.code()
        name = getattr(code, "name", str(code))
        details: Any = exc.details()
        return f"{name}: {details}" if details else str(name)
    return f"{type(exc).__name__}: {exc}"


class LeaseStream:
    """One open Lease call. Reads return None once the scheduler ends the stream;
    a failed stream raises from `read`."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, request: leases_pb2.LeaseRequest) -> None:
        await self._call.write(request)

    async def read(self) -> leases_pb2.LeaseResponse | None:
        message: object = await self._call.read()
        if message is aio.EOF:
            return None
        if not isinstance(message, leases_pb2.LeaseResponse):
            raise TypeError(f"unexpected message on the Lease stream: {type(message).__name__}")
        return message

    async def done_writing(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()


class Transport:
    """Owns the channel; opens a new Lease stream per connection attempt."""

    def __init__(
        self,
        target: str,
        *,
        credentials: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        merged = dict(DEFAULT_CHANNEL_OPTIONS)
        merged.update(dict(options))
        channel_options = list(merged.items())
        if credentials is None:
            self._channel: Any = aio.insecure_channel(target, options=channel_options)
        else:
            self._channel = aio.secure_channel(target, credentials, options=channel_options)
        self._metadata = tuple(metadata)
        self._lease: Any = self._channel.stream_stream(
            LEASE_METHOD,
            request_serializer=leases_pb2.LeaseRequest.SerializeToString,
            response_deserializer=leases_pb2.LeaseResponse.FromString,
        )
        self._ack: Any = self._channel.unary_unary(
            _method("Ack"),
            request_serializer=leases_pb2.AckRequest.SerializeToString,
            response_deserializer=leases_pb2.AckResponse.FromString,
        )
        self._nack: Any = self._channel.unary_unary(
            _method("Nack"),
            request_serializer=leases_pb2.NackRequest.SerializeToString,
            response_deserializer=leases_pb2.NackResponse.FromString,
        )

    def open(self) -> LeaseStream:
        return LeaseStream(self._lease(metadata=self._metadata or None))

    async def settle(self, request: leases_pb2.LeaseRequest, *, deadline: float) -> int:
        """Sends one ack or nack outside the stream, with the unary Ack or Nack call;
        returns the status code as an int (0 for OK)."""
        try:
            if request.WhichOneof("kind") == "ack":
                await self._ack(
                    leases_pb2.AckRequest(items=[request.ack]),
                    timeout=deadline,
                    metadata=self._metadata or None,
                )
            else:
                await self._nack(
                    leases_pb2.NackRequest(items=[request.nack]),
                    timeout=deadline,
                    metadata=self._metadata or None,
                )
        except aio.AioRpcError as exc:
            code: Any = exc.code()
            value: int = code.value[0]
            return value
        return 0

    async def close(self) -> None:
        await self._channel.close()
