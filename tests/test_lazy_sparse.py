"""lazy_sparse: sparse gradients update only their rows (TF Addons' LazyAdam semantics).

Table-driven against a NumPy reference of the lazy update written here: every optimizer
case crossed with float32/float64 and with unique/repeated ids, through a real server and
client. Rows absent from a sparse push keep their values and slots bitwise; the rows in it
match the reference to float tolerance (TensorFlow and NumPy round differently). Dense
pushes stay bitwise Keras's; the option travels on the wire, survives a restart from a
checkpoint, is refused for the classes whose Keras sparse update is already row-local,
and is never the default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tfps_client import AlreadyExistsError, Client, IndexedSlices, InvalidArgumentError
from tfps_client.types import OptimizerOptions
from tfps_client.wire import checkpoint_layout as layout
from tfps_server import Registry, RunningServer, create_server
from tfps_server.checkpoints import Checkpointer

from helpers import (
    OptimizerCase as Case,
)
from helpers import (
    assert_all_bitwise_equal,
    assert_bitwise_equal,
    assert_refused,
    keras_optimizer,
)

ROWS, COLUMNS = 6, 3
SHAPE = (ROWS, COLUMNS)
EXPONENTIAL = {
    "class_name": "ExponentialDecay",
    "config": {"initial_learning_rate": 0.02, "decay_steps": 2, "decay_rate": 0.5},
}


CASES = [
    Case("adam", "Adam", {"learning_rate": 0.01}),
    Case("adam-amsgrad", "Adam", {"learning_rate": 0.01, "amsgrad": True}),
    Case("adam-schedule-clipnorm", "Adam", {"learning_rate": EXPONENTIAL, "clipnorm": 0.5}),
    Case("nadam", "Nadam", {"learning_rate": 0.01}),
    Case("nadam-clipvalue", "Nadam", {"learning_rate": 0.01, "clipvalue": 0.3}),
    Case("rmsprop-decay", "RMSprop", {"learning_rate": 0.01, "decay": 0.1}),
    Case(
        "rmsprop-centered-global-clipnorm",
        "RMSprop",
        {"learning_rate": 0.01, "centered": True, "global_clipnorm": 0.8},
    ),
    Case("rmsprop-momentum", "RMSprop", {"learning_rate": 0.01, "momentum": 0.5}),
    Case(
        "rmsprop-centered-momentum-schedule",
        "RMSprop",
        {"learning_rate": EXPONENTIAL, "centered": True, "momentum": 0.5},
    ),
]

PUSHES: dict[str, list[list[int] | None]] = {
    "unique": [[0, 3], [3, 5], None, [1, 0, 4]],
    "repeated": [[0, 3, 0], [5, 3, 5, 5], None, [1, 0, 4, 1]],
}
"""Ids of each push, None for a dense push. Row 0 sits out the second push with slots it
already has (Keras would decay them, and move Adam's value); row 2 is only ever in the dense
push; after it, every row has slots, which the last push leaves alone outside its rows."""

RTOL = {"float32": 1e-6, "float64": 1e-12}

DEFAULTS = {
    "learning_rate": 0.001,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "epsilon": 1e-7,
    "rho": 0.9,
    "momentum": 0.0,
    "decay": 0.0,
}
"""Keras's defaults of the arguments the reference reads."""

NADAM_DECAY = 0.004
"""Keras's legacy Nadam puts its ``schedule_decay`` (0.004 by default) in ``decay``."""


class Reference:
    """The lazy update in NumPy, with Keras's coefficients in the variable's dtype.

    As Keras computes them: hyperparameters live in float32 variables and are cast to the
    variable's dtype, schedules are evaluated in float32, ``tf.cast`` of a Python number
    (``decay``, Nadam's 0.96) goes through float32, ``epsilon`` is converted straight to
    the variable's dtype. Gradients are clipped as pushed (before
    repeated ids are summed), then summed per id; the rows of the summed ids are updated by
    the class's dense formula, and no other row changes.
    """

    def __init__(self, case: Case, value: np.ndarray, slots: Mapping[str, np.ndarray]) -> None:
        self.case = case
        self.dtype = value.dtype.type
        self.value = value.copy()
        self.slots = {name: slot.copy() for name, slot in slots.items()}
        self.iterations = 0
        self.momentum_cache = self.dtype(1)
        """Nadam's product of its momentum schedule so far."""

    def _hyper(self, key: str) -> Any:
        return self.dtype(np.float32(self.case.config.get(key, DEFAULTS[key])))

    def _number(self, key: str) -> Any:
        return self.dtype(self.case.config.get(key, DEFAULTS[key]))

    def _learning_rate(self) -> Any:
        """The learning rate Keras uses at the current ``iterations``."""
        rate = self.case.config["learning_rate"]
        if isinstance(rate, Mapping):  # ExponentialDecay, in float32
            schedule = {k: np.float32(v) for k, v in rate["config"].items()}
            exponent = np.float32(self.iterations) / schedule["decay_steps"]
            lr = self.dtype(schedule["initial_learning_rate"] * schedule["decay_rate"] ** exponent)
        else:
            lr = self._hyper("learning_rate")
        decay = self._hyper("decay")
        return lr / (1 + decay * self.dtype(self.iterations)) if decay > 0 else lr

    def _clipped(self, values: np.ndarray) -> np.ndarray:
        config = self.case.config
        if "clipvalue" in config:
            clip = self.dtype(config["clipvalue"])
            return np.clip(values, -clip, clip)
        for key in ("clipnorm", "global_clipnorm"):  # one variable: both clip by its norm
            if key in config:
                clip = self.dtype(config[key])
                norm = np.sqrt(np.sum(values * values))
                return values * clip / max(norm, clip)
        return values

    def _average(self, slot: str, rows: np.ndarray, decay: Any, value: np.ndarray) -> np.ndarray:
        new = decay * self.slots[slot][rows] + (1 - decay) * value
        self.slots[slot][rows] = new
        return new

    def push(self, values: np.ndarray, ids: Sequence[int] | None) -> None:
        """Applies one push: sparse rows ``ids`` (repeats summed), or dense when None."""
        clipped = self._clipped(values)
        if ids is None:
            rows, gradient = np.arange(ROWS), clipped
        else:
            rows, positions = np.unique(np.asarray(ids), return_inverse=True)
            gradient = np.zeros((len(rows), COLUMNS), values.dtype)
            np.add.at(gradient, positions, clipped)
        getattr(self, f"_{self.case.class_name.lower()}")(rows, gradient)
        self.iterations += 1

    def _adam(self, rows: np.ndarray, g: np.ndarray) -> None:
        beta_1, beta_2 = self._hyper("beta_1"), self._hyper("beta_2")
        t = self.dtype(self.iterations + 1)
        lr = self._learning_rate() * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m = self._average("m", rows, beta_1, g)
        v = self._average("v", rows, beta_2, g * g)
        if self.case.config.get("amsgrad"):
            v = self.slots["vhat"][rows] = np.maximum(self.slots["vhat"][rows], v)
        self.value[rows] -= lr * m / (np.sqrt(v) + self._number("epsilon"))

    def _nadam(self, rows: np.ndarray, g: np.ndarray) -> None:
        beta_1, beta_2 = self._hyper("beta_1"), self._hyper("beta_2")
        t = self.dtype(self.iterations + 1)
        decay, base = self.dtype(NADAM_DECAY), self.dtype(np.float32(0.96))
        mu = beta_1 * (1 - self.dtype(0.5) * base ** (decay * t))
        mu_next = beta_1 * (1 - self.dtype(0.5) * base ** (decay * (t + 1)))
        self.momentum_cache = schedule = self.momentum_cache * mu
        m = self._average("m", rows, beta_1, g)
        v = self._average("v", rows, beta_2, g * g)
        m_bar = (1 - mu) * g / (1 - schedule) + mu_next * m / (1 - schedule * mu_next)
        denominator = np.sqrt(v / (1 - beta_2**t)) + self._number("epsilon")
        self.value[rows] -= self._hyper("learning_rate") * m_bar / denominator

    def _rmsprop(self, rows: np.ndarray, g: np.ndarray) -> None:
        rho, momentum, lr = self._hyper("rho"), self._hyper("momentum"), self._learning_rate()
        epsilon = self._number("epsilon")
        denominator = self._average("rms", rows, rho, g * g)
        if self.case.config.get("centered"):
            denominator = denominator - np.square(self._average("mg", rows, rho, g))
        if momentum > 0:  # Keras's momentum kernels: epsilon inside the square root
            mom = momentum * self.slots["momentum"][rows] + lr * g / np.sqrt(denominator + epsilon)
            self.slots["momentum"][rows] = mom
            self.value[rows] -= mom
        else:
            self.value[rows] -= lr * g / (np.sqrt(denominator) + epsilon)


def observe(client: Client, slots: Sequence[str]) -> dict[str, np.ndarray]:
    """The table's value and slots on the server."""
    return {"value": client.pull(["table"])["table"]} | {
        slot: client.get_slot("table", slot) for slot in slots
    }


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal to the dtype's tolerance, relative to each element and to the array's scale."""
    rtol = RTOL[actual.dtype.name]
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max(), err_msg=what
    )


@pytest.mark.parametrize("ids", list(PUSHES))
@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_sparse_pushes_follow_the_lazy_reference(
    client: Client, case: Case, dtype: str, ids: str
) -> None:
    rng = np.random.default_rng(5)
    assert client.create_optimizer("opt", case.serialized, lazy_sparse=True)
    client.create_variables({"table": rng.uniform(1, 2, SHAPE).astype(dtype)}, optimizer="opt")
    slots = client.slot_names("opt")
    before = observe(client, slots)
    reference = Reference(case, before["value"], {s: before[s] for s in slots})
    for step, pushed in enumerate(PUSHES[ids], 1):
        count = ROWS if pushed is None else len(pushed)
        values = rng.standard_normal((count, COLUMNS)).astype(dtype)
        gradient = values if pushed is None else IndexedSlices(values, np.array(pushed))
        result = client.push({"table": gradient})
        assert result.applied and result.iterations == {"opt": step}
        reference.push(values, pushed)
        after = observe(client, slots)
        untouched = np.setdiff1d(np.arange(ROWS), np.arange(ROWS) if pushed is None else pushed)
        for name, array in after.items():
            assert_bitwise_equal(array[untouched], before[name][untouched], f"{name}, other rows")
            expected = reference.value if name == "value" else reference.slots[name]
            assert_close(array, expected, f"{name} after push {step}")
        before = after
    if case.class_name == "Nadam":
        iterations, cache, *_ = client.get_weights("opt")
        assert iterations == len(PUSHES[ids])
        assert_close(np.asarray(cache), np.asarray(reference.momentum_cache), "momentum_cache")


@pytest.mark.parametrize("class_name", ["Adam", "Nadam", "RMSprop"])
def test_dense_pushes_are_bitwise_keras(client: Client, class_name: str) -> None:
    """A lazy optimizer's dense updates are Keras's, byte for byte: a dense variable's with
    a sparse one in the same push too (the optimizer's own weights advance as Keras's)."""
    config = {"class_name": class_name, "config": {"learning_rate": 0.01}}
    rng = np.random.default_rng(9)
    kernel, table = rng.standard_normal((4, 2)), rng.standard_normal(SHAPE)
    client.create_optimizer("opt", config, lazy_sparse=True)
    client.create_variables({"kernel": kernel, "table": table}, optimizer="opt")
    reference = keras_optimizer(config)
    local = {"kernel": tf.Variable(kernel), "table": tf.Variable(table)}
    for table_ids in (None, None, [1, 4, 1]):
        gradients: dict[str, Any] = {"kernel": rng.standard_normal((4, 2))}
        values = rng.standard_normal((ROWS if table_ids is None else 3, COLUMNS))
        if table_ids is None:
            gradients["table"] = values
        else:
            gradients["table"] = IndexedSlices(values, np.array(table_ids))
            values = tf.IndexedSlices(values, tf.constant(table_ids), tf.constant(SHAPE))
        client.push(gradients)
        reference.apply_gradients(
            [(tf.constant(gradients["kernel"]), local["kernel"]), (values, local["table"])]
        )
        if table_ids is None:
            assert_bitwise_equal(client.pull(["table"])["table"], local["table"].numpy(), "table")
    assert_bitwise_equal(client.pull(["kernel"])["kernel"], local["kernel"].numpy(), "kernel")
    for slot in client.slot_names("opt"):
        assert_bitwise_equal(
            client.get_slot("kernel", slot),
            reference.get_slot(local["kernel"], slot).numpy(),
            f"kernel slot {slot}",
        )
    assert client.iterations("opt") == 3


REFUSED = [
    Case("adadelta", "Adadelta", {}),
    Case("adagrad", "Adagrad", {}),
    Case("adamax", "Adamax", {}),
    Case("ftrl", "Ftrl", {}),
    Case("sgd", "SGD", {}),
    Case("sgd-nesterov", "SGD", {"momentum": 0.9, "nesterov": True}),
]
"""The classes without lazy updates: Keras's sparse update of each is row-local already."""


@pytest.mark.parametrize("case", REFUSED, ids=[case.id for case in REFUSED])
def test_refused_for_classes_without_lazy_updates(client: Client, case: Case) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_optimizer("opt", case.serialized, lazy_sparse=True)
    assert_refused(
        caught.value,
        InvalidArgumentError,
        "INVALID_OPTIONS",
        [
            "optimizer 'opt': ",
            "lazy_sparse=True only with a class in ['Adam', 'Nadam', 'RMSprop']",
            f"received it with {case.class_name},",
        ],
        {"optimizer": "opt", "received": case.class_name},
    )
    assert client.create_optimizer("opt", case.serialized)  # nothing was created
    assert client.get_options("opt").lazy_sparse is False


@pytest.mark.parametrize("case", REFUSED, ids=[case.id for case in REFUSED])
def test_refused_classes_keras_sparse_update_is_row_local(case: Case) -> None:
    """What the refusal says: Keras's sparse update of each refused class changes no row
    outside the gradient, value or slot (after a dense step gave every slot a value)."""
    optimizer = keras_optimizer(case.serialized)
    variable = tf.Variable(np.ones(SHAPE, np.float32))
    optimizer.apply_gradients([(tf.fill(SHAPE, 0.5), variable)])

    def state() -> list[np.ndarray]:
        slots = [optimizer.get_slot(variable, s) for s in optimizer.get_slot_names()]
        return [variable.numpy()[[0, 2]]] + [slot.numpy()[[0, 2]] for slot in slots]

    before = state()
    sparse = tf.IndexedSlices(tf.fill([2, COLUMNS], 0.3), tf.constant([1, 3]), tf.constant(SHAPE))
    optimizer.apply_gradients([(sparse, variable)])
    assert_all_bitwise_equal(state(), before)


def test_never_the_default_and_a_different_lazy_sparse_conflicts(client: Client) -> None:
    adam = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
    assert client.create_optimizer("keras", adam)
    assert client.get_options("keras") == OptimizerOptions()
    assert client.get_options("keras").lazy_sparse is False
    with pytest.raises(AlreadyExistsError) as caught:
        client.create_optimizer("keras", adam, lazy_sparse=True)
    assert_refused(
        caught.value,
        AlreadyExistsError,
        "OPTIMIZER_EXISTS",
        ["lazy_sparse: exists with False, received True"],
        {"optimizer": "keras"},
    )
    assert client.create_optimizer("lazy", adam, lazy_sparse=True)
    assert not client.create_optimizer("lazy", adam, lazy_sparse=True)
    with pytest.raises(AlreadyExistsError):
        client.create_optimizer("lazy", adam)
    assert client.get_options("lazy") == OptimizerOptions(lazy_sparse=True)
    assert client.get_config("lazy") == client.get_config("keras")  # the Keras config, "Adam"
    assert client.get_config("lazy")["class_name"] == "Adam"


def serve(directory: Path, restore: bool) -> tuple[RunningServer, Client]:
    """A server saving checkpoints to ``directory``, started as ``tfps-server`` starts one:
    from the latest checkpoint there if ``restore``; and a client of it."""
    registry = Registry()
    checkpointer = Checkpointer(registry, directory)
    if restore:
        checkpointer.restore("latest")
    running = create_server(registry, "127.0.0.1:0", checkpointer=checkpointer)
    return running, Client(f"127.0.0.1:{running.port}", timeout=120)


def test_lazy_sparse_survives_a_restart_from_a_checkpoint(tmp_path: Path) -> None:
    """The checkpoint records the option; a server started from it updates lazily, ending
    bitwise where the server that saved it ends after the same pushes."""
    checkpoints = tmp_path / "ckpts"
    rng = np.random.default_rng(2)
    later = [
        IndexedSlices(rng.standard_normal((2, COLUMNS)).astype(np.float32), np.array(ids))
        for ids in ([1, 4], [4, 0])
    ]
    first, client = serve(checkpoints, restore=False)
    try:
        client.create_optimizer("opt", {"class_name": "Adam", "config": {}}, lazy_sparse=True)
        client.create_variables({"table": np.ones(SHAPE, np.float32)}, optimizer="opt")
        client.set_hyperparameter("opt", "learning_rate", 0.05)
        client.push({"table": rng.standard_normal(SHAPE).astype(np.float32)})  # every row moves
        saved = client.save_checkpoint()
        for gradient in later:
            client.push({"table": gradient})
        expected = (client.pull(["table"]), client.get_weights("opt"))
    finally:
        client.close()
        first.stop(None)
    metadata = layout.CheckpointMetadata.from_json(
        tf.train.load_checkpoint(str(checkpoints / saved.path)).get_tensor(layout.METADATA_KEY)
    )
    (entry,) = metadata.optimizers
    assert entry.options["lazy_sparse"] is True and entry.class_name == "Adam"

    second, client = serve(checkpoints, restore=True)
    try:
        assert client.get_options("opt").lazy_sparse is True
        assert client.iterations("opt") == 1
        before = client.pull(["table"])["table"]
        for gradient in later:
            client.push({"table": gradient})
        after = client.pull(["table"])
        assert_bitwise_equal(after["table"][[2, 3, 5]], before[[2, 3, 5]], "rows never pushed")
        assert_all_bitwise_equal(after, expected[0])
        assert_all_bitwise_equal(client.get_weights("opt"), expected[1])
    finally:
        client.close()
        second.stop(None)


def test_metadata_without_lazy_sparse_reads_as_keras_update() -> None:
    """Checkpoints written before the option existed restore with Keras's update."""
    written = {"aggregation": "async", "max_staleness": None, "on_non_finite": "reject"}
    assert layout.options_from_json(written) == OptimizerOptions()
    lazy = OptimizerOptions(lazy_sparse=True)
    assert layout.options_from_json(json.loads(json.dumps(layout.options_to_json(lazy)))) == lazy
