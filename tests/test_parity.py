"""Parity: the server's updates are bitwise a local tf_keras legacy optimizer's.

Table-driven: every optimizer case below is crossed with every gradient kind
and dtype. Each case runs a few pushes against a real server and the same
gradients through a local ``tf_keras.optimizers.legacy`` optimizer, then
compares variables and ``get_weights()`` byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tfps_client import Client, IndexedSlices
from tfps_server import RunningServer, compiled

from helpers import OptimizerCase, assert_bitwise_equal, keras_optimizer


def schedule(class_name: str, **config: Any) -> dict[str, Any]:
    """A serialized Keras learning-rate schedule."""
    return {"class_name": class_name, "config": config}


OPTIMIZERS = [
    OptimizerCase("sgd", "SGD", {"learning_rate": 0.1}),
    OptimizerCase("sgd-momentum", "SGD", {"learning_rate": 0.1, "momentum": 0.9}),
    OptimizerCase("sgd-nesterov", "sgd", {"learning_rate": 0.1, "momentum": 0.5, "nesterov": True}),
    OptimizerCase(
        "sgd-decay-clipvalue", "SGD", {"learning_rate": 0.2, "decay": 0.1, "clipvalue": 0.3}
    ),
    OptimizerCase(
        "sgd-piecewise",
        "SGD",
        {
            "learning_rate": schedule(
                "PiecewiseConstantDecay", boundaries=[1, 2], values=[0.3, 0.2, 0.1]
            )
        },
    ),
    OptimizerCase("adam", "Adam", {"learning_rate": 0.01}),
    OptimizerCase("adam-amsgrad", "adam", {"learning_rate": 0.01, "amsgrad": True}),
    OptimizerCase(
        "adam-exponential-decay",
        "Adam",
        {
            "learning_rate": schedule(
                "ExponentialDecay", initial_learning_rate=0.05, decay_steps=2, decay_rate=0.5
            )
        },
    ),
    OptimizerCase("adam-clipnorm", "Adam", {"learning_rate": 0.01, "clipnorm": 0.5}),
    OptimizerCase("adam-global-clipnorm", "Adam", {"learning_rate": 0.01, "global_clipnorm": 0.5}),
    OptimizerCase("rmsprop", "RMSprop", {"learning_rate": 0.01}),
    OptimizerCase(
        "rmsprop-centered-momentum",
        "RMSprop",
        {"learning_rate": 0.01, "centered": True, "momentum": 0.5},
    ),
    OptimizerCase(
        "rmsprop-polynomial-decay",
        "RMSprop",
        {
            "learning_rate": schedule(
                "PolynomialDecay",
                initial_learning_rate=0.05,
                decay_steps=3,
                end_learning_rate=0.001,
                power=2.0,
            )
        },
    ),
    OptimizerCase("adagrad", "Adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.5}),
    OptimizerCase(
        "adagrad-inverse-time-decay",
        "Adagrad",
        {
            "learning_rate": schedule(
                "InverseTimeDecay", initial_learning_rate=0.1, decay_steps=1, decay_rate=0.5
            )
        },
    ),
    OptimizerCase("adadelta", "Adadelta", {"learning_rate": 1.0, "rho": 0.9}),
    OptimizerCase(
        "adadelta-cosine-restarts",
        "Adadelta",
        {
            "learning_rate": schedule(
                "CosineDecayRestarts", initial_learning_rate=1.0, first_decay_steps=2
            )
        },
    ),
    OptimizerCase("adamax", "Adamax", {"learning_rate": 0.01, "decay": 0.01}),
    OptimizerCase("nadam", "Nadam", {"learning_rate": 0.01}),
    OptimizerCase("nadam-clipvalue", "Nadam", {"learning_rate": 0.01, "clipvalue": 0.2}),
    OptimizerCase("ftrl", "Ftrl", {"learning_rate": 0.1}),
    OptimizerCase(
        "ftrl-regularized",
        "Ftrl",
        {
            "learning_rate": 0.1,
            "learning_rate_power": -0.6,
            "l1_regularization_strength": 0.01,
            "l2_regularization_strength": 0.02,
            "l2_shrinkage_regularization_strength": 0.03,
            "beta": 0.1,
            "initial_accumulator_value": 0.2,
        },
    ),
    OptimizerCase(
        "ftrl-cosine-decay-global-clipnorm",
        "Ftrl",
        {
            "learning_rate": schedule("CosineDecay", initial_learning_rate=0.1, decay_steps=4),
            "global_clipnorm": 1.0,
        },
    ),
]

GRADIENT_KINDS = ["dense", "sparse", "sparse-repeated"]
"""How the embedding table's gradient travels; the kernel's is always dense."""

DTYPES = ["float32", "float64", "float16"]

STEPS = 3
KERNEL_SHAPE = (4, 3)
TABLE_SHAPE = (6, 3)


def table_gradient(
    kind: str, rng: np.random.Generator, dtype: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (values, indices) of the table's gradient; indices None for dense."""
    if kind == "dense":
        return rng.standard_normal(TABLE_SHAPE).astype(dtype), None
    indices = np.array([4, 1, 4, 4] if kind == "sparse-repeated" else [0, 5, 2], np.int64)
    return rng.standard_normal((len(indices), TABLE_SHAPE[1])).astype(dtype), indices


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", GRADIENT_KINDS)
@pytest.mark.parametrize("case", OPTIMIZERS, ids=[case.id for case in OPTIMIZERS])
def test_server_update_is_bitwise_local_update(
    client: Client, case: OptimizerCase, kind: str, dtype: str
) -> None:
    _check_parity(client, case, kind, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=[case.id for case in OPTIMIZERS])
