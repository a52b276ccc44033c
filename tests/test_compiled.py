"""Traced applies (compiled.py): recurring pushes are traced once, not per call, follow
hyperparameter changes, and stay bitwise a local Keras optimizer's."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfps_client import Client, IndexedSlices
from tfps_server import RunningServer, compiled

from helpers import assert_bitwise_equal, keras_optimizer

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
TABLE = (50, 4)


def _traces(server: RunningServer) -> int:
    return server.registry.current().optimizer("default").compiled.traces


def test_recurring_pushes_trace_once_whatever_their_row_counts(
    server: RunningServer, client: Client
) -> None:
    """Forty pushes of a dense and a sparse gradient with a different number of rows each
    time, and indices of both integer types, trace at most twice per index type; the
    result is bitwise the eager Keras optimizer's."""
    rng = np.random.default_rng(0)
    kernel, table = rng.standard_normal((3, 4)), rng.standard_normal(TABLE)
    client.create_optimizer("default", ADAM)
    client.create_variables({"kernel": kernel, "table": table})
    reference = keras_optimizer(ADAM)
    local_kernel, local_table = tf.Variable(kernel), tf.Variable(table)
    for step in range(40):
        rows = 1 + step % 7
        indices = rng.integers(0, TABLE[0], rows).astype(np.int32 if step % 2 else np.int64)
        values, kernel_grad = rng.standard_normal((rows, 4)), rng.standard_normal((3, 4))
        client.push({"kernel": kernel_grad, "table": IndexedSlices(values, indices)})
        sparse = tf.IndexedSlices(tf.constant(values), tf.constant(indices), TABLE)
        reference.apply_gradients([(tf.constant(kernel_grad), local_kernel), (sparse, local_table)])
    assert 1 <= _traces(server) <= 4
    pulled = client.pull(["kernel", "table"])
    assert_bitwise_equal(pulled["kernel"], local_kernel.numpy(), "kernel")
    assert_bitwise_equal(pulled["table"], local_table.numpy(), "table")


def test_a_hyperparameter_change_reaches_traced_applies(
    server: RunningServer, client: Client
) -> None:
    """A learning rate set to a number or a schedule after the apply was traced is the one
    the next push uses, as on a local optimizer."""
    client.create_optimizer("default", ADAM)
    client.create_variables({"w": np.ones(5)})
    reference, local = keras_optimizer(ADAM), tf.Variable(np.ones(5))
    gradient = np.linspace(-1, 1, 5)
    changes = [
        (3, "learning_rate", 0.5),
        (
            12,
            "learning_rate",
            {
                "class_name": "ExponentialDecay",
                "config": {"initial_learning_rate": 0.2, "decay_steps": 1, "decay_rate": 0.5},
            },
        ),
        (20, "beta_1", 0.5),
    ]
    for step in range(25):
        for at, name, value in changes:
            if step == at:
                client.set_hyperparameter("default", name, value)
                setattr(
                    reference,
                    name,
                    value
                    if not isinstance(value, dict)
                    else tf_keras.optimizers.schedules.deserialize(value),
                )
        client.push({"w": gradient})
        reference.apply_gradients([(tf.constant(gradient), local)])
    assert _traces(server) >= 2
    assert_bitwise_equal(client.pull(["w"])["w"], local.numpy(), "w")


def test_traced_functions_are_bounded_per_optimizer(
    server: RunningServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushes of ever new variable sets keep at most MAX_FUNCTIONS traced functions."""
    monkeypatch.setattr(compiled, "HOT_AFTER", 0)
    monkeypatch.setattr(compiled, "MAX_FUNCTIONS", 2)
    client.create_optimizer("default", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
    client.create_variables({f"v{i}": np.zeros(2) for i in range(4)})
    for i in range(4):
        client.push({f"v{i}": np.ones(2)})
        client.push({f"v{i}": np.ones(2)})
    functions = server.registry.current().optimizer("default").compiled._functions
    assert len(functions) == 2
    assert _traces(server) == 4
    assert all((v == -2).all() for v in client.pull().values())


def test_set_weights_between_traced_applies_is_what_the_next_push_starts_from(
    server: RunningServer, client: Client
) -> None:
    """Weights (iterations and slots) set after the apply was traced are those the traced
    apply reads next, as on a local optimizer given the same weights."""
    client.create_optimizer("default", ADAM)
    client.create_variables({"w": np.ones(5)})
    reference, local = keras_optimizer(ADAM), tf.Variable(np.ones(5))
    gradient = np.linspace(-1, 1, 5)
    for step in range(12):
        if step == 8:
            weights = [np.int64(100), np.full(5, 0.25), np.full(5, 0.5)]
            client.set_weights("default", weights)
            reference.set_weights(weights)
        client.push({"w": gradient})
        reference.apply_gradients([(tf.constant(gradient), local)])
    assert _traces(server) >= 1
    assert client.iterations("default") == 104
    assert_bitwise_equal(client.pull(["w"])["w"], local.numpy(), "w")
    for ours, theirs in zip(client.get_weights("default"), reference.get_weights(), strict=True):
        assert_bitwise_equal(ours, theirs, "weight")
