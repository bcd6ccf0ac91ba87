"""How much work each scenario of `jobwire bench` does. A module of its own, without the
scenarios' imports (gRPC, psycopg), so that the command line takes its defaults from here
and `jobwire bench --help` stays quick."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How much work each scenario does (the defaults are the full benchmark)."""

    concurrency: int = 32
    prefetch: int = 480
    drain_jobs: int = 20_000
    single_jobs: int = 10_000
    single_producers: int = 8
    batch_jobs: int = 100_000
    batch_size: int = 1000
    batch_producers: int = 2
    latency_jobs: int = 500
    latency_rate: float = 100.0
    growth_rows: int = 1_000_000
    growth_drain: int = 20_000
    mixed_rate: float = 2000.0
    mixed_seconds: float = 60.0
    mixed_window: float = 5.0
    mixed_retention: str = "10s"
    mixed_prune_interval: str = "1s"
    floor_calls: int = 12_000
    floor_jobs: int = 40_000
    floor_paced: int = 300
