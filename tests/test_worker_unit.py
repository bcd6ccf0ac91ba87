"""The worker SDK without a scheduler: registration, payloads, built-ins, backoff,
attempt execution, the command line, and what `import jobwire.worker` pulls in."""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jobwire.worker
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.v1 import job_pb2, leases_pb2
from jobwire.worker import (
    Backoff,
    ConfigurationError,
    HandlerDefinitionError,
    HandlerRegistry,
    JobContext,
    JobFailed,
    Result,
    Worker,
    WorkerError,
    builtins,
    outcomes,
)
from jobwire.worker.execution import Execution, StopReason
from jobwire.worker.payloads import PayloadError, decode_payload, encode_result
from jobwire.worker.threads import DaemonThreadPool

# -- registration -------------------------------------------------------------------------


async def async_one(payload: Any) -> Any:
    return payload


def sync_two(payload: Any, ctx: JobContext) -> Any:
    return payload


class AsyncCallable:
    async def __call__(self, payload: Any, ctx: JobContext) -> Any:
        return payload


def test_handlers_are_described_at_registration() -> None:
    registry = HandlerRegistry()
    a = registry.register("a", async_one)
    b = registry.register("b.v2:x-y_z", sync_two)
    c = registry.register("c", AsyncCallable())
    d = registry.register("d", functools.partial(sync_two, ctx=JobContext.standalone()))
    e = registry.register("e", lambda payload, ctx=None: payload)
    assert (a.is_async, a.takes_context) == (True, False)
    assert (b.is_async, b.takes_context) == (False, True)
    assert (c.is_async, c.takes_context) == (True, True)
    assert (d.is_async, d.takes_context) == (False, False)  # ctx is bound by the partial
    assert e.takes_context
    assert registry.types == ("a", "b.v2:x-y_z", "c", "d", "e")


def test_decorator_returns_the_function_unchanged() -> None:
    worker = Worker("127.0.0.1:1")

    @worker.handler("echo")
    async def echo(payload: Any) -> Any:
        return payload

    assert asyncio.iscoroutinefunction(echo)
    assert worker.handler_types == ("echo",)


def _no_params() -> None: ...


def _three(a: Any, b: Any, c: Any) -> None: ...


def _star(*args: Any) -> None: ...


def _kw_required(payload: Any, *, must: int) -> None: ...


def _gen(payload: Any) -> Any:
    yield payload


@pytest.mark.parametrize(
    ("type_name", "func", "message"),
    [
        ("ok", 42, "must be callable"),
        ("ok", _no_params, "takes 0 positional"),
        ("ok", _three, "takes 3 positional"),
        ("ok", _star, "*args"),
        ("ok", _kw_required, "keyword-only"),
        ("ok", _gen, "generator"),
        ("", async_one, "invalid job type"),
        ("has space", async_one, "invalid job type"),
        ("x" * 129, async_one, "invalid job type"),
        ("ünïcode", async_one, "invalid job type"),
    ],
)
def test_bad_handlers_are_refused_clearly(type_name: str, func: Any, message: str) -> None:
    with pytest.raises(HandlerDefinitionError, match=message.replace("*", r"\*")):
        HandlerRegistry().register(type_name, func)


def test_bad_type_name_fails_before_decorating() -> None:
    worker = Worker("127.0.0.1:1")
    with pytest.raises(HandlerDefinitionError, match="invalid job type"):
        worker.handler("no/slashes")


def test_a_type_is_registered_once() -> None:
    worker = Worker("127.0.0.1:1")
    worker.register("x", async_one)
    with pytest.raises(HandlerDefinitionError, match="already has a handler"):
        worker.register("x", sync_two)
    other = HandlerRegistry()
    other.register("x", sync_two)
    other.register("y", sync_two)
    with pytest.raises(HandlerDefinitionError, match="registered twice: x"):
        worker.include(other)
    assert worker.handler_types == ("x",)  # nothing of `other` was added


def test_module_level_handler_uses_the_default_registry() -> None:
    @jobwire.worker.handler("unit-test.default-registry")
    def handled(payload: Any) -> Any:
        return payload

    assert "unit-test.default-registry" in jobwire.worker.default_registry
    worker = Worker("127.0.0.1:1")
    worker.include(jobwire.worker.default_registry)
    assert "unit-test.default-registry" in worker.handler_types


def test_errors_share_one_root() -> None:
    for cls in (JobFailed, HandlerDefinitionError, ConfigurationError):
        assert issubclass(cls, WorkerError)
        assert cls.__doc__


