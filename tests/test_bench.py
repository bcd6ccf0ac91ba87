"""`jobwire bench` runs every scenario end to end at toy sizes and writes its figures.

Figures are not checked against anything: the benchmark never gates CI."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from jobwire.scheduler import bench

# Figures every scenario must produce as a number (or yes/no) even at toy sizes.
EXPECTED = {
    "drain": ["jobs_per_s"],
    "submit-single": ["jobs_per_s"],
    "submit-batch": ["jobs_per_s"],
    "latency": [
        "lease_p50_ms",
        "lease_p90_ms",
        "lease_p99_ms",
        "lease_max_ms",
        "handler_p50_ms",
        "handler_p90_ms",
        "handler_p99_ms",
        "handler_max_ms",
    ],
    "growth": ["index_scan", "jobs_per_s", "small_jobs_per_s", "vs_drain_pct"],
    "mixed": [
        "early_p50_ms",
        "late_p99_ms",
        "worst_p99_ms",
        "latency_grew",
        "submitted_per_s",
        "leased_per_s",
        "backlog_last",
        "rows_max",
        "retained_max",
        "oldest_finished_s",
        "rows_bounded",
    ],
    "floors": [
        "noop_rpc_per_s",
        "noop_rpc_us",
        "db_jobs_per_s",
        "db_us_per_job",
        "rpc_rtt_ms",
        "commit_ms",
    ],
}


def test_bench_registers_its_subcommand() -> None:
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "--scenario", "drain", "--scenario", "latency,mixed", "--runs", "1"]
    )
    assert args.func is bench.run
    assert args.scenarios == ["drain", "latency", "mixed"]
    assert (args.runs, args.concurrency, args.growth_rows) == (1, 32, 1_000_000)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--scenario", "nonsense"])


@pytest.mark.slow
def test_every_scenario_runs_and_reports_numbers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "jobwire.scheduler.bench",
            "--runs", "1",
            "--json", str(out),
            "--no-progress",
            "--drain-jobs", "200",
            "--single-jobs", "200",
            "--batch-jobs", "2000",
            "--latency-jobs", "20",
            "--latency-rate", "100",
            "--growth-rows", "5000",
            "--growth-drain", "500",
            "--mixed-seconds", "3",
            "--mixed-window", "1",
            "--mixed-rate", "200",
            "--floor-calls", "200",
            "--floor-jobs", "500",
            "--floor-paced", "20",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())

    assert results["complete"] is True
    for key in ("cores", "memory_bytes", "python", "postgres_server_version", "postgres_fsync"):
        assert results["machine"][key], key
    assert "jobwire_jobs_ready" in results["growth_plan"]
    for scenario, keys in EXPECTED.items():
        runs = results["scenarios"][scenario]
        assert len(runs) == 1 and "error" not in runs[0], (scenario, runs)
        for key in keys:
            value = runs[0]["figures"][key]
            assert isinstance(value, bool | int | float), (scenario, key, value)
            assert math.isfinite(value), (scenario, key, value)
            assert results["summary"][scenario][key]["median"] is not None, (scenario, key)
    # The printed table names every scenario.
    for scenario in EXPECTED:
        assert scenario in done.stdout
