"""Prometheus metrics of a worker process.

Defined once per process in the default registry: several Worker objects in one
process add to the same series, which is what a scrape of that process should see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from jobwire.ops.series import Series
from jobwire.ops.watched import Watched
from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CONNECTED",
    "ENGINES",
    "HANDLER_SECONDS",
    "HANDLER_SECONDS_SERIES",
    "IN_FLIGHT",
    "JOBS",
    "JOBS_SERIES",
    "RECONNECTS",
    "SETTLE_REFUSED",
    "WAITING",
]

JOBS = Counter(
    "jobwire_worker_jobs",
    "Attempts finished by this worker, by job type and outcome "
    "(succeeded, failed, timeout, cancelled, released, lost).",
    ["type", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "jobwire_worker_handler_seconds",
    "Time from the start of a handler to its attempt's outcome, by job type.",
    ["type"],
    buckets=(0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 60, 300, 900, 3600),
)
# Both counted for every job.
JOBS_SERIES = Series(JOBS)
HANDLER_SECONDS_SERIES = Series(HANDLER_SECONDS)


class EngineCounts(Protocol):
    @property
    def running_handlers(self) -> int: ...

    @property
    def prefetched_jobs(self) -> int: ...


class RunningEngines(Watched[EngineCounts]):
    """The engines running in this process, whose jobs the gauges below add up when
    scraped: moving a gauge takes a lock, and every job would move two of them twice."""

    def total(self, count: Callable[[EngineCounts], int]) -> int:
        return sum(count(engine) for engine in self.watched())


ENGINES = RunningEngines()
IN_FLIGHT = Gauge("jobwire_worker_jobs_in_flight", "Handlers running now.")
IN_FLIGHT.set_function(lambda: ENGINES.total(lambda engine: engine.running_handlers))
WAITING = Gauge(
    "jobwire_worker_jobs_prefetched",
    "Jobs leased ahead (--prefetch) and waiting for a free slot.",
)
WAITING.set_function(lambda: ENGINES.total(lambda engine: engine.prefetched_jobs))
CONNECTED = Gauge(
    "jobwire_worker_connected", "1 while a Lease stream to the scheduler is open, else 0."
)
RECONNECTS = Counter("jobwire_worker_reconnects", "Lease streams that ended and were opened again.")
SETTLE_REFUSED = Counter(
    "jobwire_worker_settle_refused",
    "Outcomes the scheduler refused (lease lost, unknown job, invalid item), by kind.",
    ["kind"],
)
