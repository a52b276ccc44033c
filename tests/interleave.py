"""Deterministic interleavings: hold server threads at the named points of the state model.

The server calls ``registry.hooks.reach(point)`` at each point listed in
docs/state-model.md. :class:`BlockingHooks` lets a test hold the threads that
reach a point until it releases them, and wait until a point was reached, so
an interleaving is forced by events, never by sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tfps_server.state import Hooks

TIMEOUT = 60.0
"""Seconds any wait here may take before the test fails instead of hanging."""


class Gate:
    """Counts the threads that reached a point and, while closed, holds them there."""

    def __init__(self, point: str, hold: bool) -> None:
        self.point = point
        self._opened = threading.Event()
        if not hold:
            self._opened.set()
        self._arrivals = 0
        self._changed = threading.Condition()

    def arrive(self) -> None:
        """Called by the server thread; returns once the gate is open."""
        with self._changed:
            self._arrivals += 1
            self._changed.notify_all()
        if not self._opened.wait(TIMEOUT):
            raise AssertionError(f"{self.point}: held for {TIMEOUT} s, never released")

    def wait_arrivals(self, count: int = 1) -> None:
        """Waits until ``count`` threads reached the point in all."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._arrivals >= count, TIMEOUT):
                raise AssertionError(f"{self.point}: {self._arrivals} arrivals, expected {count}")

    @property
    def arrivals(self) -> int:
        """Threads that reached the point so far."""
        with self._changed:
            return self._arrivals

    def release(self) -> None:
        """Lets the held threads, and every later one, pass."""
        self._opened.set()


class BlockingHooks(Hooks):
    """Hooks whose points can hold threads (:meth:`hold`) or be watched (:meth:`watch`)."""

    def __init__(self) -> None:
        self._gates: dict[str, Gate] = {}

    def hold(self, point: str) -> Gate:
        """Holds every thread that reaches ``point`` from now on, until the gate is released."""
        gate = self._gates[point] = Gate(point, hold=True)
        return gate

    def watch(self, point: str) -> Gate:
        """Counts the threads that reach ``point`` from now on, without holding them."""
        gate = self._gates[point] = Gate(point, hold=False)
        return gate

    def release_all(self) -> None:
        """Releases every gate, so that no server thread stays held after a test."""
        for gate in list(self._gates.values()):
            gate.release()

    def reach(self, point: str) -> None:
        """Called by the server at ``point``."""
        gate = self._gates.get(point)
        if gate is not None:
            gate.arrive()


class Background:
    """What a call made on another thread returned or raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as error:
            self.error = error

    def result(self) -> Any:
        """Waits for the call; returns its value or raises its error."""
        self._thread.join(TIMEOUT)
        if self._thread.is_alive():
            raise AssertionError(f"the call did not finish in {TIMEOUT} s")
        if self.error is not None:
            raise self.error
        return self.value

    def failure(self) -> BaseException:
        """Waits for the call, which must have raised; returns its error."""
        self._thread.join(TIMEOUT)
        if self._thread.is_alive():
            raise AssertionError(f"the call did not finish in {TIMEOUT} s")
        if self.error is None:
            raise AssertionError(f"the call returned {self.value!r} instead of raising")
        return self.error


def in_background(call: Callable[[], Any]) -> Background:
    """Starts ``call`` on its own thread."""
    return Background(call)
