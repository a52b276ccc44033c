"""tfps demo: two workers train one Keras model through a parameter server.

Starts a tfps server and two worker processes. Each worker trains on its own shard of
scikit-learn's digits with Keras's own ``model.fit``, compiled with a ``RemoteOptimizer``:
each step pushes the step's gradients and takes the updated weights back in one round
trip; the server applies them with Adam, asynchronously. The model has an Embedding
layer (sparse ``tf.IndexedSlices`` gradients) and a Dense layer (dense gradients). The
server's weights are then evaluated on a held-out test split next to the same model
trained locally in one process with the same optimizer.

Run it with ``make demo``, or ``.venv/bin/python examples/demo.py --help`` for options.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from splits import Split

from tfps_client import Client
from tfps_client.keras import pull_into

from local_server import exit_code, running_server

NUM_WORKERS = 2
OPTIMIZER = "default"
"""The optimizer the server creates from ``--optimizer``."""
PIXELS, LEVELS, CLASSES = 64, 17, 10
"""Digits are 8x8 pixels with values 0..16, of 10 classes."""
EMBEDDING_DIM = 16
MAX_GAP_POINTS = 2.0
"""Largest accepted accuracy difference, server vs local, in percentage points."""


class DemoError(RuntimeError):
    """A worker of the demo failed, or the two accuracies differ too much."""


@contextlib.contextmanager
def _silenced_stderr() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null: TensorFlow's C++ logs at import ignore log levels."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Set before TensorFlow loads; the worker processes inherit it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
with _silenced_stderr():
    import tensorflow as tf
    import tf_keras

    from tfps_client.keras import RemoteOptimizer  # imports TensorFlow

    tf.config.list_logical_devices()  # device discovery logs too


@dataclass(frozen=True)
class Settings:
    """Training settings shared by the workers and the local baseline."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int

    def optimizer_config(self) -> dict[str, Any]:
        """Returns the Keras config of the Adam optimizer both trainings use."""
        return {"class_name": "Adam", "config": {"learning_rate": self.learning_rate}}


def load_data(seed: int) -> Split:
    """Loads digits (bundled with scikit-learn) as token ids ``pixel * LEVELS + value`` and
    splits off a stratified 25% test set."""
    digits = load_digits()
    tokens = np.arange(PIXELS, dtype=np.int32) * LEVELS + digits.data.astype(np.int32)
    labels = digits.target.astype(np.int32)
    return Split(
        *train_test_split(tokens, labels, test_size=0.25, random_state=seed, stratify=labels)
    )


def build_model(seed: int) -> tf_keras.Model:
    """Builds the classifier; the same seed gives the same initial weights in every process.

    Layer names are fixed so that variable names, which the server uses, match everywhere.
    """
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential(
        [
            tf_keras.Input(shape=(PIXELS,), dtype="int32"),
            tf_keras.layers.Embedding(PIXELS * LEVELS, EMBEDDING_DIM, name="pixel_embedding"),
            tf_keras.layers.Flatten(name="flatten"),
            tf_keras.layers.Dense(CLASSES, activation="softmax", name="classifier"),
        ],
        name="digits",
    )


def accuracy(model: tf_keras.Model, data: Split) -> float:
    """Returns the model's accuracy on the test split, in percent."""
    predictions = np.argmax(model(data.x_test, training=False).numpy(), axis=1)
    return 100.0 * float(np.mean(predictions == data.y_test))


# Workers ---------------------------------------------------------------------------------------


class EpochProgress(tf_keras.callbacks.Callback):
    """Prints one line per epoch for worker ``index``: its loss and accuracy, and the
    server's iterations (all workers' steps so far)."""

    def __init__(self, index: int, epochs: int) -> None:
        super().__init__()
        self.index, self.epochs = index, epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        print(
            f"  worker {self.index}  epoch {epoch + 1:2d}/{self.epochs}  "
            f"loss {logs.get('loss', float('nan')):.4f}  "
            f"accuracy {100 * logs.get('accuracy', float('nan')):6.2f} %  "
            f"server iterations {int(self.model.optimizer.iterations.numpy())}",
            flush=True,
        )