@pytest.mark.parametrize(
    "kwargs",
    [
        {"queues": []},
        {"queues": "default"},
        {"queues": ["bad queue"]},
        {"concurrency": 0},
        {"concurrency": 10001},
        {"prefetch": -1},
        {"concurrency": 9000, "prefetch": 1001},
        {"drain_grace": -1},
        {"worker_id": "has space"},
    ],
)
def test_bad_worker_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Worker("127.0.0.1:1", **kwargs)


def test_worker_defaults() -> None:
    worker = Worker("127.0.0.1:1", queues=["a", "b", "a"])
    assert worker.queues == ("a", "b")
    assert worker.concurrency == 8
    assert worker.settings.prefetch == 0
    assert worker.drain_grace == 30.0
    host_pid, _, suffix = worker.worker_id.rpartition("-")
    assert host_pid.endswith(f"-{os.getpid()}")
    assert len(suffix) == 4 and int(suffix, 16) >= 0


def test_worker_without_handlers_does_not_start() -> None:
    with pytest.raises(ConfigurationError, match="no handlers"):
        asyncio.run(Worker("127.0.0.1:1").run())


def test_shutdown_before_run_returns_at_once() -> None:
    worker = Worker("127.0.0.1:1", settle_timeout=0.1)
    worker.register("x", async_one)
    worker.shutdown()
    worker.shutdown()  # idempotent
    started = time.monotonic()
    asyncio.run(worker.run())
    assert time.monotonic() - started < 5
    with pytest.raises(WorkerError, match="already run"):
        asyncio.run(worker.run())


# -- payloads -----------------------------------------------------------------------------


def payload(data: bytes, content_type: str) -> job_pb2.Payload:
    return job_pb2.Payload(data=data, content_type=content_type)


@pytest.mark.parametrize(
    ("data", "content_type", "expected"),
    [
        (b'{"a": [1, 2]}', "application/json", {"a": [1, 2]}),
        (b'"x"', "application/json; charset=utf-8", "x"),
        (b"[1]", "application/vnd.thing+json", [1]),
        (b"", "application/json", None),
        (b"", "", None),
        (b'{"a": 1}', "", {"a": 1}),
        (b"\x00\xff", "", b"\x00\xff"),
        (b'{"a": 1}', "application/octet-stream", b'{"a": 1}'),
        (b"hello", "text/plain", b"hello"),
    ],
)
def test_decode_payload(data: bytes, content_type: str, expected: Any) -> None:
    assert decode_payload(payload(data, content_type)) == expected


def test_invalid_json_payload_is_an_error() -> None:
    with pytest.raises(PayloadError, match="not valid JSON") as caught:
        decode_payload(payload(b"{nope", "application/json"))
    assert caught.value.kind == "invalid_payload"


def test_encode_result() -> None:
    encoded = encode_result({"text": "é", "n": [1, 2.5, None]})
    assert encoded.content_type == "application/json"
    assert json.loads(encoded.data) == {"text": "é", "n": [1, 2.5, None]}
    assert encode_result(None).data == b"null"
    raw = encode_result(b"\x00\x01")
    assert (raw.data, raw.content_type) == (b"\x00\x01", "application/octet-stream")
    given = encode_result(Result(data=b"a,b\r\n", content_type="text/csv"))
    assert (given.data, given.content_type) == (b"a,b\r\n", "text/csv")


@pytest.mark.parametrize("value", [{1, 2}, float("nan"), object()])
def test_unencodable_result_is_an_error(value: Any) -> None:
    with pytest.raises(PayloadError, match="not JSON-serializable"):
        encode_result(value)


def test_returning_a_coroutine_is_an_error() -> None:
    coro = async_one(1)
    with pytest.raises(PayloadError, match="async def"):
        encode_result(coro)
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"  # no "never awaited" warning


def test_result_checks_its_fields() -> None:
    with pytest.raises(TypeError):
        Result(data="text", content_type="text/plain")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="content_type"):
        Result(data=b"x", content_type="")
    with pytest.raises(TypeError):
        Result(b"x")  # type: ignore[call-arg]


def test_job_failed() -> None:
    error = JobFailed("nope")
    assert (error.message, error.retryable, error.retry_delay, error.kind) == (
        "nope",
        True,
        None,
        "JobFailed",
    )

    class QuotaExceeded(JobFailed):
        pass

    assert QuotaExceeded("x").kind == "QuotaExceeded"
    assert JobFailed("x", kind="custom", retryable=False).kind == "custom"
    with pytest.raises(ValueError, match="retry_delay"):
        JobFailed("x", retry_delay=-1)


