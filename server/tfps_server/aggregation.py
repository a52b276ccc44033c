"""When gradients are applied, and with which aggregated gradient.

An optimizer's policy receives validated gradients from pushes and decides:
apply now (async), drop as stale, or aggregate with other workers' gradients
for the same step (sync). The update itself is the store's apply function, so
state still changes in one place. Policies run under the optimizer's lock, a
``threading.Condition`` that sync steps wait on.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, NamedTuple

import numpy as np

from tfps_client.types import Async, OptimizerOptions, Outcome, Sync
from tfps_server.errors import FailedPrecondition, InvalidArgument
from tfps_server.metrics import Metrics


class PushResult(NamedTuple):
    """The result of a push for one optimizer."""

    outcome: Outcome
    iterations: int


class Prepared(NamedTuple):
    """A validated gradient of one variable, in the variable's dtype.

    ``indices`` is None for a dense gradient; ``shape`` is the variable's shape.
    """

    position: int
    values: np.ndarray
    indices: np.ndarray | None
    shape: tuple[int, ...]


ApplyFn = Callable[[Sequence[Prepared]], Outcome]
"""Applies one combined gradient list; returns APPLIED or SKIPPED (non-finite)."""


def checked(options: OptimizerOptions) -> OptimizerOptions:
    """Returns the options with defaults filled in (backups: none), refusing impossible ones.

    Raises:
        InvalidArgument: what is wrong, with the expected and received values.
    """
    aggregation = options.aggregation
    problems = []
    if options.on_non_finite not in ("reject", "skip"):
        problems.append(f"on_non_finite 'reject' or 'skip', received {options.on_non_finite!r}")
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
        if aggregation.on_timeout not in ("apply", "drop"):
            problems.append(f"on_timeout 'apply' or 'drop', received {aggregation.on_timeout!r}")
        aggregation = replace(aggregation, total_num_replicas=total)
    if problems:
        raise InvalidArgument(
            "optimizer options: expected " + "; ".join(problems), "INVALID_OPTIONS"
        )
    return OptimizerOptions(aggregation, options.on_non_finite)


def combine(contributions: Sequence[Sequence[Prepared]], reduction: str) -> list[Prepared]:
    """Combines per-worker gradients, in the given (worker-id) order, variable by variable.

    Sparse contributions stay sparse (values and indices concatenated; Keras sums
    repeated indices when applying). A variable that any worker sent dense is
    dense: contributions are added one after the other, so the result does not
    depend on arrival order. With "mean", each variable is divided by the number
    of contributions that held it.
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
        combined.append(Prepared(position, values, indices, parts[0].shape))
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

    def submit(
        self,
        worker: str,
        step: int | None,
        gradients: Sequence[Prepared],
        iterations: Callable[[], int],
        apply: ApplyFn,
    ) -> PushResult:
        """Applies or drops one push; the caller holds the optimizer's lock."""
        current = iterations()
        _check_not_ahead(worker, step, current)
        bound = self.options.max_staleness
        if bound is not None and step is not None and current - step > bound:
            return PushResult(Outcome.STALE, current)
        return PushResult(apply(gradients), iterations())


