"""``python -m tfps_server`` as an operator runs it: flags, environment variables, the
startup log, refusing a bad configuration, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

import tfps_client
import tfps_server
from tfps_client import Client, IndexedSlices
from tfps_server import Registry, create_server
from tfps_server.devices import default_device

from helpers import (
    LISTENING,
    ServerProcess,
    assert_all_bitwise_equal,
    free_port,
    server_env,
)

SGD = {"class_name": "SGD", "config": {"learning_rate": 0.5}}


@pytest.fixture(scope="module")
def flagged_server() -> Iterator[tuple[ServerProcess, int]]:
    """A server started with --port and --optimizer, while TFPS_PORT names another port."""
    port, other = free_port(), free_port()
    args = ["--port", str(port), "--optimizer", json.dumps(SGD)]
    with ServerProcess(args, server_env(TFPS_PORT=str(other))) as process:
        process.wait_for(LISTENING)
        yield process, port


def test_optimizer_flag_creates_default(flagged_server: tuple[ServerProcess, int]) -> None:
    """The --optimizer config becomes optimizer "default", usable by a client on --port."""
    _, port = flagged_server
    with Client(f"127.0.0.1:{port}", timeout=60) as client:
        assert client.get_config("default")["config"]["learning_rate"] == 0.5
        assert client.create_optimizer("default", SGD) is False
        client.create_variables({"w": np.full((2, 3), 4.0, np.float32), "e": np.zeros((4, 2))})
        result = client.push(
            {"w": np.ones((2, 3), np.float32), "e": IndexedSlices(np.ones((1, 2)), np.array([2]))}
        )
        assert result.iterations == {"default": 1}
        e = np.zeros((4, 2))
        e[2] = -0.5
        assert_all_bitwise_equal(client.pull(), {"w": np.full((2, 3), 3.5, np.float32), "e": e})


def test_startup_log_names_port_and_device(flagged_server: tuple[ServerProcess, int]) -> None:
    """The startup line names the flag's port (not TFPS_PORT's) and the device chosen."""
    process, port = flagged_server
    line = process.wait_for(LISTENING)
    assert int(line["port"]) == port
    assert line["device"] == default_device()
    with Client(f"127.0.0.1:{port}", timeout=60) as client:
        client.create_variables({"on_device": np.zeros(1, np.float32)})
        (info,) = (i for i in client.list_variables() if i.name == "on_device")
        assert info.device == line["device"]
    assert line.string.rstrip().endswith(f", version {tfps_server.__version__}")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            [],
            {"TFPS_PORT": "abc"},
            "invalid int value: 'abc' (from the environment: TFPS_PORT='abc')",
        ),
        (["--port", "abc"], {"TFPS_PORT": "1"}, "argument --port: invalid int value: 'abc'\n"),
        (
            [],
            {"TFPS_LOG_LEVEL": "LOUD"},
            "invalid choice: 'LOUD' (choose from DEBUG, INFO, WARNING, ERROR, CRITICAL) "
            "(from the environment: TFPS_LOG_LEVEL='LOUD')",
        ),
        ([], {"TFPS_LOG_FORMAT": "xml"}, "invalid choice: 'xml' (choose from text, json)"),
        (
            ["--log-level", "loud"],
            {},
            "choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'",
        ),
    ],
    ids=["env-port", "flag-port", "env-log-level", "env-log-format", "flag-log-level"],
)
def test_a_wrong_value_names_its_flag_or_variable_and_the_valid_ones(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    """Refused before TensorFlow loads, with exit status 2; a value from the environment
    names the variable, one from the command line does not."""
    result = subprocess.run(
        [sys.executable, "-m", "tfps_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(**env),
    )
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert ("from the environment" in result.stderr) == (not args)


def run_without_tensorflow(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m module args`` in a process that prints, last, whether TensorFlow was
    imported."""
    script = (
        "import sys, runpy\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    print('tensorflow loaded' if 'tensorflow' in sys.modules else 'no tensorflow')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(),
    )


