"""Fixtures: a real PostgreSQL (embedded, or JOBWIRE_TEST_DATABASE_URL), a fresh database
per test cloned from a migrated template, and a real scheduler on a loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.support import SchedulerThread, scratch_database


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("JOBWIRE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    from jobwire.scheduler.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "data")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> Iterator[str]:
    from jobwire.scheduler import migrate

    name = f"jobwire_template_{os.getpid()}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate.apply(make_conninfo(postgres_url, dbname=name))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with scratch_database(postgres_url, template=template_database) as url:
        yield url


@pytest.fixture
def scheduler(database_url: str) -> Iterator[SchedulerThread]:
    """A scheduler on 127.0.0.1 with short timings, so that faults show up in seconds."""
    running = SchedulerThread(
        database_url,
        stream_grace=timedelta(seconds=1),
        reaper_interval=0.2,
        poll_interval=0.2,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
