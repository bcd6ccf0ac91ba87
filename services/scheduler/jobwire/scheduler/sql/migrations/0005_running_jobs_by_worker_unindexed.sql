-- jobwire: outside a transaction
--
-- Drops the index of running jobs by worker. Every lease paid for an entry in it, and
-- every ack for one more dead entry; only the pull-in read it, when a worker's stream
-- ends. The pull-in now reads jobwire_jobs_leases, which holds exactly the running jobs,
-- and filters them by worker. It costs a pass over the running jobs for each batch of
-- streams lost together (see pull_in_leases), instead of an index entry for every job
-- leased.
--
-- Dropped CONCURRENTLY: leases, acks and submits go on meanwhile.

DROP INDEX CONCURRENTLY IF EXISTS jobwire_jobs_worker;
