"""Group commit: items that arrive while a batch is being written go out together.

No timer is involved: an item that arrives when nothing is in flight is written at once,
so an idle system keeps its latency; under load, each database round trip (and each WAL
flush) carries everything that queued up during the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[Item, Result]):
    """Feeds queued items to `write` in batches of at most `max_batch`, one batch at a time.

    An item may stand for several rows (a caller's whole request): `size` tells how many,
    and a batch holds items up to `max_batch` rows, or one item that is bigger alone.
    `write` returns one result per item, in order. If it raises, every item of that batch
    gets the exception.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = 1000,
        size: Callable[[Item], int] = lambda _: 1,
        name: str = "batch",
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._size = size
        self._name = name
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(self, item: Item) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"group-commit-{self._name}")
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._next_batch()
                items = [item for item, _ in batch]
                try:
                    results = await self._write(items)
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:  # every waiter gets it; the loop goes on
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        taken, rows = 1, self._size(self._queue[0][0])
        while taken < len(self._queue):
            rows += self._size(self._queue[taken][0])
            if rows > self._max_batch:
                break
            taken += 1
        batch = self._queue[:taken]
        del self._queue[:taken]
        return batch

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()


def flatten(groups: Sequence[Sequence[T]]) -> list[T]:
    """The rows of a batch of items that each stand for several."""
    return [row for group in groups for row in group]


def regroup(groups: Sequence[Sequence[T]], results: Sequence[R]) -> list[list[R]]:
    """Per-row results of `flatten(groups)`, cut back into one list per group."""
    cut, start = [], 0
    for group in groups:
        cut.append(list(results[start : start + len(group)]))
        start += len(group)
    return cut
