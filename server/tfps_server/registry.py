"""The registry: owner of the state, and the only code that changes optimizers and variables.

It holds the current :class:`~tfps_server.state.Generation` and the structure
lock, builds optimizers and variables with one factory for creation and
restore, and answers everyone else with plain values (read-only views).
Pushes change values through :mod:`tfps_server.push` under the same locks.
The rules are in ``docs/state-model.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import tensorflow as tf

from tfps_client.types import OptimizerOptions, Placement, ShardIdentity, VariableInfo
from tfps_client.wire.reasons import Reason
from tfps_server import optimizers
from tfps_server.aggregation import checked, make_policy
from tfps_server.barrier import SaveBarrier
from tfps_server.devices import canonical, resolve_device
from tfps_server.errors import (
    Aborted,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServerError,
    Unavailable,
    shown,
)
from tfps_server.exactly_once import DEFAULT_WINDOW, RequestLog
from tfps_server.limits import Limits
from tfps_server.metrics import Metrics
from tfps_server.state import (
    Generation,
    Hooks,
    ManagedOptimizer,
    ManagedVariable,
    locked,
)
from tfps_server.validation import (
    check_config_size,
    check_count,
    check_declarations,
    check_name,
    check_name_length,
    check_placements,
    check_rows,
    check_rows_bytes,
    check_same_declaration,
    check_same_optimizer,
    check_same_shard,
    check_shard,
    check_state_quota,
    shard_text,
    state_bytes,
)
from tfps_server.weights import assign_weights

_log = logging.getLogger(__name__)


_Value = TypeVar("_Value")


class OptimizerView(NamedTuple):
    """An optimizer as the metrics see it."""

    name: str
    iterations: int
    learning_rate: float
    """The learning rate of the next step (a schedule's value now)."""


class VariableBytes(NamedTuple):
    """Bytes a variable holds, as the metrics see them."""

    name: str
    value_bytes: int
    slot_bytes: int


@dataclasses.dataclass(frozen=True)
class Planned(Generic[_Value]):
    """A read whose size is known before it is made, so that it can be refused or budgeted."""

    nbytes: int
    """Bytes of the tensors the read returns."""
    read: Callable[[], _Value]
    """Makes the read (under the state's locks); call it from a worker thread."""


class Registry:
    """Holds the state of one server on one device.

    Args:
        device: TensorFlow device name, or ``None``/``"auto"`` for the first GPU, else CPU.
        metrics: where to count what happens; a fresh registry if None.
        request_window: push request ids remembered for exactly-once retries.
        hooks: named points where tests hold threads; none by default.
        limits: the bounds on names, counts and state; the defaults if None.
    """

    def __init__(
        self,
        device: str | None = None,
        metrics: Metrics | None = None,
        request_window: int = DEFAULT_WINDOW,
        hooks: Hooks | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.device = resolve_device(device)
        self.metrics = metrics if metrics is not None else Metrics()
        self.request_window = request_window
        self.hooks = hooks if hooks is not None else Hooks()
        self.limits = limits if limits is not None else Limits()
        self.barrier = SaveBarrier(self.hooks)
        """The save waiting for iterations, if any, and the pushes it holds."""
        self._structure = threading.Lock()
        self._current = self.new_generation()
        self._closed_by: ServerError | None = None

    # The generation ---------------------------------------------------------------------------

    def current(self) -> Generation:
        """Returns the current generation (one atomic read; it may be replaced right after)."""
        return self._current

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Generation]:
        """Holds the structure lock and every optimizer's lock: nothing changes meanwhile."""
        with self._structure:
            generation = self._current
            with locked(generation.optimizers.values()):
                yield generation

    def install(self, generation: Generation) -> None:
        """Replaces the whole state with ``generation`` (a restore).

        The old generation's optimizers are retired under their locks: a push,
        ``set_weights`` or hyperparameter change validated against them, and any
        open sync step, is answered ABORTED and applies nothing.
        """
        with self._structure:
            old = self._current
            with locked(old.optimizers.values()):
                generation.number = old.number + 1
                self._current = generation
                for managed in old.optimizers.values():
                    managed.retired = True
                    managed.policy.close(_replaced(managed.name, "a restore"))
                    managed.lock.notify_all()  # pushes a save held: ABORTED
            for managed in generation.optimizers.values():
                self._adopt(managed)
        self.barrier.wake()  # a save waiting for iterations: ABORTED
        _log.info(
            "state replaced: generation %d, %d optimizers, %d variables",
            generation.number,
            len(generation.optimizers),
            len(generation.variables),
        )

    def close(self) -> None:
        """Answers open sync steps UNAVAILABLE and refuses new ones, and makes a save waiting
        for iterations give up (UNAVAILABLE, the pushes it held released): the server is
        stopping.

        Clients retry UNAVAILABLE by themselves, against the restarted server.
        """
        error = Unavailable(
            "sync aggregation: the server is shutting down; the step was not applied, "
            "retry against the restarted server",
            Reason.SHUTTING_DOWN,
        )
        with self._structure:
            self._closed_by = error
            for managed in self._current.optimizers.values():
                with managed.lock:
                    managed.policy.close(error)
        self.barrier.close(
            Unavailable(
                "save: the server is shutting down before every optimizer reached its "
                "iterations; nothing was saved",
                Reason.SHUTTING_DOWN,
            )
        )

    def _adopt(self, managed: ManagedOptimizer) -> None:
        """Closes a new optimizer's policy if the server is stopping; the caller holds the
        structure lock, so no optimizer joins after :meth:`close` without being closed."""
        if self._closed_by is not None:
            with managed.lock:
                managed.policy.close(self._closed_by)

    # The factory: creation and restore build state the same way ------------------------------

    def new_generation(
        self, requests: Iterable[tuple[str, Mapping[str, Any], bool]] = ()
    ) -> Generation:
        """Returns an empty generation whose window starts with ``requests`` (oldest first)."""
        return Generation(RequestLog(self.request_window, requests), self.limits.max_name_bytes)

    def new_optimizer(
        self,
        name: str,
        spec: optimizers.OptimizerSpec,
        options: OptimizerOptions,
        creation_config: dict[str, Any] | None = None,
    ) -> ManagedOptimizer:
        """Builds an optimizer with creation's checks; it joins no generation yet.

        Raises:
            InvalidArgument: bad name or options (``lazy_sparse`` for a class without lazy
                updates), or a config Keras refuses or cannot apply.
            ResourceExhausted: a name longer than ``limits.max_name_bytes``.
        """
        check_name("optimizer", name, self.limits.max_name_bytes)
        options = checked(options)
        try:
            if options.lazy_sparse:
                spec = optimizers.with_lazy_sparse(spec)
            with tf.device(self.device), tf.init_scope():
                optimizer = optimizers.instantiate(spec)
                _ = optimizer.iterations
                optimizer._create_hypers()
                slot_names = optimizers.slot_names(spec)
        except InvalidArgument as error:
            raise _naming_optimizer(name, error) from None
        lock = threading.Condition()
        policy = make_policy(
            options, lock, self.metrics, name, functools.partial(self.hooks.reach, "sync.waiting")
        )
        config = creation_config if creation_config is not None else optimizers.serialize(optimizer)
        return ManagedOptimizer(name, optimizer, spec, config, options, lock, policy, slot_names)

    def new_variables(
        self,
        owner: ManagedOptimizer,
        declarations: Sequence[tuple[str, np.ndarray]],
        batch: int,
        placements: Mapping[str, Placement],
    ) -> list[ManagedVariable]:
        """Builds checked declarations' variables and their slots; the caller holds the lock.

        ``placements`` holds the checked placement of each declaration that has one.

        Slots are created in one Keras call for the whole batch, so they are
        ordered as a local ``apply_gradients`` over the same variable list orders them.
        The variables keep TensorFlow's default name (ours are the registry's keys): each
        distinct name makes TensorFlow build and cache a kernel of its own for the variable
        and for each of its slots, which made creating many variables several times slower.

        Raises:
            InvalidArgument: the optimizer cannot update one of the dtypes, or all of its
                variables' dtypes together.
        """
        owner.checked_dtypes = self._check_dtypes(owner, declarations)
        with tf.device(self.device), tf.init_scope():
            variables = [tf.Variable(value, trainable=True) for _, value in declarations]
            owner.optimizer._create_all_weights(variables)
        return [
            ManagedVariable(name, variable, owner, batch, placements.get(name))
            for (name, _), variable in zip(declarations, variables, strict=True)
        ]

    def _check_dtypes(
        self, owner: ManagedOptimizer, declarations: Sequence[tuple[str, np.ndarray]]
    ) -> set[str]:
        """Returns the dtypes of the optimizer's variables with the declarations', refusing
        a set it cannot update; the caller holds the optimizer's lock.

        Raises:
            InvalidArgument: the optimizer cannot update one of the dtypes, or all of them
                together.
        """
        dtypes = owner.checked_dtypes | {value.dtype.name for _, value in declarations}
        if dtypes != owner.checked_dtypes:
            try:
                optimizers.check_dtypes(owner.spec, dtypes, self.device)
            except InvalidArgument as error:
                raise _naming_optimizer(owner.name, error) from None
        return dtypes

    # Changes ----------------------------------------------------------------------------------

    def create_optimizer(
        self,
        name: str,
        config_json: str,
        options: OptimizerOptions | None = None,
        validate_only: bool = False,
    ) -> bool:
        """Creates a named optimizer; returns False if an equal one exists.

        ``validate_only`` runs every check below, under the same lock, and changes nothing
        (AIP-163); the answer is whether the call would create the optimizer.

        Raises:
            InvalidArgument: bad name, config or options.
            AlreadyExists: the name exists with a different config or options.
            ResourceExhausted: a name or config past its bound, or one optimizer more
                than ``limits.max_optimizers``; checked before anything is built.
        """
        limits = self.limits
        check_name("optimizer", name, limits.max_name_bytes)
        check_config_size(
            f"optimizer {shown(name)}: config JSON", config_json, limits.max_config_bytes
        )
        self._check_room_for_optimizer(self._current, name)
        try:
            spec = optimizers.parse(config_json, limits)
        except (InvalidArgument, ResourceExhausted) as error:
            raise _naming_optimizer(name, error) from None
        candidate = self.new_optimizer(name, spec, options or OptimizerOptions())
        with self._structure:
            generation = self._current
            self._check_room_for_optimizer(generation, name)
            existing = generation.optimizers.get(name)
            if existing is not None:
                check_same_optimizer(
                    name,
                    (existing.creation_config, existing.options),
                    (candidate.creation_config, candidate.options),
                )
                return False
            if validate_only:
                return True
            generation.optimizers[name] = candidate
            self._adopt(candidate)
        _log.info(
            "created optimizer %r: %s, %s",
            name,
            json.dumps(candidate.creation_config),
            candidate.options,
        )
        return True

    def create_variables(
        self,
        optimizer: str,
        declarations: Sequence[tuple[str, np.ndarray]],
        placements: Mapping[str, Placement] | None = None,
        validate_only: bool = False,
    ) -> tuple[list[str], list[str]]:
        """Creates variables and their slots; returns (created, existing) names.

        ``placements`` gives the placement of every declaration, or of none. Their shard
        becomes the server's, with the variables, when the server has none yet.

        ``validate_only`` runs every check below, under the same locks, and changes
        nothing (AIP-163): no variable, no slot, no shard identity, nor the optimizer's
        record of the dtypes it was proven to update (``set_hyperparameter`` checks a new
        value against those). The names returned as created are those the call would create.

        Raises:
            NotFound: unknown optimizer.
            InvalidArgument: bad name, duplicate name, non-finite value, a dtype the
                optimizer cannot update, or placements that differ in shard, are out of
                range or do not fit their variables.
            FailedPrecondition: the placements' shard is not the server's.
            AlreadyExists: a name exists with a different shape, dtype, optimizer or placement.
            ResourceExhausted: a name past ``limits.max_name_bytes``, more variables in all
                than ``limits.max_variables``, or more bytes of state than
                ``limits.state_quota_bytes``; checked before anything is built.
        """
        limits = self.limits
        placements = placements or {}
        check_declarations(declarations, limits.max_name_bytes)
        shard = check_placements(declarations, placements, limits.max_name_bytes)
        with self._structure:
            generation = self._current
            if shard is not None:
                check_same_shard(generation.shard, shard)
            owner = generation.optimizer(optimizer)
            self.hooks.reach("create_variables.locked")
            existing = [name for name, _ in declarations if name in generation.variables]
            for name, value in declarations:
                if name in generation.variables:
                    declared = generation.variables[name]
                    check_same_declaration(
                        declared, declared.optimizer.name, optimizer, value, placements.get(name)
                    )
            fresh = [(n, v) for n, v in declarations if n not in generation.variables]
            if fresh:
                where = f"optimizer {shown(optimizer)}: create_variables"
                check_count(
                    where,
                    "variables",
                    "max_variables",
                    limits.max_variables,
                    len(generation.variables),
                    len(fresh),
                )
                slots = len(owner.slot_names)
                asked = sum(state_bytes(v.shape, v.dtype.name, slots) for _, v in fresh)
                check_state_quota(where, generation.state_bytes, asked, limits.state_quota_bytes)
                with owner.lock:
                    if validate_only:
                        self._check_dtypes(owner, fresh)
                    else:
                        variables = self.new_variables(
                            owner, fresh, generation.batches + 1, placements
                        )
                        generation.add_variables(variables)
            if validate_only:
                return [name for name, _ in fresh], existing
            if shard is not None:
                _claim_shard(generation, shard)
        created = [name for name, _ in fresh]
        if created:
            _log.info(
                "created %d variables on %s for optimizer %r: %s",
                len(created),
                self.device,
                optimizer,
                shown(created),
            )
        return created, existing

    def declare_shard(self, shard: int, shards: int, validate_only: bool = False) -> None:
        """Makes the server shard ``shard`` of ``shards``; nothing changes if it is already.

        ``validate_only`` runs the checks alone: a server without an identity keeps none.

        Raises:
            InvalidArgument: ``shards`` < 1 or ``shard`` not in [0, shards).
            FailedPrecondition: the server is another shard (``SHARD_MISMATCH``).
        """
        identity = check_shard("DeclareShard", shard, shards)
        with self._structure:
            if validate_only:
                check_same_shard(self._current.shard, identity)
            else:
                _claim_shard(self._current, identity)

    def set_weights(self, optimizer: str, weights: Sequence[np.ndarray]) -> None:
        """Replaces every weight of an optimizer (Keras order), after checking them all.

        An open sync step of the optimizer was opened against the weights replaced:
        its contributors are answered ABORTED and nothing of it is applied.

        Raises:
            NotFound: unknown optimizer.
            InvalidArgument: wrong number, shape or dtype, non-finite values, or
                ``iterations`` that is not an integer in [0, 2**62].
            Aborted: a restore replaced the optimizer first.
        """
        managed = self._current.optimizer(optimizer)
        self.hooks.reach("set_weights.found")
        with managed.lock:
            managed.ensure_live()
            assign_weights(managed, weights, self.device)
            managed.policy.abort(_replaced(managed.name, "set_weights"))
        self.barrier.changed()  # a save waiting for iterations looks again

    def set_hyperparameter(
        self,
        optimizer: str,
        key: str,
        value: float | Mapping[str, Any],
        validate_only: bool = False,
    ) -> None:
        """Sets one hyperparameter, as ``optimizer.<key> = value`` does in Keras.

        The optimizer's config with the new value must pass every check its
        creation would, so a value creation refuses is refused here too.
        ``validate_only`` runs every check, under the same lock, and changes nothing.

        Raises:
            NotFound: unknown optimizer.
            InvalidArgument: unknown hyperparameter, or a value creation refuses.
            ResourceExhausted: a name or a schedule past its bound.
            Aborted: a restore replaced the optimizer first.
        """
        managed = self._current.optimizer(optimizer)
        key = "learning_rate" if key == "lr" else key  # Keras's alias, as opt.lr = ...
        known = sorted(managed.optimizer._hyper)
        if key not in known:
            check_name_length("hyperparameter", key, self.limits.max_name_bytes)
            raise InvalidArgument(
                f"optimizer {shown(optimizer)}: expected a hyperparameter in {known}, "
                f"received {shown(key)}",
                Reason.UNKNOWN_HYPERPARAMETER,
                {"optimizer": optimizer, "expected": known, "received": key},
            )
        self.hooks.reach("set_hyperparameter.found")
        with managed.lock:
            managed.ensure_live()
            try:
                spec = optimizers.with_hyperparameter(
                    optimizers.serialize(managed.optimizer),
                    managed.spec,
                    managed.checked_dtypes,
                    key,
                    value,
                    self.limits,
                    self.device,
                )
            except (InvalidArgument, ResourceExhausted) as error:
                raise _naming_optimizer(optimizer, error) from None
            if validate_only:
                return
            with tf.device(self.device):
                setattr(managed.optimizer, key, spec.kwargs[key])
            managed.compiled.clear()

    def _check_room_for_optimizer(self, generation: Generation, name: str) -> None:
        """Refuses a new optimizer past ``limits.max_optimizers``; one that exists is no growth."""
        if name not in generation.optimizers:
            check_count(
                f"optimizer {shown(name)}",
                "optimizers",
                "max_optimizers",
                self.limits.max_optimizers,
                len(generation.optimizers),
                1,
            )

    # Views ------------------------------------------------------------------------------------

    def state_bytes(self) -> int:
        """Returns the bytes of every variable and optimizer slot held: what the quota bounds."""
        return self._current.state_bytes

    def optimizer_names(self) -> list[str]:
        """Returns the names of every optimizer, sorted."""
        return sorted(self._current.optimizers)

    def variable_infos(
        self, generation: Generation | None = None, start: int = 0
    ) -> list[VariableInfo]:
        """Returns the variables (of ``generation``, else the current one) in creation order,
        from the one at position ``start`` on."""
        return [
            VariableInfo(
                m.name,
                m.shape,
                np.dtype(m.variable.dtype.as_numpy_dtype),
                m.optimizer.name,
                canonical(m.variable.device),
                m.placement,
            )
            for m in list((generation or self._current).variables.values())[start:]
        ]

    def options(self, optimizer: str) -> OptimizerOptions:
        """Returns the options the optimizer was created with, defaults filled in."""
        return self._current.optimizer(optimizer).options

    def get_config(self, optimizer: str) -> dict[str, Any]:
        """Returns ``{"class_name": ..., "config": optimizer.get_config()}``."""
        managed = self._current.optimizer(optimizer)
        with managed.lock:
            return optimizers.serialize(managed.optimizer)

    def iterations(self, optimizer: str) -> int:
        """Returns the optimizer's ``iterations``."""
        managed = self._current.optimizer(optimizer)
        with managed.lock:
            return managed.iterations()

    def total_iterations(self) -> int:
        """Returns the sum of every optimizer's ``iterations``: the server's step count."""
        return sum(view.iterations for view in self.optimizer_views())

    def slot_names(self, optimizer: str) -> list[str]:
        """Returns the optimizer's slot names in creation order."""
        managed = self._current.optimizer(optimizer)
        with managed.lock:
            return list(managed.optimizer.get_slot_names())

    def get_weights(self, optimizer: str) -> list[np.ndarray]:
        """Returns the optimizer's weights in Keras order (iterations, then slots)."""
        return self.plan_weights(optimizer).read()

    def pull(
        self, names: Sequence[str], generation: Generation | None = None
    ) -> list[tuple[str, np.ndarray]]:
        """Returns (name, value) of the named variables, all of them when ``names`` is empty.

        The values are one consistent cut: every optimizer involved is locked at once.
        """
        return self.plan_pull(names, generation).read()

    def get_slot(self, variable: str, slot: str) -> np.ndarray:
        """Returns one slot's value for one variable.

        Raises:
            NotFound: unknown variable, or a slot the optimizer does not have.
        """
        return self.plan_slot(variable, slot).read()

    # Reads sized before they are made ------------------------------------------------------------

    def plan_pull(
        self, names: Sequence[str], generation: Generation | None = None
    ) -> Planned[list[tuple[str, np.ndarray]]]:
        """Plans :meth:`pull`; raises NotFound for an unknown name."""
        generation = generation or self._current
        managed = (
            [generation.variable(name) for name in names]
            if names
            else list(generation.variables.values())
        )

        def read() -> list[tuple[str, np.ndarray]]:
            with locked(m.optimizer for m in managed):
                return [(m.name, m.variable.numpy()) for m in managed]

        return Planned(sum(_nbytes(m.variable) for m in managed), read)

    def plan_weights(self, optimizer: str) -> Planned[list[np.ndarray]]:
        """Plans :meth:`get_weights`; raises NotFound for an unknown optimizer."""
        managed = self._current.optimizer(optimizer)
        with managed.lock:
            nbytes = sum(_nbytes(weight) for weight in managed.optimizer.weights)

        def read() -> list[np.ndarray]:
            with managed.lock:
                return list(managed.optimizer.get_weights())

        return Planned(nbytes, read)

    def plan_slot(self, variable: str, slot: str) -> Planned[np.ndarray]:
        """Plans :meth:`get_slot`; raises NotFound for an unknown variable or slot."""
        managed = self._current.variable(variable)
        optimizer = managed.optimizer.optimizer
        with managed.optimizer.lock:
            names = list(optimizer.get_slot_names())
            if slot not in names:
                check_name_length("slot", slot, self.limits.max_name_bytes)
                raise NotFound(
                    f"variable {shown(variable)}: expected a slot in {names}, "
                    f"received {shown(slot)}",
                    Reason.UNKNOWN_SLOT,
                    {"variable": variable, "expected": names, "received": slot},
                )
            slot_variable = optimizer.get_slot(managed.variable, slot)

        def read() -> np.ndarray:
            with managed.optimizer.lock:
                return slot_variable.numpy()

        return Planned(_nbytes(slot_variable), read)

    def plan_rows(self, name: str, indices: np.ndarray) -> Planned[tf.Tensor]:
        """Plans a read of ``variable[indices]``: the plan reads the variable once (a
        snapshot the rows are gathered from, in blocks, by :func:`gather_rows`).

        Raises:
            NotFound: unknown variable.
            InvalidArgument: the variable is a scalar or an index is out of range.
            ResourceExhausted: the rows would pass ``--max-payload-gib``.
        """
        managed = self._current.variable(name)
        check_rows(managed, indices)
        check_rows_bytes(managed, len(indices), self.limits.max_payload_bytes)
        row_bytes = _nbytes(managed.variable) // max(managed.shape[0], 1)

        def read() -> tf.Tensor:
            with managed.optimizer.lock, tf.device(self.device):
                return managed.variable.read_value()

        return Planned(len(indices) * row_bytes, read)

    def optimizer_views(self) -> list[OptimizerView]:
        """Returns every optimizer's iterations and learning rate, in name order."""
        views = []
        for name in self.optimizer_names():
            managed = self._current.optimizers.get(name)
            if managed is None:  # replaced by a restore meanwhile
                continue
            with managed.lock:
                rate = float(managed.optimizer._decayed_lr(tf.float32).numpy())
                views.append(OptimizerView(name, managed.iterations(), rate))
        return views

    def variable_bytes(self) -> list[VariableBytes]:
        """Returns the bytes of every variable's value and of its slots, in creation order."""
        generation = self._current
        counted = {}
        for managed in list(generation.optimizers.values()):
            with managed.lock:
                optimizer = managed.optimizer
                for name, variable in managed.bound.items():
                    slots = [optimizer.get_slot(variable, s) for s in optimizer.get_slot_names()]
                    counted[name] = VariableBytes(
                        name, _nbytes(variable), sum(_nbytes(slot) for slot in slots)
                    )
        return [counted[name] for name in list(generation.variables) if name in counted]


def _claim_shard(generation: Generation, identity: ShardIdentity) -> None:
    """Claims a shard identity for the current generation (the caller holds the structure
    lock), logging the first."""
    if generation.shard is None:
        _log.info("this server is %s of a sharded client's list", shard_text(identity))
    generation.claim_shard(identity)


def _nbytes(variable: tf.Variable) -> int:
    return int(variable.shape.num_elements() or 0) * variable.dtype.size


def _naming_optimizer(name: str, error: ServerError) -> ServerError:
    """The same refusal, with the optimizer's name in front and in the metadata."""
    return type(error)(
        f"optimizer {shown(name)}: {error.message}",
        error.reason,
        {**error.metadata, "optimizer": name},
    )


def _replaced(optimizer: str, by: str) -> ServerError:
    return Aborted(
        f"optimizer {shown(optimizer)}: the state was replaced by {by} while this push "
        "waited for its sync step; nothing of the step was applied",
        Reason.STATE_REPLACED,
        {"optimizer": optimizer},
    )
