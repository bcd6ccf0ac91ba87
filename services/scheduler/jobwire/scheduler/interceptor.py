"""Per-RPC metrics for unary and streaming calls alike: started, handled by status code,
and handling time (for a stream, its whole life)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from prometheus_client import Counter, Histogram

__all__ = ["MetricsInterceptor"]

RPC_STARTED = Counter(
    "jobwire_grpc_server_started",
    "RPCs started on the server.",
    ["service", "method"],
)
RPC_HANDLED = Counter(
    "jobwire_grpc_server_handled",
    "RPCs completed on the server, by status code (OK, INVALID_ARGUMENT, ...).",
    ["service", "method", "code"],
)
RPC_SECONDS = Histogram(
    "jobwire_grpc_server_handling_seconds",
    "Time from the start of an RPC to its status; a Lease stream counts its whole life.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 300, 3600),
)

# Generic only in the type stubs.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _code_name(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    """The status the call ends with: the one the handler set or aborted with; otherwise
    OK after a return, CANCELLED after a cancellation, UNKNOWN after an exception."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return _NAMES.get(code, "UNKNOWN")
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


class _Recorder:
    """The metrics of one method, with its label values bound once."""

    __slots__ = ("_method", "_seconds", "_service", "_started")

    def __init__(self, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self._service, self._method = service, method
        self._started = RPC_STARTED.labels(service, method)
        self._seconds = RPC_SECONDS.labels(service, method)

    def start(self) -> float:
        self._started.inc()
        return time.perf_counter()

    def done(self, began: float, code: str) -> None:
        self._seconds.observe(time.perf_counter() - began)
        RPC_HANDLED.labels(self._service, self._method, code).inc()


def _unary_response(
    inner: Callable[..., Awaitable[Any]], recorder: _Recorder
) -> Callable[..., Awaitable[Any]]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        began = recorder.start()
        code = "OK"
        try:
            response = await inner(request, context)
        except BaseException as exc:
            # The name only: keeping the exception would tie this frame to its traceback.
            code = _code_name(context, exc)
            raise
        else:
            code = _code_name(context, None)
            return response
        finally:
            recorder.done(began, code)

    return behavior


def _stream_response(
    inner: Callable[..., Any], recorder: _Recorder
) -> Callable[..., AsyncIterator[Any]]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        began = recorder.start()
        code = "OK"
        try:
            responses = inner(request, context)
            if inspect.isawaitable(responses):  # a handler that writes with context.write
                await responses
            else:
                # Closed at once when the call ends early (a cancelled stream), so that the
                # handler's own clean-up runs now, not whenever the collector gets to it.
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        yield response
        except BaseException as exc:
            code = _code_name(context, exc)
            raise
        else:
            code = _code_name(context, None)
        finally:
            recorder.done(began, code)

    return behavior


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each known method's handler once and reuses the wrapper for every call."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: UNIMPLEMENTED, and no label for its name
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, _Recorder(method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def _wrap(handler: Any, recorder: _Recorder) -> _Handler:
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    if not _is_async(behavior):
        # A plain function runs on the server's thread pool; measuring it here would run it
        # on the event loop instead. Every service of the scheduler is async.
        return handler  # type: ignore[no-any-return]
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_response(handler.unary_unary, recorder),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream_response(handler.unary_stream, recorder),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary_response(handler.stream_unary, recorder),
            handler.request_deserializer,
            handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        _stream_response(handler.stream_stream, recorder),
        handler.request_deserializer,
        handler.response_serializer,
    )
