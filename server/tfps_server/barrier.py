"""Saves at given iterations: the wait for named optimizers to reach their values, and
the pushes held meanwhile.

A save with targets (optimizer -> iterations) registers them under every optimizer's lock
and waits until each named optimizer's ``iterations`` equal its value. While a target is
registered, a push (or a sync contribution) to an optimizer already at its value would
take it past: it waits under that optimizer's lock (``Condition.wait``, the lock released)
before it changes anything, at admission and again when its turn to apply comes, until the
targets are cleared. They are cleared right after the save's cut (under every lock, with
the targets checked once more), or when the save gives up: its deadline, the end of its
call, shutdown, a restore. Only one save waits at a time; another waits its turn.

A sync step already open at an optimizer's value when the targets are registered cannot
close while they are: its contributors wait on, its timeout paused (:meth:`SyncPolicy.pause`),
and it closes after the cut as it would have.

Locks: the targets are written under every named optimizer's lock (and the structure lock),
so that a push reads them under its optimizer's lock alone. The barrier's own condition is a
leaf: pushes take it (to signal a change) after releasing the optimizer's lock, and the save
waits on it holding nothing else. The rules are in ``docs/state-model.md``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from tfps_client.wire.reasons import Reason
from tfps_server.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ServerError,
    shown,
)
from tfps_server.state import Generation, Hooks, ManagedOptimizer, locked
from tfps_server.validation import MAX_ITERATIONS

if TYPE_CHECKING:
    from tfps_server.registry import Registry


class NotReached(Exception):
    """At the cut, an optimizer was below its value again (``set_weights`` lowered it after
    the wait saw it reached): the save goes back to waiting."""


class SaveBarrier:
    """The targets of the one save that waits for iterations, and the pushes it holds.

    Args:
        hooks: where ``push.held`` and ``save.waiting`` are reached.
    """

    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks
        self._targets: dict[ManagedOptimizer, int] = {}
        """Written under every named optimizer's lock; read under one of them."""
        self._changed = threading.Condition()
        """Leaf: signalled when an optimizer a save waits for may have changed."""
        self._version = 0
        self._busy = False
        """A save with targets is between its turn and its end (under ``_changed``)."""
        self._closed_by: ServerError | None = None

    # Pushes -------------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """True while a save's targets hold pushes (an unlocked read: a hint)."""
        return bool(self._targets)

    def holds(self, managed: ManagedOptimizer) -> bool:
        """True if a step of ``managed`` now would take it past its target; the caller holds
        its lock."""
        target = self._targets.get(managed)
        return target is not None and not managed.retired and managed.iterations() >= target

    def wait_while_held(self, managed: ManagedOptimizer) -> None:
        """Waits (the lock released) while a step of ``managed`` would pass its target; the
        caller holds its lock. Returns at once when no save waits for it."""
        while self.holds(managed):
            self._hooks.reach("push.held")
            managed.lock.wait()

    def changed(self) -> None:
        """Tells a waiting save that an optimizer's iterations may have changed; the caller
        holds no optimizer lock."""
        if self._targets:
            self.wake()

    def wake(self) -> None:
        """Wakes a waiting save (or one waiting its turn) to look again."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def close(self, error: ServerError) -> None:
        """Makes a waiting save, and every later one, give up with ``error`` (shutdown)."""
        with self._changed:
            self._closed_by = error
            self._version += 1
            self._changed.notify_all()

    # The save -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def target(
        self,
        registry: Registry,
        at_iterations: Mapping[str, int],
        deadline: float | None,
        ended: threading.Event,
    ) -> Iterator[Target]:
        """Registers a save's targets for the duration of the block; clears them at its end.

        ``deadline`` is a ``time.monotonic()`` instant (None: none); ``ended`` is set when
        the call ends (call :meth:`wake` after setting it).

        Raises:
            NotFound: an unknown optimizer (``UNKNOWN_OPTIMIZER``).
            InvalidArgument: a value out of [0, 2**62] (``INVALID_ITERATIONS``).
            FailedPrecondition: an optimizer past its value (``ITERATIONS_PASSED``).
            DeadlineExceeded: the deadline passed, or the call ended, while waiting its turn.
            Unavailable: the server is stopping.
        """
        generation = registry.current()
        targets = check_targets(generation, at_iterations)
        for managed, value in targets.items():  # refused before anything waits
            with managed.lock:
                check_not_passed(managed, value)
        target = Target(self, registry, generation, targets, deadline, ended)
        self._take_turn(target)
        try:
            with registry.frozen() as current:
                target.check_generation(current)
                for managed, value in targets.items():
                    check_not_passed(managed, value)
                self._targets = dict(targets)
                for managed, value in targets.items():
                    if managed.iterations() == value:  # an open step would close past it
                        managed.policy.pause()
            yield target
        finally:
            self.release()
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def release(self) -> None:
        """Clears the targets and lets the pushes they held go on (idempotent)."""
        targets = self._targets
        if not targets:
            return
        with locked(targets):
            self._targets = {}
            for managed in targets:
                managed.policy.resume()
                managed.lock.notify_all()

    def _take_turn(self, target: Target) -> None:
        """Waits until no other save with targets is under way, then takes the turn."""
        while True:
            version = self._read_version()
            target.check_live()
            with self._changed:
                if not self._busy:
                    self._busy = True
                    return
                if self._version == version:
                    self._changed.wait(target.remaining())

    def _wait(self, target: Target, version: int) -> None:
        """Waits until something changed since ``version``, the deadline or the call's end."""
        with self._changed:
            if self._version == version:
                self._changed.wait(target.remaining())

    def _read_version(self) -> int:
        with self._changed:
            return self._version

    def _closed(self) -> ServerError | None:
        return self._closed_by


