"""Whatever creation refuses, every other way into the state refuses too, the same way.

A value reaches an optimizer's config at creation, through set_hyperparameter,
or from a checkpoint; variable values and optimizer weights at creation, through
set_weights, or from a checkpoint. Each table row is refused on every path with
the same status, reason and message.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfps_client import Client, InvalidArgumentError, Sync, TfpsError
from tfps_client.wire.convert import DenseGradient
from tfps_server import Pusher, Registry
from tfps_server import snapshot as snapshots
from tfps_server.checkpoints import Checkpointer
from tfps_server.errors import ServerError

from helpers import assert_all_bitwise_equal

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
# NaN and Inf cannot be written in JSON, so creation refuses them as JSON; as numbers they are
# refused by the same check everywhere (tests/test_errors.py).
SCHEDULE = {
    "class_name": "ExponentialDecay",
    "config": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5},
}
BAD_HYPERPARAMETERS = [
    pytest.param("beta_1", 1.0, id="beta_1-one"),
    pytest.param("learning_rate", 1e39, id="learning-rate-overflowing-float32"),
    pytest.param("decay", -0.5, id="negative-decay"),
    pytest.param("beta_1", SCHEDULE, id="schedule-for-beta_1"),
    pytest.param(
        "learning_rate",
        {**SCHEDULE, "config": {**SCHEDULE["config"], "decay_rate": 1e39}},
        id="schedule-overflowing",
    ),
    pytest.param("learning_rate", {"class_name": "Sometimes", "config": {}}, id="unknown-schedule"),
    pytest.param(
        "learning_rate",
        {
            "class_name": "PolynomialDecay",
            "config": {"initial_learning_rate": 0.1, "decay_steps": 5000, "power": -1.0},
        },
        id="schedule-infinite-from-its-decay-steps",
    ),
]


def _after_name(error: TfpsError | ServerError, name: str) -> str:
    """The message without its leading "optimizer 'name': ", which names the call's target."""
    message = error.message
    prefix = f"optimizer {name!r}: "
    assert message.startswith(prefix), message
    return message.removeprefix(prefix)


@pytest.mark.parametrize(("key", "value"), BAD_HYPERPARAMETERS)
def test_set_hyperparameter_refuses_what_creation_refuses(
    client: Client, key: str, value: Any
) -> None:
    """The config with the new value, created afresh, fails exactly as the change does."""
    client.create_optimizer("default", ADAM)
    client.create_variables({"w": np.ones(2, np.float32)})
    before = client.get_config("default")
    with pytest.raises(TfpsError) as created:
        client.create_optimizer("fresh", {"class_name": "Adam", "config": {key: value}})
    with pytest.raises(TfpsError) as changed:
        client.set_hyperparameter("default", key, value)
    assert type(changed.value) is type(created.value) is InvalidArgumentError
    assert changed.value.reason == created.value.reason == "INVALID_CONFIG"
    assert _after_name(changed.value, "default") == _after_name(created.value, "fresh")
    assert client.get_config("default") == before
    client.push({"w": np.ones(2, np.float32)})
    assert np.isfinite(client.pull(["w"])["w"]).all()


@pytest.mark.parametrize(("key", "value"), BAD_HYPERPARAMETERS)
def test_a_restore_refuses_a_config_creation_refuses(key: str, value: Any) -> None:
    """A checkpoint whose optimizer config holds a value creation refuses is refused with
    creation's status and message, and the state is kept."""
    registry = Registry()
    registry.create_optimizer("default", json.dumps(ADAM))
    registry.create_variables("default", [("w", np.ones(2, np.float32))])
    captured = snapshots.capture(registry)
    (entry,) = captured.metadata.optimizers
    bad = dataclasses.replace(
        entry, config={**entry.config, "config": {**entry.config["config"], key: value}}
    )
    poisoned = captured._replace(metadata=dataclasses.replace(captured.metadata, optimizers=(bad,)))
    with pytest.raises(ServerError) as restored:
        snapshots.restore(registry, poisoned)
    with pytest.raises(ServerError) as created:
        registry.create_optimizer(
            "fresh", json.dumps({"class_name": "Adam", "config": {key: value}})
        )
    assert type(restored.value) is type(created.value)
    assert restored.value.reason == created.value.reason
    assert _after_name(restored.value, "default") == _after_name(created.value, "fresh")
    assert registry.current().number == 0


