"""A tfps worker of the training benchmark: ``python -m bench.training_tfps``.

It trains :mod:`bench.training_model` through a tfps server the way a performance-minded
user would with the public API. Per step:

1. ``pull_rows``: only the embedding rows the batch uses (its unique ids), not the table;
2. a ``tf.function`` computes the loss and the gradients of the tower's variables and of
   those rows (the embedding lookup is a ``tf.gather`` of the pulled rows, so its
   gradient has one row per unique id, repeats summed);
3. ``push_pull``: the tower's dense gradients and the embedding's sparse gradient
   (:class:`tfps_client.IndexedSlices` of the unique ids) go up, and the tower's updated
   weights come back, in one round trip; they are assigned to the local model.

The server applies Adam in one of two ways, each a variant of :data:`OPTIMIZERS` that
trains its own copy of the model (its variables are named ``"{optimizer}/{name}"``):
Keras's own update, or ``lazy_sparse``, whose sparse updates change only the rows pushed
(dense gradients are applied as Keras applies them either way).

Every worker cycles through all the benchmark's batches from the first, as each worker of
ParameterServerStrategy reads its per-worker dataset (:mod:`bench.training_ps`).

The protocol with :mod:`bench.training`, in lines: the worker imports TensorFlow, then
reads its :class:`WorkerConfig` as JSON on stdin (the server starts meanwhile). Then, for
each optimizer of the config in turn: after its warm-up steps it prints ``ready`` and
waits for a line on stdin, then times its steps and prints one JSON object
(:class:`WorkerReport`). It exits after the last.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time

import numpy as np
import tensorflow as tf

from bench.training_model import (
    EMBEDDING,
    SIZES,
    TOWER,
    Batch,
    ModelSizes,
    build_model,
    loss,
    optimizer_config,
    synthetic_batches,
)
from bench.training_tasks import read_stdin_line, ready_then_wait
from tfps_client import Client, IndexedSlices
from tfps_client.keras import variable_name

OPTIMIZERS = {"adam": False, "adam_lazy_sparse": True}
"""The server's optimizers, each a variant of the benchmark: name -> its ``lazy_sparse``.
Both are :func:`bench.training_model.optimizer_config`'s Adam."""
PHASES = ("pull_rows", "compute", "push_pull", "assign")
"""Parts of a step, timed separately: see the module's docstring."""


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What one worker process does.

    Attributes:
        address: the tfps server's ``host:port``.
        scale: ``Scale.name``, which picks the model's sizes.
        warmup: untimed steps before each ``ready``.
        steps: timed steps per optimizer.
        optimizers: names from :data:`OPTIMIZERS`, trained in this order.
    """

    address: str
    scale: str
    warmup: int
    steps: int
    optimizers: list[str]


@dataclasses.dataclass(frozen=True)
class WorkerReport:
    """What one worker measured with one optimizer.

    Attributes:
        start: ``time.monotonic()`` when the timed steps began.
        ends: ``time.monotonic()`` at the end of each timed step.
        losses: the loss of every step, warm-up included.
        phases: seconds spent in each of :data:`PHASES` over the timed steps.
        cpu_seconds: CPU time of this process over the timed steps.
    """

    start: float
    ends: list[float]
    losses: list[float]
    phases: dict[str, float]
    cpu_seconds: float


class Worker:
    """The model, its local copy of the tower's weights, and one training step.

    Args:
        client: a client of the server.
        sizes: the model's sizes.
        optimizer: the name, in :data:`OPTIMIZERS`, of the server's optimizer to train with.
    """

    def __init__(self, client: Client, sizes: ModelSizes, optimizer: str) -> None:
        self._client = client
        self._optimizer = optimizer
        self._model = build_model(sizes)
        self._tower = self._model.get_layer(TOWER)
        self._variables = self._tower.trainable_variables
        self._names = [self._server_name(v) for v in self._variables]
        self._table = self._server_name(self._model.get_layer(EMBEDDING).embeddings)
        self._table_shape = (sizes.vocabulary, sizes.embedding_dim)
        self._gradients = tf.function(
            self._compute,
            input_signature=[
                tf.TensorSpec([None, sizes.embedding_dim], tf.float32),
                tf.TensorSpec([None, sizes.fields], tf.int32),
                tf.TensorSpec([None, sizes.dense_features], tf.float32),
                tf.TensorSpec([None, 1], tf.float32),
            ],
        )
        self.phases = dict.fromkeys(PHASES, 0.0)
        """Seconds spent in each part of the steps since the last reset."""

    def _server_name(self, variable: tf.Variable) -> str:
        return f"{self._optimizer}/{variable_name(variable)}"

    def join(self) -> None:
        """Declares the optimizer and variables (idempotent), then pulls the tower."""
        self._client.create_optimizer(
            self._optimizer, optimizer_config(), lazy_sparse=OPTIMIZERS[self._optimizer]
        )
        self._client.create_variables(
            {self._server_name(v): v.numpy() for v in self._model.trainable_variables},
            optimizer=self._optimizer,
        )
        self._assign(self._client.pull(self._names))

    def _compute(
        self, rows: tf.Tensor, positions: tf.Tensor, dense: tf.Tensor, labels: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
        """Loss, gradient of the pulled rows (one per unique id) and of the tower."""
        with tf.GradientTape() as tape:
            tape.watch(rows)
            logits = self._tower([tf.gather(rows, positions), dense], training=True)
            value = loss(labels, logits)
        row_gradient, *tower_gradients = tape.gradient(value, [rows, *self._variables])
        return value, tf.convert_to_tensor(row_gradient), tower_gradients

    def step(self, batch: Batch) -> float:
        """Trains on one batch; returns its loss."""
        started = time.perf_counter()
        ids, positions = np.unique(batch.ids, return_inverse=True)
        rows = self._client.pull_rows(self._table, ids)
        started = self._lap("pull_rows", started)
        value, row_gradient, tower_gradients = self._gradients(
            rows, positions.reshape(batch.ids.shape).astype(np.int32), batch.dense, batch.labels
        )
        gradients: dict[str, object] = {
            name: gradient.numpy()
            for name, gradient in zip(self._names, tower_gradients, strict=True)
        }
        gradients[self._table] = IndexedSlices(row_gradient.numpy(), ids, self._table_shape)
        started = self._lap("compute", started)
        _, pulled = self._client.push_pull(gradients, pull=self._names)
        started = self._lap("push_pull", started)
        self._assign(pulled)
        self._lap("assign", started)
        return float(value)

    def _assign(self, pulled: dict[str, np.ndarray]) -> None:
        """Assigns the server's values of the tower to the local model."""
        for variable, name in zip(self._variables, self._names, strict=True):
            variable.assign(pulled[name])

    def _lap(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        self.phases[phase] += now - started
        return now


def train(client: Client, config: WorkerConfig, optimizer: str) -> WorkerReport:
    """Joins, warms up, says ``ready``, waits for the go line, then times its steps."""
    sizes = SIZES[config.scale]
    batches = itertools.cycle(synthetic_batches(sizes))
    worker = Worker(client, sizes, optimizer)
    worker.join()
    losses = [worker.step(next(batches)) for _ in range(config.warmup)]
    worker.phases = dict.fromkeys(PHASES, 0.0)
    ready_then_wait()
    cpu, start = time.process_time(), time.monotonic()
    ends = []
    for _ in range(config.steps):
        losses.append(worker.step(next(batches)))
        ends.append(time.monotonic())
    return WorkerReport(start, ends, losses, worker.phases, time.process_time() - cpu)


def main() -> int:
    """Reads the :class:`WorkerConfig` on stdin and trains with each of its optimizers."""
    config = WorkerConfig(**json.loads(read_stdin_line()))
    with Client(config.address, timeout=120.0) as client:
        for optimizer in config.optimizers:
            report = train(client, config, optimizer)
            print(json.dumps(dataclasses.asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
