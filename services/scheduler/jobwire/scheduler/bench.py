"""`jobwire bench`: throughput and latency figures of a real stack on this machine.

It starts what it needs (an embedded PostgreSQL in a temporary folder unless
--database-url is given, the scheduler and workers as separate `jobwire` processes), runs
the scenarios through the public gRPC API, prints a table with the median and spread of
each figure over the runs, and writes every figure to a JSON file. Never a test: it
gates nothing.

    python -m jobwire.scheduler.bench --scenario drain --runs 1
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from jobwire.cli.options import env_flag, non_negative_int, positive_float, positive_int

from .bench_sizes import Sizes

# The full benchmark; each flag's default is its size here.
DEFAULT_SIZES = Sizes()

SCENARIO_NAMES = (
    "drain",
    "submit-single",
    "submit-batch",
    "latency",
    "growth",
    "mixed",
    "floors",
)


def _scenario_names(raw: str) -> list[str]:
    names = [name.strip() for name in raw.split(",") if name.strip()]
    for name in names:
        if name not in SCENARIO_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {name!r}; choose from {', '.join(SCENARIO_NAMES)}"
            )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `jobwire bench` (also used by `python -m jobwire.scheduler.bench`)."""
    env_flag(
        parser,
        "--scenario",
        env="JOBWIRE_BENCH_SCENARIOS",
        default=None,
        type=_scenario_names,
        action="extend",
        dest="scenarios",
        metavar="NAME",
        help=f"scenario to run, repeatable: {', '.join(SCENARIO_NAMES)} (default: all)",
    )
    env_flag(
        parser,
        "--runs",
        env="JOBWIRE_BENCH_RUNS",
        default=3,
        type=positive_int,
        help="times each scenario runs; the table shows the median and min-max",
    )
    env_flag(
        parser,
        "--json",
        env="JOBWIRE_BENCH_JSON",
        default="bench-results.json",
        dest="json_path",
        metavar="PATH",
        help="where to write every figure, the machine and the growth plan",
    )
    env_flag(
        parser,
        "--database-url",
        env="JOBWIRE_BENCH_DATABASE_URL",
        default=None,
        help="use this PostgreSQL instead of an embedded one; its jobwire tables are "
        "EMPTIED before every scenario run, so give a scratch database",
    )
    env_flag(
        parser,
        "--allow-truncate",
        env="JOBWIRE_BENCH_ALLOW_TRUNCATE",
        default=False,
        type=bool,
        help="run even though the --database-url database holds jobs (they are deleted)",
    )
    env_flag(
        parser,
        "--concurrency",
        env="JOBWIRE_BENCH_CONCURRENCY",
        default=DEFAULT_SIZES.concurrency,
        type=positive_int,
        help="slots of each worker",
    )
    env_flag(
        parser,
        "--prefetch",
        env="JOBWIRE_BENCH_PREFETCH",
        default=DEFAULT_SIZES.prefetch,
        type=non_negative_int,
        help="jobs each worker leases ahead of its free slots (its --prefetch)",
    )
    sizes: list[tuple[str, str, Any, str]] = [
        ("--drain-jobs", "drain_jobs", positive_int, "drain: jobs submitted"),
        ("--single-jobs", "single_jobs", positive_int, "submit-single: jobs"),
        ("--single-producers", "single_producers", positive_int,
         "submit-single: concurrent producers"),
        ("--batch-jobs", "batch_jobs", positive_int, "submit-batch: jobs"),
        ("--batch-size", "batch_size", positive_int, "submit-batch: jobs per call"),
        ("--batch-producers", "batch_producers", positive_int,
         "submit-batch: concurrent producers"),
        ("--latency-jobs", "latency_jobs", positive_int,
         "latency: jobs measured per variant"),
        ("--latency-rate", "latency_rate", positive_float,
         "latency: submits per second"),
        ("--growth-rows", "growth_rows", positive_int,
         "growth: pending jobs inserted before the drain"),
        ("--growth-drain", "growth_drain", positive_int,
         "growth: jobs drained from a table of just them, then from the backlog"),
        ("--mixed-rate", "mixed_rate", positive_float,
         "mixed: jobs submitted per second"),
        ("--mixed-seconds", "mixed_seconds", positive_float,
         "mixed: how long producers submit"),
        ("--mixed-window", "mixed_window", positive_float,
         "mixed: seconds between latency and row count samples"),
        ("--floor-calls", "floor_calls", positive_int,
         "floors: no-op RPCs made (by --single-producers producers)"),
        ("--floor-jobs", "floor_jobs", positive_int,
         "floors: jobs PostgreSQL leases and acks on its own"),
        ("--floor-paced", "floor_paced", positive_int,
         "floors: paced round trips and commits measured (at --latency-rate)"),
    ]  # fmt: skip
    for flag, dest, kind, text in sizes:
        default = getattr(DEFAULT_SIZES, dest)
        env_flag(
            parser,
            flag,
            env="JOBWIRE_BENCH_" + dest.upper(),
            default=default,
            type=kind,
            dest=dest,
            help=f"{text} (default: {int(default):,})",
        )
    env_flag(
        parser,
        "--progress",
        env="JOBWIRE_BENCH_PROGRESS",
        default=None,
        type=bool,
        help="show progress bars (default: when stderr is a terminal)",
    )
    env_flag(
        parser,
        "--keep-temp",
        env="JOBWIRE_BENCH_KEEP_TEMP",
        default=False,
        type=bool,
        help="keep the temporary folder (database, process logs) for a post-mortem",
    )


