"""The known state every case starts from: four optimizers, one per aggregation mode and
non-finite policy, and six small variables of five dtypes, ranks 0 to 2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from tfps_client import Async, Client, OptimizerOptions, Sync, VariableInfo

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
}
"""Optimizers by name: their Keras config and options."""

VARIABLES: dict[str, tuple[str, np.ndarray]] = {
    "dense/kernel": ("sgd", np.arange(6, dtype=np.float32).reshape(3, 2) / 4),
    "dense/bias": ("sgd", np.zeros(2, np.float32)),
    "emb": ("adam", np.arange(12, dtype=np.float32).reshape(6, 2)),
    "scale": ("adam", np.array(2.0, np.float64)),
    "half": ("sync", np.ones((2, 2), np.float16)),
    "brain": ("drop", np.ones((4, 1), ml_dtypes.bfloat16)),
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
