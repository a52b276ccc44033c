"""The framework examples (``examples/ctr_numpy.py``, ``examples/jax_regression.py``) learn
through a real server, each in its own process, and never import TensorFlow.

Both run against one server with ``--server``, and under ``python -X importtime``, which lists
every module the process imports. ``examples/torch_regression.py`` needs PyTorch, which is
not in requirements.txt; ``make example-torch`` runs it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from helpers import LISTENING, REPO, ServerProcess, free_port

EXAMPLES = REPO / "examples"
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(?P<module>[\w.]+)$", re.MULTILINE)
"""A line of ``-X importtime``: the last column is the module imported."""
CLOSED_GAP = 2 / 3
"""How far the learned click model must get from always predicting the base rate towards the
true model, in log loss and in AUC."""
MIN_R2 = 0.85
"""The MLP's least held-out R² (predicting the mean scores 0, a linear model about 0.7)."""


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """``host:port`` of a server the examples share (their variable names differ)."""
    port = free_port()
    with ServerProcess(["--port", str(port)]) as server:
        server.wait_for(LISTENING)
        yield f"127.0.0.1:{port}"
        assert server.terminate() == 0, server.output


def run_example(script: str, address: str) -> str:
    """Runs ``examples/SCRIPT --server ADDRESS`` with its default settings; returns its output
    once it has exited 0 having imported tfps_client and not TensorFlow."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", str(EXAMPLES / script), "--server", address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    imported = {match["module"].split(".")[0] for match in IMPORTED.finditer(completed.stderr)}
    assert "tfps_client" in imported, "-X importtime listed no import of tfps_client"
    assert "tensorflow" not in imported
    return completed.stdout


def metric_row(output: str, label: str) -> tuple[float, float]:
    """Returns the two numbers of the report row starting with ``label``."""
    match = re.search(rf"^  {re.escape(label)}.*?\s(-?\d+\.\d+)\s+(-?\d+\.\d+)$", output, re.M)
    assert match is not None, f"no {label!r} row in:\n{output}"
    return float(match[1]), float(match[2])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_numpy_click_model_nears_the_true_model(address: str) -> None:
    output = run_example("ctr_numpy.py", address)

    base_loss, base_auc = metric_row(output, "base rate")
    loss, auc = metric_row(output, "learned")
    true_loss, true_auc = metric_row(output, "true model")
    assert base_auc == 0.5
    assert loss <= base_loss - CLOSED_GAP * (base_loss - true_loss), output
    assert auc >= base_auc + CLOSED_GAP * (true_auc - base_auc), output
    assert "epoch 3/3" in output


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_jax_mlp_explains_most_of_the_variance(address: str) -> None:
    output = run_example("jax_regression.py", address)

    _, mean_r2 = metric_row(output, "training mean")
    _, r2 = metric_row(output, "learned")
    assert abs(mean_r2) < 0.05
    assert r2 >= MIN_R2, output
    assert "step  200/200" in output


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_example_stops_at_once_on_sigterm(address: str) -> None:
    """SIGTERM during training ends the process promptly: the signal is handled between the
    example's gRPC calls, never inside one, so closing the channel does not hang."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "ctr_numpy.py"), "--server", address, "--epochs", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "epoch 1/100" in line:
                break
        else:
            pytest.fail(f"the example ended before training:\n{process.communicate()[1]}")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 128 + signal.SIGTERM, stderr
