"""TF_CONFIG discovery: the server listens as its own ps task; workers find the ps tasks."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from types import ModuleType

import pytest

import tfps_client
from tfps_client import Client, tf_config
from tfps_server import Registry, create_server
from tfps_server.cli import ALL_INTERFACES, DEFAULT_HOST, DEFAULT_PORT, listen_address

from helpers import LISTENING, REPO, ServerProcess, free_port, server_env

CLUSTER = {
    "ps": ["tfps-ps-0.ns.svc:2222", "tfps-ps-1.ns.svc:2223"],
    "worker": ["tfps-worker-0.ns.svc:2222", "tfps-worker-1.ns.svc:2222"],
}


def _config(task_type: str, index: int, cluster: dict[str, list[str]] = CLUSTER) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_ps_addresses_in_task_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the environment, a JSON string or a mapping; exported by the package."""
    monkeypatch.setenv("TF_CONFIG", _config("worker", 1))
    assert tfps_client.ps_addresses() == CLUSTER["ps"]
    assert tfps_client.ps_addresses(_config("chief", 0)) == CLUSTER["ps"]
    assert tfps_client.ps_addresses({"cluster": {"ps": ["a:1"]}}) == ["a:1"]
    assert "ps_addresses" in tfps_client.__all__


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "expected the TF_CONFIG environment variable"),
        (json.dumps({"cluster": {"worker": ["w:1"]}}), "expected a 'ps' job"),
        ("{not json", "expected JSON"),
        (json.dumps({"cluster": {"ps": "a:1"}}), "lists of 'host:port'"),
        (json.dumps(["ps"]), "expected a JSON object"),
    ],
    ids=["unset", "no-ps-job", "not-json", "not-a-list", "not-an-object"],
)
def test_ps_addresses_errors(
    monkeypatch: pytest.MonkeyPatch, value: str | None, message: str
) -> None:
    """Every malformed or missing TF_CONFIG raises ValueError saying what was expected."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if value is not None:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=message):
        tfps_client.ps_addresses()


def test_load_task() -> None:
    """The task's type, index and own address."""
    config = tf_config.load(_config("ps", 1))
    assert config is not None
    assert (config.task_type, config.task_index) == ("ps", 1)
    assert config.task_address() == "tfps-ps-1.ns.svc:2223"
    assert tf_config.load("") is None
    with pytest.raises(ValueError, match="index 2"):
        tf_config.TFConfig(CLUSTER, "ps", 2).task_address()


def test_listen_address_from_tf_config() -> None:
    """A ps task listens on all interfaces at its own port unless flags say otherwise."""
    ps1 = tf_config.load(_config("ps", 1))
    assert listen_address(None, None, ps1) == (ALL_INTERFACES, 2223)
    assert listen_address("127.0.0.1", None, ps1) == ("127.0.0.1", 2223)
    assert listen_address(None, 7000, ps1) == (ALL_INTERFACES, 7000)
    assert listen_address(None, None, None) == (DEFAULT_HOST, DEFAULT_PORT)
    no_ps = tf_config.load(json.dumps({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker"}}))
    assert listen_address(None, 0, no_ps) == (DEFAULT_HOST, 0)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_config("worker", 0), "expected task type 'ps' for a tfps server, received 'worker'"),
        (_config("ps", 5), "expected task 'ps' index 5"),
        (_config("ps", 0, {"ps": ["no-port"]}), "expected host:port for this ps task"),
    ],
    ids=["worker-task", "index-out-of-range", "no-port"],
)
def test_listen_address_refuses_a_wrong_task(config: str, message: str) -> None:
    """A server whose TF_CONFIG does not make it a ps task refuses to start."""
    with pytest.raises(ValueError, match=message):
        listen_address(None, None, tf_config.load(config))


def test_server_binds_its_ps_port_from_tf_config() -> None:
    """tfps-server with TF_CONFIG naming it ps task 1 (no --port) serves on that port."""
    ports = [free_port(), free_port()]
    cluster = {"ps": [f"127.0.0.1:{p}" for p in ports], "worker": ["127.0.0.1:1"]}
    env = server_env(TF_CONFIG=_config("ps", 1, cluster))
    with ServerProcess([], env) as process:
        line = process.wait_for(LISTENING)
        assert (line["host"], int(line["port"])) == (ALL_INTERFACES, ports[1])
        with Client(tfps_client.ps_addresses(json.dumps({"cluster": cluster}))[1]) as client:
            assert client.create_optimizer("sgd", {"class_name": "SGD", "config": {}}) is True
        assert process.terminate() == 0


def test_demo_worker_takes_server_and_index_from_tf_config() -> None:
    """examples/worker.py (the compose, Job and TFJob worker) finds the ps task and its own
    index in TF_CONFIG and trains through the server."""
    registry = Registry()
    registry.create_optimizer("default", json.dumps({"class_name": "Adam", "config": {}}))
    running = create_server(registry, "127.0.0.1:0")
    cluster = {"ps": [f"127.0.0.1:{running.port}"], "worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    env = server_env(TF_CONFIG=_config("worker", 1, cluster))
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "examples" / "worker.py"), "--epochs", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"worker 1: waiting for 127.0.0.1:{running.port}" in result.stdout
        assert "worker 1  epoch  1/1" in result.stdout
        assert registry.iterations("default") > 0
    finally:
        running.stop(None)


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/worker.py, imported (beside the demo.py it imports), with neither TFPS_SERVER
    nor TF_CONFIG set."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    monkeypatch.delenv("TFPS_SERVER", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    return importlib.import_module("worker")


@pytest.mark.parametrize(
    ("argv", "environment", "servers"),
    [
        (["--server", "a:1"], {}, ["a:1"]),
        (["--server", "c:3,a:1,b:2"], {}, ["c:3", "a:1", "b:2"]),
        ([], {"TFPS_SERVER": "a:1, b:2"}, ["a:1", "b:2"]),
        (["--server", "c:3"], {"TFPS_SERVER": "a:1,b:2"}, ["c:3"]),
        ([], {"TFPS_SERVER": "a:1", "TF_CONFIG": _config("worker", 0)}, ["a:1"]),
        ([], {"TF_CONFIG": _config("worker", 0)}, CLUSTER["ps"]),
    ],
    ids=["one", "several", "environment", "flag-first", "environment-first", "tf-config"],
)
def test_demo_worker_takes_every_server_in_order(
    worker: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    environment: dict[str, str],
    servers: list[str],
) -> None:
    """--server, else TFPS_SERVER (comma-separated), else every ps task of TF_CONFIG: each
    address in the order given, which is shard order; the client gets one address as a str
    (one server) and several as a list (one shard each)."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    args = worker.parse_args(argv)
    assert args.servers == servers
    monkeypatch.setattr(worker, "Client", lambda servers, **options: servers)
    assert worker.connect(args) == (servers[0] if len(servers) == 1 else servers)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "a:1,,b:2"], "--server: expected host:port or a comma-separated list"),
        (["--server", "a:1,"], "received 'a:1,'"),
        (["--server", ""], "received ''"),
        ([], "--server: expected host:port, TFPS_SERVER or TF_CONFIG"),
    ],
    ids=["empty-entry", "trailing-comma", "empty", "none"],
)
def test_demo_worker_refuses_a_missing_server(
    worker: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """An empty entry in the list, or no server from anywhere, is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        worker.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
