"""Variables and optimizer state: creation, dtypes, pulls, rows, slots, weights and
hyperparameters, each compared exactly with numpy or a local tf_keras optimizer."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tf_keras

from tfps_client import AlreadyExistsError, Client, IndexedSlices, TfpsError
from tfps_server import RunningServer

from helpers import (
    LocalReference,
    assert_all_bitwise_equal,
    assert_bitwise_equal,
    assert_refused,
    assert_same_state,
    keras_optimizer,
    snapshot,
)

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
SGD = {"class_name": "SGD", "config": {"learning_rate": 0.5}}


def _random(seed: int, *shape: int, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# Creation --------------------------------------------------------------------------------------


def test_identical_declaration_is_idempotent_and_first_values_win(client: Client) -> None:
    """A second identical declaration reports `existing` and keeps the first creator's values."""
    client.create_optimizer("default", SGD)
    first = _random(1, 4, 3)
    assert client.create_variables({"w": first}).created == ("w",)
    result = client.create_variables({"w": _random(2, 4, 3), "b": np.zeros(3, np.float32)})
    assert result.created == ("b",)
    assert result.existing == ("w",)
    assert_bitwise_equal(client.pull(["w"])["w"], first)
    assert client.iterations("default") == 0


@pytest.mark.parametrize(
    ("value", "optimizer", "field", "expected", "received"),
    [
        (np.zeros((3, 4), np.float32), "default", "shape", "[4, 3]", "[3, 4]"),
        (np.zeros((4, 3), np.float64), "default", "dtype", "float32", "float64"),
        (np.zeros((4, 3), np.float32), "other", "optimizer", "default", "other"),
    ],
    ids=["shape", "dtype", "optimizer"],
)
def test_conflicting_declaration_is_refused(
    client: Client, value: np.ndarray, optimizer: str, field: str, expected: str, received: str
) -> None:
    """A declaration differing in shape, dtype or optimizer raises AlreadyExistsError naming it."""
    client.create_optimizer("default", SGD)
    client.create_optimizer("other", SGD)
    client.create_variables({"w": _random(1, 4, 3)})
    before = snapshot(client, ["default", "other"])
    with pytest.raises(TfpsError) as caught:
        client.create_variables({"w": value}, optimizer)
    assert_refused(
        caught.value,
        AlreadyExistsError,
        "VARIABLE_EXISTS",
        ("'w'", field, f"exists with {expected}", f"received {received}"),
        {"variable": "w", "field": field, "expected": expected, "received": received},
    )
    assert_same_state(snapshot(client, ["default", "other"]), before)


DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dtype_round_trip(client: Client, dtype: Any) -> None:
    """Every variable dtype comes back bitwise from pull, pull_rows and list_variables."""
    client.create_optimizer("default", SGD)
    value = _random(3, 5, 3, dtype=dtype)
    scalar = np.array(-1.25, dtype)
    client.create_variables({"v": value, "s": scalar})
    assert_all_bitwise_equal(client.pull(), {"v": value, "s": scalar})
    assert_bitwise_equal(client.pull_rows("v", [4, 0]), value[[4, 0]])
    assert [info.dtype for info in client.list_variables()] == [np.dtype(dtype)] * 2


@pytest.mark.parametrize(
    ("variable_dtype", "gradient_dtype"),
    [
        (np.float32, np.float16),
        (np.float32, ml_dtypes.bfloat16),
        (np.float64, np.float32),
        (np.float64, ml_dtypes.bfloat16),
    ],
    ids=["f16-on-f32", "bf16-on-f32", "f32-on-f64", "bf16-on-f64"],
)
def test_lower_precision_gradient_is_cast_up(
    client: Client, variable_dtype: Any, gradient_dtype: Any
) -> None:
    """A narrower gradient equals a local apply of ``tf.cast(grad, variable dtype)``, bitwise."""
    client.create_optimizer("default", ADAM)
    initial = {
        "w": _random(4, 3, 2, dtype=variable_dtype),
        "e": _random(5, 6, 2, dtype=variable_dtype),
    }
    client.create_variables(initial)
    reference = LocalReference(ADAM, initial)
    for step in range(2):
        gradients = {
            "w": _random(10 + step, 3, 2, dtype=gradient_dtype),
            "e": IndexedSlices(_random(20 + step, 3, 2, dtype=gradient_dtype), np.array([5, 0, 5])),
        }
        client.push(gradients)
        reference.apply(gradients)
    assert_all_bitwise_equal(client.pull(), reference.values())
    assert_all_bitwise_equal(client.get_weights("default"), reference.weights())


def test_empty_sparse_gradient_and_zero_size_variable_match_keras(client: Client) -> None:
    """A sparse gradient with no rows, and a variable with no elements, update as in Keras."""
    client.create_optimizer("default", ADAM)
    initial = {"e": _random(1, 4, 2), "z": np.zeros((0, 3), np.float32)}
    client.create_variables(initial)
    reference = LocalReference(ADAM, initial)
    pushes = [
        {"e": IndexedSlices(_random(2, 2, 2), np.array([1, 3]))},
        {
            "e": IndexedSlices(np.zeros((0, 2), np.float32), np.zeros(0, np.int64)),
            "z": initial["z"],
        },
    ]
    for step, gradients in enumerate(pushes, start=1):
        assert client.push(gradients).iterations == {"default": step}
        reference.apply(gradients)
    assert_all_bitwise_equal(client.pull(), reference.values())
    assert_all_bitwise_equal(client.get_weights("default"), reference.weights())
    assert client.pull_rows("z", []).shape == (0, 3)


