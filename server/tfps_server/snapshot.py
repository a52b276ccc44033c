"""The state <-> checkpoint contents: capture a consistent cut, rebuild a generation from one.

A :class:`Snapshot` is what a checkpoint holds: metadata (as
:mod:`tfps_client.wire.checkpoint_layout` documents it) and the values of
every variable, slot and optimizer weight. Rebuilding goes through the
registry's factory and the same checks as creation, so a checkpoint holding
anything creation would refuse is refused, and the current state is kept; one
holding more than the server's limits is refused before anything is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from itertools import groupby
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfps_client.types import Outcome
from tfps_client.wire import checkpoint_layout as layout
from tfps_client.wire.convert import OptimizerResult
from tfps_client.wire.reasons import Reason
from tfps_server import optimizers
from tfps_server.errors import DataLoss, InvalidArgument, ResourceExhausted, ServerError, shown
from tfps_server.limits import Limits
from tfps_server.registry import Registry
from tfps_server.state import Generation
from tfps_server.validation import (
    check_count,
    check_declarations,
    check_dtype,
    check_placements,
    check_shard,
    check_state_quota,
    state_bytes,
)
from tfps_server.weights import assign_weights, in_keras_order, slot_owners

UNREADABLE = (tf.errors.OpError, ValueError, KeyError, IndexError, RuntimeError)
"""What reading a damaged checkpoint raises (TensorFlow's reader raises IndexError for a
truncated file)."""

_log = logging.getLogger(__name__)


class Snapshot(NamedTuple):
    """The whole state at one instant: what a checkpoint holds."""

    metadata: layout.CheckpointMetadata
    variables: Mapping[str, Any]
    """Variable name -> value."""
    slots: Mapping[str, Mapping[str, Any]]
    """Variable name -> slot name -> value."""
    optimizer_weights: Mapping[str, Mapping[str, Any]]
    """Optimizer name -> non-slot weight name (``iter``, ...) -> value."""


def capture(
    registry: Registry, group: str = "", check: Callable[[Generation], None] | None = None
) -> Snapshot:
    """Captures the whole state as a consistent cut, labelled ``group``.

    Holds every lock only while taking references to the values: the tensors
    read keep their values while training goes on (TensorFlow copies a
    variable's buffer before updating it in place while another reference is alive).
    ``check`` runs first under those locks (a save at given iterations checks them there);
    what it raises, nothing is captured.
    """
    weights: dict[str, dict[str, tf.Tensor]] = {}
    slots: dict[str, dict[str, tf.Tensor]] = {}
    entries: list[layout.OptimizerEntry] = []
    with registry.frozen() as generation:
        if check is not None:
            check(generation)
        for managed in generation.optimizers.values():
            optimizer = managed.optimizer
            owners = slot_owners(managed)
            weights[managed.name] = {
                layout.weight_name(w.name): w.read_value()
                for w in optimizer.weights
                if id(w) not in owners
            }
            for weight in optimizer.weights:
                if id(weight) in owners:
                    variable, slot = owners[id(weight)]
                    slots.setdefault(variable, {})[slot] = weight.read_value()
            entries.append(
                layout.OptimizerEntry(
                    name=managed.name,
                    class_name=optimizers.keras_class_name(optimizer),
                    creation_config=managed.creation_config,
                    config=optimizers.serialize(optimizer),
                    options=layout.options_to_json(managed.options),
                    iterations=managed.iterations(),
                    weights=tuple(weights[managed.name]),
                    slots=tuple(optimizer.get_slot_names()),
                )
            )
        variables = list(generation.variables.values())
        values = {v.name: v.variable.read_value() for v in variables}
        requests = tuple(
            (request_id, {o: [r.outcome.value, r.iterations] for o, r in results.items()}, done)
            for request_id, results, done in generation.requests.snapshot()
        )
        shard = generation.shard
    metadata = layout.CheckpointMetadata(
        saved_at=time.time(),
        optimizers=tuple(entries),
        variables=tuple(
            layout.VariableEntry(v.name, v.optimizer.name, v.shape, v.dtype, v.batch, v.placement)
            for v in variables
        ),
        requests=requests,
        device=registry.device,
        shard=shard,
        group=group,
    )
    return Snapshot(metadata, values, slots, weights)


def rebuild(registry: Registry, snapshot: Snapshot) -> Generation:
    """Builds a generation from a snapshot, aside from the current one.

    Raises:
        ServerError: the snapshot holds something creation would refuse (with
            creation's status and message), more than the registry's limits allow,
            or its parts do not fit together.
    """
    metadata = snapshot.metadata
    limits = registry.limits
    check_limits(metadata, limits)
    generation = registry.new_generation(_request_entries(metadata))
    if metadata.shard is not None:
        generation.claim_shard(check_shard("restore", *metadata.shard))
    for entry in metadata.optimizers:
        try:
            spec = optimizers.parse_serialized(entry.config, limits)
            optimizers.parse_serialized(entry.creation_config, limits)
            options = layout.options_from_json(entry.options)
        except (InvalidArgument, ResourceExhausted) as error:
            raise type(error)(
                f"optimizer {shown(entry.name)}: {error.message}",
                error.reason,
                {**error.metadata, "optimizer": entry.name},
            ) from None
        except ValueError as error:
            raise _mismatch(f"optimizer {shown(entry.name)}: {error}") from None
        generation.optimizers[entry.name] = registry.new_optimizer(
            entry.name, spec, options, entry.creation_config
        )
    previous_batch = 0
    for batch, group in groupby(metadata.variables, key=lambda v: v.batch):
        declared = list(group)
        owner = generation.optimizers.get(declared[0].optimizer)
        if owner is None or any(v.optimizer != owner.name for v in declared):
            raise _mismatch(f"variables {shown([v.name for v in declared])}: unknown optimizer")
        if batch <= previous_batch:
            raise _mismatch(f"creation batch {batch} out of order")
        previous_batch = batch
        declarations = [(v.name, _value(snapshot.variables, v.name)) for v in declared]
        check_declarations(declarations, limits.max_name_bytes, require_finite=False)
        placements = {v.name: v.placement for v in declared if v.placement is not None}
        shard = check_placements(declarations, placements, limits.max_name_bytes)
        if shard is not None:
            generation.claim_shard(shard)
        with owner.lock:
            generation.add_variables(registry.new_variables(owner, declarations, batch, placements))
    for managed in generation.optimizers.values():
        with managed.lock:
            values = in_keras_order(
                managed, snapshot.slots, snapshot.optimizer_weights.get(managed.name, {})
            )
            assign_weights(managed, values, registry.device, require_finite=False)
    _warn_non_finite(snapshot)
    return generation


def check_limits(metadata: layout.CheckpointMetadata, limits: Limits) -> None:
    """Refuses, by arithmetic on its metadata, a checkpoint holding more than ``limits`` allow.

    The optimizers, the variables, and the bytes of the variables and their slots (from
    their shapes and dtypes) are counted against the limits; the state a restore
    replaces does not count, as it is dropped.

    Raises:
        ResourceExhausted: more optimizers or variables, or more bytes, than allowed.
        InvalidArgument: a variable of a dtype no variable may have.
    """
    for what, field, bound, count in (
        ("optimizers", "max_optimizers", limits.max_optimizers, len(metadata.optimizers)),
        ("variables", "max_variables", limits.max_variables, len(metadata.variables)),
    ):
        check_count("restore", what, field, bound, 0, count)
    slots = {entry.name: len(entry.slots) for entry in metadata.optimizers}
    asked = 0
    for variable in metadata.variables:
        check_dtype(variable.name, variable.dtype)
        asked += state_bytes(variable.shape, variable.dtype, slots.get(variable.optimizer, 0))
    check_state_quota("restore", 0, asked, limits.state_quota_bytes)


def restore(registry: Registry, snapshot: Snapshot) -> None:
    """Replaces the registry's whole state with a snapshot's; on failure nothing changes.

    Raises:
        ServerError: as :func:`rebuild`.
    """
    generation = rebuild(registry, snapshot)
    registry.hooks.reach("restore.rebuilt")
    registry.install(generation)


def _value(values: Mapping[str, Any], name: str) -> np.ndarray:
    if name not in values:
        raise _mismatch(f"variable {shown(name)} has no value")
    return np.asarray(values[name])


def _warn_non_finite(snapshot: Snapshot) -> None:
    """Logs the variables whose values or slots training had made non-finite before the save."""
    diverged = sorted(
        name
        for name, value in snapshot.variables.items()
        if not np.isfinite(np.asarray(value)).all()
        or not all(np.isfinite(np.asarray(s)).all() for s in snapshot.slots.get(name, {}).values())
    )
    if diverged:
        _log.warning(
            "the restored state holds non-finite values in %s (training had diverged "
            "before the checkpoint was saved)",
            shown(diverged),
        )


def _request_entries(
    metadata: layout.CheckpointMetadata,
) -> list[tuple[str, dict[str, OptimizerResult], bool]]:
    try:
        return [
            (
                str(request_id),
                {name: OptimizerResult(Outcome(o), int(i)) for name, (o, i) in results.items()},
                bool(complete),
            )
            for request_id, results, complete in metadata.requests
        ]
    except (AttributeError, TypeError, ValueError) as error:
        raise _mismatch(f"the exactly-once window is malformed: {error}") from None


def _mismatch(message: str) -> ServerError:
    return DataLoss(f"checkpoint contents: {message}", Reason.CHECKPOINT_MISMATCH)


def to_checkpoint(snapshot: Snapshot) -> tf.train.Checkpoint:
    """Wraps a snapshot's values in variables laid out as checkpoint_layout documents."""
    with tf.device("/CPU:0"):
        return tf.train.Checkpoint(
            variables={name: tf.Variable(value) for name, value in snapshot.variables.items()},
            slots={
                name: {slot: tf.Variable(value) for slot, value in by_slot.items()}
                for name, by_slot in snapshot.slots.items()
            },
            optimizers={
                name: {weight: tf.Variable(value) for weight, value in by_weight.items()}
                for name, by_weight in snapshot.optimizer_weights.items()
            },
            metadata=tf.Variable(snapshot.metadata.to_json()),
        )


def read_checkpoint(prefix: str) -> Snapshot:
    """Reads a whole checkpoint, checking it against its own metadata.

    Every entry is read, so every entry's CRC is checked.

    Raises:
        DataLoss: the files are missing, truncated, corrupted or inconsistent.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        metadata = layout.CheckpointMetadata.from_json(reader.get_tensor(layout.METADATA_KEY))
        shapes = reader.get_variable_to_shape_map()

        def tensor(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
            if key not in shapes:
                raise ValueError(f"key {key!r} is missing")
            value = np.asarray(reader.get_tensor(key))
            if shape is not None and value.shape != shape:
                raise ValueError(f"{key}: expected shape {list(shape)}, found {list(value.shape)}")
            return value

        variables = {
            v.name: tensor(layout.variable_key(v.name), v.shape) for v in metadata.variables
        }
        slot_names = {o.name: o.slots for o in metadata.optimizers}
        slots = {
            v.name: {
                s: tensor(layout.slot_key(v.name, s), v.shape) for s in slot_names[v.optimizer]
            }
            for v in metadata.variables
        }
        weights = {
            o.name: {w: tensor(layout.optimizer_weight_key(o.name, w)) for w in o.weights}
            for o in metadata.optimizers
        }
        for key in shapes:  # TensorFlow's own entries too: each read checks the entry's CRC
            reader.get_tensor(key)
    except UNREADABLE as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataLoss(
            f"checkpoint {prefix!r} is unreadable: {message}",
            Reason.CHECKPOINT_UNREADABLE,
            {"checkpoint": prefix},
        ) from None
    return Snapshot(metadata, variables, slots, weights)
