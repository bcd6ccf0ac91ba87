"""The database itself holds the invariants of the job, whatever code writes to it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from jobwire.scheduler import migrate
from jobwire.scheduler.queries import QUERIES

from tests.support import scratch_database


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def insert_job(conn: psycopg.Connection[tuple[object, ...]], **columns: object) -> uuid.UUID:
    job_id = uuid.uuid4()
    values = {
        "id": job_id,
        "queue": "q",
        "type": "t",
        "payload": b"{}",
        "run_at": "now()",
        "max_attempts": 3,
        "backoff_initial": "1 second",
        "backoff_max": "1 minute",
        "backoff_multiplier": 2.0,
        "backoff_jitter": 0.0,
        "lease_timeout": "30 seconds",
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    conn.execute(f"INSERT INTO jobwire_jobs ({names}) VALUES ({marks})", list(values.values()))
    return job_id


def lease(conn: psycopg.Connection[tuple[object, ...]], job_id: uuid.UUID) -> uuid.UUID:
    token = uuid.uuid4()
    conn.execute(
        """UPDATE jobwire_jobs SET state = 'RUNNING', attempt = attempt + 1, lease_token = %s,
           lease_deadline = now() + interval '30 seconds', worker_id = 'w',
           attempt_started_at = now() WHERE id = %s""",
        (token, job_id),
    )
    return token


def violates(conn: psycopg.Connection[tuple[object, ...]], statement: str, *params: object) -> str:
    with pytest.raises(psycopg.errors.IntegrityError) as info:
        conn.execute(statement, params)
    return str(info.value)


def test_migrations_apply_once_and_are_recorded(database_url: str) -> None:
    assert migrate.pending(database_url) == []
    assert migrate.apply(database_url) == []
    with psycopg.connect(database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM jobwire_migrations")]
    assert versions == [m.version for m in migrate.available()]


def test_a_migration_outside_a_transaction_can_run_again(database_url: str) -> None:
    """Such a migration is recorded only after its last statement; one cut short (an
    invalid index left behind, a crash before the record) runs whole again."""
    outside = [m for m in migrate.available() if not m.in_a_transaction]
    assert outside, "no migration runs outside a transaction any more"
    with psycopg.connect(database_url, autocommit=True) as conn:
        for migration in outside:
            conn.execute("DELETE FROM jobwire_migrations WHERE version = %s", (migration.version,))
        # What a CREATE INDEX CONCURRENTLY cut short leaves (a catalog write: superusers
        # only, as on the embedded server the tests start).
        if conn.execute("SELECT current_setting('is_superuser')").fetchone() == ("on",):
            conn.execute(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                "'jobwire_jobs_unsuccessful'::regclass"
            )
    assert migrate.apply(database_url) == outside
    with psycopg.connect(database_url) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = "
            "'jobwire_jobs_unsuccessful'::regclass"
        ).fetchone()
    assert valid == (True,)


def test_replicas_migrating_at_once_wait_for_each_other(postgres_url: str) -> None:
    """Replicas started together all run `migrate`; one applies, the others wait, even
    for a migration that builds an index CONCURRENTLY (which waits for every session
    holding an older snapshot)."""
    with scratch_database(postgres_url) as url:
        with ThreadPoolExecutor(3) as pool:
            applied = list(pool.map(lambda _: migrate.apply(url), range(3)))
        assert sorted(len(a) for a in applied) == [0, 0, len(migrate.available())]
        with psycopg.connect(url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM jobwire_migrations")]
            invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            assert invalid.fetchone() == (0,)
        assert versions == [m.version for m in migrate.available()]


def test_an_attempt_running_during_the_upgrade_keeps_its_history(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0004: an attempt's row is written when it ends. One running during the
    upgrade had its row written at its lease; the row goes, its start moves to the job,
    and the attempt is settled, shown and refused like any other."""
    shipped = migrate.available()
    with scratch_database(postgres_url) as url:
        monkeypatch.setattr(migrate, "available", lambda: [m for m in shipped if m.version < 4])
        migrate.apply(url)
        with psycopg.connect(url, autocommit=True) as conn:
            job_id = insert_job(conn)
            token, started = uuid.uuid4(), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
            # As the earlier lease_jobs wrote it: the job and a RUNNING row, in one go.
            conn.execute(
                """WITH leased AS (
                       UPDATE jobwire_jobs SET state = 'RUNNING', attempt = 1, lease_token = %s,
                              lease_deadline = now() + interval '30 seconds', worker_id = 'w',
                              started_at = %s
                       WHERE id = %s RETURNING *)
                   INSERT INTO jobwire_attempts (job_id, number, lease_token, worker_id, started_at)
                   SELECT id, attempt, lease_token, worker_id, started_at FROM leased""",
                (token, started, job_id),
            )
            # Damaged data: a running job whose row is missing.
            orphan = insert_job(conn)
            conn.execute(
                """UPDATE jobwire_jobs SET state = 'RUNNING', attempt = 1, worker_id = 'w',
                          lease_token = gen_random_uuid(), lease_deadline = now() + '30s'
                   WHERE id = %s""",
                (orphan,),
            )
            monkeypatch.undo()
            applied = [m.version for m in migrate.apply(url)]
            assert applied == [m.version for m in shipped if m.version >= 4]
            # Its start is the job's last update rather than unknown: its attempt can end.
            (orphan_start,) = conn.execute(
                "SELECT attempt_started_at = updated_at FROM jobwire_jobs WHERE id = %s",
                (orphan,),
            ).fetchone() or (None,)
            assert orphan_start is True
            conn.execute("DELETE FROM jobwire_jobs WHERE id = %s", (orphan,))

            history = "SELECT number, outcome::text, started_at, lease_token FROM {}"
            assert conn.execute(history.format("jobwire_attempts")).fetchall() == []
            running = (1, "RUNNING", started, token)
            assert conn.execute(history.format("jobwire_attempt_history")).fetchall() == [running]
            # An earlier version's ack settles the job and then its attempt's row: refused
            # whole, even though no row is left to update, so it settles nothing.
            assert "older than the database schema" in violates(
                conn,
                """WITH settled AS (
                       UPDATE jobwire_jobs SET state = 'SUCCEEDED', result = '1',
                              finished_at = now(), lease_token = NULL, lease_deadline = NULL
                       WHERE id = %s AND lease_token = %s RETURNING id, attempt)
                   UPDATE jobwire_attempts a SET outcome = 'SUCCEEDED', finished_at = now(),
                          next_state = 'SUCCEEDED'
                   FROM settled s WHERE a.job_id = s.id AND a.number = s.attempt""",
                job_id,
                token,
            )
            conn.execute(
                QUERIES["ack_jobs"],
                {"id": [job_id], "token": [token], "result": [b"1"], "result_type": [""]},
            )
            ended = (1, "SUCCEEDED", started, token)
            assert conn.execute(history.format("jobwire_attempt_history")).fetchall() == [ended]


