"""Versioned schema migrations: ordered .sql files, each applied once and recorded."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString

import psycopg

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
# The first line of a migration that must run outside a transaction (CREATE INDEX
# CONCURRENTLY, which lets writes go on while a big table is read). Its statements,
# each ending with ";" at the end of a line, run one by one and must be safe to run
# again: a failure or crash midway leaves the migration unrecorded.
OUTSIDE_A_TRANSACTION = "-- jobwire: outside a transaction"
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_LOCK_POLL_SECONDS = 0.2
# Any fixed number: it only has to be the same on every replica.
_ADVISORY_LOCK = 0x6A6F6277  # "jobw"


@dataclass(frozen=True, kw_only=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def in_a_transaction(self) -> bool:
        return not self.sql.startswith(OUTSIDE_A_TRANSACTION)

    def statements(self) -> list[str]:
        """The statements of a migration that runs outside a transaction."""
        parts = _STATEMENT_END.split(self.sql)
        return [p.strip() for p in parts if _without_comments(p).strip()]


def _record(conn: psycopg.Connection[Any], migration: Migration) -> None:
    conn.execute(
        "INSERT INTO jobwire_migrations (version, name) VALUES (%s, %s)",
        (migration.version, migration.name),
    )


def _scalar(conn: psycopg.Connection[Any], sql: LiteralString, *params: object) -> object:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _without_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def available() -> list[Migration]:
    """The migrations shipped with this version, in order."""
    folder = resources.files("jobwire.scheduler").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(version=int(match[1]), name=match[2], sql=entry.read_text("utf-8"))
            )
    return sorted(found, key=lambda m: m.version)


def apply(database_url: str) -> list[Migration]:
    """Applies the migrations the database lacks; returns them.

    Safe to run from several replicas at once: an advisory lock serialises them.
    """
    applied_now = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Polled, not waited for: a session waiting in pg_advisory_lock() holds a
        # snapshot, and CREATE INDEX CONCURRENTLY in the session that has the lock waits
        # for every older snapshot, which would make the two wait for each other.
        while not _scalar(conn, "SELECT pg_try_advisory_lock(%s)", _ADVISORY_LOCK):
            time.sleep(_LOCK_POLL_SECONDS)
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS jobwire_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {row[0] for row in conn.execute("SELECT version FROM jobwire_migrations")}
            for migration in available():
                if migration.version in done:
                    continue
                if migration.in_a_transaction:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        _record(conn, migration)
                else:
                    for statement in migration.statements():
                        conn.execute(statement.encode())
                    _record(conn, migration)
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK,))
    return applied_now


def pending(database_url: str) -> list[Migration]:
    """Migrations shipped but not applied (empty when the schema is current)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('jobwire_migrations') IS NOT NULL").fetchone()
        done: set[int] = set()
        if exists and exists[0]:
            done = {row[0] for row in conn.execute("SELECT version FROM jobwire_migrations")}
    return [m for m in available() if m.version not in done]
