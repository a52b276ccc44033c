"""Variables and their optimizers on one device: the one place that mutates state.

Every request is checked completely before anything changes. Each optimizer has
its own lock (a Keras optimizer is thread-compatible, not thread-safe); a call
that touches several optimizers takes their locks in name order.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras

from tfps_client import checkpoint_layout as layout
from tfps_client.types import OptimizerOptions, Outcome
from tfps_server import optimizers
from tfps_server.aggregation import (
    Policy,
    Prepared,
    PushResult,
    checked,
    make_policy,
    options_from_dict,
    options_to_dict,
)
from tfps_server.errors import AlreadyExists, InvalidArgument, NotFound, ServerError
from tfps_server.exactly_once import DEFAULT_WINDOW, RequestLog
from tfps_server.metrics import Metrics
from tfps_server.validation import (
    Gradient,
    SparseGradient,
    check_declarations,
    check_gradient,
    check_name,
    check_rows,
    check_same_declaration,
)

_log = logging.getLogger(__name__)

_TF_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]")


class Snapshot(NamedTuple):
    """The whole state at one instant: what a checkpoint holds."""

    metadata: layout.CheckpointMetadata
    variables: Mapping[str, Any]
    """Variable name -> value."""
    slots: Mapping[str, Mapping[str, Any]]
    """Variable name -> slot name -> value."""
    optimizer_weights: Mapping[str, Mapping[str, Any]]
    """Optimizer name -> non-slot weight name (``iter``, ...) -> value."""


@dataclass(eq=False)
class ManagedOptimizer:
    """A named Keras optimizer, its aggregation policy, and the lock that serializes its use."""

    name: str
    optimizer: tf_keras.optimizers.legacy.Optimizer
    spec: optimizers.OptimizerSpec
    config: dict[str, Any]
    """The Keras config at creation, to compare later declarations with."""
    options: OptimizerOptions
    lock: threading.Condition
    policy: Policy
    checked_dtypes: set[str] = field(default_factory=set)

    def iterations(self) -> int:
        """Returns the optimizer's ``iterations``; the caller holds the lock."""
        return int(self.optimizer.iterations.numpy())


@dataclass(eq=False)
class ManagedVariable:
    """A variable, its creation position and the optimizer it is bound to."""

    name: str
    variable: tf.Variable
    optimizer: ManagedOptimizer
    position: int
    batch: int
    """Creation request the variable came in; slots were created per request."""

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the variable."""
        return tuple(self.variable.shape.as_list())

    @property
    def dtype(self) -> str:
        """Element type name of the variable, for example ``"float32"``."""
        return self.variable.dtype.name


def default_device() -> str:
    """Returns the first GPU if TensorFlow sees one, else the CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "/device:CPU:0"


def resolve_device(device: str | None) -> str:
    """Returns the full name of a logical device, or the default one for ``None``/``"auto"``.

    Raises:
        InvalidArgument: TensorFlow has no such device.
    """
    if device in (None, "", "auto"):
        device = default_device()
    wanted = tf.DeviceSpec.from_string(device)
    for logical in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(logical.name)
        if (spec.device_type or "").upper() == (wanted.device_type or "").upper() and (
            spec.device_index == (wanted.device_index or 0)
        ):
            return logical.name
    available = [d.name for d in tf.config.list_logical_devices()]
    raise InvalidArgument(f"device: expected one of {available}, received {device!r}")