@pytest.mark.parametrize("module", ["tfps_server", "tfps_client.ckpt_cli"])
def test_version_is_answered_without_tensorflow(module: str) -> None:
    result = run_without_tensorflow(module, "--version")
    assert result.returncode == 0, result.stderr
    name = "tfps-server" if module == "tfps_server" else "tfps-ckpt"
    assert result.stdout.splitlines() == [f"{name} {tfps_server.__version__}", "no tensorflow"]
    assert tfps_server.__version__ == tfps_client.__version__ != "0+unknown"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--optimizer", "{not json"], "argument --optimizer: expected JSON, received '{not json'"),
        (["--optimizer", '["Adam"]'], "expected a Keras optimizer config"),
        (["--optimizer", '{"config": {}}'], "with a string 'class_name'"),
        (["--port", "abc"], "argument --port: invalid int value: 'abc'"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
    ids=["not-json", "not-object", "no-class-name", "port", "level", "flag"],
)
def test_argument_errors_are_answered_before_tensorflow_loads(
    args: list[str], fragment: str
) -> None:
    """A mistake on the command line is answered at once (exit 2, the usage line and what is
    wrong), not after the seconds TensorFlow takes to load."""
    result = run_without_tensorflow("tfps_server", *args)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr, result.stderr
    assert result.stdout.splitlines() == ["no tensorflow"]


def test_port_from_environment_and_clean_exit_on_sigterm() -> None:
    """Without --port, TFPS_PORT is used; SIGTERM stops the server with exit status 0."""
    port = free_port()
    with ServerProcess([], server_env(TFPS_PORT=str(port))) as process:
        assert int(process.wait_for(LISTENING)["port"]) == port
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            assert client.create_optimizer("env", SGD) is True
            assert client.iterations("env") == 0
        assert process.terminate() == 0
        assert "received SIGTERM" in process.output
        assert "stopped" in process.output.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--optimizer", '{"class_name": "SGD", "config": {"learning_rate": 0.1, "bogus": 2}}'],
            ["cannot start", "unknown argument(s) ['bogus']", "SGD"],
        ),
    ],
    ids=["unknown-argument"],
)
def test_bad_optimizer_exits_non_zero_with_a_clear_message(
    args: list[str], fragments: list[str]
) -> None:
    """A bad --optimizer stops the server at start with a non-zero status and says why."""
    port = free_port()
    with ServerProcess(["--port", str(port), *args]) as process:
        code = process.wait_exit()
    assert code != 0
    for fragment in fragments:
        assert fragment in process.output, process.output
    assert LISTENING.search(process.output) is None


@contextmanager
def listener(reuse_port: bool) -> Iterator[int]:
    """A socket listening on a loopback port, optionally with SO_REUSEPORT as grpcio sets it."""
    with socket.socket() as sock:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_second_server_on_a_taken_port_exits_with_a_clear_message(
    flagged_server: tuple[ServerProcess, int],
) -> None:
    """Two servers on one port would split the workers between two models: the second one
    exits with status 2 at start, saying the port is taken; the first keeps serving."""
    _, port = flagged_server
    with ServerProcess(["--port", str(port)]) as second:
        assert second.wait_exit() == 2
    assert f"cannot start: 127.0.0.1:{port} is in use" in second.output, second.output
    assert LISTENING.search(second.output) is None
    with Client(f"127.0.0.1:{port}", timeout=60) as client:
        assert client.get_config("default")["config"]["learning_rate"] == 0.5


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_port_shared_with_so_reuseport_is_refused(flag: str) -> None:
    """A port held by a listener that allows SO_REUSEPORT (as grpcio's own listeners do) is
    refused too: the server binds without SO_REUSEPORT."""
    other = "--metrics-port" if flag == "--port" else "--port"
    with listener(reuse_port=True) as port, ServerProcess([flag, str(port), other, "0"]) as process:
        assert process.wait_exit() == 2
    assert f"127.0.0.1:{port} is in use" in process.output, process.output


def test_create_server_binds_exclusively() -> None:
    """Past the command line's early check, gRPC itself is told not to share the port."""
    with listener(reuse_port=True) as port, pytest.raises(RuntimeError, match="could not bind"):
        create_server(Registry(), f"127.0.0.1:{port}")


def test_a_taken_port_is_refused_before_tensorflow_loads() -> None:
    """The command line refuses a taken port without the seconds TensorFlow takes to load."""
    script = (
        "import sys\n"
        "from tfps_server.cli import main\n"
        "code = main(['--port', sys.argv[1], '--metrics-port', '0'])\n"
        "print('tensorflow loaded' if 'tensorflow' in sys.modules else 'tensorflow not loaded')\n"
        "sys.exit(code)\n"
    )
    with listener(reuse_port=False) as port:
        result = subprocess.run(
            [sys.executable, "-c", script, str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env=server_env(),
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "tensorflow not loaded" in result.stdout
    assert f"127.0.0.1:{port} is in use" in result.stderr
