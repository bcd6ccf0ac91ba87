"""A thread pool for plain (non-async) handlers whose threads never block exit.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter
exits, so one plain handler that ignores its cancellation signal would keep a
drained worker process alive forever. A stuck handler's job has already been
handed back by then; the process must be free to go.
"""

from __future__ import annotations

import contextvars
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar, cast

__all__ = ["DaemonThreadPool"]

T = TypeVar("T")

_WorkItem = tuple["Future[object]", Callable[[], object]]


class DaemonThreadPool:
    """At most `max_workers` daemon threads, started on demand."""

    def __init__(self, max_workers: int, *, name: str = "jobwire-handler") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._numbers = itertools.count(1)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Runs `fn` in a pool thread, in a copy of the caller's context variables."""
        future: Future[T] = Future()
        context = contextvars.copy_context()
        with self._lock:
            if self._closed:
                raise RuntimeError("thread pool is shut down")
            item: _WorkItem = (cast("Future[object]", future), lambda: context.run(fn))
            self._work.put(item)
            self._spawn_if_needed()
        return future

    def shutdown(self) -> None:
        """Lets idle threads end; busy ones end when their function returns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._work.put(None)

    def _spawn_if_needed(self) -> None:
        if self._idle.acquire(blocking=False):
            return
        if len(self._threads) >= self._max_workers:
            return
        thread = threading.Thread(
            target=self._loop, name=f"{self._name}-{next(self._numbers)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                del future, fn, item  # drop references before waiting for more work
            self._idle.release()
