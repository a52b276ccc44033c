"""Everything written to stderr as log records, by a relay process.

TensorFlow's, absl's and gRPC's C++ code and the Python interpreter itself (tracebacks of
uncaught exceptions, "Exception ignored in ...", faulthandler's dumps) write straight to
file descriptor 2, past Python's logging. :func:`start` points descriptor 2 at a pipe that
a small child process, the relay, reads; the relay alone writes the real stderr:

* lines of the server's own log handler (which :class:`Relay` marks) as they are, a line
  longer than one atomic pipe write joined again from its pieces;
* an absl line (``I0000 00:00:1795525733.061562   29628 port.cc:153] text``) as a record
  of logger ``native`` at its severity (I, W, E, F: INFO, WARNING, ERROR, CRITICAL), with
  the fields ``source`` (``port.cc:153``) and ``tid``; lines that continue it (the rest
  of what the same read returned, up to the next absl line) at the same severity;
* absl's notice that it is not initialized as INFO;
* any other line as an ERROR record of ``native``.

So with ``--log-format json`` every line on stderr is JSON, and the ``native`` records are
filtered as any library's are (:class:`~tfps_server.logs.LibraryFilter`): below DEBUG
only the errors come through.

Why a process and not a thread: a thread ends with the server and takes along what it
had not read yet, which after a crash is exactly the last lines (a CHECK failure's FATAL
line, the report of a fatal signal). The relay reads until every writer has closed the
pipe, so it drains what the server wrote however the server ended, then exits. It runs
in a session of its own (Ctrl-C in a terminal does not reach it) and ignores SIGINT and
SIGTERM. At a normal exit the server points descriptor 2 back at the real stderr and
waits for the relay to finish: in a container the server is PID 1, and its exit takes
every other process of the container along. With one writer, lines also reach the real
stderr whole and in the order they were written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, TextIO

from tfps_server import logs

MARK = "\x1e"
"""Starts each line of the server's own log handler in the pipe: the relay copies those."""

CONTINUED = "\x1f"
"""Starts each piece but the last of a line of the server's own too long for one atomic
write to the pipe (``PIPE_BUF`` bytes): the relay joins the pieces, so native output written
between two of them cannot cut the line."""

_PIECE_CHARACTERS = (select.PIPE_BUF - len(MARK) - 1) // 6
"""Characters in one piece: encoded (UTF-8, a lone surrogate backslash-escaped in 6 bytes)
with its mark and newline, it fits one atomic write."""

ABSL_LINE = re.compile(r"^([IWEF])\d{4} \S+\s+(\d+) ([^\s\]]+)\] ?(.*)$")
"""An absl (glog-style) log line: severity, date, time, thread id, source, message. Before
``absl::InitializeLog()`` the date is ``0000`` and the time ``00:00:<Unix seconds>``."""

ABSL_NOT_INITIALIZED = "WARNING: All log messages before absl::InitializeLog() is called"
"""The start of absl's notice that every message goes to stderr (a copy of absl in each
of TensorFlow's libraries prints it as it loads)."""

SEVERITIES = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
"""Log level of each absl severity letter."""

CLOSE_SECONDS = 10.0
"""How long a normal exit waits for the relay to write what is left."""

_native = logging.getLogger("native")


class NativeRecord(NamedTuple):
    """What one line of native output becomes."""

    level: int
    message: str
    fields: dict[str, str]


def classify(lines: Iterable[str]) -> list[NativeRecord | str]:
    """Turns the lines of one read from the pipe into records, and the server's own
    (marked) lines into the text to copy.

    A line that is neither an absl line nor the server's continues the absl line before it
    in the same read (absl writes a message in one piece); without one, it stands alone
    at ERROR. Blank lines are dropped.
    """
    out: list[NativeRecord | str] = []
    head: NativeRecord | None = None
    for line in lines:
        absl = ABSL_LINE.match(line)
        if line.startswith(MARK):
            out.append(line[len(MARK) :])
            head = None
        elif absl is not None:
            severity, tid, source, message = absl.groups()
            head = NativeRecord(SEVERITIES[severity], message, {"source": source, "tid": tid})
            out.append(head)
        elif line.startswith(ABSL_NOT_INITIALIZED):
            out.append(NativeRecord(logging.INFO, line, {}))
            head = None
        elif line.strip():
            if head is None:
                out.append(NativeRecord(logging.ERROR, line, {}))
            else:
                out.append(head._replace(message=line))
    return out


