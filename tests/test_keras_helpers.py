"""tfps_client.keras with a real tf_keras model: declare its variables, push tape
gradients (the embedding's tf.IndexedSlices sparse), pull into the model; updates are
bitwise those of a local tf_keras legacy optimizer given the same gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfps_client import Client
from tfps_client.keras import create_variables, pull_into, push_gradients, variable_name

from helpers import assert_all_bitwise_equal, assert_bitwise_equal, keras_optimizer

VOCABULARY, WIDTH, IDS_PER_EXAMPLE = 12, 4, 3
BATCHES = [
    np.array([[0, 1, 1], [2, 0, 3]]),
    np.array([[5, 6, 7], [7, 7, 8]]),  # rows untouched by the first batch
    np.array([[9, 1, 10], [11, 0, 2]]),
]
SGD_MOMENTUM = {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}}


def _model(seed: int) -> tf_keras.Model:
    """Embedding -> Flatten -> Dense, initialized from ``seed``."""
    inputs = tf_keras.Input(shape=(IDS_PER_EXAMPLE,), dtype="int32")
    x = tf_keras.layers.Embedding(
        VOCABULARY,
        WIDTH,
        embeddings_initializer=tf_keras.initializers.RandomUniform(seed=seed),
        name="embedding",  # fixed names: every worker's model names its variables alike
    )(inputs)
    x = tf_keras.layers.Flatten()(x)
    outputs = tf_keras.layers.Dense(
        2, kernel_initializer=tf_keras.initializers.GlorotUniform(seed=seed + 1), name="dense"
    )(x)
    return tf_keras.Model(inputs, outputs)


def _gradients(model: tf_keras.Model, step: int) -> list[Any]:
    ids = BATCHES[step]
    targets = np.arange(ids.shape[0] * 2, dtype=np.float32).reshape(-1, 2) / 4
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(ids, training=True) - targets))
    return tape.gradient(loss, model.trainable_variables)


def _values(variables: list[tf.Variable], names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Values by server name; ``names`` overrides the variables' own names."""
    keys = names or tuple(variable_name(v) for v in variables)
    return {key: v.numpy() for key, v in zip(keys, variables, strict=True)}


@pytest.mark.parametrize(
    "config",
    [SGD_MOMENTUM, {"class_name": "Adam", "config": {"learning_rate": 0.01}}],
    ids=["sgd-momentum", "adam"],
)
def test_worker_loop_matches_local_keras(client: Client, config: dict[str, Any]) -> None:
    """Two workers train in turns through the helpers; the server equals a local optimizer."""
    client.create_optimizer("default", config)
    first, second = _model(seed=1), _model(seed=7)
    names = tuple(variable_name(v) for v in first.trainable_variables)
    assert all(not name.endswith(":0") for name in names)
    assert create_variables(client, first.trainable_variables).created == names
    assert create_variables(client, second.trainable_variables).existing == names

    local = [tf.Variable(v.numpy()) for v in first.trainable_variables]
    local_optimizer = keras_optimizer(config)
    for step in range(len(BATCHES)):
        worker = (first, second)[step % 2]
        pull_into(client, worker.trainable_variables)
        assert_all_bitwise_equal(_values(worker.trainable_variables), _values(local, names))
        gradients = _gradients(worker, step)
        assert isinstance(gradients[0], tf.IndexedSlices)  # the embedding's gradient
        result = push_gradients(client, zip(gradients, worker.trainable_variables, strict=True))
        assert result.iterations == {"default": step + 1}
        local_optimizer.apply_gradients(zip(gradients, local, strict=True))

    assert_all_bitwise_equal(client.pull(names), _values(local, names))
    assert_all_bitwise_equal(client.get_weights("default"), local_optimizer.get_weights())


def test_embedding_gradient_travels_sparse(client: Client) -> None:
    """With momentum, a sparse update leaves untouched rows' slots alone and a dense one does not:
    the server's state equals the sparse local update and differs from the dense one."""
    client.create_optimizer("default", SGD_MOMENTUM)
    model = _model(seed=3)
    create_variables(client, model.trainable_variables)
    embedding = model.trainable_variables[0]
    sparse_local, dense_local = tf.Variable(embedding.numpy()), tf.Variable(embedding.numpy())
    sparse_optimizer, dense_optimizer = (keras_optimizer(SGD_MOMENTUM) for _ in range(2))
    for step in range(2):
        pull_into(client, model.trainable_variables)
        gradients = _gradients(model, step)
        push_gradients(client, zip(gradients, model.trainable_variables, strict=True))
        sparse_optimizer.apply_gradients([(gradients[0], sparse_local)])
        dense_optimizer.apply_gradients([(tf.convert_to_tensor(gradients[0]), dense_local)])
    pulled = client.pull([variable_name(embedding)])[variable_name(embedding)]
    assert_bitwise_equal(pulled, sparse_local.numpy())
    assert not np.array_equal(pulled, dense_local.numpy())


def test_none_gradients_are_skipped(client: Client) -> None:
    """A None gradient (a variable the loss does not use) is left out of the push."""
    client.create_optimizer("default", SGD_MOMENTUM)
    model = _model(seed=5)
    create_variables(client, model.trainable_variables)
    before = client.pull()
    kernel = model.trainable_variables[1]
    gradient = tf.ones_like(kernel)
    pairs = [(None, v) for v in model.trainable_variables if v is not kernel] + [(gradient, kernel)]
    assert push_gradients(client, pairs).iterations == {"default": 1}
    after = client.pull()
    changed = [name for name in after if not np.array_equal(after[name], before[name])]
    assert changed == [variable_name(kernel)]
    assert_bitwise_equal(
        after[variable_name(kernel)], before[variable_name(kernel)] - np.float32(0.1)
    )