def register(subparsers: Any) -> None:
    """Adds the `bench` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="measure throughput and latency on this machine (not a test)",
        description=(
            "Start PostgreSQL (embedded unless --database-url), the scheduler and workers "
            "as real processes, run the scenarios through the public gRPC API, print the "
            "median and spread of every figure and write them to --json. Scenarios: "
            "drain, submit-single, submit-batch, latency, growth, mixed, and floors (what "
            "this machine gives gRPC and PostgreSQL alone, to read the others against)."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


class _Stopped(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: everything started is stopped and removed."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stopped()


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark described by parsed arguments; 0 when every run completed
    (whether or not targets were met), 1 when a run failed, 130 when interrupted."""
    from . import bench_report as report
    from .bench_floors import floors
    from .bench_scenarios import LEASE_CLOCK_NOTE, SCENARIOS, Bench, RunResult
    from .bench_stack import Stack

    scenarios = {**SCENARIOS, "floors": floors}

    names = [n for n in SCENARIO_NAMES if n in set(args.scenarios or SCENARIO_NAMES)]
    sizes = Sizes(**{f.name: getattr(args, f.name) for f in fields(Sizes) if hasattr(args, f.name)})
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    out: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {"runs": args.runs, "scenarios": names, **asdict(sizes)},
        "notes": {"latency": LEASE_CLOCK_NOTE},
    }
    json_path = Path(args.json_path)
    failed = False
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    stack = Stack(args.database_url, keep=args.keep_temp)
    bench = Bench(stack, sizes, progress=args.progress)
    try:
        print(f"jobwire bench: {', '.join(names)}; {args.runs} run(s) each", flush=True)
        stack.open(allow_truncate=args.allow_truncate)
        with stack.database() as url:
            out["machine"] = report.machine(url, embedded=args.database_url is None)
        for name in names:
            for index in range(args.runs):
                bench.label = f"{name} {index + 1}/{args.runs}"
                began = time.monotonic()
                try:
                    result: RunResult = scenarios[name](bench)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    failed = True
                    bench.say(f"{bench.label}: FAILED: {exc}")
                    results[name].append({"error": str(exc)})
                    continue
                entry = {
                    "figures": result.figures,
                    "cpu_percent_of_one_core": result.cpu,
                    "details": result.details,
                    "wall_seconds": round(time.monotonic() - began, 2),
                }
                results[name].append(entry)
                bench.say(_one_line(bench.label, result))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping everything…", file=sys.stderr, flush=True)
    except Exception as exc:
        failed = True
        print(f"jobwire bench: {exc}", file=sys.stderr, flush=True)
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.close()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for figure in report.FIGURES:
        runs = results.get(figure.scenario)
        if runs is None:
            continue
        values = [r["figures"].get(figure.key) for r in runs if "figures" in r]
        summary.setdefault(figure.scenario, {})[figure.key] = report.summarize(figure, values)
    total = time.monotonic() - started
    out.update(
        {
            "total_seconds": round(total, 1),
            "complete": not (failed or interrupted),
            "summary": summary,
            "scenarios": results,
        }
    )
    growth_runs = [r for r in results.get("growth", []) if "details" in r]
    if growth_runs:
        out["growth_plan"] = growth_runs[0]["details"]["plan"]
    if any(summary.values()):
        print()
        print(report.table(summary))
        print()
        if growth_runs:
            print("leasing plan with the backlog (first growth run):")
            print(out["growth_plan"])
            print()
        if "latency" in names:
            print(LEASE_CLOCK_NOTE)
    json_path.write_text(json.dumps(out, indent=2, default=str) + "\n", "utf-8")
    print(f"figures written to {json_path}; took {total:.0f} s", flush=True)
    if interrupted:
        return 130
    return 1 if failed else 0


def _one_line(label: str, result: Any) -> str:
    shown = []
    for key, value in result.figures.items():
        if isinstance(value, bool) or value is None:
            shown.append(f"{key}={value}")
        else:
            shown.append(f"{key}={value:,.2f}")
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in result.cpu.items())
    return f"{label}: {' '.join(shown)}" + (f"  [CPU: {cpu}]" if cpu else "")


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(
        prog="python -m jobwire.scheduler.bench",
        description="Throughput and latency figures of jobwire on this machine.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
