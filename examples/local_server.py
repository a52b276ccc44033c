"""A tfps server started for an example's run.

``python -m tfps_server`` runs in a subprocess on a free loopback port and is stopped with
SIGTERM when the example ends. This module imports no TensorFlow: only the server process does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from tfps_client import Client

SERVER_START_SECONDS = 120.0
SERVER_STOP_SECONDS = 30.0


class ServerError(RuntimeError):
    """The server did not start, or did not stop cleanly."""


def free_port() -> int:
    """Returns a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    """Returns the last lines of a log file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for_server(process: subprocess.Popen[bytes], client: Client, log: Path) -> None:
    """Blocks until the server accepts connections.

    Raises:
        ServerError: the server exited, or was not ready in time.
    """
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        try:
            client.wait_for_ready(timeout=1.0)
            return
        except grpc.FutureTimeoutError:
            if process.poll() is not None:
                raise ServerError(
                    f"the server exited with code {process.returncode}:\n{log_tail(log)}"
                ) from None
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the server was not ready in {SERVER_START_SECONDS:.0f} s:\n{log_tail(log)}"
                ) from None


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Sends SIGTERM and waits; kills the server if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SERVER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(log: Path, optimizer: Mapping[str, Any] | None = None) -> Iterator[Client]:
    """Starts ``tfps_server`` in a subprocess; yields a client once it is ready.

    On exit the server is stopped with SIGTERM.

    Args:
        log: file the server's output goes to.
        optimizer: Keras config of an optimizer the server creates at start as ``default``.

    Raises:
        ServerError: the server did not start, or did not stop cleanly.
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "tfps_server",
        f"--port={port}",
        "--metrics-port=0",  # off: the fixed default port would clash between two servers
    ]
    if optimizer is not None:
        command.append(f"--optimizer={json.dumps(optimizer)}")
    print(f"starting the server on {address}", flush=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    try:
        with Client(address) as client:
            wait_for_server(process, client, log)
            yield client
    finally:
        stop_server(process)
    if process.returncode != 0:
        raise ServerError(f"the server exited with code {process.returncode}:\n{log_tail(log)}")
    print("server stopped cleanly", flush=True)


def exit_on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM handler that raises SystemExit, so that cleanup (stopping the server) runs."""
    sys.exit(128 + signum)
