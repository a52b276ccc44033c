"""Exactly-once pushes: a bounded window of request ids and their results.

A retried request id is answered with the original result instead of being
applied again; a retry that arrives while the original is still running waits
for it. A request that failed before any optimizer applied it is forgotten, so
a retry is validated afresh; one that failed after some optimizers applied it
(for example a sync step aborted by shutdown) keeps those results, and a retry
applies only the optimizers still missing.

A push records its result for each optimizer while it holds that optimizer's
lock, so a snapshot taken under all optimizer locks (a checkpoint) holds
exactly the results whose updates it holds. After a restore, a retry of a push
that the checkpoint caught half-way applies only the optimizers still missing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tfps_server.errors import ServerError

DEFAULT_WINDOW = 100_000
"""Request ids remembered by default (the oldest are forgotten first)."""

Results = dict[str, Any]
"""Per-optimizer results of one push, filled in as each optimizer handles it."""


_FINISHED = threading.Event()
"""The ``done`` of every entry no one runs: one shared set event rather than one each, which
would cost a kilobyte and more per id of the window."""
_FINISHED.set()


class _Entry:
    __slots__ = ("complete", "done", "error", "results")

    def __init__(self, results: Results | None = None, complete: bool = False) -> None:
        self.results: Results = dict(results or {})
        self.complete = complete
        self.done = threading.Event()
        self.error: BaseException | None = None

    def finish(self) -> None:
        """Wakes whoever waits for the run, and drops the event no one else needs."""
        done, self.done = self.done, _FINISHED
        done.set()


class RequestLog:
    """Remembers the results of the last ``window`` request ids.

    Args:
        window: how many request ids are remembered.
        entries: (request id, results, complete) to start from, oldest first,
            as :meth:`snapshot` returns them.
    """

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        entries: Iterable[tuple[str, Mapping[str, Any], bool]] = (),
    ) -> None:
        if window < 1:
            raise ValueError(f"window: expected >= 1, received {window}")
        self.window = window
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        for request_id, results, complete in entries:
            entry = _Entry(dict(results), complete)
            entry.finish()
            self._entries[request_id] = entry
        self._trim()

    def run(self, request_id: str, action: Callable[[Results], None]) -> tuple[Results, bool]:
        """Runs ``action`` once per request id; returns (results, replayed).

        ``action`` fills the results it is given, one optimizer at a time. An
        empty request id always runs. An error reaches every caller waiting on
        the same id; the id is forgotten unless some optimizer had applied it.
        """
        if not request_id:
            results: Results = {}
            action(results)
            return results, False
        with self._lock:
            entry = self._entries.get(request_id)
            owner = entry is None or (entry.done.is_set() and not entry.complete)
            if entry is None:
                entry = self._entries[request_id] = _Entry()
            elif owner:
                entry.done = threading.Event()
                entry.error = None
        if not owner:
            entry.done.wait()
            if entry.error is not None:
                raise _again(entry.error)
            return dict(entry.results), True
        try:
            action(entry.results)
            entry.complete = True
        except BaseException as error:
            entry.error = error
            if not entry.results:
                with self._lock:
                    if self._entries.get(request_id) is entry:
                        del self._entries[request_id]
            raise
        finally:
            entry.finish()
        self._trim()
        return dict(entry.results), False

    def snapshot(self) -> list[tuple[str, Results, bool]]:
        """Returns (request id, results so far, complete) of every entry with results, oldest first.

        Call it while holding every optimizer's lock for a consistent cut.
        """
        with self._lock:
            return [
                (request_id, dict(entry.results), entry.complete)
                for request_id, entry in self._entries.items()
                if entry.results
            ]

    def __len__(self) -> int:
        return len(self._entries)

    def _trim(self) -> None:
        with self._lock:
            while len(self._entries) > self.window:
                oldest = next(iter(self._entries))
                if not self._entries[oldest].done.is_set():
                    break
                del self._entries[oldest]


def _again(error: BaseException) -> BaseException:
    """A copy of a server error for one more waiting caller; other errors as they are."""
    return error.again() if isinstance(error, ServerError) else error
