"""Exactly-once pushes: a bounded window of request ids and their results.

A retried request id is answered with the original result instead of being
applied again; a retry that arrives while the original is still running waits
for it. Failed requests are forgotten, so a retry is validated afresh.

A push records its result for each optimizer while it holds that optimizer's
lock, so a snapshot taken under all optimizer locks (a checkpoint) holds
exactly the results whose updates it holds. After a restore, a retry of a push
that the checkpoint caught half-way applies only the optimizers still missing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_WINDOW = 100_000
"""Request ids remembered by default (the oldest are forgotten first)."""

Results = dict[str, Any]
"""Per-optimizer results of one push, filled in as each optimizer handles it."""


class _Entry:
    def __init__(self, results: Results | None = None, complete: bool = False) -> None:
        self.results: Results = dict(results or {})
        self.complete = complete
        self.done = threading.Event()
        self.error: BaseException | None = None


class RequestLog:
    """Remembers the results of the last ``window`` request ids.

    Args:
        window: how many request ids are remembered.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window: expected >= 1, received {window}")
        self.window = window
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def run(self, request_id: str, action: Callable[[Results], None]) -> tuple[Results, bool]:
        """Runs ``action`` once per request id; returns (results, replayed).

        ``action`` fills the results it is given, one optimizer at a time. An
        empty request id always runs. An error reaches every caller waiting on
        the same id, and the id is forgotten.
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
                entry.done.clear()
        if not owner:
            entry.done.wait()
            if entry.error is not None:
                raise entry.error
            return dict(entry.results), True
        try:
            action(entry.results)
            entry.complete = True
        except BaseException as error:
            entry.error = error
            with self._lock:
                self._entries.pop(request_id, None)
            raise
        finally:
            entry.done.set()
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
                if entry.results and entry.error is None
            ]

    def restore(self, entries: list[tuple[str, Mapping[str, Any], bool]]) -> None:
        """Replaces the window with (request id, results, complete) entries, oldest first."""
        with self._lock:
            self._entries.clear()
            for request_id, results, complete in entries:
                entry = _Entry(dict(results), complete)
                entry.done.set()
                self._entries[request_id] = entry
        self._trim()

    def _trim(self) -> None:
        with self._lock:
            while len(self._entries) > self.window:
                oldest = next(iter(self._entries))
                if not self._entries[oldest].done.is_set():
                    break
                del self._entries[oldest]
