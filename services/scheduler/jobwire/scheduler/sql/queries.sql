-- Every statement the scheduler runs, by name. Loaded once by jobwire.scheduler.queries;
-- a block starts at a "-- name: NAME" line. Parameters are psycopg %(name)s placeholders;
-- the arrays of the hot statements are %(name)b, sent in binary: psycopg builds a binary
-- array several times faster than a quoted text one.

-- name: insert_jobs
-- Inserts a batch; rows whose idempotency key is taken are skipped (and looked up after).
INSERT INTO jobwire_jobs (
    id, queue, type, tenant, payload, payload_type, priority, run_at, max_attempts,
    backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,
    lease_timeout, execution_timeout, idempotency_key, spec_digest, labels, trace_id
)
SELECT id, queue, type, tenant, payload, payload_type, priority, coalesce(run_at, now()),
       max_attempts, backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,
       lease_timeout, execution_timeout, idempotency_key, spec_digest, labels, trace_id
FROM unnest(
    %(id)b::uuid[], %(queue)b::text[], %(type)b::text[], %(tenant)b::text[],
    %(payload)b::bytea[], %(payload_type)b::text[], %(priority)b::int[],
    %(run_at)b::timestamptz[], %(max_attempts)b::int[],
    %(backoff_initial)b::interval[], %(backoff_max)b::interval[],
    %(backoff_multiplier)b::float8[], %(backoff_jitter)b::float8[],
    %(lease_timeout)b::interval[], %(execution_timeout)b::interval[],
    %(idempotency_key)b::text[], %(spec_digest)b::bytea[], %(labels)b::jsonb[], %(trace_id)b::text[]
) AS t (id, queue, type, tenant, payload, payload_type, priority, run_at, max_attempts,
        backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,
        lease_timeout, execution_timeout, idempotency_key, spec_digest, labels, trace_id)