class Target:
    """One save's targets, registered: it waits for them and checks them at the cut."""

    def __init__(
        self,
        barrier: SaveBarrier,
        registry: Registry,
        generation: Generation,
        targets: dict[ManagedOptimizer, int],
        deadline: float | None,
        ended: threading.Event,
    ) -> None:
        self._barrier = barrier
        self._registry = registry
        self._generation = generation
        self._targets = targets
        self._deadline = deadline
        self._ended = ended

    def remaining(self) -> float | None:
        """Seconds to the deadline (None: none)."""
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def check_live(self, current: Generation | None = None) -> None:
        """Refuses to wait on: the server is stopping, the deadline passed or the call ended.

        ``current`` is the current generation when the caller holds every lock (at the cut).
        """
        closed = self._barrier._closed()
        if closed is not None:
            raise closed.again()
        if self._ended.is_set() or (self._deadline is not None and self.remaining() == 0):
            if current is not None:
                raise self._gave_up(self._unreached() if current is self._generation else {})
            below = {}
            with contextlib.suppress(ServerError), self._registry.frozen() as now:
                below = self._unreached() if now is self._generation else {}
            raise self._gave_up(below)

    def check_generation(self, current: Generation) -> None:
        """Refuses when a restore replaced the state the targets name."""
        if current is not self._generation:
            raise Aborted(
                "save: the state was replaced by a restore while the save waited for "
                "iterations; nothing was saved",
                Reason.STATE_REPLACED,
            )

    def wait_reached(self) -> None:
        """Waits until every target is reached.

        Raises:
            FailedPrecondition: an optimizer passed its value (a ``set_weights``).
            Aborted: a restore replaced the state.
            DeadlineExceeded: the deadline passed, or the call ended.
            Unavailable: the server is stopping.
        """
        while True:
            version = self._barrier._read_version()
            self.check_live()
            with self._registry.frozen() as current:
                self.check_generation(current)
                below = self._below()
            if not below:
                return
            self._registry.hooks.reach("save.waiting")
            self._barrier._wait(self, version)

    def check_cut(self, current: Generation) -> None:
        """Checks the targets at the cut; the caller holds every lock.

        Raises:
            NotReached: an optimizer is below its value again (``set_weights``).
            FailedPrecondition, Aborted, Unavailable, DeadlineExceeded: as
                :meth:`wait_reached`.
        """
        self.check_live(current)
        self.check_generation(current)
        if self._below():
            raise NotReached

    def _below(self) -> dict[str, tuple[int, int]]:
        """Optimizer -> (iterations, value) of those below their value; refuses one past
        it. The caller holds every lock."""
        for managed, value in self._targets.items():
            check_not_passed(managed, value)
        return self._unreached()

    def _unreached(self) -> dict[str, tuple[int, int]]:
        """Optimizer -> (iterations, value) of those below their value; the caller holds
        every lock."""
        return {
            managed.name: (managed.iterations(), value)
            for managed, value in self._targets.items()
            if managed.iterations() < value
        }

    def _gave_up(self, below: dict[str, tuple[int, int]]) -> ServerError:
        waited = ", ".join(
            f"optimizer {shown(name)} at {at}, to reach {value}"
            for name, (at, value) in sorted(below.items())
        )
        why = "the call ended" if self._ended.is_set() else "the call's deadline passed"
        return DeadlineExceeded(
            f"save: {why} before every optimizer reached its iterations "
            f"({waited or 'all reached'}); nothing was saved",
            Reason.TARGET_NOT_REACHED,
            {"optimizers": ",".join(sorted(below))},
        )


def check_targets(
    generation: Generation, at_iterations: Mapping[str, int]
) -> dict[ManagedOptimizer, int]:
    """Looks up every named optimizer and checks every value, in name order.

    Raises:
        NotFound: an unknown optimizer (``UNKNOWN_OPTIMIZER``).
        ResourceExhausted: a name longer than any optimizer can have.
        InvalidArgument: a value out of [0, 2**62] (``INVALID_ITERATIONS``).
    """
    targets = {}
    for name, value in sorted(at_iterations.items()):
        managed = generation.optimizer(name)
        if not 0 <= value <= MAX_ITERATIONS:
            raise InvalidArgument(
                f"save: optimizer {shown(name)}: expected at_iterations in [0, 2**62], "
                f"received {value}",
                Reason.INVALID_ITERATIONS,
                {"optimizer": name, "expected": "[0, 2**62]", "received": value},
            )
        targets[managed] = value
    return targets


def check_not_passed(managed: ManagedOptimizer, value: int) -> None:
    """Refuses a target an optimizer is past; the caller holds its lock.

    Raises:
        FailedPrecondition: ``ITERATIONS_PASSED``.
    """
    iterations = managed.iterations()
    if iterations > value:
        raise FailedPrecondition(
            f"save: optimizer {shown(managed.name)} is at iterations {iterations}, past the "
            f"{value} to save at; expected at_iterations >= {iterations}, received {value}",
            Reason.ITERATIONS_PASSED,
            {"optimizer": managed.name, "expected": f">= {iterations}", "received": value},
        )
