-- The jobs table, its attempt history, and the invariants PostgreSQL can hold for us.

CREATE TYPE jobwire_state AS ENUM ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED');
CREATE TYPE jobwire_outcome AS ENUM (
    'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'LEASE_EXPIRED', 'RELEASED'
);

CREATE TABLE jobwire_jobs (
    id                   uuid PRIMARY KEY,
    queue                text NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),
    type                 text NOT NULL CHECK (length(type) BETWEEN 1 AND 128),
    tenant               text NOT NULL DEFAULT '',
    payload              bytea NOT NULL,
    payload_type         text NOT NULL DEFAULT '',
    priority             integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    run_at               timestamptz NOT NULL,
    max_attempts         integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    backoff_initial      interval NOT NULL,
    backoff_max          interval NOT NULL,
    backoff_multiplier   double precision NOT NULL CHECK (backoff_multiplier BETWEEN 1 AND 10),
    backoff_jitter       double precision NOT NULL CHECK (backoff_jitter BETWEEN 0 AND 1),
    lease_timeout        interval NOT NULL,
    execution_timeout    interval,
    idempotency_key      text,
    -- Digest of the submitted spec: tells a resubmission from a conflicting reuse of the key.
    spec_digest          bytea,
    labels               jsonb NOT NULL DEFAULT '{}',
    trace_id             text NOT NULL DEFAULT '',
    retried_from         uuid,

    state                jobwire_state NOT NULL DEFAULT 'PENDING',
    -- Number of the latest attempt (history length); `released` of them were handed
    -- back without counting against max_attempts.
    attempt              integer NOT NULL DEFAULT 0,
    released             integer NOT NULL DEFAULT 0,
    lease_token          uuid,
    lease_deadline       timestamptz,
    worker_id            text,
    cancel_requested     boolean NOT NULL DEFAULT false,
    cancel_reason        text,

    result               bytea,
    result_type          text,
    error_message        text,
    error_kind           text,
    error_details        text,

    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,

    CONSTRAINT result_iff_succeeded CHECK ((state = 'SUCCEEDED') = (result IS NOT NULL)),
    CONSTRAINT error_on_failed CHECK (state <> 'FAILED' OR error_message IS NOT NULL),
    CONSTRAINT lease_iff_running CHECK (
        (state = 'RUNNING') = (lease_token IS NOT NULL AND lease_deadline IS NOT NULL)
    ),
    CONSTRAINT finished_iff_terminal CHECK (
        (state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')) = (finished_at IS NOT NULL)
    ),
    CONSTRAINT counted_attempts CHECK (released BETWEEN 0 AND attempt)
);

-- Leasing: the claim's predicate and ORDER BY match this index exactly.
CREATE INDEX jobwire_jobs_ready ON jobwire_jobs (queue, priority DESC, run_at, id)
    WHERE state = 'PENDING';
-- The reaper: running jobs by lease deadline.
CREATE INDEX jobwire_jobs_leases ON jobwire_jobs (lease_deadline) WHERE state = 'RUNNING';
-- Stream loss: a worker's running jobs.
CREATE INDEX jobwire_jobs_worker ON jobwire_jobs (worker_id) WHERE state = 'RUNNING';
-- Idempotency keys are unique per tenant and queue.
CREATE UNIQUE INDEX jobwire_jobs_idempotency ON jobwire_jobs (tenant, queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A job is retried at most once; a retry may itself be retried.
CREATE UNIQUE INDEX jobwire_jobs_retried_from ON jobwire_jobs (retried_from)
    WHERE retried_from IS NOT NULL;
-- Listing newest first (id breaks ties so the cursor is total).
CREATE INDEX jobwire_jobs_listing ON jobwire_jobs (created_at DESC, id DESC);
-- Retention: finished jobs by age.
CREATE INDEX jobwire_jobs_finished ON jobwire_jobs (finished_at) WHERE finished_at IS NOT NULL;

ALTER TABLE jobwire_jobs SET (
    -- A queue table churns: vacuum it early and often.
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 80
);

CREATE TABLE jobwire_attempts (
    job_id          uuid NOT NULL REFERENCES jobwire_jobs (id) ON DELETE CASCADE,
    number          integer NOT NULL CHECK (number >= 1),
    lease_token     uuid NOT NULL UNIQUE,
    worker_id       text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    outcome         jobwire_outcome NOT NULL DEFAULT 'RUNNING',
    -- The state the job entered when this attempt ended (Watch replays it).
    next_state      jobwire_state,
    error_message   text,
    error_kind      text,
    error_details   text,
    PRIMARY KEY (job_id, number),
    CONSTRAINT finished_iff_settled CHECK ((outcome = 'RUNNING') = (finished_at IS NULL)),
    CONSTRAINT next_state_iff_settled CHECK ((outcome = 'RUNNING') = (next_state IS NULL))
);

-- At most one attempt of a job holds a live lease.
CREATE UNIQUE INDEX jobwire_attempts_one_live ON jobwire_attempts (job_id) WHERE outcome = 'RUNNING';

ALTER TABLE jobwire_attempts SET (autovacuum_vacuum_scale_factor = 0.02, fillfactor = 80);

-- Terminal states are final; what a producer submitted never changes; only the
-- transitions of the state machine are allowed. The WHEN condition is evaluated without
-- PL/pgSQL, so ordinary updates on the hot paths (leasing, acks) never call the function:
-- it runs only to raise. Statements stamp updated_at themselves.
CREATE FUNCTION jobwire_guard_job() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- A settled attempt is history: it never changes again.
CREATE FUNCTION jobwire_guard_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.outcome <> 'RUNNING' THEN
        RAISE EXCEPTION 'attempt % of job % is settled', OLD.number, OLD.job_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.job_id, NEW.number, NEW.lease_token, NEW.worker_id, NEW.started_at)
       IS DISTINCT FROM (OLD.job_id, OLD.number, OLD.lease_token, OLD.worker_id, OLD.started_at) THEN
        RAISE EXCEPTION 'write-once fields of attempt % of job % cannot change', OLD.number, OLD.job_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobwire_guard_attempt BEFORE UPDATE ON jobwire_attempts
    FOR EACH ROW EXECUTE FUNCTION jobwire_guard_attempt();

-- Delay before the next attempt: exponential, capped, with jitter taken off.
-- Computed in seconds as double precision so that large attempt numbers cannot overflow.
CREATE FUNCTION jobwire_backoff(
    initial interval, cap interval, multiplier double precision, jitter double precision,
    attempt integer
) RETURNS interval LANGUAGE sql VOLATILE AS $$
    SELECT make_interval(secs => least(
               extract(epoch FROM initial)::double precision
                   * power(multiplier, least(greatest(attempt - 1, 0), 200)),
               extract(epoch FROM cap)::double precision
           ) * (1 - jitter * random()))
$$;

-- Ends the current attempt of a job without success: a failure reported by the worker
-- (nack), a hand-back (release) or an expired lease. One owner for the rules that decide
-- what comes next: CANCELLED if cancel was asked, PENDING again (after a backoff) while
-- attempts are left and the error is retryable, else FAILED. Returns the new state, or
-- NULL when the token is not the job's current lease (nothing is changed then).
CREATE FUNCTION jobwire_end_attempt(
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

-- Page tokens are signed with this secret, shared by every scheduler replica.
CREATE TABLE jobwire_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
INSERT INTO jobwire_secrets (name, value) VALUES ('page_token', decode(
    replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''),
    'hex'));
