"""Exactly-once pushes: a bounded window of request ids and their results.

A retried request id is answered with the original result instead of being
applied again; a retry that arrives while the original is still running waits
for it. Failed requests are forgotten, so a retry is validated afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

_Result = TypeVar("_Result")

DEFAULT_WINDOW = 100_000
"""Request ids remembered by default (the oldest are forgotten first)."""


class _Entry(Generic[_Result]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _Result | None = None
        self.error: BaseException | None = None


class RequestLog(Generic[_Result]):
    """Remembers the results of the last ``window`` request ids.

    Args:
        window: how many finished request ids are remembered.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window: expected >= 1, received {window}")
        self.window = window
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry[_Result]] = OrderedDict()

    def run(self, request_id: str, action: Callable[[], _Result]) -> tuple[_Result, bool]:
        """Runs ``action`` once per request id; returns (result, replayed).

        An empty request id always runs. An error is re-raised to every caller
        waiting on the same id, and the id is forgotten.
        """
        if not request_id:
            return action(), False
        with self._lock:
            entry = self._entries.get(request_id)
            fresh = entry is None
            if entry is None:
                entry = self._entries[request_id] = _Entry()
        if not fresh:
            entry.done.wait()
            if entry.error is not None:
                raise entry.error
            return entry.result, True  # type: ignore[return-value]
        try:
            entry.result = action()
        except BaseException as error:
            entry.error = error
            with self._lock:
                self._entries.pop(request_id, None)
            raise
        finally:
            entry.done.set()
        self._trim()
        return entry.result, False

    def snapshot(self) -> list[tuple[str, _Result]]:
        """Returns the finished (request id, result) pairs, oldest first."""
        with self._lock:
            return [
                (request_id, entry.result)  # type: ignore[misc]
                for request_id, entry in self._entries.items()
                if entry.done.is_set() and entry.error is None
            ]

    def restore(self, pairs: list[tuple[str, _Result]]) -> None:
        """Replaces the window with finished (request id, result) pairs, oldest first."""
        with self._lock:
            self._entries.clear()
            for request_id, result in pairs:
                entry: _Entry[_Result] = _Entry()
                entry.result = result
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
