"""The one place that validates, locks, records, applies and counts a push.

A push is validated whole against the generation it started in. Then each
optimizer it touches, in name order, takes its lock, checks that no restore
retired it, hands its part to its aggregation policy, and records its result
in the exactly-once window, all under that lock. Gradients are applied to the
variables they were validated against, never looked up again by position.

An optimizer a push names in ``advance`` takes the same path with an empty gradient
list: a step without gradients (a sharded client's tick), whose update only counts
the step, as Keras's ``apply_gradients`` does for variables without gradients.

An optimizer a push names in ``non_finite`` (one created with ``on_non_finite="skip"``, a
non-finite gradient of which a sharded client sent to another shard) takes the path of a
non-finite gradient: its contribution is None, and its update, or its sync step's, is
skipped as a NaN in its own gradients would skip it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfps_client.types import Outcome, Sync
from tfps_client.wire.convert import Gradient, OptimizerResult, SparseGradient, SyncStep
from tfps_client.wire.reasons import Reason
from tfps_server.aggregation import Contribution, Prepared, SyncPolicy
from tfps_server.errors import InvalidArgument, ServerError, shown
from tfps_server.numerics import sum_of_squares, to_tensor
from tfps_server.registry import Registry
from tfps_server.state import Generation, ManagedOptimizer, ManagedVariable
from tfps_server.validation import check_finite, check_gradient, check_text_bytes


class _Header(NamedTuple):
    """A push's fields besides its gradients (see :meth:`Pusher.push`)."""

    request_id: str
    worker: str
    step: int | None
    advance: Sequence[str]
    non_finite: Sequence[str]
    follow: Sequence[SyncStep]