@pytest.mark.parametrize(
    ("iterations", "fragment"),
    [
        (np.int64(2**63 - 1), "expected iterations in [0, 2**62]"),
        (np.int64(-3), "expected iterations in [0, 2**62]"),
        (np.float64(5.0), "expected iterations as an integer scalar"),
        (np.array([1, 2]), "expected iterations as an integer scalar"),
    ],
    ids=["int64-max", "negative", "float", "vector"],
)
def test_iterations_are_checked_alike_by_set_weights_and_restore(
    iterations: np.ndarray, fragment: str
) -> None:
    """An iterations value set_weights refuses is refused by a restore, the same way."""
    registry = Registry()
    registry.create_optimizer("default", json.dumps(ADAM))
    registry.create_variables("default", [("w", np.ones(2, np.float32))])
    weights = registry.get_weights("default")
    with pytest.raises(ServerError) as set_directly:
        registry.set_weights("default", [iterations, *weights[1:]])
    captured = snapshots.capture(registry)
    poisoned = captured._replace(optimizer_weights={"default": {"iter": iterations}})
    with pytest.raises(ServerError) as restored:
        snapshots.restore(registry, poisoned)
    assert set_directly.value.reason == restored.value.reason == "INVALID_ITERATIONS"
    assert fragment in set_directly.value.message
    assert set_directly.value.message == restored.value.message
    assert registry.iterations("default") == 0


@pytest.mark.parametrize(
    "value",
    [np.ones(3, np.int32), np.ones(3, np.complex64)],
    ids=["int32", "complex64"],
)
def test_a_restore_refuses_a_variable_dtype_creation_refuses(value: np.ndarray) -> None:
    """A checkpoint holding a variable of a dtype creation refuses is refused alike."""
    registry = Registry()
    registry.create_optimizer("default", json.dumps({"class_name": "SGD", "config": {}}))
    with pytest.raises(ServerError) as created:
        registry.create_variables("default", [("w", value)])
    registry.create_variables("default", [("w", np.ones(3, np.float32))])
    captured = snapshots.capture(registry)
    (declared,) = captured.metadata.variables
    poisoned = captured._replace(
        metadata=dataclasses.replace(
            captured.metadata,
            variables=(dataclasses.replace(declared, dtype=value.dtype.name),),
        ),
        variables={"w": value},
    )
    with pytest.raises(ServerError) as restored:
        snapshots.restore(registry, poisoned)
    assert restored.value.reason == created.value.reason == "INVALID_DTYPE"
    assert restored.value.message == created.value.message


