"""A real ``tfps-server`` process for benchmarks, and its memory as the kernel reports it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

_LISTENING = re.compile(r"tfps-server listening on \S+:(?P<port>\d+),")
START_SECONDS = 120.0


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quiet_environment() -> dict[str, str]:
    """This environment without TFPS_* settings, with TensorFlow's C++ logs off."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TFPS_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


class BenchServer:
    """``python -m tfps_server`` on a free port, stopped when the ``with`` block ends.

    Args:
        args: extra command-line flags.
    """

    def __init__(self, args: Sequence[str] = ()) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "tfps_server", "--port", str(self.port)]
        env = {**quiet_environment(), "TFPS_METRICS_PORT": "0"}
        self._process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._lines: list[str] = []
        self._listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(START_SECONDS):
            self.stop()
            raise RuntimeError(f"tfps-server did not start:\n{''.join(self._lines)}")

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.append(line)
            if _LISTENING.search(line):
                self._listening.set()

    @property
    def address(self) -> str:
        """``host:port`` of the server."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process.pid

    def memory(self) -> tuple[int, int]:
        """The server's resident set size now and at its peak, in bytes."""
        return process_memory(self._process.pid)

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 30 s)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def process_memory(pid: int) -> tuple[int, int]:
    """A process's resident set size now (VmRSS) and at its peak (VmHWM), in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all of the machine's cores have spent busy so far (every process's, not
    only the benchmark's), from /proc/stat: all time but idle and iowait."""
    first = Path("/proc/stat").read_text().split("\n")[0].split()  # "cpu user nice system idle ..."
    fields = [int(field) for field in first[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")
