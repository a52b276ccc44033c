"""RemoteOptimizer where a step could train wrongly without a word: variables that meet
under one server name, a model rebuilt or cloned and compiled with the same optimizer, and a
learning rate read or scaled inside a ``tf.function`` before any eager read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfps_client import Client
from tfps_client.keras import RemoteOptimizer, variable_name

from helpers import assert_all_bitwise_equal

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
SGD = {"class_name": "SGD", "config": {"learning_rate": 1.0}}


pytestmark = pytest.mark.usefixtures("unreassociated_graphs")


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 1)).astype(np.float32)


def _dense(name: str, seed: int) -> tf_keras.Model:
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(1, name=name)])


def _fit(model: tf_keras.Model, optimizer: Any) -> None:
    model.compile(optimizer=optimizer, loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)


def test_two_variables_of_one_name_in_a_step_are_refused(client: Client) -> None:
    """Two towers built by one function name their layers alike: their variables would share
    one server variable (one gradient lost, both towers made equal), so the step refuses."""

    def tower(name: str) -> tf_keras.Model:
        return tf_keras.Sequential(
            [tf_keras.Input((3,)), tf_keras.layers.Dense(1, name="proj")], name=name
        )

    inputs = tf_keras.Input((3,))
    outputs = tf_keras.layers.Add()([tower("a")(inputs), tower("b")(inputs)])
    model = tf_keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"proj/kernel"):
        _fit(model, RemoteOptimizer(client, "towers", config=ADAM))
    assert client.iterations("towers") == 0


def test_one_variable_given_two_gradients_is_refused(client: Client) -> None:
    """A local optimizer applies both; the push would have kept only the last one."""
    variable = tf.Variable([1.0], name="twice")
    optimizer = RemoteOptimizer(client, "twice", config=SGD)
    with pytest.raises(ValueError, match="twice"):
        optimizer.apply_gradients([(tf.constant([1.0]), variable), (tf.constant([2.0]), variable)])
    assert client.iterations("twice") == 0


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["fit", "run_eagerly"])
def test_a_clone_compiled_with_the_same_optimizer_is_a_later_worker(
    client: Client, run_eagerly: bool
) -> None:
    """A second model of the same names compiled with the same optimizer object trains as
    with a new one: it takes the server's values before its own can make a gradient."""
    weights, iterations = [], []
    for name, same_object in (("clone_same", True), ("clone_new", False)):
        first = _dense(name, seed=1)
        optimizer = RemoteOptimizer(client, f"{name}_{run_eagerly}", config=ADAM)
        _fit(first, optimizer)
        tf_keras.utils.set_random_seed(5)
        clone = tf_keras.models.clone_model(first)
        second = optimizer if same_object else RemoteOptimizer(client, f"{name}_{run_eagerly}")
        clone.compile(optimizer=second, loss="mse", run_eagerly=run_eagerly)
        x, y = _data()
        clone.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        served = client.pull([variable_name(v) for v in clone.trainable_variables])
        assert_all_bitwise_equal(clone.get_weights(), list(served.values()))
        weights.append(clone.get_weights())
        iterations.append(client.iterations(f"{name}_{run_eagerly}"))
    assert iterations[0] == iterations[1]
    assert_all_bitwise_equal(weights[0], weights[1])


def test_the_learning_rate_in_a_graph_is_the_servers_before_any_eager_read(
    client: Client,
) -> None:
    """A graph that reads the learning rate, or scales it, starts from the server's value,
    not from 0 (which a scaled assignment would then have sent to the server)."""
    optimizer = RemoteOptimizer(client, "graph_lr", config=ADAM)
    read = tf.function(lambda: tf.identity(optimizer.learning_rate))
    assert read().numpy() == np.float32(0.01)

    fresh = RemoteOptimizer(client, "graph_lr")
    halve_fresh = tf.function(lambda: fresh.learning_rate.assign(fresh.learning_rate * 0.5))
    halve_fresh()
    _fit(_dense("graph_lr", seed=1), fresh)  # the step sends the assignment
    assert client.get_config("graph_lr")["config"]["learning_rate"] == np.float32(0.005)
