"""Golden values: known results of tf_keras's and TensorFlow's own optimizer tests, and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfps_client import Client, IndexedSlices

VAR0, VAR1 = [1.0, 2.0], [3.0, 4.0]
GRAD0, GRAD1 = [0.1, 0.1], [0.01, 0.01]


def run(
    client: Client, config: dict, initial: list[list[float]], grads: list[object], steps: int
) -> list[np.ndarray]:
    """Creates var0, var1 with ``config``, pushes ``grads`` ``steps`` times, returns the values."""
    client.create_optimizer("opt", config)
    client.create_variables(
        {f"var{i}": np.array(v, np.float32) for i, v in enumerate(initial)}, optimizer="opt"
    )
    for _ in range(steps):
        client.push({f"var{i}": g for i, g in enumerate(grads)})
    pulled = client.pull([f"var{i}" for i in range(len(initial))])
    return [pulled[f"var{i}"] for i in range(len(initial))]


def f32(values: list[float]) -> list[np.ndarray]:
    return [np.array(v, np.float32) for v in values]


def test_sgd_basic(client: Client) -> None:
    # tf_keras gradient_descent_test: var - lr * grad with lr = 3.0.
    var0, var1 = run(
        client,
        {"class_name": "SGD", "config": {"learning_rate": 3.0}},
        [VAR0, VAR1],
        f32([GRAD0, GRAD1]),
        1,
    )
    np.testing.assert_allclose(var0, [1.0 - 3.0 * 0.1, 2.0 - 3.0 * 0.1], rtol=1e-6)
    np.testing.assert_allclose(var1, [3.0 - 3.0 * 0.01, 4.0 - 3.0 * 0.01], rtol=1e-6)


def test_sgd_momentum_two_steps(client: Client) -> None:
    # accum_1 = g, var_1 = var - lr g; accum_2 = m accum_1 + g, var_2 = var_1 - lr accum_2.
    var0, var1 = run(
        client,
        {"class_name": "SGD", "config": {"learning_rate": 2.0, "momentum": 0.9}},
        [VAR0, VAR1],
        f32([GRAD0, GRAD1]),
        2,
    )
    np.testing.assert_allclose(
        var0, [1.0 - 2.0 * 0.1 - 2.0 * 0.19, 2.0 - 2.0 * 0.1 - 2.0 * 0.19], rtol=1e-6
    )
    np.testing.assert_allclose(
        var1, [3.0 - 2.0 * 0.01 - 2.0 * 0.019, 4.0 - 2.0 * 0.01 - 2.0 * 0.019], rtol=1e-6
    )


def test_adagrad_one_step(client: Client) -> None:
    # accum = 0.1 + g^2; var -= lr g / (sqrt(accum) + eps).
    var0, _ = run(
        client,
        {
            "class_name": "Adagrad",
            "config": {"learning_rate": 3.0, "initial_accumulator_value": 0.1},
        },
        [VAR0, VAR1],
        f32([GRAD0, GRAD1]),
        1,
    )
    step = 3.0 * 0.1 / (math.sqrt(0.1 + 0.01) + 1e-7)
    np.testing.assert_allclose(var0, [1.0 - step, 2.0 - step], rtol=1e-5)


def test_adam_first_step_moves_by_learning_rate(client: Client) -> None:
    # After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps_hat).
    var0, var1 = run(
        client,
        {"class_name": "Adam", "config": {"learning_rate": 0.001}},
        [VAR0, VAR1],
        f32([GRAD0, GRAD1]),
        1,
    )
    np.testing.assert_allclose(var0, [0.999, 1.999], rtol=1e-5)
    np.testing.assert_allclose(var1, [2.999, 3.999], rtol=1e-5)


def test_ftrl_without_regularization_three_steps(client: Client) -> None:
    # TensorFlow's ftrl_test.py testFtrlwithoutRegularization.
    var0, var1 = run(
        client,
        {"class_name": "Ftrl", "config": {"learning_rate": 3.0, "initial_accumulator_value": 0.1}},
        [[0.0, 0.0], [0.0, 0.0]],
        f32([[0.1, 0.2], [0.01, 0.02]]),
        3,
    )
    np.testing.assert_allclose(var0, [-2.60260963, -4.29698515], rtol=1e-4)
    np.testing.assert_allclose(var1, [-0.28432083, -0.56694895], rtol=1e-5)


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
def test_sparse_repeated_indices_are_summed(client: Client, index_dtype: str) -> None:
    # tf_keras tests repeated indices: two updates of row 1 equal one update with their sum.
    values = np.array([[0.1], [0.1]], np.float32)
    table = np.array([[1.0], [2.0]], np.float32)
    client.create_optimizer("opt", {"class_name": "SGD", "config": {"learning_rate": 3.0}})
    client.create_variables({"table": table}, optimizer="opt")
    client.push({"table": IndexedSlices(values, np.array([1, 1], index_dtype), (2, 1))})
    np.testing.assert_allclose(
        client.pull(["table"])["table"], [[1.0], [2.0 - 3.0 * 0.2]], rtol=1e-6
    )
