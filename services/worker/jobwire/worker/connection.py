"""Keeping a Lease stream open: connect, greet, reconnect with backoff, close politely.

What is said on the stream is the engine's business; this module only moves
messages and tells the engine when a stream starts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from jobwire.v1 import leases_pb2

from . import metrics
from .backoff import Backoff
from .transport import LeaseStream, Transport, describe_error

__all__ = ["Connection"]

log = logging.getLogger("jobwire.worker")

# A stream that lived this long (or delivered anything) counts as a successful
# connection and resets the reconnect backoff. A scheduler that accepts the call
# and then refuses the Hello must not be retried in a tight loop.
STABLE_AFTER = 1.0


class _Link:
    """The outgoing side of one stream: messages are queued and written in order by
    one task, since a gRPC call allows only one write at a time."""

    def __init__(self, stream: LeaseStream) -> None:
        self.stream = stream
        self.outbox: asyncio.Queue[leases_pb2.LeaseRequest | None] = asyncio.Queue()
        self.hello_sent = False
        self.half_closed = False


class Connection:
    """Holds one Lease stream at a time, opening a new one whenever it fails.

    `greeting()` gives the messages that open every stream (the Hello first);
    `on_message` receives everything the scheduler sends; `while_connected()` is
    run alongside each stream and cancelled when it ends (the heartbeat).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        target: str,
        backoff: Backoff,
        greeting: Callable[[], Iterable[leases_pb2.LeaseRequest]],
        on_message: Callable[[leases_pb2.LeaseResponse], None],
        while_connected: Callable[[], Coroutine[Any, Any, None]],
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self._target = target
        self._backoff = backoff
        self._greeting = greeting
        self._on_message = on_message
        self._while_connected = while_connected
        self._rng = rng or random.Random()
        self._link: _Link | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        """True while a stream is open and its Hello has been written."""
        return self._link is not None and self._link.hello_sent

    def send(self, request: leases_pb2.LeaseRequest) -> bool:
        """Queues a message on the current stream; False when there is none, or when
        it is closing and takes no more messages."""
        link = self._link
        if link is None or link.half_closed:
            return False
        link.outbox.put_nowait(request)
        return True

    async def run(self) -> None:
        """Connects and reconnects until `close()`."""
        failures = 0
        while not self._closing:
            try:
                established, why = await self._serve(self._transport.open())
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the worker: reconnect instead
                log.exception("unexpected error on the Lease stream")
                established, why = False, "unexpected error"
            if self._closing:
                return
            failures = 0 if established else failures + 1
            delay = self._backoff.delay(failures, self._rng)
            metrics.RECONNECTS.inc()
            # Losing a working stream deserves attention; the retries that follow
            # during an outage would only repeat it.
            log.log(
                logging.WARNING if failures <= 1 else logging.INFO,
                "Lease stream to %s %s; reconnecting in %.2f s%s",
                self._target,
                why,
                delay,
                f" ({failures} failures in a row)" if failures > 1 else "",
            )
            await asyncio.sleep(delay)

    async def close(self, run_task: asyncio.Task[None], *, wait: float) -> None:
        """Half-closes the stream so the scheduler ends it as a normal goodbye, waits
        up to `wait` seconds for that, then stops `run_task` (the task running `run`)."""
        self._closing = True
        link = self._link
        if link is not None and not run_task.done():
            link.half_closed = True
            link.outbox.put_nowait(None)
            await asyncio.wait({run_task}, timeout=wait)
        run_task.cancel()
        await asyncio.gather(run_task, return_exceptions=True)

    async def _serve(self, stream: LeaseStream) -> tuple[bool, str]:
        """Runs one stream until it ends; returns whether it counted as established,
        and how it ended."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        link = _Link(stream)
        for request in self._greeting():
            link.outbox.put_nowait(request)
        self._link = link
        writer = asyncio.create_task(self._write_loop(link))
        companion = asyncio.create_task(self._while_connected())
        received = False
        why = "ended"
        try:
            while True:
                try:
                    response = await stream.read()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    # The call was cancelled locally (its writer failed), not this task.
                    why = "was cut off"
                    break
                except Exception as exc:
                    why = f"failed ({describe_error(exc)})"
                    break
                if response is None:
                    why = "was ended by the scheduler"
                    break
                received = True
                self._on_message(response)
        finally:
            self._link = None
            metrics.CONNECTED.set(0)
            writer.cancel()
            companion.cancel()
            stream.cancel()
            await asyncio.gather(writer, companion, return_exceptions=True)
        established = received or (link.hello_sent and loop.time() - opened >= STABLE_AFTER)
        return established, why

    async def _write_loop(self, link: _Link) -> None:
        try:
            while True:
                request = await link.outbox.get()
                if request is None:
                    await link.stream.done_writing()
                    return
                request = _pack(request, link.outbox)
                await link.stream.write(request)
                if request.WhichOneof("kind") == "hello":
                    link.hello_sent = True
                    metrics.CONNECTED.set(1)
                    hello = request.hello
                    log.info(
                        "connected to %s as %s (queues %s, %d job types, credit %d)",
                        self._target,
                        hello.worker_id,
                        ",".join(hello.queues),
                        len(hello.types),
                        hello.credits,
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The reader normally sees the same failure from the call; cancelling
            # makes sure it wakes up even if the call somehow stays open.
            log.debug("writing to the Lease stream failed: %s", describe_error(exc))
            link.stream.cancel()


_PACKABLE = frozenset({"ack", "nack", "credit"})


def _pack(
    first: leases_pb2.LeaseRequest,
    outbox: asyncio.Queue[leases_pb2.LeaseRequest | None],
) -> leases_pb2.LeaseRequest:
    """Folds the outcomes and credit queued behind `first` into one SettleBatch.

    gRPC allows one write at a time; while one is in flight, finished jobs queue up, and
    the next write carries all of them. Anything else (hello, extend, drain, the end of
    the stream) stops the fold and stays queued, in order.
    """
    if first.WhichOneof("kind") not in _PACKABLE or outbox.empty():
        return first
    batch = leases_pb2.SettleBatch()
    request: leases_pb2.LeaseRequest | None = first
    while request is not None:
        kind = request.WhichOneof("kind")
        if kind == "ack":
            batch.acks.append(request.ack)
        elif kind == "nack":
            batch.nacks.append(request.nack)
        else:
            batch.credits += request.credit.credits
        if outbox.empty() or len(batch.acks) + len(batch.nacks) >= _MAX_PACKED:
            break
        request = outbox.get_nowait()
        if request is None or request.WhichOneof("kind") not in _PACKABLE:
            _push_front(outbox, request)
            break
    return leases_pb2.LeaseRequest(batch=batch)


# The scheduler takes at most 1000 items per batch.
_MAX_PACKED = 1000


def _push_front(
    outbox: asyncio.Queue[leases_pb2.LeaseRequest | None], item: leases_pb2.LeaseRequest | None
) -> None:
    """Puts back the message that ended a fold, ahead of everything queued after it."""
    rest = [item]
    while not outbox.empty():
        rest.append(outbox.get_nowait())
    for queued in rest:
        outbox.put_nowait(queued)
