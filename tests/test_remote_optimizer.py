"""RemoteOptimizer: tf_keras's own ``model.fit`` (and custom loops) training through a real
server give bitwise the weights and optimizer weights of the same training with a local
tf_keras legacy optimizer; the server's config, learning rate and iterations are the truth;
what cannot work is refused.

TensorFlow's graph optimizer rewrites arithmetic inside a local ``tf.function`` (Adam's
bias-corrected step, for one), so a local ``model.fit`` rounds differently from Keras's eager
update, which the server runs. The comparisons turn that rewrite off in this process; the
README says so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfps_client import Async, Client, InvalidArgumentError, Sync
from tfps_client.keras import RemoteOptimizer, variable_name

from helpers import (
    LISTENING,
    ServerProcess,
    assert_all_bitwise_equal,
    free_port,
    keras_optimizer,
)

VOCABULARY, IDS, CLASSES, BATCH = 40, 6, 3, 16
ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.01}}


pytestmark = pytest.mark.usefixtures("unreassociated_graphs")


def _data(seed: int = 0, examples: int = 6 * BATCH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCABULARY, (examples, IDS)).astype(np.int32)
    return ids, rng.integers(0, CLASSES, examples).astype(np.int32)


def _classifier(prefix: str, seed: int = 1) -> tf_keras.Model:
    """Embedding (sparse gradients) -> Dense -> Dense; ``prefix`` keeps server names apart."""
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential(
        [
            tf_keras.Input((IDS,), dtype="int32"),
            tf_keras.layers.Embedding(VOCABULARY, 4, name=f"{prefix}_embedding"),
            tf_keras.layers.Flatten(name=f"{prefix}_flatten"),
            tf_keras.layers.Dense(8, activation="relu", name=f"{prefix}_hidden"),
            tf_keras.layers.Dense(CLASSES, activation="softmax", name=f"{prefix}_out"),
        ]
    )


def _fit(
    model: tf_keras.Model, optimizer: Any, epochs: int = 3, **fit: Any
) -> tf_keras.callbacks.History:
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x, y = _data()
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, **fit)


def _local_and_remote(
    client: Client, name: str, config: dict[str, Any], **fit: Any
) -> tuple[tf_keras.Model, Any, tf_keras.Model, RemoteOptimizer]:
    """Trains the same model locally and through the server; returns both models and
    optimizers."""
    local, local_optimizer = _classifier(f"{name}_local"), keras_optimizer(config)
    _fit(local, local_optimizer, **fit)
    remote = _classifier(name)
    remote_optimizer = RemoteOptimizer(client, name, config=config)
    _fit(remote, remote_optimizer, **fit)
    return local, local_optimizer, remote, remote_optimizer


@pytest.mark.parametrize(
    "config",
    [
        ADAM,
        {
            "class_name": "RMSprop",
            "config": {"learning_rate": 0.01, "centered": True, "momentum": 0.9},
        },
        {
            "class_name": "Ftrl",
            "config": {"learning_rate": 0.1, "l1_regularization_strength": 0.01},
        },
    ],
    ids=lambda config: config["class_name"],
)
def test_model_fit_is_bitwise_a_local_model_fit(client: Client, config: dict[str, Any]) -> None:
    name = config["class_name"].lower()
    local, local_optimizer, remote, remote_optimizer = _local_and_remote(client, name, config)
    assert_all_bitwise_equal(remote.get_weights(), local.get_weights())
    assert_all_bitwise_equal(client.get_weights(name), local_optimizer.get_weights())
    assert int(remote_optimizer.iterations.numpy()) == int(local_optimizer.iterations.numpy())


@pytest.fixture
def mixed_precision() -> Iterator[None]:
    """Layers compute in float16 (variables stay float32) for the test."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    tf_keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_loss_scaling_wraps_it_as_a_local_optimizer(
    client: Client, mixed_precision: None
) -> None:
    """LossScaleOptimizer unscales the gradients (and skips a step whose float16 gradients
    overflowed) before the server sees anything, as it does for a local optimizer."""
    local = _classifier("mixed_local")
    local_optimizer = tf_keras.mixed_precision.LossScaleOptimizer(keras_optimizer(ADAM))
    history = _fit(local, local_optimizer)
    remote = _classifier("mixed")
    remote_optimizer = tf_keras.mixed_precision.LossScaleOptimizer(
        RemoteOptimizer(client, "mixed", config=ADAM)
    )
    _fit(remote, remote_optimizer)
    assert np.isfinite(history.history["loss"]).all()
    assert_all_bitwise_equal(remote.get_weights(), local.get_weights())
    assert client.iterations("mixed") == int(local_optimizer.inner_optimizer.iterations.numpy())


def _custom_loop(model: tf_keras.Model, optimizer: Any, compiled: bool) -> None:
    """One epoch of a tf.GradientTape loop, eager or in a tf.function."""
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy()

    def step(ids: tf.Tensor, labels: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(ids, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))

    run = tf.function(step) if compiled else step
    x, y = _data()
    for start in range(0, len(x), BATCH):
        run(x[start : start + BATCH], y[start : start + BATCH])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_custom_loop_apply_gradients_is_bitwise_a_local_loop(
    client: Client, compiled: bool
) -> None:
    local, local_optimizer = _classifier("loop_local"), keras_optimizer(ADAM)
    _custom_loop(local, local_optimizer, compiled)
    remote = _classifier("loop")
    _custom_loop(remote, RemoteOptimizer(client, "loop", config=ADAM), compiled)
    assert_all_bitwise_equal(remote.get_weights(), local.get_weights())
    assert_all_bitwise_equal(client.get_weights("loop"), local_optimizer.get_weights())


# Two workers -----------------------------------------------------------------------------------


def _linear_model(seed: int) -> tf_keras.Model:
    """A model whose loss below is linear in its weights: every gradient is an exact dyadic
    number whatever the weights, so sums in any order and on any side agree bitwise."""
    tf_keras.utils.set_random_seed(seed)
    features = tf_keras.Input((3,), name="features")
    ids = tf_keras.Input((2,), dtype="int32", name="ids")
    dense = tf_keras.layers.Dense(1, name="sync_dense")(features)
    embedded = tf_keras.layers.Flatten()(
        tf_keras.layers.Embedding(10, 1, name="sync_embedding")(ids)
    )
    outputs = tf_keras.layers.Add()(
        [
            dense,
            tf_keras.layers.Dense(
                1, use_bias=False, trainable=False, kernel_initializer="ones", name="sync_sum"
            )(embedded),
        ]
    )
    return tf_keras.Model([features, ids], outputs)


def _linear_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    return y_true * y_pred


def _worker_data(worker: int, steps: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(10 + worker)
    examples = steps * 4
    features = rng.integers(-3, 4, (examples, 3)).astype(np.float32)
    ids = rng.integers(0, 10, (examples, 2)).astype(np.int32)  # repeated ids within a batch
    return {"features": features, "ids": ids}, rng.integers(-2, 3, (examples, 1)).astype(np.float32)


@pytest.fixture
def separate_server() -> Iterator[Client]:
    """A client of a server in a process of its own: two workers blocking in their steps
    would hold the inter-op threads an in-process server's update needs (2 on 2 cores)."""
    port = free_port()
    with ServerProcess(["--port", str(port)]) as process:
        process.wait_for(LISTENING)
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            yield client
        assert process.terminate() == 0


def test_two_sync_workers_apply_the_sum_of_their_gradients_once_per_step(
    separate_server: Client,
) -> None:
    client = separate_server
    steps, batch = 5, 4
    config = {"class_name": "Adam", "config": {"learning_rate": 0.05}}
    aggregation = Sync(replicas_to_aggregate=2, reduction="sum")
    models = [_linear_model(seed=3), _linear_model(seed=3)]
    optimizers = [
        RemoteOptimizer(
            Client(client.address, timeout=60),
            "sync",
            worker=f"w{i}",
            config=config,
            aggregation=aggregation,
        )
        for i in range(2)
    ]
    errors: list[BaseException] = []

    def train(worker: int) -> None:
        try:
            models[worker].compile(optimizer=optimizers[worker], loss=_linear_loss)
            x, y = _worker_data(worker, steps)
            models[worker].fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=train, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors

    reference, reference_optimizer = _linear_model(seed=3), keras_optimizer(config)
    data = [_worker_data(worker, steps) for worker in range(2)]
    for step in range(steps):
        window = slice(step * batch, (step + 1) * batch)
        per_worker = []
        for x, y in data:
            with tf.GradientTape() as tape:
                prediction = reference({k: v[window] for k, v in x.items()}, training=True)
                loss = tf.reduce_mean(_linear_loss(y[window], prediction))
            per_worker.append(tape.gradient(loss, reference.trainable_variables))
        summed = [_sum_gradients(g0, g1) for g0, g1 in zip(*per_worker, strict=True)]
        reference_optimizer.apply_gradients(zip(summed, reference.trainable_variables, strict=True))
    assert client.iterations("sync") == steps
    for model in models:
        assert_all_bitwise_equal(model.get_weights(), reference.get_weights())
    assert_all_bitwise_equal(client.get_weights("sync"), reference_optimizer.get_weights())


def _sum_gradients(first: Any, second: Any) -> Any:
    """Worker 0's gradient plus worker 1's; row updates are concatenated, as Keras sums them."""
    if isinstance(first, tf.IndexedSlices):
        return tf.IndexedSlices(
            tf.concat([first.values, second.values], 0),
            tf.concat([first.indices, second.indices], 0),
            first.dense_shape,
        )
    return first + second


def test_a_later_worker_takes_the_first_workers_values_before_its_first_gradient(
    client: Client,
) -> None:
    x, y = _data()
    first, second = _classifier("shared", seed=1), _classifier("shared", seed=2)
    _fit(first, RemoteOptimizer(client, "shared", config=ADAM), epochs=1)
    served = client.pull([variable_name(v) for v in first.trainable_variables])
    assert_all_bitwise_equal(first.get_weights(), list(served.values()))

    # Eager custom loop: the gradient computed from its own values is dropped, not pushed.
    optimizer = RemoteOptimizer(client, "shared")
    with tf.GradientTape() as tape:
        losses = tf_keras.losses.sparse_categorical_crossentropy(y[:BATCH], second(x[:BATCH]))
        loss = tf.reduce_mean(losses)
    gradients = tape.gradient(loss, second.trainable_variables)
    optimizer.apply_gradients(zip(gradients, second.trainable_variables, strict=True))
    assert client.iterations("shared") == len(x) // BATCH
    assert_all_bitwise_equal(second.get_weights(), first.get_weights())

    # model.fit: the values are taken when the step is traced, so its first push counts.
    third = _classifier("shared", seed=3)
    _fit(third, RemoteOptimizer(client, "shared"), epochs=1)
    assert client.iterations("shared") == 2 * len(x) // BATCH
    assert_all_bitwise_equal(third.get_weights(), list(client.pull(served).values()))


def test_a_stale_drop_refreshes_the_values_and_training_goes_on(client: Client) -> None:
    client.create_optimizer("bounded", ADAM, Async(max_staleness=0))
    models = [_classifier("bounded"), _classifier("bounded")]
    optimizers = [RemoteOptimizer(client, "bounded") for _ in models]
    x, y = _data()
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy()

    def step(worker: int, batch: int) -> None:
        window = slice(batch * BATCH, (batch + 1) * BATCH)
        with tf.GradientTape() as tape:
            loss = loss_fn(y[window], models[worker](x[window], training=True))
        variables = models[worker].trainable_variables
        optimizers[worker].apply_gradients(
            zip(tape.gradient(loss, variables), variables, strict=True)
        )

    step(1, 0)  # creates the variables and applies: iterations 1
    step(0, 0)  # registers, takes worker 1's values and drops its gradient
    step(0, 1)  # applied: iterations 2
    assert client.iterations("bounded") == 2
    step(1, 1)  # computed from iterations 1, one behind: dropped as stale
    assert client.iterations("bounded") == 2
    assert_all_bitwise_equal(models[1].get_weights(), models[0].get_weights())
    step(1, 2)  # now current: applied
    assert client.iterations("bounded") == 3
    assert int(optimizers[1].iterations.numpy()) == 3


# The server's config is the truth ------------------------------------------------------------


def test_config_learning_rate_and_iterations_are_the_servers(client: Client) -> None:
    optimizer = RemoteOptimizer(client, "truth", config=ADAM)
    assert optimizer.get_config() == client.get_config("truth")["config"]
    client.set_hyperparameter("truth", "learning_rate", 0.25)
    assert optimizer.learning_rate.numpy() == np.float32(0.25)
    assert optimizer.lr.numpy() == np.float32(0.25)
    optimizer.learning_rate = 0.5
    assert client.get_config("truth")["config"]["learning_rate"] == 0.5
    tf_keras.backend.set_value(optimizer.lr, 0.125)  # as Keras's callbacks do
    assert client.get_config("truth")["config"]["learning_rate"] == 0.125
    tf.function(lambda: optimizer.lr.assign(0.0625))()  # in a graph: sent at the next read
    assert client.get_config("truth")["config"]["learning_rate"] == 0.125
    assert tf_keras.backend.get_value(optimizer.lr) == np.float32(0.0625)
    assert client.get_config("truth")["config"]["learning_rate"] == 0.0625
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    optimizer.learning_rate = schedule
    served = optimizer.learning_rate
    assert isinstance(served, tf_keras.optimizers.schedules.ExponentialDecay)
    assert served.get_config() == schedule.get_config()
    _fit(_classifier("truth"), optimizer, epochs=1)
    assert int(optimizer.iterations.numpy()) == client.iterations("truth") == 6


LEARNING_RATE_CALLBACKS: dict[str, Callable[[], tf_keras.callbacks.Callback]] = {
    "scheduler": lambda: tf_keras.callbacks.LearningRateScheduler(
        lambda epoch, _: 0.02 / (epoch + 1)
    ),
    "plateau": lambda: tf_keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=10.0
    ),
}


@pytest.mark.parametrize("name", LEARNING_RATE_CALLBACKS)
def test_callbacks_that_change_the_learning_rate_change_it_on_the_server(
    client: Client, name: str
) -> None:
    callback = LEARNING_RATE_CALLBACKS[name]()
    local, local_optimizer, remote, _ = _local_and_remote(client, name, ADAM, callbacks=[callback])
    served = client.get_config(name)["config"]["learning_rate"]
    assert served == float(local_optimizer.learning_rate.numpy()) != 0.01
    assert_all_bitwise_equal(remote.get_weights(), local.get_weights())
    assert_all_bitwise_equal(client.get_weights(name), local_optimizer.get_weights())


def test_fit_evaluate_predict_and_the_common_callbacks(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _classifier("callbacks")
    model.compile(
        optimizer=RemoteOptimizer(client, "callbacks", config=ADAM),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x, y = _data()
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=5,
        validation_split=0.25,
        verbose=1,
        callbacks=[
            tf_keras.callbacks.ModelCheckpoint(
                str(tmp_path / "weights-{epoch}.h5"), save_weights_only=True
            ),
            tf_keras.callbacks.ModelCheckpoint(str(tmp_path / "model.keras")),
            tf_keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs")),
            tf_keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1),
        ],
    )
    assert len(history.history["loss"]) == 2  # EarlyStopping: no epoch gains 10
    assert "Epoch 2/5" in capsys.readouterr().out  # the progress bar
    assert sorted(p.name for p in tmp_path.glob("weights-*.h5")) == ["weights-1.h5", "weights-2.h5"]
    assert any((tmp_path / "logs" / "train").iterdir())
    saved = tf_keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert_all_bitwise_equal(saved.get_weights(), model.get_weights())
    assert np.isfinite(model.evaluate(x, y, verbose=0)).all()
    assert model.predict(x[:5], verbose=0).shape == (5, CLASSES)

    restored = _classifier("callbacks", seed=9)
    restored.load_weights(tmp_path / "weights-2.h5")
    assert_all_bitwise_equal(restored.get_weights(), model.get_weights())
    checkpoint = tf.train.Checkpoint(model=model)
    path = checkpoint.save(tmp_path / "worker" / "ckpt")
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    assert_all_bitwise_equal(restored.get_weights(), model.get_weights())


# What cannot work is refused -------------------------------------------------------------------


def test_xla_is_refused_with_a_clear_error(client: Client) -> None:
    model = _classifier("xla")
    model.compile(
        optimizer=RemoteOptimizer(client, "xla", config=ADAM),
        loss="sparse_categorical_crossentropy",
        jit_compile=True,
    )
    x, y = _data()
    with pytest.raises(RuntimeError, match="jit_compile"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert client.iterations("xla") == 0


def test_a_distribution_strategy_is_refused_with_a_clear_error(client: Client) -> None:
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = _classifier("strategy")
        model.compile(
            optimizer=RemoteOptimizer(client, "strategy", config=ADAM),
            loss="sparse_categorical_crossentropy",
        )
    x, y = _data()
    with pytest.raises(RuntimeError, match="OneDeviceStrategy"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert client.iterations("strategy") == 0


def test_a_refused_push_raises_and_changes_nothing(client: Client) -> None:
    """Non-finite gradients (a NaN input) are refused by the server: the client's typed
    error in an eager step, TensorFlow's error naming it in model.fit; nothing applied."""
    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1, name="nan_dense")])
    optimizer = RemoteOptimizer(client, "nan", config=ADAM)
    x, y = np.array([[np.nan, 1.0]], np.float32), np.ones((1, 1), np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    gradients = tape.gradient(loss, model.trainable_variables)
    with pytest.raises(InvalidArgumentError, match="nan_dense"):
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
    model.compile(optimizer=optimizer, loss="mse")
    with pytest.raises(tf.errors.OpError, match=r"InvalidArgumentError.*nan_dense"):
        model.fit(x, y, verbose=0)
    assert client.iterations("nan") == 0


def test_the_worker_id_defaults_to_this_task_in_tf_config(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.create_optimizer("tasks", ADAM, Sync(replicas_to_aggregate=2))
    cluster = {"ps": ["ps-0:2222"], "worker": ["w-0:2222", "w-1:2222"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    )
    assert RemoteOptimizer(client, "tasks").worker == "worker:1"
    assert RemoteOptimizer(client, "tasks", worker="chief").worker == "chief"


def test_wrong_uses_are_refused(client: Client) -> None:
    client.create_optimizer("sync_refused", ADAM, Sync(replicas_to_aggregate=2))
    with pytest.raises(ValueError, match="worker"):
        RemoteOptimizer(client, "sync_refused")
    optimizer = RemoteOptimizer(client, "sync_refused", worker="w0")
    variable = tf.Variable([1.0], name="refused")
    with pytest.raises(ValueError, match="no gradients"):
        optimizer.apply_gradients([(None, variable)])
    with pytest.raises(TypeError, match="compile=False"):
        RemoteOptimizer.from_config(optimizer.get_config())
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        optimizer.learning_rate = lambda: 0.1
    assert client.list_variables() == []
