-- jobwire: outside a transaction
--
-- Failed and cancelled jobs by queue, so that the queue metrics count every state they
-- show through a partial index and never read the succeeded jobs kept for retention.
--
-- Every replica reads the depth of every queue every few seconds. That reading counted
-- the whole table: about 0.2 s for a million rows, and a week of retention at 100 jobs/s
-- keeps sixty million. Pending jobs are in jobwire_jobs_ready and running ones in
-- jobwire_jobs_leases; this index holds the rest the metrics show (the dead-letter
-- queue and the cancelled jobs), and only jobs that end that way pay for an entry.
--
-- Built CONCURRENTLY: it reads the whole table once, and acks, leases and submits go on
-- meanwhile. Dropped first, so that running it again after a failure midway (which
-- leaves an invalid index behind) builds it anew.

DROP INDEX CONCURRENTLY IF EXISTS jobwire_jobs_unsuccessful;

CREATE INDEX CONCURRENTLY jobwire_jobs_unsuccessful ON jobwire_jobs (queue, state)
    WHERE state IN ('FAILED', 'CANCELLED');
