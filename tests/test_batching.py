"""Group commit: one batch at a time; what arrives during a write goes out together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from jobwire.scheduler.batching import GroupCommit, flatten, regroup


class Recorder:
    """A write that takes a moment, like a database round trip, and records its batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.writing = 0
        self.most_at_once = 0
        # Set once a write is under way; cleared by the test that waits for the next.
        self.started = asyncio.Event()

    async def write(self, items: Sequence[int]) -> list[int]:
        self.writing += 1
        self.most_at_once = max(self.most_at_once, self.writing)
        self.batches.append(list(items))
        self.started.set()
        try:
            await asyncio.sleep(0.01)
            if -1 in items:
                raise ValueError("refused")
            return [item * 10 for item in items]
        finally:
            self.writing -= 1


def test_an_item_on_an_idle_commit_goes_out_alone() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write)
        assert await commit.submit(1) == 10
        assert await commit.submit(2) == 20
        assert recorder.batches == [[1], [2]]
        await commit.close()

    asyncio.run(main())


def test_items_arriving_during_a_write_share_the_next_batch() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write)
        first = asyncio.ensure_future(commit.submit(1))
        await recorder.started.wait()  # the first is being written now
        rest = [asyncio.ensure_future(commit.submit(n)) for n in (2, 3, 4)]
        assert await first == 10
        assert await asyncio.gather(*rest) == [20, 30, 40]
        assert recorder.batches == [[1], [2, 3, 4]]
        assert recorder.most_at_once == 1
        await commit.close()

    asyncio.run(main())


def test_a_failed_batch_fails_its_own_callers_only() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write)
        with pytest.raises(ValueError, match="refused"):
            await commit.submit(-1)
        recorder.started.clear()
        first = asyncio.ensure_future(commit.submit(1))
        await recorder.started.wait()
        doomed = [asyncio.ensure_future(commit.submit(n)) for n in (2, -1)]
        assert await first == 10
        for task in doomed:
            with pytest.raises(ValueError, match="refused"):
                await task
        assert await commit.submit(3) == 30
        await commit.close()

    asyncio.run(main())


def test_items_standing_for_several_rows_fill_batches_by_rows() -> None:
    """An item per request, each of several rows: a batch holds up to max_batch rows, and
    an item bigger than that goes alone rather than waiting forever."""

    async def main() -> None:
        seen: list[list[list[int]]] = []

        async def write(groups: Sequence[list[int]]) -> list[list[int]]:
            seen.append(list(groups))
            await asyncio.sleep(0.01)
            rows = flatten(groups)
            return regroup(groups, [row * 10 for row in rows])

        commit = GroupCommit(write, max_batch=4, size=len)
        first = asyncio.ensure_future(commit.submit([0]))
        await asyncio.sleep(0)  # the first is being written now
        rest = [asyncio.ensure_future(commit.submit(g)) for g in ([1, 2], [3, 4], [5], [6] * 9)]
        assert await first == [0]
        assert await asyncio.gather(*rest) == [[10, 20], [30, 40], [50], [60] * 9]
        assert seen == [[[0]], [[1, 2], [3, 4]], [[5]], [[6] * 9]]
        await commit.close()

    asyncio.run(main())
