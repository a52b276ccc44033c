"""Subprocesses of the training benchmark, which talk to it in lines on stdin and stdout.

The benchmark's side is :class:`Task`; a task's side is :func:`read_stdin_line` and
:func:`ready_then_wait`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.server import quiet_environment

STOP_SECONDS = 10.0
"""Time a task gets to exit after SIGTERM before it is killed."""
_REPOSITORY = Path(__file__).resolve().parent.parent


class TaskError(RuntimeError):
    """A task exited, or said nothing in time; the message ends with its log's tail."""


class Task:
    """``python -m MODULE ARGS...`` with stdin and stdout piped and stderr in ``log``.

    Use it as a context manager, or through :func:`tasks`: it is killed on exit.

    Args:
        module: the module to run, such as ``"bench.training_tfps"``.
        args: its arguments.
        log: the file its stderr goes to.
    """

    def __init__(self, module: str, args: Sequence[str], log: Path) -> None:
        self.name = f"{module} {' '.join(args)[:80]}"
        self._log = log
        env = quiet_environment()
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_REPOSITORY), *filter(None, [env.get("PYTHONPATH")])]
        )
        with log.open("wb") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        """The task's process id."""
        return self._process.pid

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def read_line(self, timeout: float) -> str:
        """The task's next line on stdout.

        Raises:
            TaskError: it exited first, or wrote no line for ``timeout`` seconds.
        """
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise self._error(f"wrote no line in {timeout:.0f} s") from None
        if line is None:
            self._lines.put(None)
            raise self._error(f"exited with code {self._process.wait()}")
        return line

    def read_json(self, timeout: float) -> Any:
        """The task's next line on stdout, parsed as JSON."""
        return json.loads(self.read_line(timeout))

    def expect(self, expected: str, timeout: float) -> None:
        """Reads the next line and checks it is ``expected``.

        Raises:
            TaskError: it is another line, the task exited, or it said nothing in time.
        """
        line = self.read_line(timeout)
        if line != expected:
            raise self._error(f"wrote {line[:200]!r}, expected {expected!r}")

    def write_line(self, line: str) -> None:
        """Writes a line to the task's stdin."""
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def stop(self) -> None:
        """Ends the task: SIGTERM, then SIGKILL after :data:`STOP_SECONDS`."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()

    def _error(self, what: str) -> TaskError:
        tail = "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])
        return TaskError(f"{self.name}: {what}; its log ends:\n{tail}")

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_stdin_line() -> str:
    """A task's next line from the benchmark; exits the task if the benchmark is gone."""
    line = sys.stdin.readline()
    if not line:
        sys.exit("stdin closed: the benchmark is gone")
    return line


def ready_then_wait() -> None:
    """A task's start line: says ``ready``, then waits for the benchmark's go."""
    print("ready", flush=True)
    read_stdin_line()


def cpu_seconds(pid: int) -> float:
    """The CPU time, user and system, that process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def tasks(
    specs: Sequence[tuple[str, Sequence[str]]], log_dir: Path, prefix: str
) -> Iterator[list[Task]]:
    """Starts one :class:`Task` per ``(module, args)``; stops every one on exit, however
    the block ends. Their logs are ``log_dir / f"{prefix}-{i}.log"``."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(Task(module, args, log_dir / f"{prefix}-{index}.log"))
            for index, (module, args) in enumerate(specs)
        ]