class Pusher:
    """Pushes gradients into a registry's state.

    Args:
        registry: the state.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._metrics = registry.metrics
        self._device = registry.device

    def push(
        self,
        gradients: Sequence[Gradient],
        *,
        request_id: str = "",
        worker: str = "",
        step: int | None = None,
        advance: Sequence[str] = (),
        non_finite: Sequence[str] = (),
        follow: Sequence[SyncStep] = (),
    ) -> dict[str, OptimizerResult]:
        """Hands gradients to the aggregation policy of each optimizer they touch.

        Every gradient is checked first, so nothing changes unless all are valid.
        A request id seen before returns the original result without applying again.

        Args:
            gradients: at most one per variable.
            request_id: makes retries of the same push safe; empty disables that.
            worker: id of the pushing worker (required by sync optimizers).
            step: the iterations the gradients were computed from; None means current.
            advance: optimizers that no gradient touches, each pushed an empty gradient
                list: their ``iterations`` grow by one as a push's would (in sync mode,
                the worker's contribution to the step has no gradient).
            non_finite: optimizers (of the "skip" policy, touched or advanced) whose update
                the push skips, as a non-finite gradient of theirs would skip it.
            follow: sync steps the first shard of a sharded client closed: the push's part
                of each of these optimizers joins that step here
                (:mod:`tfps_server.followed_steps`).

        Returns:
            Outcome and ``iterations`` after the push, per optimizer touched or advanced.

        Raises:
            NotFound: unknown variable, or unknown optimizer in ``advance`` or
                ``non_finite``.
            InvalidArgument: duplicate variable, wrong shape, dtype, index, or
                non-finite values for an optimizer that rejects them; an optimizer
                named twice in ``advance``, or named there and touched by a gradient; an
                optimizer named twice in ``non_finite``, or named there and of the
                "reject" policy, or neither touched nor advanced; a ``follow`` step of an
                optimizer named twice, not in sync mode, neither touched nor advanced, or
                closed without the pushing worker.
            ResourceExhausted: a request id or worker id longer than
                ``limits.max_id_bytes``, or a variable name longer than any can be.
            FailedPrecondition: a step ahead of the optimizer, or a second
                contribution of one worker to a sync step.
            Aborted: a restore or ``set_weights`` replaced the state first.
            Unavailable: the server is shutting down while a sync step waited.
        """
        header = _Header(request_id, worker, step, advance, non_finite, follow)
        return self._push(self._registry.current(), gradients, header)

    def push_pull(
        self,
        gradients: Sequence[Gradient],
        pull: Sequence[str],
        *,
        request_id: str = "",
        worker: str = "",
        step: int | None = None,
        advance: Sequence[str] = (),
        non_finite: Sequence[str] = (),
        follow: Sequence[SyncStep] = (),
    ) -> tuple[dict[str, OptimizerResult], list[tuple[str, np.ndarray]]]:
        """Pushes, then pulls ``pull`` (checked before the push; none when empty) from the
        same generation."""
        generation = self._registry.current()
        for name in pull:
            generation.variable(name)
        header = _Header(request_id, worker, step, advance, non_finite, follow)
        results = self._push(generation, gradients, header)
        return results, self._registry.pull(pull, generation) if pull else []

    def _push(
        self, generation: Generation, gradients: Sequence[Gradient], header: _Header
    ) -> dict[str, OptimizerResult]:
        worker, step = header.worker, header.step

        def apply_missing(results: dict[str, OptimizerResult]) -> None:
            batches = self._validate(generation, gradients, header.advance, header.non_finite)
            followed = _followed(generation, batches, header.follow, worker)
            self._registry.hooks.reach("push.validated")
            missing = [  # a push a checkpoint caught half-way applies only what it lacks
                managed
                for managed in sorted(batches, key=lambda m: m.name)
                if managed.name not in results
            ]
            barrier = self._registry.barrier
            for managed in missing:  # every optimizer admits the push before any applies it
                with managed.lock:
                    barrier.wait_while_held(managed)  # a save waits at its iterations
                    managed.ensure_live()
                    if managed not in followed:  # the first shard admitted it
                        managed.policy.admit(worker, step, managed.iterations())
            for managed in missing:
                decided = followed.get(managed)
                self._submit(managed, batches[managed], worker, step, decided, results)
                self._registry.hooks.reach("push.applied")

        try:
            self._check_ids(header.request_id, worker)
            results, _ = generation.requests.run(header.request_id, apply_missing)
        except ServerError as error:
            self._metrics.push_rejections.labels(error.reason).inc()
            raise
        return results

    def _check_ids(self, request_id: str, worker: str) -> None:
        """Refuses ids longer than ``limits.max_id_bytes``, before one is remembered."""
        bound = self._registry.limits.max_id_bytes
        for field, value in (("request_id", request_id), ("worker", worker)):
            check_text_bytes(f"push {field} {shown(value)}", value, "max_id_bytes", bound)

    def _validate(
        self,
        generation: Generation,
        gradients: Sequence[Gradient],
        advance: Sequence[str],
        non_finite: Sequence[str],
    ) -> dict[ManagedOptimizer, Contribution]:
        """Checks every gradient and every optimizer to advance or skip; returns each
        optimizer's contribution: the gradients prepared that go to it (an empty list for
        one advanced), or None for one whose update the push skips."""
        batches: dict[ManagedOptimizer, list[Prepared]] = {}
        seen: set[str] = set()
        for gradient in gradients:
            managed = generation.variable(gradient.variable)
            if gradient.variable in seen:
                raise InvalidArgument(
                    f"variable {shown(gradient.variable)}: more than one gradient in one push",
                    Reason.DUPLICATE_GRADIENT,
                    {"variable": gradient.variable},
                )
            seen.add(gradient.variable)
            check_gradient(managed, gradient)
            squares = None
            if managed.optimizer.options.on_non_finite == "reject":
                squares = sum_of_squares(gradient.values)  # kept for the norm at apply
                if not math.isfinite(squares):
                    self._check_finite(managed, gradient.values)
            batches.setdefault(managed.optimizer, []).append(_prepare(managed, gradient, squares))
        for prepared in batches.values():  # Keras gets them in variable-creation order
            prepared.sort(key=lambda g: g.position)
        advanced: set[str] = set()
        for name in advance:
            optimizer = generation.optimizer(name)
            if name in advanced or optimizer in batches:
                problem = "named twice" if name in advanced else "touched by a gradient too"
                raise _invalid_header(
                    "advance",
                    "each optimizer once, and only those no gradient of the push touches",
                    name,
                    problem,
                )
            advanced.add(name)
            batches[optimizer] = []
        skipped = _skipped(generation, non_finite, batches)
        return {o: None if o.name in skipped else batch for o, batch in batches.items()}

    def _check_finite(self, managed: ManagedVariable, values: np.ndarray) -> None:
        try:
            check_finite(
                f"variable {shown(managed.name)}",
                "gradient values",
                values,
                {"variable": managed.name},
                Reason.NON_FINITE_GRADIENT,
            )
        except InvalidArgument:
            self._metrics.non_finite_gradients.labels(managed.optimizer.name, "rejected").inc()
            raise

    def _submit(
        self,
        managed: ManagedOptimizer,
        gradients: Contribution,
        worker: str,
        step: int | None,
        decided: SyncStep | None,
        results: dict[str, OptimizerResult],
    ) -> None:
        """Hands one optimizer's part to its policy (or to the step ``decided`` on the first
        shard) and records what it did, under its lock.

        Recording under the lock is what makes a checkpoint (cut under every lock) hold
        exactly the results whose updates it holds.
        A save waiting for the optimizer's iterations, which this step would pass, holds it
        first (:mod:`tfps_server.barrier`).
        """
        barrier = self._registry.barrier
        with managed.lock:
            barrier.wait_while_held(managed)  # a save registered after the admission
            managed.ensure_live()
            policy, apply = managed.policy, lambda g: self._apply(managed, g)
            if decided is None:
                result = policy.submit(worker, step, gradients, managed.iterations, apply)
            else:
                assert isinstance(policy, SyncPolicy)  # _followed admits sync optimizers only
                followed = policy.followed
                result = followed.follow(worker, decided, gradients, managed.iterations, apply)
            results[managed.name] = result
        barrier.changed()
        self._metrics.pushes.labels(managed.name, result.outcome.value).inc()

    def _apply(self, managed: ManagedOptimizer, gradients: Sequence[Prepared] | None) -> Outcome:
        """Applies one combined gradient list; the caller holds the optimizer's lock.

        Non-finite values (which only reach here under the "skip" policy, or when
        aggregation overflows) skip the update, as None does (a push's ``non_finite``);
        ``iterations`` still grows by one, as with Keras's LossScaleOptimizer. No gradient
        at all (an advanced optimizer, or a sync step whose contributions held none) is a
        step of its own: see :meth:`_tick`.
        """
        if gradients is None:
            return self._skip(managed)
        if not gradients:
            self._tick(managed)
            return Outcome.APPLIED
        squares = [sum_of_squares(g.values) if g.squares is None else g.squares for g in gradients]
        norm = float(np.sqrt(np.sum(squares)))
        if not np.isfinite(norm):
            return self._skip(managed)
        self._metrics.gradient_norm.labels(managed.name).observe(norm)
        self._count_clipping(managed, gradients, squares, norm)
        start = time.perf_counter()
        signature = tuple(
            (g.position, g.indices is not None, "" if g.indices is None else g.indices.dtype.name)
            for g in gradients
        )
        with tf.device(self._device):
            managed.compiled.apply(
                signature, [_to_tensor(g) for g in gradients], [g.target for g in gradients]
            )
        self._metrics.apply_duration.labels(managed.name).observe(time.perf_counter() - start)
        return Outcome.APPLIED

    def _skip(self, managed: ManagedOptimizer) -> Outcome:
        """Skips an update for non-finite gradients: ``iterations`` + 1 only (no Keras
        preparation either); the caller holds the optimizer's lock."""
        self._metrics.non_finite_gradients.labels(managed.name, "skipped").inc()
        with tf.device(self._device):
            managed.optimizer.iterations.assign_add(1)
        return Outcome.SKIPPED

    def _tick(self, managed: ManagedOptimizer) -> None:
        """A step without gradients; the caller holds the optimizer's lock.

        What ``apply_gradients`` does besides updating the variables it is given, for the
        variables bound to the optimizer here: Keras's per-step preparation (``_prepare``,
        which advances Nadam's ``momentum_cache``, as every step with a gradient on any
        shard does on a single server; for the other classes it computes coefficients
        only; skipped without variables, whose weights Keras has not created), then
        ``iterations`` + 1. Values and slots do not change.
        """
        optimizer = managed.optimizer
        with tf.device(self._device):
            if managed.bound:
                optimizer._prepare(list(managed.bound.values()))
            optimizer.iterations.assign_add(1)

    def _count_clipping(
        self,
        managed: ManagedOptimizer,
        gradients: Sequence[Prepared],
        squares: Sequence[float],
        norm: float,
    ) -> None:
        optimizer = managed.optimizer
        clipped = {
            "global_clipnorm": optimizer.global_clipnorm is not None
            and norm > optimizer.global_clipnorm,
            "clipnorm": optimizer.clipnorm is not None
            and any(np.sqrt(sq) > optimizer.clipnorm for sq in squares),
            "clipvalue": optimizer.clipvalue is not None
            and any(np.abs(g.values).max(initial=0) > optimizer.clipvalue for g in gradients),
        }
        for kind, happened in clipped.items():
            if happened:
                self._metrics.clip_events.labels(managed.name, kind).inc()


def _skipped(
    generation: Generation, non_finite: Sequence[str], touched: Collection[ManagedOptimizer]
) -> set[str]:
    """Checks a push's ``non_finite`` against the optimizers it touches or advances;
    returns the names it holds."""
    skipped: set[str] = set()
    for name in non_finite:
        optimizer = generation.optimizer(name)
        policy = optimizer.options.on_non_finite
        if name in skipped:
            problem = "named twice"
        elif policy != "skip":
            problem = f"created with on_non_finite {policy!r}"
        elif optimizer not in touched:
            problem = "neither touched by a gradient nor advanced"
        else:
            skipped.add(name)
            continue
        raise _invalid_header(
            "non_finite",
            "each optimizer once, created with on_non_finite 'skip', and touched by a "
            "gradient of the push or advanced",
            name,
            problem,
        )
    return skipped


def _followed(
    generation: Generation,
    touched: Mapping[ManagedOptimizer, Contribution],
    follow: Sequence[SyncStep],
    worker: str,
) -> dict[ManagedOptimizer, SyncStep]:
    """Checks a push's ``follow`` steps against the optimizers it touches or advances;
    returns them by optimizer."""
    followed: dict[ManagedOptimizer, SyncStep] = {}
    for decided in follow:
        managed = generation.optimizer(decided.optimizer)
        problem = ""
        if managed in followed:
            problem = "named twice"
        elif not isinstance(managed.options.aggregation, Sync):
            problem = "not in sync mode"
        elif managed not in touched:
            problem = "neither touched by a gradient nor advanced"
        elif decided.outcome is Outcome.APPLIED:
            problem = "with outcome APPLIED, which no sync step has"
        elif decided.outcome is not Outcome.STALE and worker not in decided.contributors:
            problem = (
                f"with step {decided.step} closed by workers {list(decided.contributors)}, "
                f"not by the pushing worker {shown(worker)}"
            )
        if problem:
            raise _invalid_header(
                "follow",
                "each sync optimizer the push touches or advances at most once, with a step "
                "the pushing worker contributed to",
                decided.optimizer,
                problem,
                Reason.INVALID_FOLLOW,
            )
        followed[managed] = decided
    return followed


def _invalid_header(
    field: str, expected: str, name: str, problem: str, reason: Reason = Reason.INVALID_ADVANCE
) -> InvalidArgument:
    """The refusal of a push whose ``field`` (``advance``, ``non_finite`` or ``follow``)
    names the optimizer ``name`` wrongly."""
    return InvalidArgument(
        f"push {field}: expected {expected}, received optimizer {shown(name)} {problem}",
        reason,
        {"optimizer": name},
    )


def _prepare(managed: ManagedVariable, gradient: Gradient, squares: float | None) -> Prepared:
    """Casts a validated gradient up to the variable's dtype; ``squares`` is the sum of
    squares of its values when validation computed it."""
    values = gradient.values.astype(managed.dtype, copy=False)
    indices = gradient.indices if isinstance(gradient, SparseGradient) else None
    return Prepared(managed.position, managed.variable, values, indices, managed.shape, squares)


def _to_tensor(gradient: Prepared) -> tf.Tensor | tf.IndexedSlices:
    values = to_tensor(gradient.values)
    if gradient.indices is None:
        return values
    return tf.IndexedSlices(values, to_tensor(gradient.indices), tf.constant(gradient.shape))
