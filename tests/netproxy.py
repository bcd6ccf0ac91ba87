"""A TCP proxy on 127.0.0.1 that can cut the network without closing anything.

`pause()` stops forwarding (both ways, or one way) while every socket stays open, so
neither end sees an error: to both it looks like a network that silently drops
packets. Bytes sent meanwhile wait in the proxy and in the kernel's buffers, as TCP
retransmissions would, and arrive after `resume()`, late. The proxy runs its own event
loop in a daemon thread, holds at most one chunk per direction per connection, accepts
a bounded number of connections, and stops everything it opened on `close()`.

::

    with NetProxy(scheduler.target) as proxy:
        worker = connect(proxy.target)
        proxy.pause()            # a black hole
        proxy.pause(downstream=False)  # only worker -> scheduler traffic is held
        proxy.resume()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["NetProxy"]

T = TypeVar("T")

CHUNK = 64 * 1024


class _Pipe:
    """One accepted connection and its connection to the upstream server."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class NetProxy:
    """Forwards connections made to `target` (127.0.0.1:port) to `upstream` (host:port)."""

    def __init__(self, upstream: str, *, max_connections: int = 32) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host.strip("[]") or "127.0.0.1", int(port))
        self._max_connections = max_connections
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        # Set while that direction forwards; created on the proxy's loop.
        self._upstream_open = asyncio.Event()
        self._downstream_open = asyncio.Event()
        self._lock = threading.Lock()
        self._bytes = {"upstream": 0, "downstream": 0}
        self._accepted = 0
        self._closed = False
        self.port = 0
        self._thread.start()
        self._call(self._start())

    # -- the test's side ----------------------------------------------------------------

    @property
    def target(self) -> str:
        """Where clients connect instead of the upstream server."""
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return self._call(self._count())

    @property
    def accepted(self) -> int:
        """Connections accepted since the proxy started."""
        with self._lock:
            return self._accepted

    def forwarded(self) -> dict[str, int]:
        """Bytes forwarded so far: "upstream" (client to server) and "downstream"."""
        with self._lock:
            return dict(self._bytes)

    def pause(self, *, upstream: bool = True, downstream: bool = True) -> None:
        """Stops forwarding in the given directions; returns once nothing more passes."""
        self._call(self._gate(upstream=not upstream, downstream=not downstream))

    def resume(self) -> None:
        """Forwards both ways again, starting with whatever waited."""
        self._call(self._gate(upstream=True, downstream=True))

    def close(self) -> None:
        """Closes the listening socket and every connection, and stops the thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the proxy's loop -----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the proxy is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._upstream_open.set()
        self._downstream_open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _count(self) -> int:
        return len(self._pipes)

    async def _gate(self, *, upstream: bool, downstream: bool) -> None:
        gates = ((self._upstream_open, upstream), (self._downstream_open, downstream))
        for event, flowing in gates:
            if flowing:
                event.set()
            else:
                event.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        pipes = list(self._pipes)
        self._pipes.clear()
        for pipe in pipes:
            pipe.close()
        await asyncio.gather(*(t for p in pipes for t in p.tasks), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed or len(self._pipes) >= self._max_connections:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        with self._lock:
            self._accepted += 1
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, self._upstream_open, "upstream")),
            asyncio.create_task(self._pump(up_reader, writer, self._downstream_open, "downstream")),
        ]
        await asyncio.gather(*pipe.tasks, return_exceptions=True)
        self._pipes.discard(pipe)
        pipe.close()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        gate: asyncio.Event,
        direction: str,
    ) -> None:
        """Copies one direction until its source closes or fails."""
        try:
            while True:
                # Not reading while paused leaves the bytes in the kernel's buffers, so
                # the sender is slowed by TCP flow control, as on a dead link.
                await gate.wait()
                data = await source.read(CHUNK)
                if not data:
                    break
                await gate.wait()  # paused while this chunk was read: hold it
                sink.write(data)
                with self._lock:
                    self._bytes[direction] += len(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # Closing the far side ends the other pump of this pipe too: one connection
            # closing closes the other, as if they were one.
            with contextlib.suppress(Exception):
                sink.transport.abort()
