"""Figures of `jobwire bench`: what each scenario reports, its target, the summary over
runs (median and spread), the printed table, and the description of the machine."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

Value = float | bool | None


@dataclass(frozen=True)
class Target:
    """`value op threshold`, e.g. at least 11,000 jobs/s or below 2 ms."""

    op: str  # ">=", "<", "=="
    threshold: float | bool

    def met(self, value: Value) -> bool | None:
        if value is None:
            return None
        if isinstance(self.threshold, bool):
            return bool(value) is self.threshold
        number = float(value)
        if self.op == ">=":
            return number >= self.threshold
        if self.op == "<":
            return number < self.threshold
        raise ValueError(self.op)

    def text(self, unit: str) -> str:
        if isinstance(self.threshold, bool):
            return "yes" if self.threshold else "no"
        amount = _number(float(self.threshold))
        sign = "≥" if self.op == ">=" else "<"
        return f"{sign} {amount}{' ' + unit if unit in {'%', 'ms'} else ''}"


@dataclass(frozen=True)
class Figure:
    scenario: str
    key: str
    label: str
    unit: str
    target: Target | None = None


FIGURES: tuple[Figure, ...] = (
    Figure("drain", "jobs_per_s", "throughput", "jobs/s", Target(">=", 11_000)),
    Figure("submit-single", "jobs_per_s", "throughput", "jobs/s", Target(">=", 5_000)),
    Figure("submit-batch", "jobs_per_s", "throughput", "jobs/s", Target(">=", 50_000)),
    # The lease's time is its transaction's start (see LEASE_CLOCK_NOTE): a step on the
    # way, not the job's start, which the targets are about.
    Figure("latency", "lease_p50_ms", "submit→lease p50 (DB, txn start)", "ms"),
    Figure("latency", "lease_p90_ms", "submit→lease p90 (DB, txn start)", "ms"),
    Figure("latency", "lease_p99_ms", "submit→lease p99 (DB, txn start)", "ms"),
    Figure("latency", "lease_max_ms", "submit→lease max (DB, txn start)", "ms"),
    Figure("latency", "handler_p50_ms", "submit→handler p50", "ms", Target("<", 2)),
    Figure("latency", "handler_p90_ms", "submit→handler p90", "ms"),
    Figure("latency", "handler_p99_ms", "submit→handler p99", "ms", Target("<", 4)),
    Figure("latency", "handler_max_ms", "submit→handler max", "ms"),
    Figure(
        "growth", "index_scan", "plan: Index Scan on jobwire_jobs_ready", "", Target("==", True)
    ),
    Figure("growth", "jobs_per_s", "throughput with backlog", "jobs/s"),
    Figure("growth", "small_jobs_per_s", "the same drain just before, small table", "jobs/s"),
    Figure("growth", "vs_drain_pct", "backlog vs small table", "%", Target(">=", 80)),
    Figure("mixed", "early_p50_ms", "submit→lease p50, first third", "ms"),
    Figure("mixed", "late_p50_ms", "submit→lease p50, last third", "ms"),
    Figure("mixed", "early_p99_ms", "submit→lease p99, first third", "ms"),
    Figure("mixed", "late_p99_ms", "submit→lease p99, last third", "ms"),
    Figure("mixed", "worst_p99_ms", "submit→lease p99, worst window", "ms"),
    Figure("mixed", "latency_grew", "latency grew (last vs first third)", "", Target("==", False)),
    Figure("mixed", "submitted_per_s", "submit rate achieved", "jobs/s"),
    Figure("mixed", "leased_per_s", "lease rate achieved", "jobs/s"),
    Figure("mixed", "backlog_last", "pending at the end (backlog)", "jobs"),
    Figure("mixed", "rows_max", "table rows, highest", "rows"),
    Figure("mixed", "retained_max", "rows not pending, highest", "rows"),
    Figure("mixed", "oldest_finished_s", "oldest finished row, highest age", "s"),
    Figure("mixed", "rows_bounded", "finished rows pruned in time", "", Target("==", True)),
    Figure("floors", "noop_rpc_per_s", "no-op RPCs (Health/Check), same producers", "calls/s"),
    Figure("floors", "noop_rpc_us", "scheduler CPU per no-op RPC", "µs"),
    Figure("floors", "db_jobs_per_s", "PostgreSQL alone: lease + ack", "jobs/s"),
    Figure("floors", "db_us_per_job", "PostgreSQL CPU per job, alone", "µs"),
    Figure("floors", "rpc_rtt_ms", "no-op RPC there and back, paced p50", "ms"),
    Figure("floors", "commit_ms", "committed one-row insert, paced p50", "ms"),
)


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _show(value: Value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _number(value)


def summarize(figure: Figure, values: Sequence[Value]) -> dict[str, Any]:
    """Median and spread of one figure over the runs that produced it."""
    present = [v for v in values if v is not None]
    out: dict[str, Any] = {"runs": list(values), "unit": figure.unit}
    if not present:
        out.update(median=None, min=None, max=None)
    elif all(isinstance(v, bool) for v in present):
        # A yes/no figure: the median is what most runs said (ties say no).
        yes = sum(1 for v in present if v)
        out.update(median=yes * 2 > len(present), min=yes == len(present), max=yes > 0)
        out["yes"] = f"{yes}/{len(present)}"
    else:
        numbers = [float(v) for v in present]
        out.update(median=statistics.median(numbers), min=min(numbers), max=max(numbers))
    if figure.target is not None:
        out["target"] = figure.target.text(figure.unit)
        out["met"] = figure.target.met(out["median"])
    return out


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The final table: one line per figure of the scenarios that ran."""
    header = ("scenario", "figure", "unit", "median", "min-max", "target", "met?")
    rows: list[tuple[str, ...]] = []
    for figure in FIGURES:
        found = summary.get(figure.scenario, {}).get(figure.key)
        if found is None:
            continue
        if "yes" in found:
            spread = f"{found['yes']} yes"
        elif found["min"] is None:
            spread = "-"
        else:
            spread = f"{_show(found['min'])}-{_show(found['max'])}"
        met = found.get("met")
        rows.append(
            (
                figure.scenario,
                figure.label,
                figure.unit,
                _show(found["median"]),
                spread,
                found.get("target", ""),
                "" if figure.target is None else ("-" if met is None else _show(met)),
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    right = {3, 4}

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine(database_url: str, embedded: bool) -> dict[str, Any]:
    """Where the figures were taken: hardware, Python, PostgreSQL and its durability."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "postgres_embedded": embedded,
    }
    with psycopg.connect(database_url) as conn:
        for setting in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
            row = conn.execute(f"SHOW {setting}").fetchone()
            info[f"postgres_{setting}"] = row[0] if row else None
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    commit = _git("rev-parse", "HEAD")
    info["jobwire_commit"] = commit
    if commit is not None:
        info["jobwire_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return info