def run_worker(index: int, client: Client, settings: Settings) -> None:
    """Trains on shard ``index`` of the training split with ``model.fit`` through the
    server's optimizer; prints its progress per epoch."""
    data = load_data(settings.seed)
    x, y = data.x_train[index::NUM_WORKERS], data.y_train[index::NUM_WORKERS]
    model = build_model(settings.seed)
    model.compile(
        optimizer=RemoteOptimizer(client, OPTIMIZER),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x,
        y,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[EpochProgress(index, settings.epochs)],
    )


def _worker_process(index: int, address: str, settings: Settings) -> None:
    """Runs a worker in its own process; Ctrl-C is left to the coordinator, which stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with Client(address) as client:
        run_worker(index, client, settings)


@contextlib.contextmanager
def running_workers(address: str, settings: Settings) -> Iterator[Sequence[BaseProcess]]:
    """Starts the worker processes; on exit terminates any still running."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker_process, args=(i, address, settings), name=f"worker {i}", daemon=True
        )
        for i in range(NUM_WORKERS)
    ]
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            if worker.pid is not None:
                worker.join()


def wait_for_workers(workers: Sequence[BaseProcess]) -> None:
    """Waits until every worker has finished.

    Raises:
        DemoError: a worker failed; the others are left to :func:`running_workers`.
    """
    pending = list(workers)
    while pending:
        ended = multiprocessing.connection.wait([worker.sentinel for worker in pending])
        for worker in [worker for worker in pending if worker.sentinel in ended]:
            pending.remove(worker)
            worker.join()
            if worker.exitcode != 0:
                raise DemoError(f"{worker.name} failed with exit code {worker.exitcode}")


# Coordinator -----------------------------------------------------------------------------------


def train_on_server(client: Client, settings: Settings, data: Split) -> float:
    """Trains with the workers, then returns the test accuracy of the server's weights."""
    print(f"training with {NUM_WORKERS} workers for {settings.epochs} epochs", flush=True)
    with running_workers(client.address, settings) as workers:
        wait_for_workers(workers)
    for info in client.list_variables():
        print(f"  server variable {info.name} {list(info.shape)} on {info.device}")
    print(f"  server optimizer iterations: {client.iterations(OPTIMIZER)}")
    model = build_model(settings.seed)
    pull_into(client, model.trainable_variables)
    return accuracy(model, data)


def train_locally(settings: Settings, data: Split) -> float:
    """Trains the same model in this process with Keras and returns its test accuracy."""
    print(f"training locally in one process for {settings.epochs} epochs", flush=True)
    model = build_model(settings.seed)
    optimizer = tf_keras.optimizers.legacy.Adam(**settings.optimizer_config()["config"])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        shuffle=True,
        verbose=0,
    )
    return accuracy(model, data)


def report(server_accuracy: float, local_accuracy: float) -> None:
    """Prints both accuracies side by side and their difference.

    Raises:
        DemoError: they differ by more than :data:`MAX_GAP_POINTS`.
    """
    gap = server_accuracy - local_accuracy
    print("test accuracy")
    print(f"  {f'server ({NUM_WORKERS} workers)':<20} {server_accuracy:6.2f} %")
    print(f"  {'local (1 process)':<20} {local_accuracy:6.2f} %")
    print(f"  {'difference':<20} {gap:+6.2f} points")
    if abs(gap) > MAX_GAP_POINTS:
        raise DemoError(f"the accuracies differ by more than {MAX_GAP_POINTS} points")
    print(f"OK: the accuracies are within {MAX_GAP_POINTS} points")


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Parses the command line into training settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=32, help="default %(default)s")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
    args = parser.parse_args(argv)
    return Settings(args.epochs, args.batch_size, args.learning_rate, args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo; returns the exit code."""
    settings = parse_args(argv)

    def demo() -> None:
        data = load_data(settings.seed)
        with (
            tempfile.TemporaryDirectory(prefix="tfps-demo-") as tmp,
            running_server(Path(tmp) / "server.log", settings.optimizer_config()) as client,
        ):
            server_accuracy = train_on_server(client, settings, data)
        local_accuracy = train_locally(settings, data)
        report(server_accuracy, local_accuracy)

    return exit_code(demo, failures=(DemoError,))


if __name__ == "__main__":
    sys.exit(main())
