"""An optimizer's weights in Keras order: what they are, and setting them all at once.

Keras orders an optimizer's weights as ``iterations``, then the slots in the
order they were created (one ``_create_all_weights`` call per creation request),
with other weights such as Nadam's ``momentum_cache`` where Keras created them.
``set_weights`` and a restore both set them here, after the same checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfps_client.wire import checkpoint_layout as layout
from tfps_client.wire.reasons import Reason
from tfps_server.errors import DataLoss, shown
from tfps_server.state import ManagedOptimizer
from tfps_server.validation import WeightSpec, check_weights


def slot_owners(managed: ManagedOptimizer) -> dict[int, tuple[str, str]]:
    """Returns id(slot variable) -> (variable name, slot name); the caller holds the lock."""
    optimizer = managed.optimizer
    return {
        id(optimizer.get_slot(variable, slot)): (name, slot)
        for name, variable in managed.bound.items()
        for slot in optimizer.get_slot_names()
    }


def weight_specs(managed: ManagedOptimizer) -> list[WeightSpec]:
    """Describes every weight in Keras order; the caller holds the lock."""
    owners = slot_owners(managed)
    specs = []
    for weight in managed.optimizer.weights:
        if weight is managed.optimizer.iterations:
            label = "iterations"
        elif id(weight) in owners:
            variable, slot = owners[id(weight)]
            label = f"slot {shown(slot)} of {shown(variable)}"
        else:
            label = f"weight {shown(layout.weight_name(weight.name))}"
        specs.append(WeightSpec(label, tuple(weight.shape.as_list()), weight.dtype.name))
    return specs


def in_keras_order(
    managed: ManagedOptimizer,
    slots: Mapping[str, Mapping[str, Any]],
    others: Mapping[str, Any],
) -> list[Any]:
    """Orders values found by name (a checkpoint's) as Keras orders the weights.

    Args:
        managed: the optimizer, with its variables and slots created.
        slots: variable name -> slot name -> value.
        others: non-slot weight name (``iter``, ``momentum_cache``) -> value.

    Raises:
        DataLoss: a weight has no value.
    """
    owners = slot_owners(managed)
    ordered = []
    for weight in managed.optimizer.weights:
        if id(weight) in owners:
            variable, slot = owners[id(weight)]
            value, what = slots.get(variable, {}).get(slot), f"slot {slot!r} of {variable!r}"
        else:
            name = layout.weight_name(weight.name)
            value, what = others.get(name), f"weight {name!r}"
        if value is None:
            raise DataLoss(
                f"checkpoint contents: optimizer {shown(managed.name)}: {what} is missing",
                Reason.CHECKPOINT_MISMATCH,
                {"optimizer": managed.name},
            )
        ordered.append(value)
    return ordered


def assign_weights(
    managed: ManagedOptimizer, weights: Sequence[Any], device: str, require_finite: bool = True
) -> None:
    """Checks every weight, then sets them all; the caller holds the lock.

    Raises:
        InvalidArgument: the number, a shape, a dtype or a value is wrong; nothing changed.
    """
    check_weights(managed.name, weight_specs(managed), weights, require_finite)
    with tf.device(device):
        for target, value in zip(managed.optimizer.weights, weights, strict=True):
            target.assign(np.asarray(value).astype(target.dtype.as_numpy_dtype))
