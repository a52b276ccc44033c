"""``python -m tfps_server`` as an operator runs it: flags, environment variables, the
startup log, refusing a bad configuration, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from tfps_client import Client, IndexedSlices
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
        assert info.device.endswith(line["device"]), (info.device, line["device"])


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
        (["--optimizer", "{not json"], ["cannot start", "expected JSON", "{not json"]),
    ],
    ids=["unknown-argument", "invalid-json"],
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