ON CONFLICT (tenant, queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *

-- name: insert_job
-- One job, the common submit: the same insert with scalar parameters, which psycopg adapts
-- in C, several times faster than the arrays above.
INSERT INTO jobwire_jobs (
    id, queue, type, tenant, payload, payload_type, priority, run_at, max_attempts,
    backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,
    lease_timeout, execution_timeout, idempotency_key, spec_digest, labels, trace_id
) VALUES (
    %(id)b::uuid, %(queue)b::text, %(type)b::text, %(tenant)b::text,
    %(payload)b::bytea, %(payload_type)b::text, %(priority)b::int,
    coalesce(%(run_at)b::timestamptz, now()), %(max_attempts)b::int,
    %(backoff_initial)b::interval, %(backoff_max)b::interval,
    %(backoff_multiplier)b::float8, %(backoff_jitter)b::float8,
    %(lease_timeout)b::interval, %(execution_timeout)b::interval,
    %(idempotency_key)b::text, %(spec_digest)b::bytea, %(labels)b::jsonb, %(trace_id)b::text
)
ON CONFLICT (tenant, queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *

-- name: copy_jobs
-- Big key-less batches whose producer wants ids only: COPY in binary, which psycopg
-- formats in C. The columns are in the order of store._COPY_TYPES; the idempotency key
-- and digest stay NULL.
COPY jobwire_jobs (
    id, queue, type, tenant, payload, payload_type, priority, run_at, max_attempts,
    backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,
    lease_timeout, execution_timeout, labels, trace_id
) FROM STDIN (FORMAT BINARY)

-- name: notify_still_pending
-- The NOTIFY of a submit that ran claims of its own (store.submit_and_lease), after them:
-- only the queues where one of its jobs is still pending. Jobs its claims handed to idle
-- workers would only send every other replica's dispatcher to find the queue empty.
SELECT count(pg_notify('jobwire_submitted', %(origin)s::text || ' ' || queue))
FROM (SELECT DISTINCT queue FROM jobwire_jobs
      WHERE id = ANY(%(ids)b::uuid[]) AND state = 'PENDING') AS q

-- name: transaction_start
-- What now() is for every statement of the transaction: the run_at of a job without one.
SELECT now() AS now

-- name: jobs_by_idempotency_key
SELECT j.* FROM jobwire_jobs j
JOIN unnest(%(tenant)b::text[], %(queue)b::text[], %(idempotency_key)b::text[]) AS k(tenant, queue, key)
  ON j.tenant = k.tenant AND j.queue = k.queue AND j.idempotency_key = k.key

-- name: notify_submitted
-- The payload is "ORIGIN QUEUE": a replica skips the notifications of its own submits,
-- which woke its dispatcher already.
SELECT pg_notify('jobwire_submitted', %(origin)s::text || ' ' || q) FROM unnest(%(queues)b::text[]) AS q

-- name: get_job
SELECT * FROM jobwire_jobs WHERE id = %(id)s

-- name: get_attempts
SELECT * FROM jobwire_attempt_history WHERE job_id = %(id)s ORDER BY number

-- name: list_jobs
-- Newest first; the cursor is the (created_at, id) of the last row of the previous page.
SELECT * FROM jobwire_jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(type)s::text IS NULL OR type = %(type)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
  AND (%(states)s::jobwire_state[] IS NULL OR state = ANY(%(states)s::jobwire_state[]))
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: lease_jobs
-- Claims up to %(limit)s ready jobs of one queue for a worker. The predicate and order
-- match the partial index jobwire_jobs_ready exactly; the type filter only skips rows.
WITH picked AS (
    SELECT id FROM jobwire_jobs
    WHERE state = 'PENDING' AND queue = %(queue)s AND run_at <= now()
      AND type = ANY(%(types)b::text[])
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE jobwire_jobs j SET
        state = 'RUNNING',
        attempt = j.attempt + 1,
        lease_token = gen_random_uuid(),
        lease_deadline = now() + j.lease_timeout,
        worker_id = %(worker_id)s,
        started_at = coalesce(j.started_at, now()),
        -- The attempt's row in jobwire_attempts is written when it ends (migration 0004).
        attempt_started_at = now(),
        updated_at = clock_timestamp()
    FROM picked WHERE j.id = picked.id
    RETURNING j.*
)
SELECT * FROM leased ORDER BY priority DESC, run_at, id

-- name: ack_jobs
-- Records success for every item whose token is the job's current lease.
WITH input AS (
    SELECT * FROM unnest(%(id)b::uuid[], %(token)b::uuid[], %(result)b::bytea[],
                         %(result_type)b::text[]) AS t(id, token, result, result_type)
), settled AS (
    UPDATE jobwire_jobs j SET
        state = 'SUCCEEDED',
        result = i.result,
        result_type = i.result_type,
        finished_at = now(),
        lease_token = NULL,
        lease_deadline = NULL,
        error_message = NULL,
        error_kind = NULL,
        error_details = NULL,
        updated_at = clock_timestamp()
    FROM input i
    -- The current lease: a job has a token only while it runs, as every statement that
    -- ends an attempt clears it (and the guard trigger refuses to settle a job that does
    -- not run). No other condition on the job: PostgreSQL would estimate it from the lease
    -- columns' statistics, which swing from all-null (taken while nothing ran) to mostly
    -- set within seconds. Estimating that "1 row" of jobwire_jobs holds a lease, it
    -- matched every running job against every item of a batch: 992 acks with 17,696
    -- jobs running took 3.5 s instead of 40 ms, and the acks that queued meanwhile made
    -- the next batch as big. A `state` condition did worse through a RUNNING-only index.
    WHERE j.id = i.id AND j.lease_token = i.token
    RETURNING j.id, j.attempt, i.token, j.queue, j.type, j.worker_id, j.attempt_started_at
), history AS (
    -- The attempt's row, written as it ends (migration 0004).
    INSERT INTO jobwire_attempts (job_id, number, lease_token, worker_id, started_at,
                                  finished_at, outcome, next_state)
    SELECT id, attempt, token, worker_id, attempt_started_at, now(), 'SUCCEEDED', 'SUCCEEDED'
    FROM settled
)
SELECT id, token, queue, type,
       extract(epoch FROM now() - attempt_started_at)::float8 AS run_seconds
FROM settled

-- name: nack_jobs
-- Ends attempts without success; the rules live in jobwire_end_attempt(). The join reads
-- the job as it was before it (the statement's snapshot): queue, type and the attempt's
-- start, for metrics, and whether a job going back to PENDING is due at once
-- (handed back, or no delay: the backoff is zero only when its initial or its cap is).
SELECT t.id, t.token, j.queue, j.type,
       extract(epoch FROM now() - j.attempt_started_at)::float8 AS run_seconds,
       t.release OR coalesce(t.delay, least(j.backoff_initial, j.backoff_max))
           <= interval '0' AS due_at_once,
       jobwire_end_attempt(t.id, t.token, false, t.release, t.retryable, t.delay,
                           t.message, t.kind, t.details) AS next_state
FROM unnest(%(id)b::uuid[], %(token)b::uuid[], %(release)b::bool[], %(retryable)b::bool[],
            %(delay)b::interval[], %(message)b::text[], %(kind)b::text[], %(details)b::text[])
     AS t(id, token, release, retryable, delay, message, kind, details)
LEFT JOIN jobwire_jobs j ON j.id = t.id

-- name: extend_leases
UPDATE jobwire_jobs j SET
    lease_deadline = now() + coalesce(i.extend_by, j.lease_timeout),
    worker_id = coalesce(i.worker_id, j.worker_id),
    updated_at = clock_timestamp()
FROM unnest(%(id)b::uuid[], %(token)b::uuid[], %(extend_by)b::interval[],
            %(worker_id)b::text[]) AS i(id, token, extend_by, worker_id)
-- The current lease, spelled as in ack_jobs (see there) to stay on the primary key.
WHERE j.id = i.id AND j.lease_token = i.token
RETURNING j.id, i.token, j.lease_deadline, j.cancel_requested

-- name: explain_refusals
-- Why items were not settled: which jobs exist, and how the named attempt ended. The
-- running attempt is the job's lease; the ended ones are rows of jobwire_attempts.
SELECT i.id, i.token, j.id IS NOT NULL AS job_exists, j.state, j.attempt AS job_attempt,
       CASE WHEN j.lease_token = i.token THEN j.attempt ELSE a.number END AS attempt,
       CASE WHEN j.lease_token = i.token THEN 'RUNNING'::jobwire_outcome ELSE a.outcome END
           AS outcome
FROM unnest(%(id)b::uuid[], %(token)b::uuid[]) AS i(id, token)
LEFT JOIN jobwire_jobs j ON j.id = i.id
LEFT JOIN jobwire_attempts a ON a.job_id = i.id AND a.lease_token = i.token

-- name: expire_leases
-- The reaper: ends attempts whose lease deadline passed, oldest first, a batch at a time.
-- A job that goes back to PENDING waits out its backoff, which is zero only when the
-- backoff's initial delay or cap is (due_at_once, as in nack_jobs).
WITH expired AS (
    SELECT id, queue, type, lease_token, worker_id, lease_deadline,
           least(backoff_initial, backoff_max) <= interval '0' AS due_at_once
    FROM jobwire_jobs
    WHERE state = 'RUNNING' AND lease_deadline < now()
    ORDER BY lease_deadline
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
SELECT id, queue, type, lease_token, due_at_once,
       jobwire_end_attempt(id, lease_token, true, false, true, NULL,
           format('lease expired at %%s (worker %%s)', lease_deadline, worker_id),
           'lease_expired', '') AS next_state
FROM expired

-- name: pull_in_leases
-- Workers' streams ended: their leases end soon unless they come back and extend them.
-- Leases that newer streams of the same workers hold are kept. One statement for every
-- stream that ended meanwhile: it passes over all running jobs (jobwire_jobs_leases,
-- filtered by worker; migration 0005), so a hundred workers cut off at once must not
-- make it a hundred passes.
UPDATE jobwire_jobs SET lease_deadline = least(lease_deadline, now() + %(grace)s::interval),
                        updated_at = clock_timestamp()
WHERE state = 'RUNNING' AND worker_id = ANY(%(workers)b::text[]) AND id <> ALL(%(keep)b::uuid[])

-- name: cancel_job
-- PENDING: cancelled at once. RUNNING: flagged; the attempt ends as CANCELLED.
UPDATE jobwire_jobs SET
    state = CASE WHEN state = 'PENDING' THEN 'CANCELLED'::jobwire_state ELSE state END,
    finished_at = CASE WHEN state = 'PENDING' THEN now() END,
    error_message = CASE WHEN state = 'PENDING'
                         THEN 'cancelled' || coalesce(': ' || nullif(%(reason)s, ''), '')
                         ELSE error_message END,
    error_kind = CASE WHEN state = 'PENDING' THEN 'cancelled' ELSE error_kind END,
    error_details = CASE WHEN state = 'PENDING' THEN '' ELSE error_details END,
    cancel_requested = (state = 'RUNNING'),
    cancel_reason = %(reason)s,
    updated_at = clock_timestamp()
WHERE id = %(id)s AND state IN ('PENDING', 'RUNNING') AND NOT cancel_requested
RETURNING *

-- name: notify_cancel
SELECT pg_notify('jobwire_cancel', json_build_object('id', %(id)s::text, 'reason', %(reason)s::text)::text)

-- name: retry_job
INSERT INTO jobwire_jobs (
    id, queue, type, tenant, payload, payload_type, priority, run_at, max_attempts,
    backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,
    lease_timeout, execution_timeout, labels, trace_id, retried_from
)
SELECT %(new_id)s, queue, type, tenant, payload, payload_type, priority, now(), max_attempts,
       backoff_initial, backoff_max, backoff_multiplier, backoff_jitter,
       lease_timeout, execution_timeout, labels, trace_id, id
FROM jobwire_jobs WHERE id = %(id)s AND state IN ('FAILED', 'CANCELLED')
ON CONFLICT (retried_from) WHERE retried_from IS NOT NULL DO NOTHING
RETURNING *

-- name: retry_of
SELECT id FROM jobwire_jobs WHERE retried_from = %(id)s

-- name: queue_stats
-- Jobs per queue and state. Each arm reads one partial index (ready, leases,
-- unsuccessful), so the cost follows the unfinished, failed and cancelled jobs rather
-- than the table. Succeeded jobs, most of a table kept for retention, are only counted
-- when `with_succeeded` asks (the Stats call; the metrics never do).
SELECT queue,
       sum(ready)::bigint AS ready,
       sum(scheduled)::bigint AS scheduled,
       sum(running)::bigint AS running,
       sum(succeeded)::bigint AS succeeded,
       sum(failed)::bigint AS failed,
       sum(cancelled)::bigint AS cancelled,
       extract(epoch FROM now() - min(oldest_ready)) AS oldest_ready_seconds
FROM (
    SELECT queue,
           count(*) FILTER (WHERE run_at <= now()) AS ready,
           count(*) FILTER (WHERE run_at > now()) AS scheduled,
           0 AS running, 0 AS succeeded, 0 AS failed, 0 AS cancelled,
           -- Waiting since run_at, or since the job was submitted when run_at was earlier.
           min(greatest(run_at, created_at)) FILTER (WHERE run_at <= now()) AS oldest_ready
    FROM jobwire_jobs WHERE state = 'PENDING' GROUP BY queue
    UNION ALL
    SELECT queue, 0, 0, count(*), 0, 0, 0, NULL
    FROM jobwire_jobs WHERE state = 'RUNNING' GROUP BY queue
    UNION ALL
    SELECT queue, 0, 0, 0, 0,
           count(*) FILTER (WHERE state = 'FAILED'), count(*) FILTER (WHERE state = 'CANCELLED'),
           NULL
    FROM jobwire_jobs WHERE state IN ('FAILED', 'CANCELLED') GROUP BY queue
    UNION ALL
    SELECT queue, 0, 0, 0, count(*), 0, 0, NULL
    FROM jobwire_jobs WHERE state = 'SUCCEEDED' AND %(with_succeeded)s GROUP BY queue
) AS counts
WHERE %(queue)s::text IS NULL OR queue = %(queue)s
GROUP BY queue
ORDER BY queue

-- name: page_token_secret
SELECT value FROM jobwire_secrets WHERE name = 'page_token'

-- name: applied_migrations
-- Readiness: the database answers and has every migration this version ships.
SELECT version FROM jobwire_migrations

-- name: prune_finished
-- Retention: deletes a small batch of the oldest finished jobs; a trigger deletes their
-- attempts' rows (migration 0006). SKIP LOCKED keeps replicas from waiting on each other;
-- leasing never touches these rows. The batch is an array rather than a join: a join of
-- a small batch with the whole table was planned as a hash join over a sequential scan.
WITH doomed AS (
    SELECT id FROM jobwire_jobs
    WHERE finished_at < now() - %(retention)s::interval
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobwire_jobs WHERE id = ANY(ARRAY(SELECT id FROM doomed))