def test_result_if_and_only_if_succeeded(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    job_id = insert_job(conn)
    violates(conn, "UPDATE jobwire_jobs SET result = 'x' WHERE id = %s", job_id)
    lease(conn, job_id)
    violates(
        conn,
        """UPDATE jobwire_jobs SET state = 'SUCCEEDED', finished_at = now(),
                      lease_token = NULL, lease_deadline = NULL WHERE id = %s""",
        job_id,
    )


def test_failed_needs_an_error(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    job_id = insert_job(conn)
    lease(conn, job_id)
    assert "error_on_failed" in violates(
        conn,
        """UPDATE jobwire_jobs SET state = 'FAILED', finished_at = now(),
                 lease_token = NULL, lease_deadline = NULL WHERE id = %s""",
        job_id,
    )


def test_terminal_states_are_final(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    job_id = insert_job(conn)
    conn.execute(
        """UPDATE jobwire_jobs SET state = 'CANCELLED', finished_at = now(),
                    error_message = 'x' WHERE id = %s""",
        (job_id,),
    )
    assert "final" in violates(
        conn, "UPDATE jobwire_jobs SET state = 'PENDING', finished_at = NULL WHERE id = %s", job_id
    )
    assert "final" in violates(conn, "UPDATE jobwire_jobs SET priority = 5 WHERE id = %s", job_id)


def test_write_once_fields_and_transitions(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    job_id = insert_job(conn)
    assert "write-once" in violates(
        conn, "UPDATE jobwire_jobs SET payload = 'other' WHERE id = %s", job_id
    )
    assert "write-once" in violates(
        conn, "UPDATE jobwire_jobs SET type = 'other' WHERE id = %s", job_id
    )
    assert "cannot go from PENDING to SUCCEEDED" in violates(
        conn,
        """UPDATE jobwire_jobs SET state = 'SUCCEEDED', result = 'x', finished_at = now()
                 WHERE id = %s""",
        job_id,
    )


def test_running_holds_exactly_one_lease(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    job_id = insert_job(conn)
    assert "lease_iff_running" in violates(
        conn, "UPDATE jobwire_jobs SET state = 'RUNNING' WHERE id = %s", job_id
    )
    # The running attempt lives on the job, with its start.
    assert "attempt_started" in violates(
        conn,
        """UPDATE jobwire_jobs SET state = 'RUNNING', attempt = 1, lease_token = gen_random_uuid(),
                  lease_deadline = now() + interval '30 seconds', worker_id = 'w' WHERE id = %s""",
        job_id,
    )
    lease(conn, job_id)
    # A row for the running attempt is refused, so a job cannot have two.
    assert "ended" in violates(
        conn,
        """INSERT INTO jobwire_attempts (job_id, number, lease_token, worker_id)
                 VALUES (%s, 2, gen_random_uuid(), 'other')""",
        job_id,
    )


def test_settled_attempts_are_history(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    job_id = insert_job(conn)
    token = lease(conn, job_id)
    conn.execute(
        "SELECT jobwire_end_attempt(%s, %s, false, false, true, NULL, 'x', 'k', '')",
        (job_id, token),
    )
    assert "written once" in violates(
        conn, "UPDATE jobwire_attempts SET outcome = 'SUCCEEDED' WHERE job_id = %s", job_id
    )


def test_retention_deletes_the_attempts_of_the_jobs_it_prunes(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """No foreign key deletes an attempt's row with its job (migration 0006): a trigger
    does, for the jobs deleted only, whatever statement deletes them."""
    finished, retried = insert_job(conn), insert_job(conn)
    token = lease(conn, finished)
    conn.execute(
        QUERIES["ack_jobs"],
        {"id": [finished], "token": [token], "result": [b"1"], "result_type": [""]},
    )
    conn.execute(
        "SELECT jobwire_end_attempt(%s, %s, false, false, true, NULL, 'x', 'k', '')",
        (retried, lease(conn, retried)),
    )
    attempts = "SELECT job_id FROM jobwire_attempts ORDER BY job_id"
    assert conn.execute(attempts).fetchall() == sorted([(finished,), (retried,)])

    pruned = conn.execute(
        QUERIES["prune_finished"], {"retention": timedelta(0), "limit": 10}
    ).rowcount
    assert pruned == 1
    assert conn.execute("SELECT id FROM jobwire_jobs").fetchall() == [(retried,)]
    assert conn.execute(attempts).fetchall() == [(retried,)]
    # An operator's statements, or an older replica's retention during an upgrade.
    conn.execute("DELETE FROM jobwire_jobs WHERE id = %s", (retried,))
    assert conn.execute(attempts).fetchall() == []
    again = insert_job(conn)
    conn.execute(
        "SELECT jobwire_end_attempt(%s, %s, false, false, true, NULL, 'x', 'k', '')",
        (again, lease(conn, again)),
    )
    conn.execute("TRUNCATE jobwire_jobs")
    assert conn.execute(attempts).fetchall() == []


def test_end_attempt_refuses_a_stale_token(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    job_id = insert_job(conn)
    lease(conn, job_id)
    row = conn.execute(
        "SELECT jobwire_end_attempt(%s, gen_random_uuid(), false, false, true, NULL, 'x', '', '')",
        (job_id,),
    ).fetchone()
    assert row == (None,)
    state = conn.execute("SELECT state FROM jobwire_jobs WHERE id = %s", (job_id,)).fetchone()
    assert state == ("RUNNING",)


def test_backoff_grows_and_is_capped(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    rows = conn.execute(
        """SELECT extract(epoch FROM jobwire_backoff('1 second', '10 seconds', 2.0, 0.0, n))
           FROM generate_series(1, 6) AS n"""
    ).fetchall()
    assert [float(r[0]) for r in rows] == [1, 2, 4, 8, 10, 10]
    big = conn.execute(
        "SELECT jobwire_backoff('1 second', '1 day', 10.0, 0.5, 100) <= interval '1 day'"
    ).fetchone()
    assert big == (True,)


def test_guard_only_fires_on_a_broken_rule(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """The guard's WHEN condition lets ordinary updates through without calling it."""
    job_id = insert_job(conn)
    conn.execute("UPDATE jobwire_jobs SET priority = 7 WHERE id = %s", (job_id,))
    token = lease(conn, job_id)
    conn.execute(
        "UPDATE jobwire_jobs SET lease_deadline = now() + interval '1 minute' WHERE id = %s",
        (job_id,),
    )
    state = conn.execute(
        "SELECT jobwire_end_attempt(%s, %s, false, false, true, NULL, 'x', 'k', '')",
        (job_id, token),
    ).fetchone()
    assert state == ("PENDING",)
    stamps = conn.execute(
        "SELECT updated_at > created_at FROM jobwire_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert stamps == (True,)


def _numbered(statement: str) -> tuple[str, list[str]]:
    """The statement with $1, $2... for its named parameters, and their names in order."""
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)[bs]", statement)))
    for number, name in enumerate(names, 1):
        statement = re.sub(rf"%\({name}\)[bs]", f"${number}", statement)
    return statement, names


def _generic_plan(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> str:
    """The plan PostgreSQL caches for a prepared statement, its parameters unknown."""
    rows = conn.execute(f"EXPLAIN (GENERIC_PLAN) {_numbered(statement)[0]}").fetchall()
    return "\n".join(str(row[0]) for row in rows)


def test_lease_lookups_stay_on_the_primary_key_when_nothing_ran(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Statistics taken with a backlog and nothing running make the RUNNING-only partial
    indexes look empty; a plan scanning one of them whole for every ack or expiry slowed
    those to seconds once many jobs had passed through."""
    conn.execute(
        """INSERT INTO jobwire_jobs (id, queue, type, payload, run_at, max_attempts,
               backoff_initial, backoff_max, backoff_multiplier, backoff_jitter, lease_timeout)
           SELECT gen_random_uuid(), 'q', 't', '{}', now(), 3, '1s', '1min', 2, 0, '30s'
           FROM generate_series(1, 20000)"""
    )
    conn.execute("ANALYZE jobwire_jobs")
    (source,) = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'jobwire_end_attempt'"
    ).fetchone() or ("",)
    lookup = re.search(r"SELECT \* INTO j (FROM jobwire_jobs.*?FOR UPDATE)", str(source), re.S)
    assert lookup, "jobwire_end_attempt no longer looks the job up as expected"
    end_attempt = "SELECT * " + lookup[1].replace("p_id", "%(id)s").replace("p_token", "%(t)s")
    # get_attempts reads a view: the job's id must reach both of its arms.
    for name in ("ack_jobs", "nack_jobs", "extend_leases", "explain_refusals", "get_attempts"):
        plan = _generic_plan(conn, QUERIES[name])
        assert "jobwire_jobs_worker" not in plan and "jobwire_jobs_leases" not in plan, (
            name,
            plan,
        )
        assert "Seq Scan on jobwire_jobs" not in plan, (name, plan)
    plan = _generic_plan(conn, end_attempt)
    assert "Index Scan using jobwire_jobs_pkey" in plan, plan


def test_retention_deletes_its_batch_through_the_primary_keys(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """A batch of 500 finished jobs joined with the tables was planned as hash joins over
    a sequential scan of each table, on every prune: its deletes look the batch up by key."""
    conn.execute(
        """INSERT INTO jobwire_jobs (id, queue, type, payload, run_at, max_attempts,
               backoff_initial, backoff_max, backoff_multiplier, backoff_jitter, lease_timeout,
               state, attempt, result, finished_at)
           SELECT gen_random_uuid(), 'q', 't', '{}', now(), 3, '1s', '1min', 2, 0, '30s',
                  'SUCCEEDED', 1, '1', now()
           FROM generate_series(1, 20000)"""
    )
    conn.execute(
        """INSERT INTO jobwire_attempts (job_id, number, lease_token, worker_id, started_at,
               finished_at, outcome, next_state)
           SELECT id, 1, gen_random_uuid(), 'w', now(), now(), 'SUCCEEDED', 'SUCCEEDED'
           FROM jobwire_jobs"""
    )
    conn.execute("ANALYZE jobwire_jobs")
    conn.execute("ANALYZE jobwire_attempts")
    plan = _generic_plan(conn, QUERIES["prune_finished"])
    assert "Seq Scan" not in plan and "jobwire_jobs_pkey" in plan, plan
    # The attempts go in the trigger, whose statement reads the deleted jobs' table.
    (source,) = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'jobwire_delete_attempts_of_deleted_jobs'"
    ).fetchone() or ("",)
    delete = re.search(r"DELETE FROM jobwire_attempts .*? FROM deleted_jobs\)\)", str(source))
    assert delete, "the trigger no longer deletes the attempts as expected"
    batch = "(SELECT id FROM jobwire_jobs LIMIT 500) AS deleted_jobs"
    plan = _generic_plan(conn, delete[0].replace("deleted_jobs", batch, 1))
    assert "Seq Scan on jobwire_attempts" not in plan, plan
    assert "jobwire_attempts_pkey" in plan, plan


def test_a_lost_stream_finds_its_jobs_among_the_running_ones_only(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Migration 0005 dropped the index of running jobs by worker, which every lease paid
    for: the pull-in of a lost stream's leases reads the index of running jobs instead,
    never the backlog or the rest of the table."""
    conn.execute(
        """INSERT INTO jobwire_jobs (id, queue, type, payload, run_at, max_attempts,
               backoff_initial, backoff_max, backoff_multiplier, backoff_jitter, lease_timeout)
           SELECT gen_random_uuid(), 'q', 't', '{}', now(), 3, '1s', '1min', 2, 0, '30s'
           FROM generate_series(1, 20000)"""
    )
    conn.execute(
        """UPDATE jobwire_jobs SET state = 'RUNNING', attempt = 1, lease_token = gen_random_uuid(),
               lease_deadline = now() + interval '30 seconds', attempt_started_at = now(),
               worker_id = 'w' || (random() * 20)::int
           WHERE id IN (SELECT id FROM jobwire_jobs LIMIT 2000)"""
    )
    conn.execute("ANALYZE jobwire_jobs")
    indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")}
    assert "jobwire_jobs_worker" not in indexes
    plan = _generic_plan(conn, QUERIES["pull_in_leases"])
    assert "using jobwire_jobs_leases" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_settling_a_big_batch_stays_linear_when_statistics_saw_nothing_run(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Statistics taken while nothing ran say that no job holds a lease. A plan trusting
    them matched every running job against every item of a batch (992 acks with 17,696
    jobs running: 17.5 million comparisons, 3.5 s); acks that queued meanwhile made the
    next batch as big. The work must follow the batch, not the batch times the jobs."""
    conn.execute(
        """INSERT INTO jobwire_jobs (id, queue, type, payload, run_at, max_attempts,
               backoff_initial, backoff_max, backoff_multiplier, backoff_jitter, lease_timeout)
           SELECT gen_random_uuid(), 'q', 't', '{}', now(), 3, '1s', '1min', 2, 0, '30s'
           FROM generate_series(1, 5000)"""
    )
    conn.execute("ANALYZE jobwire_jobs")
    leased = conn.execute(
        QUERIES["lease_jobs"], {"queue": "q", "types": ["t"], "worker_id": "w", "limit": 5000}
    ).fetchall()
    assert len(leased) == 5000
    names = [
        column.name
        for column in conn.execute("SELECT * FROM jobwire_jobs LIMIT 0").description or ()
    ]
    batch = [dict(zip(names, row, strict=True)) for row in leased[:1000]]
    ids, tokens = [r["id"] for r in batch], [r["lease_token"] for r in batch]
    statements = {
        "ack_jobs": {
            "id": ids,
            "token": tokens,
            "result": [b"null"] * len(batch),
            "result_type": ["application/json"] * len(batch),
        },
        "extend_leases": {
            "id": ids,
            "token": tokens,
            "extend_by": [timedelta(seconds=30)] * len(batch),
            "worker_id": ["w"] * len(batch),
        },
    }
    for name, params in statements.items():
        with conn.transaction(force_rollback=True):
            rows = conn.execute(f"EXPLAIN (ANALYZE) {QUERIES[name]}", params).fetchall()
        plan = "\n".join(str(row[0]) for row in rows)
        compared = sum(int(n) for n in re.findall(r"Rows Removed by Join Filter: (\d+)", plan))
        assert compared < 10 * len(batch), (name, plan)


def test_the_metrics_reading_skips_succeeded_jobs(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Every replica reads the queue depths every few seconds; the succeeded jobs that
    retention keeps are most of the table and must not be read for it."""
    conn.execute(
        """INSERT INTO jobwire_jobs (id, queue, type, payload, run_at, max_attempts,
               backoff_initial, backoff_max, backoff_multiplier, backoff_jitter, lease_timeout,
               state, attempt, started_at, finished_at, result)
           SELECT gen_random_uuid(), 'q', 't', '{}', now(), 3, '1s', '1min', 2, 0, '30s',
                  'SUCCEEDED', 1, now(), now(), '{}'
           FROM generate_series(1, 20000)"""
    )
    conn.execute("ANALYZE jobwire_jobs")
    # The plan a prepared statement may end up with, its parameters unknown when planned.
    statement, names = _numbered(QUERIES["queue_stats"])
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE reading AS {statement}")
    values = {"queue": "NULL", "with_succeeded": "false"}
    rows = conn.execute(
        f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE reading({', '.join(values[n] for n in names)})"
    ).fetchall()
    plan = "\n".join(str(row[0]) for row in rows)
    reads = [line for line in plan.splitlines() if " on jobwire_jobs" in line]
    assert reads and all("Index" in line or "never executed" in line for line in reads), plan
    total = re.search(r"Buffers: shared hit=(\d+)", plan)
    assert total and int(total[1]) < 20, plan  # the table itself is over 200 pages