class SyncPolicy:
    """Aggregates the pushes of distinct workers for the current step, like SyncReplicasOptimizer.

    Args:
        options: the sync settings.
        lock: the optimizer's lock; waiting contributors release it while they wait.
        metrics: where sync wait times and timeouts are counted.
        optimizer: the optimizer's name, for metric labels.
    """

    _KEPT_ROUNDS = 4096

    def __init__(
        self, options: Sync, lock: threading.Condition, metrics: Metrics, optimizer: str
    ) -> None:
        self.options = options
        self._lock = lock
        self._wait_time = metrics.sync_wait.labels(optimizer)
        self._timeouts = metrics.sync_timeouts.labels(optimizer)
        self._round = 0
        self._opened_at = 0.0
        self._contributions: dict[str, Sequence[Prepared]] = {}
        self._results: OrderedDict[int, PushResult] = OrderedDict()

    def submit(
        self,
        worker: str,
        step: int | None,
        gradients: Sequence[Prepared],
        iterations: Callable[[], int],
        apply: ApplyFn,
    ) -> PushResult:
        """Adds one worker's gradients and waits until the step closes.

        The caller holds the optimizer's lock; it is released while waiting.

        Raises:
            InvalidArgument: no worker id.
            FailedPrecondition: the worker already contributed to this step, or
                its step is ahead of the optimizer.
        """
        if not worker:
            raise InvalidArgument(
                "sync aggregation: expected a worker id with every push, received none",
                "MISSING_WORKER",
            )
        current = iterations()
        _check_not_ahead(worker, step, current)
        if step is not None and step < current:
            return PushResult(Outcome.STALE, current)
        if worker in self._contributions:
            raise FailedPrecondition(
                f"sync aggregation: worker {worker!r} already contributed to step {current}",
                "DUPLICATE_CONTRIBUTION",
                {"worker": worker, "step": current},
            )
        if not self._contributions:
            self._opened_at = time.monotonic()
        self._contributions[worker] = gradients
        my_round = self._round
        if len(self._contributions) >= self.options.replicas_to_aggregate:
            self._close(iterations, apply, timed_out=False)
        deadline = self._opened_at + self.options.timeout
        while my_round not in self._results:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and self._round == my_round:
                self._close(iterations, apply, timed_out=True)
            else:
                self._lock.wait(max(remaining, 0.001))
        return self._results[my_round]

    def _close(self, iterations: Callable[[], int], apply: ApplyFn, timed_out: bool) -> None:
        contributions = [self._contributions[w] for w in sorted(self._contributions)]
        closed_round = self._round
        self._round += 1
        self._contributions = {}
        self._wait_time.observe(time.monotonic() - self._opened_at)
        if timed_out:
            self._timeouts.inc()
        if timed_out and self.options.on_timeout == "drop":
            result = PushResult(Outcome.DROPPED, iterations())
        else:
            applied = apply(combine(contributions, self.options.reduction))
            outcome = Outcome.SKIPPED if applied is Outcome.SKIPPED else Outcome.AGGREGATED
            result = PushResult(outcome, iterations())
        self._results[closed_round] = result
        while len(self._results) > self._KEPT_ROUNDS:
            self._results.popitem(last=False)
        self._lock.notify_all()


Policy = AsyncPolicy | SyncPolicy


def _check_not_ahead(worker: str, step: int | None, current: int) -> None:
    if step is not None and step > current:
        raise FailedPrecondition(
            f"worker {worker!r}: pushed gradients computed at step {step}, "
            f"but the optimizer is at iterations {current}",
            "STEP_AHEAD",
            {"worker": worker, "expected": f"<= {current}", "received": step},
        )


def make_policy(
    options: OptimizerOptions, lock: threading.Condition, metrics: Metrics, optimizer: str
) -> Policy:
    """Returns the policy that carries out checked options."""
    if isinstance(options.aggregation, Sync):
        return SyncPolicy(options.aggregation, lock, metrics, optimizer)
    return AsyncPolicy(options.aggregation)


def options_to_dict(options: OptimizerOptions) -> dict[str, Any]:
    """Returns JSON-ready options, as checkpoints record them."""
    mode = "sync" if isinstance(options.aggregation, Sync) else "async"
    return {
        "aggregation": mode,
        **asdict(options.aggregation),
        "on_non_finite": options.on_non_finite,
    }


def options_from_dict(data: Mapping[str, Any]) -> OptimizerOptions:
    """Inverse of :func:`options_to_dict`."""
    fields = {k: v for k, v in data.items() if k not in ("aggregation", "on_non_finite")}
    mode: type[Async] | type[Sync] = Sync if data["aggregation"] == "sync" else Async
    return checked(OptimizerOptions(mode(**fields), data["on_non_finite"]))
