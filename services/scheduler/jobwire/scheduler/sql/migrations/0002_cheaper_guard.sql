-- The guard trigger ran PL/pgSQL for every updated row, which cost more than the update
-- itself on the hot paths (leasing, acks). Now a WHEN condition, evaluated without
-- PL/pgSQL, calls it only for an update that breaks a rule, so it only raises. The
-- statements set updated_at themselves.

DROP TRIGGER jobwire_guard_job ON jobwire_jobs;

CREATE OR REPLACE FUNCTION jobwire_guard_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'job % is % and final', OLD.id, OLD.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state AND NOT (
        (OLD.state = 'PENDING' AND NEW.state IN ('RUNNING', 'CANCELLED')) OR
        (OLD.state = 'RUNNING' AND NEW.state IN ('PENDING', 'SUCCEEDED', 'FAILED', 'CANCELLED'))
    ) THEN
        RAISE EXCEPTION 'job % cannot go from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.attempt < OLD.attempt THEN
        RAISE EXCEPTION 'attempt of job % cannot go back', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.started_at IS NOT NULL AND NEW.started_at IS DISTINCT FROM OLD.started_at THEN
        RAISE EXCEPTION 'started_at of job % cannot change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'write-once fields of job % cannot change', OLD.id
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER jobwire_guard_job BEFORE UPDATE ON jobwire_jobs
    FOR EACH ROW
    WHEN (
        OLD.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
        OR (NEW.state IS DISTINCT FROM OLD.state AND NOT (
            (OLD.state = 'PENDING' AND NEW.state IN ('RUNNING', 'CANCELLED')) OR
            (OLD.state = 'RUNNING' AND NEW.state IN ('PENDING', 'SUCCEEDED', 'FAILED', 'CANCELLED'))
        ))
        OR NEW.attempt < OLD.attempt
        OR (OLD.started_at IS NOT NULL AND NEW.started_at IS DISTINCT FROM OLD.started_at)
        OR (NEW.id, NEW.queue, NEW.type, NEW.tenant, NEW.payload, NEW.payload_type,
            NEW.max_attempts, NEW.idempotency_key, NEW.created_at, NEW.retried_from,
            NEW.trace_id)
           IS DISTINCT FROM
           (OLD.id, OLD.queue, OLD.type, OLD.tenant, OLD.payload, OLD.payload_type,
            OLD.max_attempts, OLD.idempotency_key, OLD.created_at, OLD.retried_from,
            OLD.trace_id)
    )
    EXECUTE FUNCTION jobwire_guard_job();

-- jobwire_end_attempt() now stamps updated_at like every other statement.
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
    SELECT * INTO j FROM jobwire_jobs
     WHERE id = p_id AND lease_token = p_token AND state = 'RUNNING'
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
