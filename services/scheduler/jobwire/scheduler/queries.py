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


def _returning_id(insert: LiteralString, columns: LiteralString) -> LiteralString:
    """The same insert for producers who want ids only, without sending every row back."""
    assert insert.endswith("RETURNING *")
    return insert.removesuffix("RETURNING *") + "RETURNING " + columns


def _with_notify(insert: LiteralString) -> LiteralString:
    """The insert and the NOTIFY of the queues it filled, as one statement: for batches
    without idempotency keys, which cannot conflict, one autocommitted round trip
    replaces BEGIN, INSERT, NOTIFY and COMMIT; rows skipped for a taken key notify
    nothing. The notification goes out at commit, with the payload of notify_submitted.
    The cross join with the one-row count makes PostgreSQL run the notifying part."""
    return (
        "WITH inserted AS (" + insert + "), notified AS ("
        "SELECT count(pg_notify('jobwire_submitted', %(origin)s::text || ' ' || queue)) "
        "FROM (SELECT DISTINCT queue FROM inserted) AS q) "
        "SELECT inserted.* FROM inserted CROSS JOIN notified"
    )


# insert_jobs (arrays, for batches) and insert_job (scalars, for one job), each run as
# *_notify, or *_notify_returning_id for producers who want ids only; or without the
# NOTIFY, as *_returning_id, by a submit that notifies after claims of its own.
for _insert in ("insert_jobs", "insert_job"):
    QUERIES[_insert + "_returning_id"] = _returning_id(QUERIES[_insert], "id, queue")
    QUERIES[_insert + "_notify"] = _with_notify(QUERIES[_insert])
    QUERIES[_insert + "_notify_returning_id"] = _with_notify(QUERIES[_insert + "_returning_id"])