# -- outcomes -----------------------------------------------------------------------------


def test_nack_is_trimmed_to_the_contract_limits() -> None:
    outcome = outcomes.nack(
        "j",
        "t",
        message="m" * 5000,
        kind="k" * 200,
        details="d" * 70000,
        retryable=True,
        retry_delay=1.25,
    )
    item = outcome.request.nack
    assert len(item.error.message) == 4096 and item.error.message.endswith("…")
    assert len(item.error.kind) == 128
    assert len(item.error.details) == 65536
    assert (item.retry_delay.seconds, item.retry_delay.nanos) == (1, 250_000_000)
    assert outcome.key == (leases_pb2.SETTLE_KIND_NACK, "j", "t")
    long_delay = outcomes.nack("j", "t", message="m", kind="k", retryable=True, retry_delay=1e9)
    assert long_delay.request.nack.retry_delay.seconds == 7 * 24 * 3600


def test_release_does_not_count_the_attempt() -> None:
    item = outcomes.release("j", "t", "stopping").request.nack
    assert item.release and item.retryable
    assert item.error.kind == "released"


def test_unsettled_outcomes_keep_order_and_replace_duplicates() -> None:
    unsettled = outcomes.UnsettledOutcomes()
    first = outcomes.ack("a", "t1", job_pb2.Payload())
    second = outcomes.release("b", "t2", "x")
    unsettled.add(first)
    unsettled.add(second)
    unsettled.add(first)
    assert [o.job_id for o in unsettled] == ["a", "b"]
    assert unsettled.pop((leases_pb2.SETTLE_KIND_NACK, "a", "t1")) is None  # wrong kind
    assert unsettled.pop(first.key) is first
    assert unsettled.pop(second.key) is second
    assert len(unsettled) == 0


# -- built-in job types ---------------------------------------------------------------------


def test_uppercase_and_reverse() -> None:
    assert builtins.uppercase({"text": "hi"}) == "HI"
    assert builtins.reverse({"text": "abc"}) == "cba"
    assert builtins.reverse({"text": ""}) == ""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, '"text" field is missing'),
        ({"text": 3}, "must be a string, got a number"),
        ([], "expects a JSON object payload, got an array"),
        (None, "got null"),
        (b"hi", "raw bytes"),
    ],
)
@pytest.mark.parametrize("handler", [builtins.uppercase, builtins.reverse])
def test_text_transforms_refuse_bad_payloads(
    handler: Callable[[Any], Any], value: Any, message: str
) -> None:
    with pytest.raises(JobFailed, match=message) as caught:
        handler(value)
    assert not caught.value.retryable
    assert caught.value.kind == "invalid_payload"


def test_csv_of_objects_has_the_union_of_keys_in_first_seen_order() -> None:
    result = builtins.csv({"rows": [{"b": 1, "a": "x,y"}, {"c": True, "a": None}, {"b": {"n": 1}}]})
    assert result.content_type == "text/csv"
    assert result.data.decode().splitlines() == [
        "b,a,c",
        '1,"x,y",',
        ",,true",
        '"{""n"":1}",,',
    ]


def test_csv_of_arrays_with_and_without_header() -> None:
    with_header = builtins.csv({"rows": [[1, "a"], [2, "b"]], "header": ["n", "s"]})
    assert with_header.data.decode().splitlines() == ["n,s", "1,a", "2,b"]
    without = builtins.csv({"rows": [[1], [2, 3]]})
    assert without.data.decode().splitlines() == ["1", "2,3"]
    ordered = builtins.csv({"rows": [{"a": 1, "b": 2}], "header": ["b", "a"]})
    assert ordered.data.decode().splitlines() == ["b,a", "2,1"]
    assert builtins.csv({"rows": []}).data == b""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, '"rows" field is missing'),
        ({"rows": {}}, "must be an array"),
        ({"rows": [{"a": 1}, [1]]}, "all objects or all arrays"),
        ({"rows": [1, 2]}, "all objects or all arrays"),
        ({"rows": [[1]], "header": "a"}, "array of strings"),
        ({"rows": [[1, 2]], "header": ["a"]}, "row 1 has 2 values"),
        ({"rows": [{"a": 1, "z": 2}], "header": ["a"]}, "keys not in the header"),
    ],
)
def test_csv_refuses_bad_payloads(value: Any, message: str) -> None:
    with pytest.raises(JobFailed, match=message) as caught:
        builtins.csv(value)
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"text": ""}, "must not be empty"),
        ({"text": "x" * 31}, "31 characters; at most 30"),
        ({}, "missing"),
        ({"text": ["a"]}, "must be a string"),
    ],
)
def test_text_refuses_bad_payloads(value: Any, message: str) -> None:
    with pytest.raises(JobFailed, match=message) as caught:
        asyncio.run(builtins.text(value, JobContext.standalone(type="text")))
    assert not caught.value.retryable


