"""When gradients are applied, and with which aggregated gradient.

An optimizer's policy receives validated gradients from pushes and decides:
apply now (async), drop as stale, or aggregate with other workers' gradients
for the same step (sync). The update itself is the apply function it is given
(:mod:`tfps_server.push`), so state still changes in one place. Policies run
under the optimizer's lock, a ``threading.Condition`` that sync steps wait on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from tfps_client.types import Async, OptimizerOptions, Outcome, Sync
from tfps_client.wire.convert import OptimizerResult
from tfps_client.wire.reasons import Reason
from tfps_server.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    OutOfRange,
    ServerError,
    shown,
)
from tfps_server.followed_steps import FollowedSteps
from tfps_server.metrics import Metrics
from tfps_server.validation import MAX_ITERATIONS

_log = logging.getLogger(__name__)


class Prepared(NamedTuple):
    """A validated gradient of one variable, in the variable's dtype.

    ``position`` orders gradients as their variables were created; ``target``
    is the variable to update, opaque here. ``indices`` is None for a dense
    gradient; ``shape`` is the variable's shape. ``squares`` is the sum of squares of
    ``values`` when validation already computed it (None: not yet).
    """

    position: int
    target: Any
    values: np.ndarray
    indices: np.ndarray | None
    shape: tuple[int, ...]
    squares: float | None = None


MAX_SYNC_TIMEOUT_SECONDS = threading.TIMEOUT_MAX / 2
"""Longest timeout of a sync step: half of what ``Condition.wait`` takes (some 146 years on
Linux), leaving a margin for the deadline arithmetic; more would raise OverflowError there."""

Contribution = Sequence[Prepared] | None
"""One push's validated gradients for one optimizer (none for an optimizer it advances), or
None when the push skips that optimizer's update: a non-finite gradient of it went to
another shard (the push's ``non_finite``)."""

ApplyFn = Callable[[Sequence[Prepared] | None], Outcome]
"""Applies one combined gradient list, or skips the update for None; returns APPLIED or
SKIPPED (non-finite, or None). Either way ``iterations`` grows by exactly one, for an empty
list too (a step without gradients)."""


def checked(options: OptimizerOptions) -> OptimizerOptions:
    """Returns the options with defaults filled in (backups: none), refusing impossible ones.

    Raises:
        InvalidArgument: what is wrong, with the expected and received values.
    """
    aggregation = options.aggregation
    problems = []
    if options.on_non_finite not in ("reject", "skip"):
        problems.append(f"on_non_finite 'reject' or 'skip', received {options.on_non_finite!r}")
    if not isinstance(options.lazy_sparse, bool):
        problems.append(f"lazy_sparse true or false, received {options.lazy_sparse!r}")
    if isinstance(aggregation, Async):
        if aggregation.max_staleness is not None and aggregation.max_staleness < 0:
            problems.append(f"max_staleness >= 0, received {aggregation.max_staleness}")
    else:
        wanted = aggregation.replicas_to_aggregate
        total = aggregation.total_num_replicas or wanted
        if wanted < 1:
            problems.append(f"replicas_to_aggregate >= 1, received {wanted}")
        if total < wanted:
            problems.append(
                f"total_num_replicas >= replicas_to_aggregate ({wanted}), received {total}"
            )
        if aggregation.reduction not in ("sum", "mean"):
            problems.append(f"reduction 'sum' or 'mean', received {aggregation.reduction!r}")
        if not 0 < aggregation.timeout < float("inf"):
            problems.append(f"a positive finite timeout, received {aggregation.timeout}")
        elif aggregation.timeout > MAX_SYNC_TIMEOUT_SECONDS:
            problems.append(
                f"a timeout of at most {MAX_SYNC_TIMEOUT_SECONDS:.0f} seconds, "
                f"received {aggregation.timeout}"
            )
        if aggregation.on_timeout not in ("apply", "drop"):
            problems.append(f"on_timeout 'apply' or 'drop', received {aggregation.on_timeout!r}")
        aggregation = replace(aggregation, total_num_replicas=total)
    if problems:
        raise InvalidArgument(
            "optimizer options: expected " + "; ".join(problems), Reason.INVALID_OPTIONS
        )
    return replace(options, aggregation=aggregation)


def combine(contributions: Sequence[Sequence[Prepared]], reduction: str) -> list[Prepared]:
    """Combines per-worker gradients, in the given (worker-id) order, variable by variable.

    Sparse contributions stay sparse (values and indices concatenated; Keras sums
    repeated indices when applying). A variable that any worker sent dense is
    dense: contributions are added one after the other, so the result does not
    depend on arrival order. With "mean", each variable is divided by the number
    of contributions that held it: a contribution without a gradient of a variable (a worker
    that pushed others, or none at all: a push's ``advance``) does not count for it.
    """
    by_position: dict[int, list[Prepared]] = {}
    for gradients in contributions:
        for gradient in gradients:
            by_position.setdefault(gradient.position, []).append(gradient)
    combined = []
    for position, parts in sorted(by_position.items()):
        if all(part.indices is not None for part in parts):
            values = np.concatenate([part.values for part in parts])
            indices: np.ndarray | None = np.concatenate(
                [np.asarray(part.indices, np.int64) for part in parts]
            )
        else:
            values, indices = _dense_sum(parts), None
        if reduction == "mean" and len(parts) > 1:
            values = values / np.asarray(len(parts), values.dtype)
        combined.append(Prepared(position, parts[0].target, values, indices, parts[0].shape))
    return combined


def _dense_sum(parts: Sequence[Prepared]) -> np.ndarray:
    total: np.ndarray | None = None
    for part in parts:
        if part.indices is None:
            total = part.values.copy() if total is None else total + part.values
        else:
            if total is None:
                total = np.zeros(part.shape, part.values.dtype)
            np.add.at(total, part.indices, part.values)
    if total is None:
        raise ValueError("_dense_sum needs at least one part")
    return total


class AsyncPolicy:
    """Applies each push as it arrives, dropping those beyond ``max_staleness``."""

    def __init__(self, options: Async) -> None:
        self.options = options

    def admit(self, worker: str, step: int | None, current: int) -> None:
        """Raises what :meth:`submit` would refuse the push with at iterations ``current``.

        A push to several optimizers is admitted by all of them before any applies it.
        """
        _check_step(worker, step, current)

    def submit(
        self,
        worker: str,
        step: int | None,
        gradients: Contribution,
        iterations: Callable[[], int],
        apply: ApplyFn,
    ) -> OptimizerResult:
        """Applies, skips (None) or drops one push; the caller holds the optimizer's lock."""
        current = iterations()
        self.admit(worker, step, current)
        bound = self.options.max_staleness
        if bound is not None and step is not None and current - step > bound:
            return OptimizerResult(Outcome.STALE, current)
        return OptimizerResult(apply(gradients), current + 1)  # applied or skipped: one step

    def pause(self) -> None:
        """Nothing waits in async mode: there is no open step to hold."""

    def resume(self) -> None:
        """Nothing waits in async mode."""

    def abort(self, error: ServerError) -> None:
        """Nothing waits in async mode: there is no open step to abort."""

    def close(self, error: ServerError) -> None:
        """Nothing waits in async mode; pushes still running finish."""


class SyncPolicy:
    """Aggregates the pushes of distinct workers for the current step, like SyncReplicasOptimizer.

    A step closes when enough workers contributed, when its timeout passes, or
    when it is aborted. A contribution may hold no gradient (an optimizer a push advances):
    it counts as the worker's contribution to the step, as one holding gradients would. A
    contribution that is None (a push that skips the update: a non-finite gradient of
    another shard) makes the step skip its update, as a non-finite gradient in it does.
    A step may be aborted by ``set_weights`` or a restore (the state it was
    opened against is gone) or by shutdown. An aborted step applies nothing and
    every contributor is answered with the error.

    Args:
        options: the sync settings.
        lock: the optimizer's lock; waiting contributors release it while they wait.
        metrics: where sync wait times and timeouts are counted.
        optimizer: the optimizer's name, for metric labels.
        on_wait: called (under the lock) each time a contributor starts waiting.
    """

    _KEPT_ROUNDS = 4096

    def __init__(
        self,
        options: Sync,
        lock: threading.Condition,
        metrics: Metrics,
        optimizer: str,
        on_wait: Callable[[], None] = lambda: None,
    ) -> None:
        self.options = options
        self._lock = lock
        self._on_wait = on_wait
        self._wait_time = metrics.sync_wait.labels(optimizer)
        self._timeouts = metrics.sync_timeouts.labels(optimizer)
        self._round = 0
        self._opened_at = 0.0
        self._paused_at: float | None = None
        """When a save holding this optimizer at its target iterations paused the open
        step (None: not paused)."""
        self._closed_by: ServerError | None = None
        self._contributions: dict[str, Contribution] = {}
        self._results: OrderedDict[int, OptimizerResult | ServerError] = OrderedDict()
        self._followed = FollowedSteps(options, lock, self.run_step, self._timeouts, on_wait)
        """The steps another shard closed (a sharded client's push with ``follow``)."""

    def admit(self, worker: str, step: int | None, current: int) -> None:
        """Raises what :meth:`submit` would refuse the push with at iterations ``current``.

        A push to several optimizers is admitted by all of them before any applies it.

        Raises:
            InvalidArgument: no worker id.
            FailedPrecondition: the worker already contributed to this step, or
                its step is ahead of the optimizer.
            ServerError: the policy closed.
        """
        if not worker:
            raise InvalidArgument(
                "sync aggregation: expected a worker id with every push, received none",
                Reason.MISSING_WORKER,
            )
        if self._closed_by is not None:
            raise self._closed_by.again()
        _check_step(worker, step, current)
        stale = step is not None and step < current
        if not stale and worker in self._contributions:
            raise FailedPrecondition(
                f"sync aggregation: worker {shown(worker)} already contributed to step {current}",
                Reason.DUPLICATE_CONTRIBUTION,
                {"worker": worker, "step": current},
            )

    def submit(
        self,
        worker: str,
        step: int | None,
        gradients: Contribution,
        iterations: Callable[[], int],
        apply: ApplyFn,
    ) -> OptimizerResult:
        """Adds one worker's gradients (None: skip the step's update) and waits until the
        step closes.

        The caller holds the optimizer's lock; it is released while waiting.

        Raises:
            InvalidArgument: no worker id.
            FailedPrecondition: the worker already contributed to this step, or
                its step is ahead of the optimizer.
            ServerError: the step was aborted, or the policy closed.
        """
        current = iterations()
        self.admit(worker, step, current)
        if step is not None and step < current:
            return OptimizerResult(Outcome.STALE, current)
        if not self._contributions:
            self._opened_at = time.monotonic()
        self._contributions[worker] = gradients
        my_round = self._round
        if len(self._contributions) >= self.options.replicas_to_aggregate:
            self._close_round(iterations, apply, timed_out=False)
        while my_round not in self._results:
            if self._paused_at is not None:  # a save holds the step: it may not close now
                self._on_wait()
                self._lock.wait()
                continue
            remaining = self._opened_at + self.options.timeout - time.monotonic()
            if remaining <= 0 and self._round == my_round:
                self._close_round(iterations, apply, timed_out=True)
            else:
                self._on_wait()
                self._lock.wait(max(remaining, 0.001))
        result = self._results[my_round]
        if isinstance(result, ServerError):
            raise result.again()
        return result

    @property
    def followed(self) -> FollowedSteps:
        """The steps the first shard of a sharded client closed, which pushes with ``follow``
        join here (:mod:`tfps_server.followed_steps`); used under the optimizer's lock.

        Raises:
            ServerError: the policy closed.
        """
        if self._closed_by is not None:
            raise self._closed_by.again()
        return self._followed

    def pause(self) -> None:
        """Keeps the open step from closing, its timeout paused, until :meth:`resume`: a
        save waits with the optimizer at its target iterations, which closing the step would
        pass. Contributions that would close it are held before they join
        (:mod:`tfps_server.barrier`). The caller holds the optimizer's lock.
        """
        self._followed.pause()
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        """Lets the open step close again; the time it was paused does not count toward its
        timeout. The caller holds the optimizer's lock and notifies the waiters."""
        self._followed.resume()
        if self._paused_at is None:
            return
        if self._contributions:
            self._opened_at += time.monotonic() - max(self._paused_at, self._opened_at)
        self._paused_at = None

    def abort(self, error: ServerError) -> None:
        """Answers every contributor of the open step with ``error``; nothing is applied.

        The caller holds the optimizer's lock.
        """
        self._followed.abort(error)
        if self._contributions:
            self._finish_round(error)

    def close(self, error: ServerError) -> None:
        """Aborts the open step and refuses later contributions with ``error``.

        The caller holds the optimizer's lock.
        """
        self._closed_by = error
        self.abort(error)

    def _close_round(self, iterations: Callable[[], int], apply: ApplyFn, timed_out: bool) -> None:
        self._wait_time.observe(time.monotonic() - self._opened_at)
        if timed_out:
            self._timeouts.inc()
        drop = timed_out and self.options.on_timeout == "drop"
        result = self.run_step(self._contributions, drop, iterations, apply)
        self._finish_round(result)

    def run_step(
        self,
        contributions: Mapping[str, Contribution],
        drop: bool,
        iterations: Callable[[], int],
        apply: ApplyFn,
    ) -> OptimizerResult | ServerError:
        """Applies (or drops) a step's contributions, combined in worker-id order; returns
        what every contributor is answered. The caller holds the optimizer's lock."""
        workers = tuple(sorted(contributions))
        try:
            if drop:
                return OptimizerResult(Outcome.DROPPED, iterations(), workers)
            given = [contributions[w] for w in workers]
            gradients = [c for c in given if c is not None]
            skipped = len(gradients) < len(given)  # a contribution a NaN elsewhere voided
            applied = apply(None if skipped else combine(gradients, self.options.reduction))
            outcome = Outcome.SKIPPED if applied is Outcome.SKIPPED else Outcome.AGGREGATED
            return OptimizerResult(outcome, iterations(), workers)
        except ServerError as error:
            return error
        except Exception as error:  # every contributor must be answered, whatever happened
            _log.exception("sync step failed")
            return Internal(
                f"sync aggregation: the step failed: {type(error).__name__}", Reason.INTERNAL
            )

    def _finish_round(self, result: OptimizerResult | ServerError) -> None:
        self._results[self._round] = result
        self._round += 1
        self._contributions = {}
        while len(self._results) > self._KEPT_ROUNDS:
            self._results.popitem(last=False)
        self._lock.notify_all()


Policy = AsyncPolicy | SyncPolicy


def _check_step(worker: str, step: int | None, current: int) -> None:
    """Refuses gradients from a step ahead of the optimizer, and a step past the last."""
    if step is not None and step > current:
        raise FailedPrecondition(
            f"worker {shown(worker)}: pushed gradients computed at step {step}, "
            f"but the optimizer is at iterations {current}",
            Reason.STEP_AHEAD,
            {"worker": worker, "expected": f"<= {current}", "received": step},
        )
    if current >= MAX_ITERATIONS:
        raise OutOfRange(
            f"the optimizer is at iterations {current}, the largest it may hold (2**62); "
            "set_weights can lower it",
            Reason.ITERATIONS_EXHAUSTED,
            {"received": current},
        )


def make_policy(
    options: OptimizerOptions,
    lock: threading.Condition,
    metrics: Metrics,
    optimizer: str,
    on_wait: Callable[[], None] = lambda: None,
) -> Policy:
    """Returns the policy that carries out checked options."""
    if isinstance(options.aggregation, Sync):
        return SyncPolicy(options.aggregation, lock, metrics, optimizer, on_wait)
    return AsyncPolicy(options.aggregation)
