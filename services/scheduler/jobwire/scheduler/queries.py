"""The named SQL statements of sql/queries.sql, loaded once."""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString, cast

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load() -> dict[str, LiteralString]:
    text = resources.files("jobwire.scheduler").joinpath("sql/queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {
        name: cast(LiteralString, body.strip())
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


QUERIES = _load()

# Submits whose producer wants ids only: the same insert, without sending every row back.
assert QUERIES["insert_jobs"].endswith("RETURNING *")
QUERIES["insert_jobs_returning_id"] = QUERIES["insert_jobs"].removesuffix("RETURNING *") + (
    "RETURNING id"
)


def _with_notify(insert: LiteralString) -> LiteralString:
    """The insert and the NOTIFY of the queues it filled, as one statement: for batches
    without idempotency keys, which cannot conflict, so one autocommitted round trip
    replaces BEGIN, INSERT, NOTIFY and COMMIT. The notification goes out at its commit.
    The cross join with the one-row count makes PostgreSQL run the notifying part."""
    return (
        "WITH inserted AS (" + insert + "), notified AS ("
        "SELECT count(pg_notify('jobwire_submitted', queue)) "
        "FROM (SELECT DISTINCT queue FROM inserted) AS q) "
        "SELECT inserted.* FROM inserted CROSS JOIN notified"
    )


QUERIES["insert_jobs_notify"] = _with_notify(QUERIES["insert_jobs"])
QUERIES["insert_jobs_notify_returning_id"] = _with_notify(
    QUERIES["insert_jobs"].removesuffix("RETURNING *") + "RETURNING id, queue"
)