def test_text_takes_one_delay_per_character(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtins, "TEXT_DELAY", 0.01)
    started = time.monotonic()
    assert asyncio.run(builtins.text({"text": "abc"}, JobContext.standalone())) == "abc"
    assert time.monotonic() - started >= 0.03


def test_fail() -> None:
    with pytest.raises(JobFailed, match="boom") as caught:
        builtins.fail({"message": "boom", "retryable": False})
    assert not caught.value.retryable
    assert caught.value.kind == "simulated"
    with pytest.raises(JobFailed, match="simulated failure") as default:
        builtins.fail({})
    assert default.value.retryable
    with pytest.raises(JobFailed, match="true or false") as bad:
        builtins.fail({"retryable": "no"})
    assert bad.value.kind == "invalid_payload"


def test_register_builtins() -> None:
    worker = Worker("127.0.0.1:1")
    jobwire.worker.register_builtins(worker)
    assert set(worker.handler_types) == {
        "uppercase", "reverse", "csv", "text", "email", "fail", "noop"
    }  # fmt: skip
    spec = worker.registry.get("text")
    assert spec is not None and spec.is_async and spec.takes_context


# -- backoff --------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_the_maximum() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )
    assert backoff.ceiling(10_000) == 5.0  # no overflow in a long outage
    assert backoff.ceiling(-3) == 0.1


def test_backoff_uses_full_jitter() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(2000)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 7.5  # spread over the whole window
    assert backoff.delay(3, random.Random(1)) == backoff.delay(3, random.Random(1))


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"multiplier": 0.5}]
)
def test_backoff_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# -- one attempt, without a scheduler ----------------------------------------------------------


def leased_job(
    job_type: str = "t",
    data: bytes = b'{"x": 1}',
    content_type: str = "application/json",
    execution_timeout: float = 0,
) -> leases_pb2.LeasedJob:
    spec = job_pb2.JobSpec(
        type=job_type,
        queue="default",
        payload=job_pb2.Payload(data=data, content_type=content_type),
        max_attempts=3,
        labels={"team": "a"},
    )
    if execution_timeout:
        spec.execution_timeout.CopyFrom(Duration(nanos=int(execution_timeout * 1e9)))
    job = job_pb2.Job(id="job-1", spec=spec, attempt=2, trace_id="trace-9")
    return leases_pb2.LeasedJob(
        job=job, lease_token="token-1", lease_deadline=Timestamp(seconds=1_800_000_000)
    )


def run_attempt(
    func: Callable[..., Any],
    *,
    leased: leases_pb2.LeasedJob | None = None,
    stop_after: tuple[float, StopReason] | None = None,
) -> tuple[outcomes.Outcome | None, Execution]:
    registry = HandlerRegistry()
    spec = registry.register("t", func)
    pool = DaemonThreadPool(2)

    async def main() -> tuple[outcomes.Outcome | None, Execution]:
        execution = Execution(leased or leased_job(), spec, worker_id="w-1", pool=pool)
        if stop_after is not None:
            delay, reason = stop_after
            asyncio.get_running_loop().call_later(delay, execution.stop, reason, "because")
        outcome = await execution.run()
        await asyncio.wait_for(execution.finished(), 5)
        return outcome, execution

    try:
        return asyncio.run(main())
    finally:
        pool.shutdown()


def test_success_is_an_ack_with_the_encoded_result() -> None:
    seen: list[JobContext] = []

    async def handle(payload: Any, ctx: JobContext) -> Any:
        seen.append(ctx)
        return {"got": payload}

    outcome, _ = run_attempt(handle)
    assert outcome is not None and outcome.label == "succeeded"
    assert json.loads(outcome.request.ack.result.data) == {"got": {"x": 1}}
    assert outcome.request.ack.lease_token == "token-1"
    ctx = seen[0]
    assert (ctx.job_id, ctx.type, ctx.queue, ctx.attempt, ctx.max_attempts) == (
        "job-1",
        "t",
        "default",
        2,
        3,
    )
    assert (ctx.trace_id, dict(ctx.labels), ctx.worker_id) == ("trace-9", {"team": "a"}, "w-1")
    assert ctx.lease_deadline == datetime(2027, 1, 15, 8, tzinfo=UTC)
    assert not ctx.cancelled.is_set()
    with pytest.raises(AttributeError):
        ctx.job_id = "other"  # type: ignore[misc]


