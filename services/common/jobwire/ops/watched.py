"""Objects a process's metrics read when scraped, from the scrape's own thread."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Watched(Generic[T]):
    """The objects (a scheduler's dispatchers, a worker's engines) whose state gauges
    read at scrape time instead of being moved on every change. They come and go on the
    event loop's thread while a scrape reads them on another: the list changes under a
    lock, and a scrape reads a copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: list[T] = []

    def watch(self, item: T) -> None:
        with self._lock:
            self._watched.append(item)

    def unwatch(self, item: T) -> None:
        with self._lock:
            if item in self._watched:
                self._watched.remove(item)

    def watched(self) -> list[T]:
        with self._lock:
            return list(self._watched)
