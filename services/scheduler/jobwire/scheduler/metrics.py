"""Prometheus metrics of a scheduler process.

Counters and histograms are recorded where the fact is known for certain: the store,
after a statement committed. Queue depths come from a periodic snapshot (one grouped
query every few seconds per replica, never a count per scrape), and connected workers
from the dispatchers' memory at scrape time. Labels are bounded: queue, type, outcome,
state, gRPC service, method and code; never job ids.

Metrics live in the default registry, once per process: several schedulers in one
process (as in tests) add to the same series.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from jobwire.ops.series import Series
from jobwire.ops.watched import Watched
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .model import QueueStats

__all__ = [
    "COMPUTED_GAUGES",
    "JOBS_LEASED",
    "JOBS_SETTLED",
    "JOBS_SUBMITTED",
    "JOB_RETRIES",
    "JOB_RUN_SECONDS",
    "JOB_RUN_SECONDS_SERIES",
    "JOB_START_LATENCY",
    "LEASE_EXPIRIES",
    "QUEUES",
    "WORKERS",
    "count",
]

# Latencies from a millisecond (an idle worker picking up a job) to minutes (a backlog).
_LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
)
# Run times from a no-op to the longest lease a job may hold for a while.
_RUN_BUCKETS = (0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 60, 300, 900, 3600)

JOBS_SUBMITTED = Counter(
    "jobwire_jobs_submitted",
    "Jobs created by Submit and Retry (an idempotent repeat creates none).",
    ["queue", "type"],
)
JOBS_LEASED = Counter(
    "jobwire_jobs_leased", "Attempts started: jobs leased to a worker.", ["queue", "type"]
)
JOBS_SETTLED = Counter(
    "jobwire_jobs_settled",
    "Attempts ended, by the worker's outcome or by an expired lease: succeeded, failed "
    "(final: the job is in the dead-letter state), retried (runs again after a backoff), "
    "released (handed back without counting as an attempt), cancelled.",
    ["queue", "type", "outcome"],
)
JOB_RETRIES = Counter(
    "jobwire_job_retries",
    "Attempts that ended without success and left the job to run again, by cause: "
    "failed (a retryable failure) or lease_expired.",
    ["queue", "type", "cause"],
)
LEASE_EXPIRIES = Counter(
    "jobwire_lease_expiries",
    "Attempts ended because their worker stopped extending the lease (crashed, cut off or stuck).",
    ["queue"],
)
LEASE_CLAIMS = Counter(
    "jobwire_lease_claims",
    "Claim statements run for a stream (by the dispatcher, or in a submit's own transaction "
    "for a stream idle on its queue), by whether they found jobs or came back empty (empty "
    "ones are database round trips spent on nothing).",
    ["queue", "result"],
)
JOB_START_LATENCY = Histogram(
    "jobwire_job_start_latency_seconds",
    "From the moment a job became ready (submitted, or its run_at or backoff passed) to its lease.",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)
JOB_RUN_SECONDS = Histogram(
    "jobwire_job_run_seconds",
    "From lease to the outcome the worker reported, by outcome.",
    ["queue", "type", "outcome"],
    buckets=_RUN_BUCKETS,
)
# Observed for every job settled.
JOB_RUN_SECONDS_SERIES = Series(JOB_RUN_SECONDS)


def count(counter: Counter, labels: Iterable[tuple[str, ...]]) -> None:
    """Adds one per label tuple, with one `inc` per distinct tuple: batches are large and
    mostly of one queue and type."""
    for key, n in collections.Counter(labels).items():
        counter.labels(*key).inc(n)


@dataclass(frozen=True)
class GaugeSpec:
    """A gauge that a collector computes at scrape time (also read by the reference in
    the README)."""

    name: str
    documentation: str
    labels: tuple[str, ...]


QUEUE_JOBS = GaugeSpec(
    "jobwire_queue_jobs",
    "Jobs per queue and state (ready: pending and due; scheduled: pending with run_at in "
    "the future; running; failed, the dead-letter queue; cancelled), as of the "
    "scheduler's last reading; every replica reports the same: take the max over "
    "replicas. Succeeded jobs are not counted, which would read most of the table: "
    "jobwire_jobs_settled_total counts them as they finish. A queue shows while it holds "
    "such jobs or workers wait on it.",
    ("queue", "state"),
)
OLDEST_READY_AGE = GaugeSpec(
    "jobwire_queue_oldest_ready_age_seconds",
    "How long the oldest ready job of the queue has waited; 0 when none is ready.",
    ("queue",),
)
WORKERS_CONNECTED = GaugeSpec(
    "jobwire_workers_connected",
    "Worker Lease streams open on this scheduler replica, by queue they serve; sum over replicas.",
    ("queue",),
)
WORKER_CREDIT = GaugeSpec(
    "jobwire_worker_credit",
    "Free slots (credit) of the workers connected to this replica, by queue; a worker "
    "serving several queues counts its slots under each.",
    ("queue",),
)
COMPUTED_GAUGES = (QUEUE_JOBS, OLDEST_READY_AGE, WORKERS_CONNECTED, WORKER_CREDIT)


def _gauge(spec: GaugeSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.documentation, labels=list(spec.labels))


class QueueSnapshot(Collector):
    """`jobwire_queue_jobs` and `jobwire_queue_oldest_ready_age_seconds` from the latest
    statistics a scheduler read."""

    _STATES = ("ready", "scheduled", "running", "failed", "cancelled")

    def __init__(self) -> None:
        self._stats: Sequence[QueueStats] = ()

    def update(self, stats: Sequence[QueueStats]) -> None:
        self._stats = tuple(stats)  # replaced whole: queues that are gone disappear

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        jobs = _gauge(QUEUE_JOBS)
        age = _gauge(OLDEST_READY_AGE)
        for s in stats:
            for state in self._STATES:
                jobs.add_metric([s.queue, state], getattr(s, state))
            age.add_metric([s.queue], s.oldest_ready_age.total_seconds())
        yield jobs
        yield age


class StreamCounts(Protocol):
    def workers_by_queue(self) -> dict[str, tuple[int, int]]: ...


class ConnectedWorkers(Watched[StreamCounts], Collector):
    """`jobwire_workers_connected` and `jobwire_worker_credit`: the Lease streams of the
    watched dispatchers (this replica's), read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        totals: dict[str, tuple[int, int]] = {}
        for dispatcher in self.watched():
            for queue, (streams, credit) in dispatcher.workers_by_queue().items():
                known = totals.get(queue, (0, 0))
                totals[queue] = (known[0] + streams, known[1] + credit)
        connected = _gauge(WORKERS_CONNECTED)
        free = _gauge(WORKER_CREDIT)
        for queue, (streams, credit) in sorted(totals.items()):
            connected.add_metric([queue], streams)
            free.add_metric([queue], credit)
        yield connected
        yield free


QUEUES = QueueSnapshot()
WORKERS = ConnectedWorkers()
REGISTRY.register(QUEUES)
REGISTRY.register(WORKERS)