def test_compiled_update_is_bitwise_local_update(
    server: RunningServer,
    client: Client,
    case: OptimizerCase,
    dtype: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The traced apply (compiled.py), used from the first push here, is bitwise Keras's
    eager one too: dense and sparse, repeated indices, schedules, clipping."""
    monkeypatch.setattr(compiled, "HOT_AFTER", 0)
    _check_parity(client, case, "sparse-repeated", dtype)
    assert server.registry.current().optimizer("opt").compiled.traces >= 1


def _check_parity(client: Client, case: OptimizerCase, kind: str, dtype: str) -> None:
    rng = np.random.default_rng(7)
    kernel = rng.standard_normal(KERNEL_SHAPE).astype(dtype)
    table = rng.standard_normal(TABLE_SHAPE).astype(dtype)
    assert client.create_optimizer("opt", json.dumps(case.serialized))
    client.create_variables({"dense/kernel": kernel, "emb/embeddings": table}, optimizer="opt")

    reference = keras_optimizer(case.serialized)
    local_kernel, local_table = tf.Variable(kernel), tf.Variable(table)
    for step in range(1, STEPS + 1):
        kernel_grad = rng.standard_normal(KERNEL_SHAPE).astype(dtype)
        values, indices = table_gradient(kind, rng, dtype)
        if indices is None:
            pushed: Any = values
            local: Any = tf.constant(values)
        else:
            pushed = IndexedSlices(values, indices, TABLE_SHAPE)
            local = tf.IndexedSlices(
                tf.constant(values), tf.constant(indices), tf.constant(TABLE_SHAPE)
            )
        result = client.push({"dense/kernel": kernel_grad, "emb/embeddings": pushed})
        reference.apply_gradients([(tf.constant(kernel_grad), local_kernel), (local, local_table)])
        assert result.iterations == {"opt": step} and result.applied

    pulled = client.pull(["dense/kernel", "emb/embeddings"])
    assert_bitwise_equal(pulled["dense/kernel"], local_kernel.numpy(), "dense/kernel")
    assert_bitwise_equal(pulled["emb/embeddings"], local_table.numpy(), "emb/embeddings")
    server_weights, local_weights = client.get_weights("opt"), reference.get_weights()
    assert len(server_weights) == len(local_weights)
    for position, (ours, theirs) in enumerate(zip(server_weights, local_weights, strict=True)):
        assert_bitwise_equal(ours, theirs, f"optimizer weight {position}")
    assert client.slot_names("opt") == reference.get_slot_names()
    assert client.iterations("opt") == STEPS


@pytest.mark.parametrize("case", OPTIMIZERS[::4], ids=[case.id for case in OPTIMIZERS[::4]])
def test_bfloat16_variables_match_local_update(client: Client, case: OptimizerCase) -> None:
    import ml_dtypes

    rng = np.random.default_rng(3)
    table = rng.standard_normal(TABLE_SHAPE).astype(ml_dtypes.bfloat16)
    client.create_optimizer("opt", case.serialized)
    client.create_variables({"table": table}, optimizer="opt")
    reference, local_table = (
        keras_optimizer(case.serialized),
        tf.Variable(table),
    )
    for _ in range(STEPS):
        values = rng.standard_normal((3, TABLE_SHAPE[1])).astype(ml_dtypes.bfloat16)
        indices = np.array([2, 0, 2])
        client.push({"table": IndexedSlices(values, indices)})
        reference.apply_gradients(
            [
                (
                    tf.IndexedSlices(
                        tf.constant(values), tf.constant(indices), tf.constant(TABLE_SHAPE)
                    ),
                    local_table,
                )
            ]
        )
    assert_bitwise_equal(client.pull(["table"])["table"], local_table.numpy(), "table")