def test_values_that_training_made_non_finite_are_restored_not_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A float16 variable that overflowed in training holds Inf; its checkpoint restores
    (refusing it would make the server's own checkpoint unloadable), with a warning."""
    registry = Registry()
    registry.create_optimizer("default", json.dumps({"class_name": "SGD", "config": {}}))
    registry.set_hyperparameter("default", "learning_rate", 1.0)
    registry.create_variables("default", [("half", np.full(2, 60000, np.float16))])
    Pusher(registry).push([DenseGradient("half", np.full(2, -60000, np.float16))])
    assert np.isinf(dict(registry.pull(["half"]))["half"]).all()
    captured = snapshots.capture(registry)
    snapshots.restore(registry, captured)
    assert np.isinf(dict(registry.pull(["half"]))["half"]).all()
    assert "non-finite values in ['half']" in caplog.text


@pytest.mark.parametrize(
    ("config", "key", "value"),
    [
        ({"class_name": "SGD", "config": {"momentum": 0.0}}, "momentum", 0.5),
        ({"class_name": "SGD", "config": {"momentum": 0.5}}, "momentum", 0.0),
        ({"class_name": "RMSprop", "config": {}}, "momentum", 0.9),
        ({"class_name": "Adam", "config": {}}, "decay", 0.01),
    ],
    ids=["sgd-momentum-on", "sgd-momentum-off", "rmsprop-momentum-on", "adam-decay-on"],
)
def test_a_change_keras_fixes_at_construction_is_refused(
    client: Client, config: dict[str, Any], key: str, value: float
) -> None:
    """Keras decides at construction whether momentum slots exist and whether decay applies;
    a change across that line would be ignored now and would not fit a checkpoint after a
    restore (which constructs from the changed config): it is refused."""
    client.create_optimizer("default", config)
    client.create_variables({"w": np.ones(2, np.float32)})
    before = client.get_config("default")
    with pytest.raises(InvalidArgumentError) as caught:
        client.set_hyperparameter("default", key, value)
    assert caught.value.reason == "INVALID_CONFIG"
    assert "would change what Keras fixes at construction" in caught.value.message
    assert client.get_config("default") == before


@pytest.mark.parametrize(
    ("config", "key", "value"),
    [
        ({"class_name": "SGD", "config": {"momentum": 0.5}}, "momentum", 0.9),
        ({"class_name": "Adam", "config": {"decay": 0.01}}, "decay", 0.02),
        ({"class_name": "Adam", "config": {}}, "learning_rate", SCHEDULE),
    ],
    ids=["sgd-momentum", "adam-decay", "adam-schedule"],
)
def test_a_change_within_construction_survives_a_restore(
    tmp_path: Path, config: dict[str, Any], key: str, value: Any
) -> None:
    """A change that keeps what construction fixed is applied, and a checkpoint taken after
    it restores to the same weights and config, and trains on identically."""
    registry = Registry()
    checkpointer = Checkpointer(registry, tmp_path)
    pusher = Pusher(registry)
    registry.create_optimizer("default", json.dumps(config))
    registry.create_variables("default", [("w", np.ones(2, np.float32))])
    gradient = [DenseGradient("w", np.full(2, 0.5, np.float32))]
    pusher.push(gradient)
    registry.set_hyperparameter("default", key, value)
    saved_config = registry.get_config("default")
    info = checkpointer.save()
    pusher.push(gradient)
    expected = (dict(registry.pull([])), registry.get_weights("default"))
    checkpointer.restore(info.id)
    assert registry.get_config("default") == saved_config
    pusher.push(gradient)
    assert_all_bitwise_equal(dict(registry.pull([])), expected[0])
    assert_all_bitwise_equal(registry.get_weights("default"), expected[1])


def test_set_hyperparameter_refuses_a_value_its_variables_dtypes_cannot_take(
    client: Client,
) -> None:
    """Creating variables proves the optimizer updates their dtype; a hyperparameter change
    must keep that true, or the next checkpoint could not be restored (restore re-runs it)."""
    client.create_optimizer("default", {"class_name": "SGD", "config": {"learning_rate": 0.1}})
    client.create_variables({"w": np.ones(2, np.float16)})
    with pytest.raises(InvalidArgumentError) as changed:
        client.set_hyperparameter("default", "learning_rate", 1e6)
    client.create_optimizer("fresh", {"class_name": "SGD", "config": {"learning_rate": 1e6}})
    with pytest.raises(InvalidArgumentError) as created:
        client.create_variables({"v": np.ones(2, np.float16)}, optimizer="fresh")
    assert changed.value.reason == created.value.reason == "INVALID_CONFIG"
    assert _after_name(changed.value, "default") == _after_name(created.value, "fresh")
    assert "cannot update float16 variables" in changed.value.message
    assert client.get_config("default")["config"]["learning_rate"] == pytest.approx(0.1)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_dtypes_that_fail_only_together_are_refused_at_creation(client: Client, mode: str) -> None:
    """global_clipnorm stacks the norms of all gradients, so float32 and float64 variables of
    one optimizer cannot be pushed together: the second dtype is refused when created, not
    answered INTERNAL at every push."""
    config = {"class_name": "SGD", "config": {"learning_rate": 0.1, "global_clipnorm": 1.0}}
    client.create_optimizer("default", config, aggregation=Sync(1) if mode == "sync" else None)
    client.create_variables({"a": np.ones(2, np.float32)})
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_variables({"b": np.ones(2, np.float64)})
    assert caught.value.reason == "INVALID_CONFIG"
    assert "cannot update float32 and float64 variables together" in caught.value.message
    assert [info.name for info in client.list_variables()] == ["a"]
    client.push({"a": np.ones(2, np.float32)}, worker="w0")
    assert client.iterations("default") == 1