class Store:
    """Holds variables and optimizers on one device.

    Args:
        device: TensorFlow device name, or ``None``/``"auto"`` for the first GPU, else CPU.
        metrics: where to count what happens; a fresh registry if None.
    """

    def __init__(
        self,
        device: str | None = None,
        metrics: Metrics | None = None,
        request_window: int = DEFAULT_WINDOW,
    ) -> None:
        self.device = resolve_device(device)
        self.metrics = metrics if metrics is not None else Metrics()
        self._requests = RequestLog(request_window)
        self._structure = threading.RLock()
        self._optimizers: dict[str, ManagedOptimizer] = {}
        self._variables: dict[str, ManagedVariable] = {}
        self._by_position: list[ManagedVariable] = []
        self._batches = 0

    # Optimizers -------------------------------------------------------------------------------

    def create_optimizer(
        self, name: str, config_json: str, options: OptimizerOptions | None = None
    ) -> bool:
        """Creates a named optimizer; returns False if an equal one exists.

        Raises:
            InvalidArgument: bad name, config or options.
            AlreadyExists: the name exists with a different config or options.
        """
        check_name("optimizer", name)
        options = checked(options if options is not None else OptimizerOptions())
        with self._structure:
            existing = self._optimizers.get(name)
            try:
                spec = optimizers.parse(config_json)
                with tf.device(self.device):
                    candidate = optimizers.instantiate(spec)
            except InvalidArgument as error:
                raise InvalidArgument(
                    f"optimizer {name!r}: {error.message}",
                    error.reason,
                    {**error.metadata, "optimizer": name},
                ) from None
            config = optimizers.serialize(candidate)
            if existing is not None:
                if existing.config != config or existing.options != options:
                    raise AlreadyExists(
                        f"optimizer {name!r}: exists with config {json.dumps(existing.config)} "
                        f"and {existing.options}, received {json.dumps(config)} and {options}",
                        "OPTIMIZER_EXISTS",
                        {"optimizer": name},
                    )
                return False
            with tf.device(self.device), tf.init_scope():
                _ = candidate.iterations
                candidate._create_hypers()
            lock = threading.Condition()
            policy = make_policy(options, lock, self.metrics, name)
            self._optimizers[name] = ManagedOptimizer(
                name, candidate, spec, config, options, lock, policy
            )
            _log.info("created optimizer %r: %s, %s", name, json.dumps(config), options)
            return True

    def optimizer(self, name: str) -> ManagedOptimizer:
        """Returns a named optimizer.

        Raises:
            NotFound: no such optimizer.
        """
        managed = self._optimizers.get(name)
        if managed is None:
            raise NotFound(
                f"optimizer {name!r} not found; known optimizers: {sorted(self._optimizers)}",
                "UNKNOWN_OPTIMIZER",
                {"optimizer": name},
            )
        return managed

    def optimizers(self) -> list[ManagedOptimizer]:
        """Returns every optimizer, in name order."""
        with self._structure:
            return [self._optimizers[name] for name in sorted(self._optimizers)]

    def total_iterations(self) -> int:
        """Returns the sum of every optimizer's ``iterations``: the server's step count."""
        total = 0
        for managed in self.optimizers():
            with managed.lock:
                total += managed.iterations()
        return total

    def get_config(self, name: str) -> dict[str, Any]:
        """Returns ``{"class_name": ..., "config": optimizer.get_config()}``."""
        managed = self.optimizer(name)
        with managed.lock:
            return optimizers.serialize(managed.optimizer)

    def iterations(self, name: str) -> int:
        """Returns the optimizer's ``iterations``."""
        managed = self.optimizer(name)
        with managed.lock:
            return managed.iterations()

    def slot_names(self, name: str) -> list[str]:
        """Returns the optimizer's slot names in creation order."""
        managed = self.optimizer(name)
        with managed.lock:
            return list(managed.optimizer.get_slot_names())

    def get_weights(self, name: str) -> list[np.ndarray]:
        """Returns the optimizer's weights in Keras order (iterations, then slots)."""
        managed = self.optimizer(name)
        with managed.lock:
            return list(managed.optimizer.get_weights())

    def set_weights(self, name: str, weights: Sequence[np.ndarray]) -> None:
        """Sets the optimizer's weights with Keras's own length and shape checks.

        Raises:
            InvalidArgument: wrong number of weights or a wrong shape.
        """
        managed = self.optimizer(name)
        with managed.lock:
            try:
                managed.optimizer.set_weights(list(weights))
            except ValueError as error:
                raise InvalidArgument(
                    f"optimizer {name!r}: {error}", "WEIGHTS_MISMATCH", {"optimizer": name}
                ) from None

    def set_hyperparameter(self, name: str, key: str, value: float | Mapping[str, Any]) -> None:
        """Sets one hyperparameter, as ``optimizer.<key> = value`` does in Keras.

        Raises:
            InvalidArgument: unknown hyperparameter or a bad value.
        """
        managed = self.optimizer(name)
        optimizer = managed.optimizer
        known = sorted(optimizer._hyper)
        where = f"optimizer {name!r}"
        key = "learning_rate" if key == "lr" else key  # Keras's alias, as opt.lr = ...
        if key not in optimizer._hyper:
            raise InvalidArgument(
                f"{where}: expected a hyperparameter in {known}, received {key!r}",
                "UNKNOWN_HYPERPARAMETER",
                {"optimizer": name, "expected": known, "received": key},
            )
        new_value: Any
        if isinstance(value, Mapping):
            if key != "learning_rate" or managed.spec.cls is tf_keras.optimizers.legacy.Nadam:
                raise InvalidArgument(
                    f"{where}: a schedule is accepted for learning_rate only, and not by Nadam "
                    f"(as in Keras); received a schedule for {key!r} "
                    f"of {managed.spec.cls.__name__}",
                    "INVALID_HYPERPARAMETER",
                    {"optimizer": name},
                )
            new_value = optimizers.build_schedule(value)
        else:
            if not np.isfinite(value) or (key == "decay" and value < 0):
                raise InvalidArgument(
                    f"{where}: expected a finite{' non-negative' if key == 'decay' else ''} "
                    f"number for {key!r}, received {value!r}",
                    "INVALID_HYPERPARAMETER",
                    {"optimizer": name, "received": value},
                )
            new_value = float(value)
        with managed.lock, tf.device(self.device):
            setattr(optimizer, key, new_value)

    # Variables --------------------------------------------------------------------------------

    def variable(self, name: str) -> ManagedVariable:
        """Returns a named variable.

        Raises:
            NotFound: no such variable.
        """
        managed = self._variables.get(name)
        if managed is None:
            raise NotFound(f"variable {name!r} not found", "UNKNOWN_VARIABLE", {"variable": name})
        return managed

    def variables(self) -> list[ManagedVariable]:
        """Returns every variable in creation order."""
        with self._structure:
            return list(self._variables.values())

    def create_variables(
        self, optimizer: str, declarations: Sequence[tuple[str, np.ndarray]]
    ) -> tuple[list[str], list[str]]:
        """Creates variables and their slots; returns (created, existing) names.

        Raises:
            NotFound: unknown optimizer.
            InvalidArgument: bad name, duplicate name, dtype the optimizer cannot update.
            AlreadyExists: a name exists with a different shape, dtype or optimizer.
        """
        managed_optimizer = self.optimizer(optimizer)
        check_declarations(declarations)
        with self._structure:
            created, existing = [], []
            for name, value in declarations:
                if name in self._variables:
                    declared = self._variables[name]
                    check_same_declaration(declared, declared.optimizer.name, optimizer, value)
                    existing.append(name)
            fresh = [(n, v) for n, v in declarations if n not in self._variables]
            for dtype in sorted(
                {v.dtype.name for _, v in fresh} - managed_optimizer.checked_dtypes
            ):
                optimizers.check_applies(managed_optimizer.spec, tf.as_dtype(dtype), self.device)
                managed_optimizer.checked_dtypes.add(dtype)
            with managed_optimizer.lock, tf.device(self.device), tf.init_scope():
                variables = [
                    tf.Variable(value, name=_TF_NAME_CHARS.sub("_", name), trainable=True)
                    for name, value in fresh
                ]
                # One call for the whole request: slots are then ordered as a local
                # apply_gradients over the same variable list orders them.
                managed_optimizer.optimizer._create_all_weights(variables)
                self._batches += 1
                for (name, _), variable in zip(fresh, variables, strict=True):
                    self._add_variable(
                        ManagedVariable(
                            name, variable, managed_optimizer, len(self._variables), self._batches
                        )
                    )
                    created.append(name)
            if created:
                _log.info(
                    "created variables %s on %s for optimizer %r", created, self.device, optimizer
                )
            return created, existing

    def _add_variable(self, managed: ManagedVariable) -> None:
        self._variables[managed.name] = managed
        self._by_position.append(managed)

    def pull(self, names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """Returns (name, value) of the named variables, all of them when ``names`` is empty."""
        managed = [self.variable(name) for name in names] if names else self.variables()
        with self._locked({m.optimizer for m in managed}):
            return [(m.name, m.variable.numpy()) for m in managed]

    def pull_rows(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Returns ``variable[indices]``.

        Raises:
            InvalidArgument: the variable is a scalar or an index is out of range.
        """
        managed = self.variable(name)
        check_rows(managed, indices)
        with managed.optimizer.lock, tf.device(self.device):
            return tf.gather(managed.variable, indices).numpy()

    def get_slot(self, variable: str, slot: str) -> np.ndarray:
        """Returns one slot's value for one variable.

        Raises:
            NotFound: unknown variable, or a slot the optimizer does not have.
        """
        managed = self.variable(variable)
        with managed.optimizer.lock:
            names = list(managed.optimizer.optimizer.get_slot_names())
            if slot not in names:
                raise NotFound(
                    f"variable {variable!r}: expected a slot in {names}, received {slot!r}",
                    "UNKNOWN_SLOT",
                    {"variable": variable, "expected": names, "received": slot},
                )
            return managed.optimizer.optimizer.get_slot(managed.variable, slot).numpy()

    def push(
        self,
        gradients: Sequence[Gradient],
        *,
        request_id: str = "",
        worker: str = "",
        step: int | None = None,
    ) -> dict[str, PushResult]:
        """Hands gradients to the aggregation policy of each optimizer they touch.

        Every gradient is checked first, so nothing changes unless all are valid.
        A request id seen before returns the original result without applying again.

        Args:
            gradients: at most one per variable.
            request_id: makes retries of the same push safe; empty disables that.
            worker: id of the pushing worker (required by sync optimizers).
            step: the iterations the gradients were computed from; None means current.

        Returns:
            Outcome and ``iterations`` after the push, per optimizer touched.

        Raises:
            NotFound: unknown variable.
            InvalidArgument: duplicate variable, wrong shape, dtype, index, or
                non-finite values for an optimizer that rejects them.
            FailedPrecondition: a step ahead of the optimizer, or a second
                contribution of one worker to a sync step.
        """
        try:
            results, _ = self._requests.run(
                request_id, lambda results: self._push(gradients, worker, step, results)
            )
        except ServerError as error:
            self.metrics.push_rejections.labels(error.reason or "UNKNOWN").inc()
            raise
        return results

    def push_pull(
        self,
        gradients: Sequence[Gradient],
        pull: Sequence[str],
        *,
        request_id: str = "",
        worker: str = "",
        step: int | None = None,
    ) -> tuple[dict[str, PushResult], list[tuple[str, np.ndarray]]]:
        """Pushes, then pulls ``pull`` (checked before the push): one round trip for workers."""
        for name in pull:
            self.variable(name)
        results = self.push(gradients, request_id=request_id, worker=worker, step=step)
        return results, self.pull(pull)

    def _push(
        self,
        gradients: Sequence[Gradient],
        worker: str,
        step: int | None,
        results: dict[str, PushResult],
    ) -> None:
        """Validates everything, then records each optimizer's result under its lock.

        Optimizers already in ``results`` (a push a checkpoint caught half-way) are skipped.
        """
        by_optimizer: dict[str, list[Prepared]] = {}
        seen: set[str] = set()
        for gradient in gradients:
            managed = self.variable(gradient.variable)
            if gradient.variable in seen:
                raise InvalidArgument(
                    f"variable {gradient.variable!r}: more than one gradient in one push",
                    "DUPLICATE_GRADIENT",
                    {"variable": gradient.variable},
                )
            seen.add(gradient.variable)
            check_gradient(managed, gradient)
            if managed.optimizer.options.on_non_finite == "reject":
                self._check_finite(managed, gradient.values)
            by_optimizer.setdefault(managed.optimizer.name, []).append(_prepare(managed, gradient))
        for name in sorted(set(by_optimizer) - set(results)):
            managed_optimizer = self._optimizers[name]
            with managed_optimizer.lock:
                result = managed_optimizer.policy.submit(
                    worker,
                    step,
                    by_optimizer[name],
                    managed_optimizer.iterations,
                    functools.partial(self._apply, managed_optimizer),
                )
                results[name] = result
            self.metrics.pushes.labels(name, result.outcome.value).inc()

    def _check_finite(self, managed: ManagedVariable, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            self.metrics.non_finite_gradients.labels(managed.optimizer.name, "rejected").inc()
            raise InvalidArgument(
                f"variable {managed.name!r}: expected finite gradient values, "
                f"received {bad} non-finite",
                "NON_FINITE_GRADIENT",
                {"variable": managed.name, "received": bad},
            )

    def _apply(self, managed: ManagedOptimizer, gradients: Sequence[Prepared]) -> Outcome:
        """Applies one combined gradient list; the caller holds the optimizer's lock.

        Non-finite values (which only reach here under the "skip" policy, or when
        aggregation overflows) skip the update; ``iterations`` still grows by one,
        as with Keras's LossScaleOptimizer.
        """
        squares = [_sum_of_squares(g.values) for g in gradients]
        norm = float(np.sqrt(np.sum(squares)))
        if not np.isfinite(norm):
            self.metrics.non_finite_gradients.labels(managed.name, "skipped").inc()
            with tf.device(self.device):
                managed.optimizer.iterations.assign_add(1)
            return Outcome.SKIPPED
        self.metrics.gradient_norm.labels(managed.name).observe(norm)
        self._count_clipping(managed, gradients, squares, norm)
        start = time.perf_counter()
        with tf.device(self.device):
            managed.optimizer.apply_gradients(
                [(_to_tensor(g), self._by_position[g.position].variable) for g in gradients]
            )
        self.metrics.apply_duration.labels(managed.name).observe(time.perf_counter() - start)
        return Outcome.APPLIED

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
                self.metrics.clip_events.labels(managed.name, kind).inc()

    # Snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Captures the whole state as a consistent cut, for a checkpoint.

        Holds every optimizer's lock only while reading values: the tensors read
        keep their values while training goes on (TensorFlow copies a variable's
        buffer before updating it in place while another reference is alive).
        """
        with self._structure, self._locked(self._optimizers.values()):
            optimizer_entries: list[layout.OptimizerEntry] = []
            weights: dict[str, dict[str, tf.Tensor]] = {}
            slots: dict[str, dict[str, tf.Tensor]] = {}
            for managed in self._optimizers.values():
                optimizer = managed.optimizer
                bound = [v for v in self._by_position if v.optimizer is managed]
                slot_refs = {
                    (v.name, slot): optimizer.get_slot(v.variable, slot)
                    for v in bound
                    for slot in optimizer.get_slot_names()
                }
                slot_ids = {id(ref) for ref in slot_refs.values()}
                weights[managed.name] = {
                    layout.weight_name(w.name): w.read_value()
                    for w in optimizer.weights
                    if id(w) not in slot_ids
                }
                for (variable, slot), ref in slot_refs.items():
                    slots.setdefault(variable, {})[slot] = ref.read_value()
                optimizer_entries.append(
                    layout.OptimizerEntry(
                        name=managed.name,
                        class_name=type(optimizer).__name__,
                        creation_config=managed.config,
                        config=optimizers.serialize(optimizer),
                        options=options_to_dict(managed.options),
                        iterations=managed.iterations(),
                        weights=tuple(weights[managed.name]),
                        slots=tuple(optimizer.get_slot_names()),
                    )
                )
            values = {v.name: v.variable.read_value() for v in self._by_position}
            requests = tuple(
                (request_id, {o: [r.outcome.value, r.iterations] for o, r in results.items()}, done)
                for request_id, results, done in self._requests.snapshot()
            )
        metadata = layout.CheckpointMetadata(
            saved_at=time.time(),
            optimizers=tuple(optimizer_entries),
            variables=tuple(
                layout.VariableEntry(v.name, v.optimizer.name, v.shape, v.dtype, v.batch)
                for v in self._by_position
            ),
            requests=requests,
        )
        return Snapshot(metadata, values, slots, weights)

    def restore(self, snapshot: Snapshot) -> None:
        """Replaces the whole state with a snapshot (from a checkpoint).

        Everything is rebuilt aside and swapped in at once, so a failure leaves
        the current state as it was.

        Raises:
            InvalidArgument: the snapshot's configs or values do not fit together.
        """
        metadata = snapshot.metadata
        rebuilt: dict[str, ManagedOptimizer] = {}
        variables: list[ManagedVariable] = []
        with tf.device(self.device), tf.init_scope():
            for entry in metadata.optimizers:
                spec = optimizers.parse_serialized(entry.config)
                optimizer = optimizers.instantiate(spec)
                _ = optimizer.iterations
                optimizer._create_hypers()
                options = options_from_dict(entry.options)
                lock = threading.Condition()
                rebuilt[entry.name] = ManagedOptimizer(
                    entry.name,
                    optimizer,
                    spec,
                    entry.creation_config,
                    options,
                    lock,
                    make_policy(options, lock, self.metrics, entry.name),
                    checked_dtypes={v.dtype for v in metadata.variables},
                )
            batches: dict[int, list[ManagedVariable]] = {}
            for position, declared in enumerate(metadata.variables):
                variable = tf.Variable(
                    snapshot.variables[declared.name], name=_TF_NAME_CHARS.sub("_", declared.name)
                )
                managed = ManagedVariable(
                    declared.name, variable, rebuilt[declared.optimizer], position, declared.batch
                )
                variables.append(managed)
                batches.setdefault(declared.batch, []).append(managed)
            for batch in sorted(batches):
                owner = batches[batch][0].optimizer.optimizer
                owner._create_all_weights([m.variable for m in batches[batch]])
            for managed_optimizer in rebuilt.values():
                _assign_optimizer_state(managed_optimizer, variables, snapshot)
        results = {
            request_id: {
                name: PushResult(Outcome(outcome), iterations)
                for name, (outcome, iterations) in by_optimizer.items()
            }
            for request_id, by_optimizer, _ in metadata.requests
        }
        with self._structure, self._locked(self._optimizers.values()):
            self._optimizers = rebuilt
            self._variables = {m.name: m for m in variables}
            self._by_position = variables
            self._batches = max((m.batch for m in variables), default=0)
            self._requests.restore(
                [(rid, results[rid], done) for rid, _, done in metadata.requests]
            )
        _log.info("restored %d optimizers and %d variables", len(rebuilt), len(variables))

    @contextlib.contextmanager
    def _locked(self, managed: Any) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for optimizer in sorted(managed, key=lambda m: m.name):
                stack.enter_context(optimizer.lock)
            yield


def _sum_of_squares(values: np.ndarray, block: int = 1 << 20) -> float:
    """Sum of squares in float64, a block at a time so no full-size copy is made."""
    flat = values.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, block):
        part = flat[start : start + block].astype(np.float64)
        total += float(np.dot(part, part))
    return total


def _assign_optimizer_state(
    managed: ManagedOptimizer, variables: Sequence[ManagedVariable], snapshot: Snapshot
) -> None:
    optimizer = managed.optimizer
    weights = snapshot.optimizer_weights.get(managed.name, {})
    slot_ids = set()
    for variable in (v for v in variables if v.optimizer is managed):
        for slot in optimizer.get_slot_names():
            ref = optimizer.get_slot(variable.variable, slot)
            slot_ids.add(id(ref))
            _assign(
                ref, snapshot.slots.get(variable.name, {}).get(slot), f"slot {variable.name}/{slot}"
            )
    for weight in optimizer.weights:
        if id(weight) not in slot_ids:
            name = layout.weight_name(weight.name)
            _assign(weight, weights.get(name), f"optimizer {managed.name!r} weight {name}")


def _assign(target: tf.Variable, value: Any, what: str) -> None:
    if value is None:
        raise InvalidArgument(f"{what}: missing from the checkpoint", "CHECKPOINT_MISMATCH")
    value = np.asarray(value)
    if tuple(target.shape.as_list()) != value.shape:
        raise InvalidArgument(
            f"{what}: expected shape {target.shape.as_list()}, received {list(value.shape)}",
            "CHECKPOINT_MISMATCH",
        )
    target.assign(value.astype(target.dtype.as_numpy_dtype))


def _prepare(managed: ManagedVariable, gradient: Gradient) -> Prepared:
    """Casts a validated gradient up to the variable's dtype."""
    values = gradient.values.astype(managed.dtype, copy=False)
    indices = gradient.indices if isinstance(gradient, SparseGradient) else None
    return Prepared(managed.position, values, indices, managed.shape)


def _to_tensor(gradient: Prepared) -> tf.Tensor | tf.IndexedSlices:
    values = tf.constant(gradient.values)
    if gradient.indices is None:
        return values
    return tf.IndexedSlices(values, tf.constant(gradient.indices), tf.constant(gradient.shape))
