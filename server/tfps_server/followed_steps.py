"""Sync steps that another shard decided: the steps a sharded client's first shard closed.

A sharded client pushes a sync optimizer's part to its first shard, which runs the step as
one server does (enough workers, backup workers, the timeout), and then pushes the other
shards' parts with the step the first shard closed: its iterations, its outcome and the
workers whose contributions formed it (``PushRequest.follow``). Here, on another shard,
the contributions are kept by step and a step closes when every worker named has arrived,
in the order of the steps, so that every shard applies each step with the same workers'
gradients, combined as one server combines them.

A step that cannot complete (a worker died between the two shards, or this shard is behind
the first one after a restart from an older checkpoint) closes after the optimizer's sync
timeout with the contributions that arrived, logging what was missing: training goes on,
with this shard apart from the first until a logical checkpoint is restored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tfps_client.types import Outcome, Sync
from tfps_client.wire.convert import OptimizerResult, SyncStep
from tfps_client.wire.reasons import Reason
from tfps_server.errors import FailedPrecondition, ServerError, shown

if TYPE_CHECKING:
    from prometheus_client import Counter

    from tfps_server.aggregation import ApplyFn, Contribution

_log = logging.getLogger(__name__)

RunStep = Callable[
    [Mapping[str, "Contribution"], bool, Callable[[], int], "ApplyFn"],
    "OptimizerResult | ServerError",
]
"""Applies (or, when told to drop, does not) a step's contributions by worker; returns what
its contributors are answered (:meth:`tfps_server.aggregation.SyncPolicy.run_step`)."""


class FollowedSteps:
    """The steps of one sync optimizer that this shard follows; used under its lock.

    Args:
        options: the optimizer's sync settings (its timeout bounds a step's wait here).
        lock: the optimizer's lock; waiting contributors release it while they wait.
        run_step: applies a step's contributions, as the optimizer's own steps are.
        timeouts: counts the steps closed by the timeout.
        on_wait: called (under the lock) each time a contributor starts waiting.
    """

    _KEPT_STEPS = 4096

    def __init__(
        self,
        options: Sync,
        lock: threading.Condition,
        run_step: RunStep,
        timeouts: Counter,
        on_wait: Callable[[], None],
    ) -> None:
        self._options = options
        self._lock = lock
        self._run_step = run_step
        self._timeouts = timeouts
        self._on_wait = on_wait
        self._arrived: dict[int, dict[str, Contribution]] = {}
        """Contributions of the steps not closed yet, by step, then worker."""
        self._decided: dict[int, SyncStep] = {}
        self._since: dict[int, float] = {}
        """When each open step's first contribution arrived (``time.monotonic()``)."""
        self._results: OrderedDict[int, OptimizerResult | ServerError] = OrderedDict()
        self._paused_at: float | None = None

    def follow(
        self,
        worker: str,
        decided: SyncStep,
        gradients: Contribution,
        iterations: Callable[[], int],
        apply: ApplyFn,
    ) -> OptimizerResult:
        """Adds one worker's contribution to the step the first shard closed; waits until that
        step closes here.

        Raises:
            FailedPrecondition: the worker already contributed to that step here.
            ServerError: the step was aborted.
        """
        if decided.outcome is Outcome.STALE:
            return OptimizerResult(Outcome.STALE, iterations())
        step = decided.step
        if step in self._results or step < iterations():  # closed here without it (timeout)
            return OptimizerResult(Outcome.STALE, iterations())
        arrived = self._arrived.setdefault(step, {})
        if worker in arrived:
            raise FailedPrecondition(
                f"sync aggregation: worker {shown(worker)} already contributed to step {step}",
                Reason.DUPLICATE_CONTRIBUTION,
                {"worker": worker, "step": step},
            )
        arrived[worker] = gradients
        self._decided.setdefault(step, decided)
        self._since.setdefault(step, time.monotonic())
        while step not in self._results:
            wait = self._close_ready(iterations, apply)
            if step in self._results:
                break
            self._on_wait()
            self._lock.wait(wait)
        result = self._results[step]
        if isinstance(result, ServerError):
            raise result.again()
        return result

    def pause(self) -> None:
        """Keeps steps from closing, their timeouts paused, until :meth:`resume`."""
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        """Lets steps close again; the pause does not count toward their timeouts."""
        if self._paused_at is None:
            return
        paused = time.monotonic() - self._paused_at
        self._since = {step: since + paused for step, since in self._since.items()}
        self._paused_at = None

    def abort(self, error: ServerError) -> None:
        """Answers every contributor of every open step with ``error``; nothing applies."""
        for step in list(self._arrived):
            self._finish(step, error)
        self._lock.notify_all()

    def _close_ready(self, iterations: Callable[[], int], apply: ApplyFn) -> float | None:
        """Closes the open steps that can close, lowest first; returns how long to wait
        before one may time out (None: until notified)."""
        while self._arrived and self._paused_at is None:
            step = min(self._arrived)
            current = iterations()
            if step < current:  # iterations moved past it (set_weights): it joins nothing
                self._finish(step, OptimizerResult(Outcome.STALE, current))
                continue
            complete = step == current and set(self._decided[step].contributors) <= set(
                self._arrived[step]
            )
            remaining = self._since[step] + self._options.timeout - time.monotonic()
            if not complete and remaining > 0:
                return remaining
            if not complete:
                self._log_timeout(step, current)
            self._close(step, iterations, apply)
        return None

    def _close(self, step: int, iterations: Callable[[], int], apply: ApplyFn) -> None:
        drop = self._decided[step].outcome is Outcome.DROPPED
        self._finish(step, self._run_step(self._arrived[step], drop, iterations, apply))

    def _finish(self, step: int, result: OptimizerResult | ServerError) -> None:
        del self._arrived[step], self._decided[step], self._since[step]
        self._results[step] = result
        while len(self._results) > self._KEPT_STEPS:
            self._results.popitem(last=False)
        self._lock.notify_all()

    def _log_timeout(self, step: int, current: int) -> None:
        self._timeouts.inc()
        missing = sorted(set(self._decided[step].contributors) - set(self._arrived[step]))
        if step != current:
            _log.warning(
                "sync step %d closed at iterations %d after the %.3g s timeout: this shard "
                "is behind the first shard (restarted from an older checkpoint?); restore "
                "the latest logical checkpoint to bring the shards together",
                step,
                current,
                self._options.timeout,
            )
        else:
            _log.warning(
                "sync step %d closed after the %.3g s timeout without workers %s, whose "
                "contributions the first shard had: this shard's step differs from its",
                step,
                self._options.timeout,
                missing,
            )
