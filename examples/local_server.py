"""A tfps server for the examples: the one given by ``--server``, or one started for the run.

``python -m tfps_server`` runs in a subprocess on a free loopback port and is stopped with
SIGTERM when the example ends. This module imports no TensorFlow: only the server process does.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tfps_client import Client, TfpsError, UnavailableError

SERVER_START_SECONDS = 120.0
SERVER_STOP_SECONDS = 30.0
SERVER_HELP = "host:port of a running tfps server (default: start one for this run)"
"""The help of the examples' ``--server`` flag."""


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
        except UnavailableError:
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


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[Client]:
    """Yields a client of the server at ``address`` once it accepts connections, or of a
    server started for the run (see :func:`running_server`) when ``address`` is None.

    Raises:
        ServerError: the server did not start, or did not stop cleanly.
        UnavailableError: the server at ``address`` was not reachable in time.
    """
    if address is None:
        with (
            tempfile.TemporaryDirectory(prefix="tfps-example-") as tmp,
            running_server(Path(tmp) / "server.log") as client,
        ):
            yield client
    else:
        with Client(address) as client:
            client.wait_for_ready(timeout=SERVER_START_SECONDS)
            yield client


def exit_on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM handler that raises SystemExit, so that cleanup (stopping the server) runs."""
    sys.exit(128 + signum)


def exit_code(body: Callable[[], None], failures: tuple[type[Exception], ...] = ()) -> int:
    """Runs ``body`` with SIGTERM turned into SystemExit; prints how it ended.

    Returns:
        The exit code: 0, 1 when the server failed or refused a call (or ``body`` raised one
        of ``failures``), 130 when interrupted.
    """
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    started = time.monotonic()
    expected: tuple[type[Exception], ...] = (ServerError, TfpsError, *failures)
    try:
        body()
    except expected as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything stopped", file=sys.stderr)
        return 130
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


def run_with_server(address: str | None, work: Callable[[Client], None]) -> int:
    """Runs ``work`` with a client of :func:`connect`; stops a server it started on SIGTERM
    and Ctrl-C too.

    ``work`` runs in a thread of its own while this one waits for it, so that the exception a
    signal raises here never interrupts a gRPC call halfway (which can leave the channel
    waiting for ever when it closes). Closing the channel cancels the call ``work`` is in.

    Returns:
        The exit code of :func:`exit_code`.
    """
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def body() -> None:
        with connect(address) as client:
            future = executor.submit(work, client)
            while not concurrent.futures.wait([future], timeout=0.1).done:
                pass  # short waits: a signal's handler runs here, between two of them
            future.result()

    try:
        return exit_code(body)
    finally:
        executor.shutdown(wait=False)
