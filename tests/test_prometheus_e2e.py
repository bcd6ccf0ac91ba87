"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes a real scheduler and a real
worker with the scrape configuration of deploy/prometheus/prometheus.yml, and evaluates
deploy/prometheus/alerts.yml. The scrape jobs keep their names and paths; only the
discovery (Docker's DNS in compose) becomes the loopback ports of these processes, and the
interval one second. The counters read back through Prometheus's HTTP API must match the
jobs that ran, and every metric that deploy/ uses must be exposed by the processes.

Prometheus is installed by scripts/install-deploy-tools (`make test` runs it); without it
this test fails, it does not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jobwire.client import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import SchedulerProcess, WorkerProcess, free_port
from tests.support import http_get, wait_for
from tests.test_deploy import INSTALL_HINT, METRICS, PROMETHEUS

pytestmark = pytest.mark.slow

# The scrape jobs of prometheus.yml, and which process each one scrapes here.
JOBS = {"jobwire-scheduler": "scheduler", "jobwire-worker": "worker"}


def derived_config(ports: dict[str, int], rules: Path) -> dict[str, Any]:
    """prometheus.yml's jobwire scrape jobs with their discovery swapped for loopback
    targets, and a one-second interval."""
    source = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = []
    for job in source["scrape_configs"]:
        name = job["job_name"]
        if name not in JOBS:
            continue
        discovery = [key for key in job if key.endswith("_sd_configs")]
        assert discovery == ["dns_sd_configs"], f"{name}: expected DNS discovery only"
        derived = {k: v for k, v in job.items() if k not in discovery}
        derived["static_configs"] = [{"targets": [f"127.0.0.1:{ports[JOBS[name]]}"]}]
        derived["scrape_interval"] = "1s"
        derived["scrape_timeout"] = "1s"
        jobs.append(derived)
    assert sorted(j["job_name"] for j in jobs) == sorted(JOBS)
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in jobs)
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": jobs,
    }


class Prometheus:
    """`prometheus` on a free loopback port, with its data and log under `directory`."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(f"prometheus is not installed: {INSTALL_HINT}")
        path = directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.output()}")
            return http_get(f"{self.url}/-/ready")[0] == 200

        try:
            wait_for(ready, timeout=30, interval=0.2, message="prometheus ready")
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}")
        assert status == 200, f"{path} {params}: {status} {body}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> dict[tuple[str, ...], float]:
        """An instant query: each series' label values (in label name order) to its value."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {
            tuple(v for _, v in sorted(item["metric"].items())): float(item["value"][1])
            for item in data["result"]
        }

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


@pytest.fixture
def fleet(database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A scheduler and a worker with their HTTP ports on loopback."""
    ports = {"scheduler": free_port(), "worker": free_port()}
    scheduler = SchedulerProcess(
        database_url,
        tmp_path / "scheduler.log",
        extra=[
            "--http-host", "127.0.0.1",
            "--http-port", str(ports["scheduler"]),
            "--stats-interval", "0.5",
        ],
    )  # fmt: skip
    worker = WorkerProcess(
        scheduler.target,
        tmp_path / "worker.log",
        worker_id="e2e-worker",
        env={
            "JOBWIRE_WORKER_HTTP_HOST": "127.0.0.1",
            "JOBWIRE_WORKER_HTTP_PORT": str(ports["worker"]),
        },
    )
    try:
        for name in ("scheduler", "worker"):
            wait_for(
                lambda name=name: http_get(f"http://127.0.0.1:{ports[name]}/readyz")[0] == 200,
                timeout=30,
                interval=0.1,
                message=f"{name} /readyz",
            )
        yield {"ports": ports, "scheduler": scheduler, "worker": worker}
    finally:
        worker.stop()
        scheduler.stop()


def test_prometheus_scrapes_the_fleet_with_the_deploy_configuration(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    ports = fleet["ports"]
    prometheus = Prometheus(derived_config(ports, PROMETHEUS / "alerts.yml"), tmp_path)
    try:
        _check(prometheus, fleet, ports)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n--- prometheus\n{prometheus.output()[-3000:]}"
            f"\n--- scheduler\n{fleet['scheduler'].output()[-3000:]}"
            f"\n--- worker\n{fleet['worker'].output()[-3000:]}"
        ) from exc
    finally:
        prometheus.stop()


def _check(prometheus: Prometheus, fleet: dict[str, Any], ports: dict[str, int]) -> None:
    def targets_up() -> bool:
        active = prometheus.api("targets")["activeTargets"]
        return sorted((t["labels"]["job"], t["health"]) for t in active) == [
            ("jobwire-scheduler", "up"),
            ("jobwire-worker", "up"),
        ]

    wait_for(targets_up, timeout=30, interval=0.2, message="both targets up")

    jobs = {"uppercase": 3, "reverse": 2}
    with Client(fleet["scheduler"].target) as client:
        ids = [
            client.submit(kind, {"text": f"job {i}"}).job.id
            for kind, n in jobs.items()
            for i in range(n)
        ]
        failing = client.submit("fail", {"message": "on purpose", "retryable": False}).job.id
        for id in ids:
            assert client.wait(id, timeout=30).state == "SUCCEEDED"
        assert client.wait(failing, timeout=30).state == "FAILED"

    expected = {
        'sum by (type) (jobwire_jobs_submitted_total{job="jobwire-scheduler"})': {
            ("reverse",): 2.0,
            ("uppercase",): 3.0,
            ("fail",): 1.0,
        },
        'sum by (outcome, type) (jobwire_worker_jobs_total{job="jobwire-worker"})': {
            ("succeeded", "reverse"): 2.0,
            ("succeeded", "uppercase"): 3.0,
            ("failed", "fail"): 1.0,
        },
        'sum by (outcome) (jobwire_jobs_settled_total{job="jobwire-scheduler"})': {
            ("succeeded",): 5.0,
            ("failed",): 1.0,
        },
        'sum by (queue) (jobwire_jobs_leased_total{job="jobwire-scheduler"})': {
            ("default",): 6.0,
        },
        'sum by (queue) (jobwire_workers_connected{job="jobwire-scheduler"})': {
            ("default",): 1.0,
        },
        'max by (state) (jobwire_queue_jobs{job="jobwire-scheduler", queue="default"})': {
            ("ready",): 0.0,
            ("scheduled",): 0.0,
            ("running",): 0.0,
            ("failed",): 1.0,
            ("cancelled",): 0.0,
        },
        "sum by (job) (up)": {("jobwire-scheduler",): 1.0, ("jobwire-worker",): 1.0},
    }
    seen: dict[str, dict[tuple[str, ...], float]] = {}

    def all_scraped() -> bool:
        for expr in expected:
            seen[expr] = prometheus.query(expr)
        return seen == expected

    try:
        wait_for(all_scraped, timeout=30, interval=0.5, message="the counters in Prometheus")
    except AssertionError:
        for expr, values in expected.items():
            assert seen.get(expr) == values, expr
        raise

    # The alert rules load and evaluate without error against the real series, and none
    # fires on a healthy fleet.
    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_for(rules_evaluated, timeout=30, interval=0.5, message="rules evaluated")
    assert len(rules) == 7
    assert [r["name"] for r in rules if r["state"] != "inactive"] == []

    # Every metric deploy/ uses is exposed by the process that owns it, with its type.
    for name, families in METRICS.items():
        status, text = http_get(f"http://127.0.0.1:{ports[name]}/metrics")
        assert status == 200, name
        exposed = {m.name: m.type for m in text_string_to_metric_families(text)}
        assert {f: exposed.get(f) for f in families} == families, name