def test_plain_handlers_run_in_a_thread() -> None:
    threads: list[str] = []

    def handle(payload: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return b"raw"

    outcome, _ = run_attempt(handle)
    assert outcome is not None
    assert outcome.request.ack.result.content_type == "application/octet-stream"
    assert threads and threads[0] != threading.main_thread().name


def test_an_exception_is_a_retryable_failure_with_its_traceback() -> None:
    def handle(payload: Any) -> None:
        raise KeyError("missing")

    outcome, _ = run_attempt(handle)
    assert outcome is not None
    item = outcome.request.nack
    assert item.retryable and not item.release
    assert item.error.kind == "KeyError"
    assert "missing" in item.error.message
    assert "Traceback" in item.error.details and "handle" in item.error.details


def test_job_failed_sets_the_reported_error() -> None:
    async def handle(payload: Any) -> None:
        raise JobFailed("bad input", retryable=False, retry_delay=3, kind="input", details="d")

    outcome, _ = run_attempt(handle)
    assert outcome is not None
    item = outcome.request.nack
    assert not item.retryable
    assert (item.error.message, item.error.kind, item.error.details) == ("bad input", "input", "d")
    assert item.retry_delay.seconds == 3


def test_undecodable_payload_fails_without_running_the_handler() -> None:
    calls: list[Any] = []
    outcome, _ = run_attempt(calls.append, leased=leased_job(data=b"{x"))
    assert outcome is not None and not calls
    assert outcome.request.nack.error.kind == "invalid_payload"
    assert not outcome.request.nack.retryable


def test_execution_timeout_cancels_an_async_handler() -> None:
    cancelled = threading.Event()

    async def handle(payload: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    outcome, execution = run_attempt(handle, leased=leased_job(execution_timeout=0.2))
    assert time.monotonic() - started < 5
    assert outcome is not None and outcome.label == "timeout"
    assert outcome.request.nack.error.kind == "timeout"
    assert outcome.request.nack.retryable
    assert cancelled.is_set()
    assert execution.ctx.cancelled.is_set()


def test_execution_timeout_signals_a_plain_handler() -> None:
    def handle(payload: Any, ctx: JobContext) -> str:
        assert ctx.cancelled.wait(10)
        return "saw it"

    outcome, _ = run_attempt(handle, leased=leased_job(execution_timeout=0.2))
    assert outcome is not None and outcome.request.nack.error.kind == "timeout"


def test_cancel_stops_the_handler_and_is_final() -> None:
    async def handle(payload: Any) -> None:
        await asyncio.sleep(30)

    outcome, execution = run_attempt(handle, stop_after=(0.05, StopReason.CANCELLED))
    assert outcome is not None and outcome.label == "cancelled"
    assert outcome.request.nack.error.kind == "cancelled"
    assert not outcome.request.nack.retryable
    # The handler took no context: one asked for after the stop says so too.
    assert execution.ctx.cancel_reason == "because"
    assert execution.ctx.cancelled.is_set()


def test_a_lost_lease_has_no_outcome() -> None:
    def handle(payload: Any, ctx: JobContext) -> None:
        ctx.cancelled.wait(10)

    outcome, _ = run_attempt(handle, stop_after=(0.05, StopReason.LOST))
    assert outcome is None


def test_released_attempt_is_handed_back() -> None:
    async def handle(payload: Any) -> None:
        await asyncio.sleep(30)

    outcome, _ = run_attempt(handle, stop_after=(0.05, StopReason.RELEASED))
    assert outcome is not None and outcome.request.nack.release


def test_a_plain_handler_returning_after_its_stop_is_reported_as_stopped() -> None:
    def handle(payload: Any, ctx: JobContext) -> str:
        ctx.cancelled.wait(10)
        return "finished anyway"

    # The outcome is decided at the stop; the thread's late return changes nothing.
    outcome, _ = run_attempt(handle, stop_after=(0.05, StopReason.RELEASED))
    assert outcome is not None and outcome.request.nack.release


def test_pool_threads_are_daemons_and_bounded() -> None:
    pool = DaemonThreadPool(2)
    release = threading.Event()
    names: set[str] = set()

    def block() -> None:
        names.add(threading.current_thread().name)
        assert threading.current_thread().daemon
        release.wait(10)

    futures = [pool.submit(block) for _ in range(4)]
    deadline = time.monotonic() + 5
    while len(names) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(names) == 2
    release.set()
    for future in futures:
        future.result(5)
    assert len(names) == 2
    pool.shutdown()


# -- command line ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    from jobwire.worker import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["worker", *argv])


def test_cli_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "JOBWIRE_QUEUES",
        "JOBWIRE_CONCURRENCY",
        "JOBWIRE_DRAIN_GRACE",
        "JOBWIRE_IMPORTS",
        "JOBWIRE_WORKER_ID",
        "JOBWIRE_BUILTINS",
        "JOBWIRE_TARGET",
        "JOBWIRE_PREFETCH",
    ):
        monkeypatch.delenv(name, raising=False)
    args = parse([])
    assert args.queues == ["default"]
    assert args.concurrency == 8
    assert args.prefetch == 0
    assert args.imports == []
    assert args.builtins is True
    assert args.drain_grace == 30.0
    assert args.worker_id is None
    assert callable(args.func)


def test_cli_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_QUEUES", "a,b")
    monkeypatch.setenv("JOBWIRE_CONCURRENCY", "3")
    monkeypatch.setenv("JOBWIRE_DRAIN_GRACE", "2.5")
    monkeypatch.setenv("JOBWIRE_PREFETCH", "6")
    args = parse([])
    assert (args.queues, args.concurrency, args.drain_grace) == (["a", "b"], 3, 2.5)
    assert args.prefetch == 6
    args = parse(
        [
            "--queue",
            "x",
            "--queue",
            "y,z",
            "--import",
            "m1",
            "--import",
            "m2",
            "--no-builtins",
            "--worker-id",
            "w1",
            "--target",
            "h:1",
        ]
    )
    assert args.queues == ["x", "y", "z"]  # the command line replaces the environment
    assert args.imports == ["m1", "m2"]
    assert (args.builtins, args.worker_id, args.target) == (False, "w1", "h:1")


@pytest.mark.parametrize(
    "argv", [["--concurrency", "0"], ["--drain-grace", "-1"], ["--prefetch", "-1"]]
)
def test_cli_refuses_bad_numbers(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)


# -- dependencies ---------------------------------------------------------------------------


def test_worker_side_never_loads_the_database_driver_or_the_scheduler() -> None:
    code = (
        "import sys, jobwire.worker, jobwire.worker.cli, jobwire.worker.builtins\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'psycopg_pool') or m == 'jobwire.scheduler' "
        "or m.startswith('jobwire.scheduler.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", f"loaded: {result.stdout.strip()}"


# -- packing outcomes into one write -----------------------------------------------------


def test_pack_folds_queued_outcomes_and_credit_but_keeps_order_around_others() -> None:
    from jobwire.v1 import leases_pb2
    from jobwire.worker.connection import _pack

    async def scenario() -> None:
        outbox: asyncio.Queue[leases_pb2.LeaseRequest | None] = asyncio.Queue()
        ack = leases_pb2.LeaseRequest(ack=leases_pb2.AckItem(job_id="a", lease_token="t"))
        nack = leases_pb2.LeaseRequest(nack=leases_pb2.NackItem(job_id="b", lease_token="u"))
        credit = leases_pb2.LeaseRequest(credit=leases_pb2.Credit(credits=1))
        extend = leases_pb2.LeaseRequest(extend=leases_pb2.ExtendRequest())
        for item in (nack, credit, credit, extend, ack, None):
            outbox.put_nowait(item)
        packed = _pack(ack, outbox)
        assert packed.WhichOneof("kind") == "batch"
        assert [a.job_id for a in packed.batch.acks] == ["a"]
        assert [n.job_id for n in packed.batch.nacks] == ["b"]
        assert packed.batch.credits == 2
        # The extension stopped the fold and is next, then the rest in order.
        rest = [outbox.get_nowait() for _ in range(outbox.qsize())]
        assert [r.WhichOneof("kind") if r else None for r in rest] == ["extend", "ack", None]
        # Alone, a message goes as it is.
        assert _pack(ack, asyncio.Queue()) is ack

    asyncio.run(scenario())
