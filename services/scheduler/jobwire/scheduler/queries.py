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
