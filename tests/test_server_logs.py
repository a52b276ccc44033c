"""What ``tfps-server`` writes to stderr: its own records at INFO, nothing of TensorFlow's,
absl's or gRPC's start-up chatter unless DEBUG, every line JSON with ``--log-format json``
(native output too), the configuration as fields, one spelling of the device, and the
last lines of a crash."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from tfps_client import Client
from tfps_server.stderr_relay import MARK, NativeRecord, classify

from helpers import LISTENING, ServerProcess, free_port, server_env

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
"""The start of every line of ``--log-format text``."""

CANONICAL_DEVICE = re.compile(r"^/device:[A-Z]+:\d+$")

NOISE = ("oneDNN", "cuda", "cuInit", "Sharding callback", "absl", "I0000", "W0000", "E0000")
"""What TensorFlow, absl and gRPC print on their own at start, at a save and at exit."""


class Run(NamedTuple):
    """A server's whole life at one level and format: start, push, save, restore, SIGTERM."""

    level: str
    log_format: str
    port: int
    lines: list[str]
    exit_code: int
    listening_device: str
    listed_device: str
    checkpoint_device: str


def life(level: str, log_format: str, directory: Path) -> Run:
    port = free_port()
    args = ["--port", str(port), "--log-level", level, "--log-format", log_format]
    args += ["--checkpoint-dir", str(directory), "--checkpoint-every-seconds", "0"]
    args += ["--optimizer", json.dumps({"class_name": "Adam", "config": {}})]
    with ServerProcess(args) as process:
        listening = process.wait_for(LISTENING)
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            client.create_variables({"w": np.zeros((3, 2), np.float32)})
            client.push({"w": np.ones((3, 2), np.float32)})
            (listed,) = client.list_variables()
            saved = client.save_checkpoint()
            client.restore_checkpoint(saved.id)
        exit_code = process.terminate()
    return Run(
        level,
        log_format,
        port,
        process.output.splitlines(),
        exit_code,
        listening["device"],
        listed.device,
        saved.variables[0].device,
    )


class Runs:
    """One :class:`Run` per level and format, made when a test first asks for it."""

    def __init__(self, directories: pytest.TempPathFactory) -> None:
        self._directories = directories
        self._runs: dict[str, Run] = {}

    def __getitem__(self, name: str) -> Run:
        if name not in self._runs:
            level, log_format = name.split("-")
            self._runs[name] = life(level, log_format, self._directories.mktemp("checkpoints"))
        return self._runs[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory)


ALL = ["INFO-text", "INFO-json", "DEBUG-json"]
JSON = ["INFO-json", "DEBUG-json"]
BELOW_DEBUG = ["INFO-text", "INFO-json"]


