-- An attempt's row in jobwire_attempts is written once, when the attempt ends.
--
-- It used to be inserted by the lease and updated by the ack or nack: for every job, a
-- row and three index entries written at the lease, then a new row version (not HOT,
-- since the outcome was in an index predicate) with two more entries at the end, and a
-- dead version for vacuum. That was a third of the database's work per job in a drain.
-- While an attempt runs, everything its row held is on the job already (the attempt
-- number, the lease token, the worker) except when it started, which the lease now
-- stamps in attempt_started_at; the view jobwire_attempt_history shows both kinds.
--
-- Upgrading: stop the replicas of earlier versions before this is applied. They would
-- lease with a row that has not ended, which the check below refuses, and settle an ack
-- by updating that row: the trigger below refuses any update of the history, so their
-- acks fail whole (and are resent to a newer replica) instead of settling a job without
-- recording its attempt.

ALTER TABLE jobwire_jobs ADD COLUMN attempt_started_at timestamptz;

-- The attempts running now move to their jobs. A running job always had its row; were
-- one missing, its last update stands in for the start rather than leave it unknown.
-- Both statements read partial indexes of running jobs and attempts, not whole tables.
UPDATE jobwire_jobs j SET attempt_started_at = coalesce(
    (SELECT a.started_at FROM jobwire_attempts a
     WHERE a.job_id = j.id AND a.number = j.attempt AND a.outcome = 'RUNNING'),
    j.updated_at)
WHERE j.state = 'RUNNING';
DELETE FROM jobwire_attempts WHERE outcome = 'RUNNING';

-- A running attempt's start is known: the attempt's row, written when it ends, needs it.
ALTER TABLE jobwire_jobs ADD CONSTRAINT attempt_started
    CHECK (lease_token IS NULL OR attempt_started_at IS NOT NULL) NOT VALID;

-- Only attempts that ended are stored. At most one attempt of a job runs, as a job holds
-- at most one lease token. NOT VALID: the statements above are the check of the rows
-- there are, and a validation would read the whole table under this migration's lock.
DROP INDEX jobwire_attempts_one_live;
ALTER TABLE jobwire_attempts ADD CONSTRAINT ended CHECK (outcome <> 'RUNNING') NOT VALID;

-- Written once, never updated: refused per statement, so that a statement that would
-- update no row fails too (an earlier version's ack, see Upgrading above).
CREATE FUNCTION jobwire_attempts_are_written_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'attempts are written once, when they end; this scheduler is older '
                    'than the database schema (migration 0004): stop it'
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER jobwire_attempts_are_written_once BEFORE UPDATE ON jobwire_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION jobwire_attempts_are_written_once();

-- Every attempt of every job, the running one included, oldest first by number.
CREATE VIEW jobwire_attempt_history AS
SELECT job_id, number, lease_token, worker_id, started_at, finished_at, outcome, next_state,
       error_message, error_kind, error_details
FROM jobwire_attempts
UNION ALL
SELECT j.id, j.attempt, j.lease_token, j.worker_id, j.attempt_started_at, NULL,
       'RUNNING'::jobwire_outcome, NULL, NULL, NULL, NULL
FROM jobwire_jobs j
-- A lease token is set exactly while the job runs (CHECK lease_iff_running).
WHERE j.lease_token IS NOT NULL;

-- The rules of 0001, the lookup of 0002; the attempt's row is written here now.
CREATE OR REPLACE FUNCTION jobwire_end_attempt(
    p_id uuid, p_token uuid, p_expired boolean, p_release boolean, p_retryable boolean,
    p_delay interval, p_error_message text, p_error_kind text, p_error_details text
) RETURNS jobwire_state LANGUAGE plpgsql AS $$
DECLARE
    j jobwire_jobs;
    v_next jobwire_state;
    v_outcome jobwire_outcome;
    err_message text := p_error_message;
    err_kind text := p_error_kind;
    err_details text := p_error_details;
BEGIN
    -- The current lease, spelled without `state`: see migration 0002.
    SELECT * INTO j FROM jobwire_jobs
     WHERE id = p_id AND lease_token = p_token AND lease_deadline IS NOT NULL
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    IF j.cancel_requested THEN
        v_next := 'CANCELLED';
        v_outcome := 'CANCELLED';
        err_message := 'cancelled' || coalesce(': ' || nullif(j.cancel_reason, ''), '');
        err_kind := 'cancelled';
        err_details := '';
    ELSIF p_release THEN
        v_next := 'PENDING';
        v_outcome := 'RELEASED';
    ELSIF p_retryable AND j.attempt - j.released < j.max_attempts THEN
        v_next := 'PENDING';
        v_outcome := CASE WHEN p_expired THEN 'LEASE_EXPIRED' ELSE 'FAILED' END;
    ELSE
        v_next := 'FAILED';
        v_outcome := CASE WHEN p_expired THEN 'LEASE_EXPIRED' ELSE 'FAILED' END;
    END IF;

    UPDATE jobwire_jobs SET
        state = v_next,
        lease_token = NULL,
        lease_deadline = NULL,
        released = released + CASE WHEN v_outcome = 'RELEASED' THEN 1 ELSE 0 END,
        run_at = CASE
            WHEN v_outcome = 'RELEASED' THEN now()
            WHEN v_next = 'PENDING' THEN now() + coalesce(p_delay, jobwire_backoff(
                j.backoff_initial, j.backoff_max, j.backoff_multiplier, j.backoff_jitter,
                j.attempt - j.released))
            ELSE run_at END,
        finished_at = CASE WHEN v_next IN ('FAILED', 'CANCELLED') THEN now() END,
        -- A hand-back is no failure: the job keeps the error it had.
        error_message = CASE WHEN v_outcome = 'RELEASED' THEN error_message ELSE err_message END,
        error_kind = CASE WHEN v_outcome = 'RELEASED' THEN error_kind ELSE err_kind END,
        error_details = CASE WHEN v_outcome = 'RELEASED' THEN error_details ELSE err_details END,
        updated_at = clock_timestamp()
    WHERE id = p_id;

    IF v_outcome = 'RELEASED' THEN
        err_message := NULL;
        err_kind := NULL;
        err_details := NULL;
    END IF;
    INSERT INTO jobwire_attempts (
        job_id, number, lease_token, worker_id, started_at, finished_at, outcome, next_state,
        error_message, error_kind, error_details
    ) VALUES (
        p_id, j.attempt, p_token, j.worker_id, j.attempt_started_at, now(),
        v_outcome, v_next, err_message, err_kind, err_details
    );

    RETURN v_next;
END
$$;