# Reading ---------------------------------------------------------------------------------------


def test_pull_all_and_list_variables(server: RunningServer, client: Client) -> None:
    """Pull without names returns every variable; the listing describes each, in creation order."""
    client.create_optimizer("default", SGD)
    client.create_optimizer("second", ADAM)
    first = {"a": _random(1, 2, 3), "b": np.array(4.0, np.float64)}
    second = {"c": _random(2, 7, dtype=np.float16)}
    client.create_variables(first)
    client.create_variables(second, optimizer="second")
    assert_all_bitwise_equal(client.pull(), {**first, **second})
    assert_all_bitwise_equal(client.pull(["c", "a"]), {"c": second["c"], "a": first["a"]})
    infos = client.list_variables()
    assert [(i.name, i.shape, i.dtype, i.optimizer) for i in infos] == [
        ("a", (2, 3), np.dtype(np.float32), "default"),
        ("b", (), np.dtype(np.float64), "default"),
        ("c", (7,), np.dtype(np.float16), "second"),
    ]
    assert all(info.device.endswith(server.registry.device) for info in infos), infos


@pytest.mark.parametrize(
    "ids",
    [
        [3, 0, 2],
        [1, 1, 4, 1],
        [],
        np.array([5, 2], np.int32),
        np.array([0, 5, 0], np.int64),
        range(6),
        np.array([[0, 1], [5, 0]]),
    ],
    ids=["order", "repeated", "empty", "int32", "int64", "all", "matrix-of-ids"],
)
def test_pull_rows_equals_numpy_indexing(client: Client, ids: Any) -> None:
    """Rows come back as ``table[ids]``, in the order asked, repeats included."""
    client.create_optimizer("default", SGD)
    table = _random(5, 6, 4)
    client.create_variables({"table": table})
    assert_bitwise_equal(client.pull_rows("table", ids), table[np.asarray(ids, np.int64)])


# Optimizer state -------------------------------------------------------------------------------

