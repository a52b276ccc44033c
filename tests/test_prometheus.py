"""A real Prometheus (Debian's ``prometheus`` package) with the shipped configuration:
promtool accepts the config and rules and passes their unit tests, and a Prometheus
scraping a running tfps-server answers PromQL queries for the push rate, loads the
alerting rules and accepts every query of the Grafana dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tfps_client import Client

from helpers import LISTENING, REPO, ServerProcess, free_port, server_env

DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TESTS = REPO / "tests" / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tfps.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
"""What Grafana substitutes into the dashboard's queries, for querying Prometheus directly."""


def _binary(name: str) -> str:
    """Returns the path of a Prometheus binary; fails where it is missing (`make deps`
    installs Debian's prometheus package, which has both)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make deps` (apt-get install prometheus)")
    return path


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_promtool_checks_config_and_rules() -> None:
    """`promtool check config` (which checks the rule files it names) and `check rules`."""
    config = _promtool("check", "config", PROMETHEUS_CONFIG)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = _promtool("check", "rules", RULES)
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alerting_rules_unit_tests() -> None:
    """`promtool test rules`: each alert fires on its scenario, with its annotations, and
    stays silent on the healthy series beside it."""
    result = _promtool("test", "rules", RULES_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


class Prometheus:
    """A Prometheus server on a free port, with a temporary data directory."""

    def __init__(self, config: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                _binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={config.parent / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def get(self, path: str, **params: str) -> Any:
        """GETs an HTTP API path; returns the decoded JSON (error bodies included)."""
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits for /-/ready; fails with Prometheus's output if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"prometheus not ready:\n{self.output}")

    def query(self, expr: str) -> Any:
        """Runs an instant PromQL query; returns the API's JSON answer."""
        return self.get("/api/v1/query", query=expr)

    def wait_for(self, expr: str, timeout: float = 60.0) -> float:
        """Queries until ``expr`` has a sample > 0; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.query(expr)
            assert answer["status"] == "success", answer
            values = [float(s["value"][1]) for s in answer["data"]["result"]]
            if values and values[0] > 0:
                return values[0]
            time.sleep(0.5)
        raise AssertionError(f"{expr} stayed empty or 0 for {timeout} s: {answer}")

    def stop(self) -> None:
        """Stops Prometheus and keeps its output."""
        if self.process.poll() is None:
            self.process.terminate()
        stdout, _ = self.process.communicate(timeout=30)
        self.output = stdout or ""


def _scrape_config_for(metrics_port: int, directory: Path) -> Path:
    """Writes the shipped config and rules to ``directory`` with the one target pointed at
    ``metrics_port`` and intervals of a second; returns the config's path."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    (targets,) = job["static_configs"]
    assert targets["targets"] == ["tfps-server:9464"]
    targets["targets"] = [f"127.0.0.1:{metrics_port}"]
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    shutil.copy(RULES, directory / RULES.name)
    path = directory / PROMETHEUS_CONFIG.name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """tfps-server in a subprocess with a worker pushing, and Prometheus scraping it."""
    _binary("prometheus")
    port, metrics_port = free_port(), free_port()
    optimizer = json.dumps({"class_name": "SGD", "config": {"learning_rate": 0.01}})
    env = server_env(TFPS_METRICS_PORT=str(metrics_port))
    with ServerProcess(["--port", str(port), "--optimizer", optimizer], env) as server:
        server.wait_for(LISTENING)
        config = _scrape_config_for(metrics_port, tmp_path_factory.mktemp("prometheus"))
        stop_pushing = threading.Event()
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            client.create_variables({"w": np.zeros(16, np.float32)})

            def push_until_stopped() -> None:
                while not stop_pushing.wait(0.05):
                    client.push({"w": np.ones(16, np.float32)})

            pusher = threading.Thread(target=push_until_stopped, daemon=True)
            pusher.start()
            running = Prometheus(config)
            try:
                running.wait_ready()
                yield running
            finally:
                stop_pushing.set()
                pusher.join(30)
                running.stop()
        assert server.terminate() == 0


def test_push_rate_through_promql(prometheus: Prometheus) -> None:
    """Prometheus scrapes the server with the shipped job, and the push rate is > 0."""
    assert prometheus.wait_for('up{job="tfps"}') == 1
    assert prometheus.wait_for('sum(rate(tfps_pushes_total{job="tfps"}[5s]))') > 0
    assert prometheus.wait_for('sum(rate(tfps_rpc_requests_total{method="Push"}[5s]))') > 0


def test_alerting_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    """Every rule of rules.yml is loaded and evaluates without error; none fires."""
    expected = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        if set(rules) == expected and all(r["health"] != "unknown" for r in rules.values()):
            break
        assert time.monotonic() < deadline, f"rules not all evaluated: {rules}"
        time.sleep(0.5)
    assert {name: r["health"] for name, r in rules.items()} == dict.fromkeys(expected, "ok")
    # Pending is not firing: at start, a push in flight before two scrapes give a push rate
    # makes TfpsNoPushes pending for a moment; its `for: 5m` is what keeps that quiet.
    firing = {name for name, r in rules.items() if r["state"] == "firing"}
    assert not firing, rules


def test_every_dashboard_query_is_valid_promql(prometheus: Prometheus) -> None:
    """Prometheus parses and evaluates each panel query (Grafana's variables filled in)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert queries
    for query in queries:
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        answer = prometheus.query(query)
        assert answer["status"] == "success", (query, answer)
