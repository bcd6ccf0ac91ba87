-- Lookups of a job's current lease stay on the primary key.
--
-- They used to say `state = 'RUNNING'`, which lets the planner pick one of the partial
-- indexes WHERE state = 'RUNNING' instead of the primary key. With statistics taken
-- while nothing ran (a backlog loaded and analyzed before the workers came), those
-- indexes look empty, and the cached generic plan scanned one whole, dead entries
-- included, for every ack, nack, extension and expiry: with a million jobs pending,
-- acks took seconds and leases expired while their outcomes waited. A token with a
-- deadline means RUNNING (CHECK lease_iff_running), and says nothing an index on
-- `state` can match. The statements in queries.sql say the same.

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

    UPDATE jobwire_attempts SET
        outcome = v_outcome,
        finished_at = now(),
        next_state = v_next,
        error_message = CASE WHEN v_outcome = 'RELEASED' THEN NULL ELSE err_message END,
        error_kind = CASE WHEN v_outcome = 'RELEASED' THEN NULL ELSE err_kind END,
        error_details = CASE WHEN v_outcome = 'RELEASED' THEN NULL ELSE err_details END
    WHERE job_id = p_id AND number = j.attempt;

    RETURN v_next;
END
$$;