def relay(source: int, stream: TextIO) -> None:
    """Copies descriptor ``source`` to ``stream`` (where the log handler writes too) until
    end of file, as :func:`classify` says; a last line without a newline counts too."""
    pending = b""
    pieces: list[str] = []
    while True:
        chunk = os.read(source, 1 << 16)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop() if chunk else b""
        decoded = (line.decode("utf-8", "backslashreplace").rstrip("\r") for line in lines)
        for item in classify(_joined(decoded, pieces)):
            if isinstance(item, str):
                stream.write(item + "\n")
            else:
                _native.log(item.level, "%s", item.message, extra=item.fields)
        stream.flush()
        if not chunk:
            return


def _joined(lines: Iterable[str], pieces: list[str]) -> Iterator[str]:
    """Yields ``lines`` with each of the server's own long lines joined from its pieces;
    ``pieces`` holds those of a line not complete yet (from one read to the next)."""
    for line in lines:
        if line.startswith(CONTINUED):
            pieces.append(line[len(CONTINUED) :])
        elif line.startswith(MARK) and pieces:
            yield MARK + "".join(pieces) + line[len(MARK) :]
            pieces.clear()
        else:
            yield line


def _marked_writes(line: str) -> Iterator[bytes]:
    """Yields a line of the server's own as writes the pipe keeps whole: pieces marked
    :data:`CONTINUED`, then the last one marked :data:`MARK`."""
    body = line.removesuffix("\n")
    ending = line[len(body) :]
    starts = range(0, max(len(body), 1), _PIECE_CHARACTERS)
    for start in starts:
        last = start == starts[-1]
        piece = body[start : start + _PIECE_CHARACTERS]
        text = MARK + piece + ending if last else CONTINUED + piece + "\n"
        yield text.encode("utf-8", "backslashreplace")


class _HandlerStream:
    """What the server's log handler writes to: descriptor 2, every line marked while the
    relay reads it, as it is once the relay is closed or gone."""

    def __init__(self, stderr_fd: int) -> None:
        self._stderr_fd = stderr_fd
        self.mark = MARK

    def write(self, text: str) -> int:
        """Writes ``text`` to descriptor 2, each line marked (and cut into pieces the pipe
        keeps whole) while the relay reads it."""
        try:
            for line in text.splitlines(keepends=True) if self.mark else ():
                for data in _marked_writes(line):
                    _write_all(2, data)
        except BrokenPipeError:  # the relay is gone: stderr is the real one again
            self.unmark()
        if not self.mark:
            _write_all(2, text.encode("utf-8", "backslashreplace"))
        return len(text)

    def flush(self) -> None:
        """Nothing to flush: every write goes to the descriptor at once."""

    def unmark(self) -> None:
        """Points descriptor 2 back at the real stderr; lines go there unmarked."""
        self.mark = ""
        os.dup2(self._stderr_fd, 2)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Relay:
    """The running relay, and the stream for the server's log handler.

    Attributes:
        stream: hand it to :func:`~tfps_server.logs.configure`.
    """

    def __init__(self, process: subprocess.Popen[bytes], stderr_fd: int) -> None:
        self._process = process
        self.stream = _HandlerStream(stderr_fd)

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Points descriptor 2 back at the real stderr and waits for the relay to write
        what it has left and exit. A second call does nothing."""
        sys.stderr.flush()
        if self.stream.mark:
            self.stream.unmark()
        with contextlib.suppress(subprocess.TimeoutExpired):  # it writes on after the exit
            self._process.wait(timeout)


def start(level: str, log_format: str) -> Relay | None:
    """Starts the relay, at ``level`` in ``log_format``, and points descriptor 2 at it.

    Returns:
        The relay; None if it could not start, leaving stderr as it was (closed, say).
    """
    try:
        stderr_fd = os.dup(2)
    except OSError:  # descriptor 2 is closed: nothing to relay to
        return None
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, level, log_format],
            stdin=read_end,
            stdout=stderr_fd,
            stderr=stderr_fd,
            start_new_session=True,
        )
    except OSError:
        os.close(write_end)
        os.close(stderr_fd)
        return None
    finally:
        os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    return Relay(process, stderr_fd)


def main(argv: Sequence[str]) -> int:
    """The relay process: ``python -m tfps_server.stderr_relay LEVEL FORMAT``, reading its
    standard input, writing its standard output."""
    level, log_format = argv
    for ended_by_eof_only in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ended_by_eof_only, signal.SIG_IGN)
    # Like stderr's: a character the locale cannot encode is escaped, not the relay's end
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    logs.configure(level, log_format, sys.stdout)
    relay(sys.stdin.fileno(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