def entries(run: Run) -> list[dict[str, Any]]:
    """Every line as JSON: fails on the first line that is not a JSON object."""
    parsed = [json.loads(line) for line in run.lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


@pytest.mark.parametrize("name", JSON)
def test_every_json_line_parses(runs: Runs, name: str) -> None:
    """Every stderr line is a JSON object with timestamp, level, logger and message, native
    output included; the server stopped cleanly, saying so last."""
    run = runs[name]
    assert run.exit_code == 0, "\n".join(run.lines)
    records = entries(run)
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
    assert records[-1]["message"] == "stopped"


def test_every_text_line_is_a_record(runs: Runs) -> None:
    """With the text format every line starts as a text record does; the last says stopped."""
    run = runs["INFO-text"]
    assert run.exit_code == 0, "\n".join(run.lines)
    assert [line for line in run.lines if not TEXT_LINE.match(line)] == []
    assert run.lines[-1].endswith("tfps_server: stopped")


@pytest.mark.parametrize("name", BELOW_DEBUG)
def test_no_library_chatter_below_debug(runs: Runs, name: str) -> None:
    """At INFO nothing but tfps's own records: no native line, no absl or tensorflow logger."""
    run = runs[name]
    noisy = [line for line in run.lines if any(word in line for word in NOISE)]
    assert noisy == [], "\n".join(run.lines)
    if run.log_format == "json":
        assert {r["logger"].partition(".")[0] for r in entries(run)} == {"tfps_server"}


def test_debug_lets_native_output_through_as_records(runs: Runs) -> None:
    """At DEBUG TensorFlow's C++ lines come through, each as a JSON record of ``native``
    at its own severity, with its source file and line."""
    run = runs["DEBUG-json"]
    native = [r for r in entries(run) if r["logger"] == "native"]
    assert native, "\n".join(run.lines)
    sourced = [r for r in native if "source" in r]
    assert sourced, native
    assert all(re.fullmatch(r"[\w/.-]+:\d+", r["source"]) for r in sourced), sourced
    assert {r["level"] for r in native} <= {"INFO", "WARNING", "ERROR", "CRITICAL"}


@pytest.mark.parametrize("name", ALL)
def test_configuration_is_logged_as_fields(runs: Runs, name: str) -> None:
    """The start-up record carries the effective configuration as a JSON object (field
    ``config``), in text after ``config=``."""
    run = runs[name]
    if run.log_format == "json":
        (record,) = (r for r in entries(run) if r["message"] == "effective configuration")
        config = record["config"]
    else:
        (line,) = (line for line in run.lines if "effective configuration" in line)
        config = json.loads(line.partition(" config=")[2])
    assert config["port"] == run.port
    assert config["log_level"] == run.level
    assert config["log_format"] == run.log_format


@pytest.mark.parametrize("name", ALL)
def test_one_spelling_of_the_device(runs: Runs, name: str) -> None:
    """The logs, list_variables and the checkpoint metadata name the device alike."""
    run = runs[name]
    assert CANONICAL_DEVICE.match(run.listening_device), run.listening_device
    assert run.listed_device == run.checkpoint_device == run.listening_device
    created = [line for line in run.lines if "created 1 variables on " in line]
    assert created and f"on {run.listening_device} for" in created[0], created


def test_a_crash_keeps_its_last_lines() -> None:
    """What native code writes just before the process aborts still comes out, as JSON
    records: the relay outlives the server and drains the pipe."""
    script = textwrap.dedent(
        """
        import logging, os
        from tfps_server import logs, stderr_relay

        relay = stderr_relay.start("INFO", "json")
        logs.configure("INFO", "json", relay.stream)
        logging.getLogger("tfps_server").info("before the crash")
        os.write(2, b"I0000 00:00:1.5   7 chatter.cc:3] hidden below DEBUG\\n")
        os.write(2, b"F0000 00:00:1.5   7 check.cc:42] Check failed: last words\\n")
        os.abort()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode < 0
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["message"] for r in records] == ["before the crash", "Check failed: last words"]
    assert records[1]["level"] == "CRITICAL"
    assert records[1]["logger"] == "native"
    assert records[1]["source"] == "check.cc:42"


def test_long_records_stay_whole_among_native_writes() -> None:
    """Records longer than the pipe writes whole (PIPE_BUF) come out whole and parse while
    other threads write native lines: every line is JSON, nothing is lost or cut."""
    script = textwrap.dedent(
        """
        import logging, os, threading
        from tfps_server import logs, stderr_relay

        relay = stderr_relay.start("DEBUG", "json")
        logs.configure("DEBUG", "json", relay.stream)
        log = logging.getLogger("tfps_server")

        def own(thread):
            for size in range(0, 40000, 500):
                log.info("%d:%d:%s", thread, size, "\u00e9x" * size)

        def native(thread):
            for number in range(2000):
                line = b"%d:%d:%s" % (thread, number, b"n" * 2000)
                os.write(2, b"I0000 00:00:1.5   7 n.cc:1] %s\\n" % line)

        threads = [threading.Thread(target=f, args=(t,)) for f in (own, native) for t in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        relay.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stderr.splitlines()]
    own = sorted(r["message"] for r in records if r["logger"] == "tfps_server")
    native = [r["message"] for r in records if r["logger"] == "native"]
    expected = [f"{t}:{size}:{'éx' * size}" for t in (0, 1) for size in range(0, 40000, 500)]
    assert own == sorted(expected)
    assert sorted(native) == sorted(f"{t}:{n}:{'n' * 2000}" for t in (0, 1) for n in range(2000))


def test_classify_native_lines() -> None:
    """absl lines take their severity, lines after one continue it, the server's own
    (marked) lines are copied, absl's banner is INFO, anything else an ERROR."""
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795525733.061562   29628 cpu_feature_guard.cc:227] optimized",
        "To enable the following instructions: AVX2",
        f'{MARK}{{"message": "own"}}',
        "W1124 13:12:03.061876   31313 log.cc:110] Log level DEBUG",
        "",
        f"{MARK}own again",
        "Fatal Python error: Aborted",
    ]
    guard = {"source": "cpu_feature_guard.cc:227", "tid": "29628"}
    assert classify(lines) == [
        NativeRecord(logging.INFO, lines[0], {}),
        NativeRecord(logging.INFO, "optimized", guard),
        NativeRecord(logging.INFO, "To enable the following instructions: AVX2", guard),
        '{"message": "own"}',
        NativeRecord(logging.WARNING, "Log level DEBUG", {"source": "log.cc:110", "tid": "31313"}),
        "own again",
        NativeRecord(logging.ERROR, "Fatal Python error: Aborted", {}),
    ]


def test_a_closed_stderr_is_no_reason_to_fail() -> None:
    """A server started with descriptor 2 closed (``2>&-``) serves without the relay and
    stops cleanly, as it did before there was one."""
    port = free_port()
    server = [sys.executable, "-m", "tfps_server", "--port", str(port), "--log-format", "json"]
    process = subprocess.Popen(["sh", "-c", 'exec "$@" 2>&-', "sh", *server], env=server_env())
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_ready(120)
            assert client.list_variables() == []
        time.sleep(1)  # past the start of serve_until_signalled
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        process.kill()
        process.wait()


def test_a_line_the_locale_cannot_encode_is_escaped() -> None:
    """Where stderr's encoding is not UTF-8, a line with other characters comes out escaped,
    as Python's own stderr writes it, and the lines after it come out too."""
    script = textwrap.dedent(
        """
        import logging
        from tfps_server import logs, stderr_relay

        relay = stderr_relay.start("INFO", "text")
        logs.configure("INFO", "text", relay.stream)
        logging.getLogger("tfps_server").info("variable 'poids_\\u00e9' not found")
        logging.getLogger("tfps_server").info("after")
        relay.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    messages = [line.partition(": ")[2] for line in result.stderr.splitlines()]
    assert messages == ["variable 'poids_\\xe9' not found", "after"], result.stderr
