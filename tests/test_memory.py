"""The services' garbage-collection set-up."""

from __future__ import annotations

import gc
import weakref

from jobwire.ops.memory import freeze_startup_objects


class _Cycle:
    me: object


def test_startup_objects_leave_the_collectors_reach() -> None:
    leftover = _Cycle()
    leftover.me = leftover  # garbage that only a collection frees
    gone = weakref.ref(leftover)
    del leftover
    tracked = len(gc.get_objects())
    try:
        freeze_startup_objects()
        assert gone() is None  # collected first, not frozen forever
        assert gc.get_freeze_count() > tracked / 2
        assert len(gc.get_objects()) < tracked / 10  # what a full collection walks now
    finally:
        gc.unfreeze()