SLOT_CASES = [
    ({"class_name": "SGD", "config": {"learning_rate": 0.1}}, []),
    ({"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}}, ["momentum"]),
    (ADAM, ["m", "v"]),
    ({"class_name": "Adam", "config": {"amsgrad": True}}, ["m", "v", "vhat"]),
    ({"class_name": "Adagrad", "config": {}}, ["accumulator"]),
    ({"class_name": "RMSprop", "config": {"centered": True, "momentum": 0.5}}, None),
    ({"class_name": "Ftrl", "config": {}}, ["accumulator", "linear"]),
]
SLOT_IDS = ["sgd", "sgd-momentum", "adam", "adam-amsgrad", "adagrad", "rmsprop-centered", "ftrl"]


@pytest.mark.parametrize(("config", "names"), SLOT_CASES, ids=SLOT_IDS)
def test_slots_iterations_and_weights_match_keras(
    client: Client, config: dict[str, Any], names: list[str] | None
) -> None:
    """slot_names, get_slot, iterations and get_weights equal a local optimizer's, bitwise."""
    client.create_optimizer("default", config)
    initial = {"w": _random(1, 3, 2), "e": _random(2, 4, 2)}
    client.create_variables(initial)
    reference = LocalReference(config, initial)
    assert client.iterations("default") == 0
    for step in range(3):
        gradients = {
            "w": _random(10 + step, 3, 2),
            "e": IndexedSlices(_random(20 + step, 2, 2), np.array([step, 3])),
        }
        assert client.push(gradients).iterations == {"default": step + 1}
        reference.apply(gradients)
    assert client.iterations("default") == 3
    expected_names = reference.optimizer.get_slot_names()
    if names is not None:
        assert expected_names == names
    assert client.slot_names("default") == expected_names
    for name, variable in reference.variables.items():
        for slot in expected_names:
            expected = reference.optimizer.get_slot(variable, slot).numpy()
            assert_bitwise_equal(client.get_slot(name, slot), expected, f"{name}/{slot}")
    assert_all_bitwise_equal(client.get_weights("default"), reference.weights())
    assert_all_bitwise_equal(client.pull(), reference.values())


def test_push_reports_iterations_of_every_optimizer_touched(client: Client) -> None:
    """One push across two optimizers steps both; untouched optimizers keep their count."""
    for name in ("a", "b", "c"):
        client.create_optimizer(name, SGD)
        client.create_variables({name: np.zeros(2, np.float32)}, optimizer=name)
    ones = np.ones(2, np.float32)
    assert client.push({"a": ones, "b": ones}).iterations == {"a": 1, "b": 1}
    assert client.push({"b": ones}).iterations == {"b": 2}
    assert client.push({}).iterations == {}
    assert [client.iterations(name) for name in ("a", "b", "c")] == [1, 2, 0]
    assert_all_bitwise_equal(
        client.pull(), {"a": -0.5 * ones, "b": -1.0 * ones, "c": np.zeros(2, np.float32)}
    )


def test_set_weights_round_trip_then_push_continues_from_set_state(client: Client) -> None:
    """get_weights returns what set_weights set, and the next update starts from that state."""
    client.create_optimizer("default", ADAM)
    initial = {"w": _random(1, 3, 2), "e": _random(2, 4, 2)}
    client.create_variables(initial)
    for step in range(2):
        client.push({"w": _random(10 + step, 3, 2), "e": _random(20 + step, 4, 2)})
    current = client.get_weights("default")
    assert [w.dtype for w in current] == [np.int64] + [np.float32] * 4
    new = [np.array(7, np.int64)] + [
        np.abs(_random(30 + i, *w.shape)) for i, w in enumerate(current[1:])
    ]
    client.set_weights("default", new)
    assert_all_bitwise_equal(client.get_weights("default"), new)
    assert client.iterations("default") == 7

    reference = LocalReference(ADAM, client.pull())
    reference.optimizer.set_weights(new)
    gradients = {"w": _random(40, 3, 2), "e": IndexedSlices(_random(41, 2, 2), np.array([1, 1]))}
    assert client.push(gradients).iterations == {"default": 8}
    reference.apply(gradients)
    assert_all_bitwise_equal(client.pull(), reference.values())
    assert_all_bitwise_equal(client.get_weights("default"), reference.weights())


# Hyperparameters and config --------------------------------------------------------------------


def _schedule() -> dict[str, Any]:
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=1, decay_rate=0.5)
    return tf_keras.optimizers.schedules.serialize(schedule)


@pytest.mark.parametrize(
    ("config", "name", "value"),
    [
        (ADAM, "learning_rate", 0.05),
        (ADAM, "beta_1", 0.5),
        ({"class_name": "SGD", "config": {"momentum": 0.9}}, "momentum", 0.25),
        ({"class_name": "SGD", "config": {"momentum": 0.9}}, "learning_rate", _schedule()),
        (ADAM, "learning_rate", _schedule()),
    ],
    ids=["adam-lr", "adam-beta1", "sgd-momentum", "sgd-lr-schedule", "adam-lr-schedule"],
)
def test_set_hyperparameter_equals_keras_attribute_assignment(
    client: Client, config: dict[str, Any], name: str, value: Any
) -> None:
    """``set_hyperparameter`` between pushes equals ``setattr(optimizer, name, value)`` locally."""
    client.create_optimizer("default", config)
    initial = {"w": _random(1, 3, 2), "e": _random(2, 4, 2)}
    client.create_variables(initial)
    reference = LocalReference(config, initial)
    pushes = [
        {
            "w": _random(10 + step, 3, 2),
            "e": IndexedSlices(_random(20 + step, 1, 2), np.array([step])),
        }
        for step in range(3)
    ]
    client.push(pushes[0])
    reference.apply(pushes[0])
    client.set_hyperparameter("default", name, value)
    local_value = (
        tf_keras.optimizers.schedules.deserialize(value) if isinstance(value, dict) else value
    )
    setattr(reference.optimizer, name, local_value)
    for gradients in pushes[1:]:
        client.push(gradients)
        reference.apply(gradients)
    assert_all_bitwise_equal(client.pull(), reference.values())
    assert_all_bitwise_equal(client.get_weights("default"), reference.weights())
    reported = client.get_config("default")["config"][name]
    if isinstance(value, dict):
        assert reported["class_name"] == "ExponentialDecay"
        assert reported["config"] == value["config"]
    else:
        assert reported == float(np.float32(value))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.parametrize(
    "config",
    [
        ADAM,
        {"class_name": "Adam", "config": {"learning_rate": 0.003, "amsgrad": True, "name": "enc"}},
        {"class_name": "sgd", "config": {"lr": 0.1, "momentum": 0.9, "nesterov": True}},
        {"class_name": "RMSprop", "config": {"clipnorm": 1.5, "decay": 0.01}},
        {"class_name": "Adagrad", "config": {"global_clipnorm": 2.0, "epsilon": 1e-5}},
        {"class_name": "SGD", "config": {"learning_rate": _schedule(), "clipvalue": 0.5}},
    ],
    ids=["adam", "adam-amsgrad-named", "sgd-lr-alias", "rmsprop-clipnorm", "adagrad", "schedule"],
)
def test_get_config_returns_the_keras_config(client: Client, config: dict[str, Any]) -> None:
    """get_config is the optimizer's Keras ``get_config()``, and it creates an equal optimizer."""
    client.create_optimizer("default", config)
    local = keras_optimizer(config)
    local._create_hypers()
    expected = {key: _plain(value) for key, value in local.get_config().items()}
    reported = client.get_config("default")
    assert reported["class_name"] == type(local).__name__
    assert reported["config"] == expected
    assert client.create_optimizer("copy", reported) is True
    assert client.get_config("copy") == reported
