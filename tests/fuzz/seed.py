"""The known state every case starts from.

Six optimizers: one per aggregation mode and non-finite policy, one at the last
iterations but one, and one at the last. Nine small variables of four float dtypes,
ranks 0 to 2, one without elements. A history: pushes applied, so that iterations,
slots and staleness are not all zero, and a request id the server remembers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from tfps_client import Async, Client, IndexedSlices, OptimizerOptions, Sync, VariableInfo

LAST_ITERATIONS = 2**62
"""The most iterations an optimizer may reach."""

REMEMBERED_ID = "r0"
"""The request id of a push of the seed: a push with it is answered, not applied."""

SYNC_TIMEOUT = 0.05
"""Seconds a sync step of the seed waits for a second worker: long enough to aggregate,
short enough that a case pushing to it stays cheap."""

OPTIMIZERS: dict[str, tuple[dict[str, Any], OptimizerOptions]] = {
    "sgd": (
        {"class_name": "SGD", "config": {"learning_rate": 0.5, "momentum": 0.9}},
        OptimizerOptions(Async()),
    ),
    "adam": (
        {"class_name": "Adam", "config": {"learning_rate": 0.01}},
        OptimizerOptions(Async(max_staleness=2), on_non_finite="skip"),
    ),
    "sync": (
        {"class_name": "Adagrad", "config": {"learning_rate": 0.1}},
        OptimizerOptions(Sync(replicas_to_aggregate=2, timeout=SYNC_TIMEOUT)),
    ),
    "drop": (
        {"class_name": "RMSprop", "config": {"learning_rate": 0.1}},
        OptimizerOptions(
            Sync(
                replicas_to_aggregate=2,
                total_num_replicas=3,
                reduction="mean",
                timeout=SYNC_TIMEOUT,
                on_timeout="drop",
            )
        ),
    ),
    "old": (
        {"class_name": "Adam", "config": {"learning_rate": 0.01, "amsgrad": True}},
        OptimizerOptions(Async()),
    ),
    "spent": ({"class_name": "SGD", "config": {"learning_rate": 0.5}}, OptimizerOptions(Async())),
}
"""Optimizers by name: their Keras config and options."""

VARIABLES: dict[str, tuple[str, np.ndarray]] = {
    "dense/kernel": ("sgd", np.arange(6, dtype=np.float32).reshape(3, 2) / 4),
    "dense/bias": ("sgd", np.zeros(2, np.float32)),
    "empty": ("sgd", np.zeros((0, 2), np.float32)),
    "emb": ("adam", np.arange(12, dtype=np.float32).reshape(6, 2)),
    "scale": ("adam", np.array(2.0, np.float64)),
    "half": ("sync", np.ones((2, 2), np.float16)),
    "brain": ("drop", np.ones((4, 1), ml_dtypes.bfloat16)),
    "old/w": ("old", np.ones(2, np.float32)),
    "spent/w": ("spent", np.ones(2, np.float32)),
}
"""Variables by name: their optimizer and initial value."""


@dataclass(frozen=True)
class SeedState:
    """What the structure-aware generators know of the seed, as the server reports it.

    Attributes:
        variables: every variable, in creation order.
        weights: every optimizer's weights in Keras order (iterations, then slots).
        slots: every optimizer's slot names.
        sync: the optimizers in sync mode, whose pushes need a worker id.
    """

    variables: tuple[VariableInfo, ...]
    weights: dict[str, tuple[np.ndarray, ...]]
    slots: dict[str, tuple[str, ...]]
    sync: frozenset[str]


def plant(client: Client) -> SeedState:
    """Creates the seed optimizers and variables on an empty server and describes them."""
    for name, (config, options) in OPTIMIZERS.items():
        client.create_optimizer(name, config, options.aggregation, options.on_non_finite)
    for optimizer in OPTIMIZERS:
        bound = {name: value for name, (owner, value) in VARIABLES.items() if owner == optimizer}
        client.create_variables(bound, optimizer)
    _history(client)
    return SeedState(
        variables=tuple(client.list_variables()),
        weights={name: tuple(client.get_weights(name)) for name in OPTIMIZERS},
        slots={name: tuple(client.slot_names(name)) for name in OPTIMIZERS},
        sync=frozenset(
            name
            for name, (_, options) in OPTIMIZERS.items()
            if isinstance(options.aggregation, Sync)
        ),
    )


def _history(client: Client) -> None:
    """Pushes to every optimizer that applies them, and takes two to their last iterations:
    after it, sgd is at 1, adam at 2, sync at 1, drop at 0, old at 2**62 - 1 and spent at
    2**62."""
    kernel = VARIABLES["dense/kernel"][1]
    client.push(
        {"dense/kernel": kernel, "dense/bias": np.ones(2, np.float32)}, request_id=REMEMBERED_ID
    )
    rows = IndexedSlices(np.ones((3, 2), np.float32), np.array([0, 5, 5]))
    client.push({"emb": rows, "scale": np.array(0.5)})
    client.push({"emb": rows}, step=0)
    client.push({"half": np.ones((2, 2), np.float16)}, worker="w0")
    client.push({"brain": np.ones((4, 1), ml_dtypes.bfloat16)}, worker="w0")
    for name, iterations in (("old", LAST_ITERATIONS - 1), ("spent", LAST_ITERATIONS)):
        current, *slots = client.get_weights(name)
        client.set_weights(name, [np.array(iterations, current.dtype), *slots])
