"""End to end: ``examples/demo.py`` trains through a real server, as well as locally, and cleans up.

Each run gets its own process group, so that the server and the workers it starts can be
checked for, and killed if the test fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"
ACCURACY_LINE = r"{label}\s+(\d+\.\d\d) %"


def _group_alive(pgid: int) -> bool:
    """Returns True while any process of the group exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Fails unless every process of the group exits within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        assert time.monotonic() < deadline, "the demo left processes behind"
        time.sleep(0.1)


@pytest.fixture
def demo_process() -> Iterator[subprocess.Popen[str]]:
    """Starts the demo with 5 epochs in a new process group; kills the group at teardown."""
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--epochs", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_prints_both_accuracies_and_exits_0(demo_process: subprocess.Popen[str]) -> None:
    stdout, stderr = demo_process.communicate(timeout=540)

    assert demo_process.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    server = re.search(ACCURACY_LINE.format(label=r"server \(2 workers\)"), stdout)
    local = re.search(ACCURACY_LINE.format(label=r"local \(1 process\)"), stdout)
    assert server is not None, stdout
    assert local is not None, stdout
    assert abs(float(server[1]) - float(local[1])) <= 2.0
    assert float(server[1]) >= 85.0  # two asynchronous workers' model.fit converged
    assert re.search(r"worker 0\s+epoch\s+5/5\s+loss", stdout)
    assert re.search(r"worker 1\s+epoch\s+5/5\s+loss", stdout)
    assert "server stopped cleanly" in stdout
    _assert_group_gone(demo_process.pid)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("signum", "whole_group", "exit_code", "moment"),
    [
        (signal.SIGINT, True, 130, r"worker \d\s+epoch"),  # mid-training
        (signal.SIGTERM, False, 128 + signal.SIGTERM, r"training with \d workers"),  # starting
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_demo_stops_everything_when_interrupted(
    demo_process: subprocess.Popen[str],
    signum: int,
    whole_group: bool,
    exit_code: int,
    moment: str,
) -> None:
    """Ctrl-C while the workers train, SIGTERM while they start (importing TensorFlow)."""
    assert demo_process.stdout is not None
    for line in demo_process.stdout:
        if re.search(moment, line):
            break
    else:
        pytest.fail(f"the demo ended before training:\n{demo_process.communicate()[1]}")
    if whole_group:  # as a terminal's Ctrl-C does
        os.killpg(demo_process.pid, signum)
    else:
        demo_process.send_signal(signum)
    stdout, stderr = demo_process.communicate(timeout=120)

    assert demo_process.returncode == exit_code, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    _assert_group_gone(demo_process.pid)
