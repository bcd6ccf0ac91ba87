"""Domain to protobuf conversion agrees with protobuf's own helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from jobwire.scheduler.convert import timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 23, 17, 1, 2, 345678, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_timestamp_matches_from_datetime(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected
