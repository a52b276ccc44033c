"""Checkpoints in a running server: consistent cuts, retention, restore, download, load_into."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfps_client import (
    CheckpointInfo,
    Client,
    DataLossError,
    FailedPreconditionError,
    IndexedSlices,
    NotFoundError,
)
from tfps_client.keras import create_variables, load_into, pull_into, push_gradients
from tfps_client.wire import checkpoint_layout as layout
from tfps_server import RunningServer

from helpers import State, assert_same_state, snapshot

SHAPE = (6, 4)


@pytest.fixture
def ckpt_client(ckpt_server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{ckpt_server.port}", timeout=300) as client:
        yield client


def train(client: Client, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        client.push(
            {
                "dense": rng.standard_normal(SHAPE).astype(np.float32),
                "emb": IndexedSlices(
                    rng.standard_normal((3, SHAPE[1])).astype(np.float32), rng.integers(0, 6, 3)
                ),
            }
        )


def setup_adam(client: Client) -> None:
    schedule = {
        "class_name": "ExponentialDecay",
        "config": {"initial_learning_rate": 0.05, "decay_steps": 3, "decay_rate": 0.7},
    }
    client.create_optimizer("adam", {"class_name": "Adam", "config": {"learning_rate": schedule}})
    client.create_variables(
        {"dense": np.ones(SHAPE, np.float32), "emb": np.zeros(SHAPE, np.float32)}, optimizer="adam"
    )


def on_disk(server: RunningServer, info: CheckpointInfo) -> str:
    """The checkpoint's path prefix on the server's disk: clients see only its name."""
    assert info.path == f"ckpt-{info.id}", "a checkpoint's listing reveals a server path"
    assert server.checkpointer is not None
    return str(server.checkpointer.directory / info.path)


def state(client: Client) -> State:
    return snapshot(client, ["adam"])


def test_checkpoint_keys_follow_the_documented_layout(
    ckpt_server: RunningServer, ckpt_client: Client
) -> None:
    setup_adam(ckpt_client)
    ckpt_client.create_optimizer("n", {"class_name": "Nadam", "config": {}})
    ckpt_client.create_variables({"dense/kernel.0": np.ones(2, np.float32)}, optimizer="n")
    train(ckpt_client, 2)
    info = ckpt_client.save_checkpoint()
    assert info.iterations == {"adam": 2, "n": 0}
    assert [v.name for v in info.variables] == ["dense", "emb", "dense/kernel.0"]
    keys = dict(tf.train.list_variables(on_disk(ckpt_server, info)))
    for name in ("dense", "emb", "dense/kernel.0"):
        assert layout.variable_key(name) in keys
    assert "variables/dense.Skernel..0/.ATTRIBUTES/VARIABLE_VALUE" in keys
    for slot in ("m", "v"):
        assert keys[layout.slot_key("emb", slot)] == list(SHAPE)
    assert layout.optimizer_weight_key("adam", "iter") in keys
    assert layout.optimizer_weight_key("n", "momentum_cache") in keys
    reader = tf.train.load_checkpoint(on_disk(ckpt_server, info))
    assert reader.get_tensor(layout.optimizer_weight_key("adam", "iter")) == 2
    np.testing.assert_array_equal(
        reader.get_tensor(layout.slot_key("dense", "m")), ckpt_client.get_slot("dense", "m")
    )


def test_retention_keeps_the_newest(ckpt_client: Client, tmp_path: Path) -> None:
    setup_adam(ckpt_client)
    ids = [ckpt_client.save_checkpoint().id for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert [c.id for c in ckpt_client.list_checkpoints()] == [3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "ckpts").glob("*.index")) == [
        "ckpt-3.index",
        "ckpt-4.index",
        "ckpt-5.index",
    ]


def test_restore_checkpoint_into_a_running_server(ckpt_client: Client) -> None:
    setup_adam(ckpt_client)
    train(ckpt_client, 3)
    saved = state(ckpt_client)
    info = ckpt_client.save_checkpoint()
    train(ckpt_client, 2, seed=1)
    assert ckpt_client.iterations("adam") == 5
    restored = ckpt_client.restore_checkpoint(info.id)
    assert restored.id == info.id and ckpt_client.iterations("adam") == 3
    assert_same_state(state(ckpt_client), saved)
    with pytest.raises(NotFoundError, match="checkpoint 99 not found"):
        ckpt_client.restore_checkpoint(99)


def test_saves_are_consistent_cuts_while_training(
    ckpt_server: RunningServer, ckpt_client: Client
) -> None:
    ckpt_client.create_optimizer(
        "sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0, "momentum": 0.5}}
    )
    ckpt_client.create_variables(
        {"a": np.zeros(1000, np.float32), "b": np.zeros(10, np.float32)}, optimizer="sgd"
    )
    stop = threading.Event()

    def pusher() -> None:
        while not stop.is_set():
            ckpt_client.push({"a": np.ones(1000, np.float32), "b": np.ones(10, np.float32)})

    threads = [threading.Thread(target=pusher) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        infos = [ckpt_client.save_checkpoint() for _ in range(5)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for info in infos[-3:]:
        reader = tf.train.load_checkpoint(on_disk(ckpt_server, info))
        steps = int(reader.get_tensor(layout.optimizer_weight_key("sgd", "iter")))
        # SGD with momentum 0.5 and unit gradients: momentum_k = -(2 - 2**(1-k)) ... every value
        # of a variable and its slot is a function of the step count alone.
        momentum = sum(-(0.5**i) for i in range(steps))
        value = sum(sum(-(0.5**i) for i in range(k)) for k in range(1, steps + 1))
        for name, size in (("a", 1000), ("b", 10)):
            np.testing.assert_allclose(
                reader.get_tensor(layout.variable_key(name)), np.full(size, value), rtol=1e-5
            )
            np.testing.assert_allclose(
                reader.get_tensor(layout.slot_key(name, "momentum")),
                np.full(size, momentum),
                rtol=1e-5,
            )


def test_corrupted_checkpoint_is_refused_and_state_kept(
    ckpt_server: RunningServer, ckpt_client: Client
) -> None:
    setup_adam(ckpt_client)
    train(ckpt_client, 2)
    info = ckpt_client.save_checkpoint()
    train(ckpt_client, 1)
    before = state(ckpt_client)
    data = next(Path(on_disk(ckpt_server, info)).parent.glob(f"{info.path}.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DataLossError, match=r"checkpoint '?\S*ckpt-1'? is unreadable") as raised:
        ckpt_client.restore_checkpoint(info.id)
    assert ckpt_server.checkpointer is not None
    directory = str(ckpt_server.checkpointer.directory)
    assert directory not in str(raised.value), "an error reveals a server path"
    assert not any(directory in value for value in raised.value.metadata.values())
    with pytest.raises(NotFoundError) as unknown:
        ckpt_client.restore_checkpoint(99)
    assert directory not in str(unknown.value), "an error reveals a server path"
    assert_same_state(state(ckpt_client), before)


def test_without_checkpoint_dir_checkpoint_calls_fail_precondition(client: Client) -> None:
    with pytest.raises(FailedPreconditionError, match="without --checkpoint-dir"):
        client.save_checkpoint()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_download_of_a_large_checkpoint_is_verified(
    ckpt_server: RunningServer, ckpt_client: Client, tmp_path: Path
) -> None:
    big = np.arange(80 * 1024 * 1024, dtype=np.float32).reshape(-1, 1024)  # 320 MiB
    ckpt_client.create_optimizer("sgd", {"class_name": "SGD", "config": {}})
    ckpt_client.create_variables({"big": big}, optimizer="sgd")
    info = ckpt_client.save_checkpoint()
    assert info.size_bytes > big.nbytes
    prefix = ckpt_client.download_checkpoint(info.id, tmp_path / "download")
    assert Path(prefix).name == f"ckpt-{info.id}"
    for original in Path(on_disk(ckpt_server, info)).parent.glob(f"ckpt-{info.id}.*"):
        assert (tmp_path / "download" / original.name).read_bytes() == original.read_bytes()
    reader = tf.train.load_checkpoint(prefix)
    np.testing.assert_array_equal(reader.get_tensor(layout.variable_key("big")), big)
    assert not list((tmp_path / "download").glob("*.partial"))


def make_model() -> tf_keras.Model:
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Embedding(20, 4, input_length=3, name="emb"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(2, name="dense"),
        ]
    )
    model.build((None, 3))
    return model


def model_gradients(model: tf_keras.Model, seed: int) -> list[object]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, (8, 3))
    y = rng.standard_normal((8, 2)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    return tape.gradient(loss, model.trainable_variables)


def test_load_into_continues_local_training_exactly_like_the_server(
    ckpt_client: Client, tmp_path: Path
) -> None:
    config = {"learning_rate": 0.05, "amsgrad": True}
    ckpt_client.create_optimizer("default", {"class_name": "Adam", "config": config})
    server_model = make_model()
    create_variables(ckpt_client, server_model.trainable_variables)
    for step in range(3):
        pull_into(ckpt_client, server_model.trainable_variables)
        grads = model_gradients(server_model, step)
        push_gradients(ckpt_client, zip(grads, server_model.trainable_variables, strict=True))
    ckpt_client.set_hyperparameter("default", "learning_rate", 0.02)
    info = ckpt_client.save_checkpoint()
    prefix = ckpt_client.download_checkpoint(info.id, tmp_path / "job")

    local_model = make_model()
    local_optimizer = tf_keras.optimizers.legacy.Adam(**config)
    report = load_into(local_model, prefix, optimizer=local_optimizer)
    assert set(report.loaded) == {"emb/embeddings", "dense/kernel", "dense/bias"}
    assert not report.missing and not report.unexpected and not report.mismatched
    for step in range(3, 6):
        pull_into(ckpt_client, server_model.trainable_variables)
        grads = model_gradients(server_model, step)
        push_gradients(ckpt_client, zip(grads, server_model.trainable_variables, strict=True))
        local_optimizer.apply_gradients(zip(grads, local_model.trainable_variables, strict=True))
    pull_into(ckpt_client, server_model.trainable_variables)
    for ours, theirs in zip(
        local_model.trainable_variables, server_model.trainable_variables, strict=True
    ):
        assert ours.numpy().tobytes() == theirs.numpy().tobytes()
    assert int(local_optimizer.iterations.numpy()) == ckpt_client.iterations("default") == 6


@pytest.mark.parametrize(
    ("server", "local", "difference"),
    [
        ({"class_name": "Adam", "config": {"epsilon": 0.1}}, {"epsilon": 1e-7}, "epsilon"),
        ({"class_name": "Adam", "config": {"amsgrad": True}}, {}, "amsgrad"),
        ({"class_name": "SGD", "config": {"momentum": 0.9}}, {}, "slots: local [], server"),
        ({"class_name": "Adam", "config": {"decay": 0.01}}, {}, "decay"),
    ],
    ids=["epsilon", "amsgrad", "momentum-slot", "decay"],
)
def test_load_into_refuses_an_optimizer_constructed_otherwise(
    ckpt_client: Client, tmp_path: Path, server: dict, local: dict, difference: str
) -> None:
    """Training can continue exactly only with an optimizer constructed as the server's: one
    that differs in what is fixed at construction is refused, before anything is changed."""
    ckpt_client.create_optimizer("default", server)
    model = make_model()
    create_variables(ckpt_client, model.trainable_variables)
    prefix = ckpt_client.download_checkpoint(ckpt_client.save_checkpoint().id, tmp_path)
    optimizer = getattr(tf_keras.optimizers.legacy, server["class_name"])(**local)
    with pytest.raises(ValueError, match="constructed unlike the server's 'default'") as caught:
        load_into(make_model(), prefix, optimizer=optimizer)
    assert difference in str(caught.value)
    assert optimizer.weights == []


def test_load_into_reports_missing_unexpected_and_mismatched(
    ckpt_client: Client, tmp_path: Path
) -> None:
    ckpt_client.create_optimizer("default", {"class_name": "SGD", "config": {}})
    ckpt_client.create_variables(
        {
            "emb/embeddings": np.zeros((20, 4), np.float32),
            "other": np.zeros(2, np.float32),
            "extra": np.zeros(1, np.float32),
            "dense/kernel": np.zeros((5, 2), np.float32),
        }
    )
    prefix = ckpt_client.download_checkpoint(ckpt_client.save_checkpoint().id, tmp_path)
    model = make_model()
    with pytest.raises(
        ValueError, match=r"missing \['dense/bias'\].*dense/kernel: model \[12, 2\]"
    ):
        load_into(model, prefix)
    # the download's directory names it too (its state file)
    report = load_into(model, tmp_path, strict=False, name_map={"dense/bias": "other"})
    assert report.mismatched == ("dense/kernel: model [12, 2] vs checkpoint [5, 2]",)
    assert report.missing == ()
    assert report.loaded == ("emb/embeddings", "other")
    assert report.unexpected == ("extra",)
    with pytest.raises(ValueError, match=r"name_map maps \['dense/bais'\], which name no"):
        load_into(model, prefix, strict=False, name_map={"dense/bais": "other"})


def test_tfps_ckpt_command_line(
    ckpt_server: RunningServer, ckpt_client: Client, tmp_path: Path
) -> None:
    setup_adam(ckpt_client)
    train(ckpt_client, 1)
    address = f"127.0.0.1:{ckpt_server.port}"

    def ckpt(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "tfps_client.ckpt_cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TFPS_SERVER": address},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert ckpt("ls") == f"no checkpoints on {address}\n"
    assert ckpt("ls", "--json") == "[]\n"
    assert "iterations: adam=1" in ckpt("save", "--server", address)
    assert ckpt("ls").split()[0] == "1"  # the server from TFPS_SERVER
    (listed,) = json.loads(ckpt("ls", "--json"))
    assert (listed["id"], listed["iterations"]) == (1, {"adam": 1})
    assert listed["saved_at"].endswith("Z")
    assert {"name": "emb", "shape": [6, 4], "dtype": "float32", "optimizer": "adam"} in listed[
        "variables"
    ]
    prefix = ckpt("download", str(tmp_path / "dl")).strip()
    assert Path(prefix + ".index").exists()
    printed = ckpt("inspect", str(tmp_path / "dl"))  # the directory: its latest checkpoint
    assert printed.startswith(f"checkpoint {prefix}, saved {listed['saved_at']}\n")
    assert "variable emb: float32[6, 4] -> adam" in printed
    assert layout.slot_key("emb", "m") in printed
