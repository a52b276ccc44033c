"""The reference of the training benchmark: TensorFlow's ParameterServerStrategy.

Two kinds of task, each its own process:

- ``python -m bench.training_ps server CLUSTER_JSON JOB INDEX``: a ``tf.distribute.Server``
  (gRPC) of the ``ps`` or ``worker`` job; it prints ``ready`` and serves until killed or
  until its stdin closes.
- ``python -m bench.training_ps coordinator``: the ``chief``. Once TensorFlow is imported
  it reads its :class:`CoordinatorConfig` as JSON on stdin (the servers start meanwhile),
  connects to the cluster, builds :mod:`bench.training_model` under the strategy's scope (the
  variables live on the ps task), gives every worker a dataset of the benchmark's batches,
  schedules ``warmup`` steps per worker and waits for them, prints ``ready`` and waits
  for a line on stdin, then times ``steps`` steps per worker scheduled with
  ``ClusterCoordinator.schedule`` (each runs on whichever worker is free), and prints one
  JSON object (:class:`CoordinatorReport`).

A step is one ``tf.function``: ``strategy.run`` of forward, backward and the legacy Adam's
``apply_gradients``. TensorFlow places the ops that take a variable's handle with the
variable, so the embedding lookup and every update run on the ps task; the worker receives
the tower's weights and the rows it looks up, and sends the gradients (the embedding's as
``tf.IndexedSlices``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
import tensorflow as tf

from bench.training_model import (
    SIZES,
    Batch,
    ModelSizes,
    build_model,
    legacy_optimizer,
    loss,
    synthetic_batches,
)
from bench.training_tasks import read_stdin_line, ready_then_wait

Cluster = dict[str, list[str]]
"""A cluster spec as a dict: job name -> ``host:port`` of each task."""


@dataclasses.dataclass(frozen=True)
class CoordinatorConfig:
    """What the coordinator does.

    Attributes:
        cluster: the cluster: ``chief`` (this process), ``ps`` and ``worker`` jobs.
        scale: ``Scale.name``, which picks the model's sizes.
        warmup: untimed steps per worker.
        steps: timed steps per worker.
    """

    cluster: Cluster
    scale: str
    warmup: int
    steps: int


@dataclasses.dataclass(frozen=True)
class CoordinatorReport:
    """What the coordinator measured.

    Attributes:
        seconds: from scheduling the first timed step until every one finished.
        steps: timed steps, over all workers.
        losses: the loss of every step, warm-up included, in scheduling order.
        cpu_seconds: CPU time of this process over the timed steps.
    """

    seconds: float
    steps: int
    losses: list[float]
    cpu_seconds: float


def serve(cluster: Cluster, job: str, index: int) -> NoReturn:
    """Runs task ``index`` of ``job`` until the process is killed or its stdin closes.

    The end of stdin is the benchmark's end, however it ended (a benchmark that is killed
    closes it too), so no task outlives it.
    """
    tf.distribute.Server(
        tf.train.ClusterSpec(cluster), job_name=job, task_index=index, protocol="grpc"
    )
    print("ready", flush=True)
    sys.stdin.read()
    os._exit(0)  # at once: the server's threads would hold up the interpreter's exit


def dataset(batches: Sequence[Batch]) -> tf.data.Dataset:
    """The batches, as ``(ids, dense, labels)`` elements, repeated for ever.

    Every worker reads all of them in order: a per-worker dataset is one traced function,
    the same on every worker, which cannot shard by worker without randomness.
    """
    stacked = tuple(np.stack(field) for field in zip(*batches, strict=True))
    return tf.data.Dataset.from_tensor_slices(stacked).repeat()


class Trainer:
    """The strategy, its coordinator, the model and optimizer on the ps, and the step.

    Args:
        cluster: the cluster, with this process as its ``chief``.
        sizes: the model's sizes.
    """

    def __init__(self, cluster: Cluster, sizes: ModelSizes) -> None:
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc"
        )
        self._strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        self._coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
            self._strategy
        )
        with self._strategy.scope():
            self._model = build_model(sizes)
            self._optimizer = legacy_optimizer()
        batches = synthetic_batches(sizes)
        self._iterator = iter(self._coordinator.create_per_worker_dataset(lambda: dataset(batches)))
        self._step = tf.function(self._step_function)

    def _step_function(self, iterator: Any) -> tf.Tensor:
        ids, dense, labels = next(iterator)
        return self._strategy.run(self._replica_step, args=(ids, dense, labels))

    def _replica_step(self, ids: tf.Tensor, dense: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        variables = self._model.trainable_variables
        with tf.GradientTape() as tape:
            value = loss(labels, self._model([ids, dense], training=True))
        gradients = tape.gradient(value, variables)
        self._optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return value

    def train(self, steps: int) -> list[Any]:
        """Schedules ``steps`` steps and waits for all; returns their remote losses."""
        losses = [
            self._coordinator.schedule(self._step, args=(self._iterator,)) for _ in range(steps)
        ]
        self._coordinator.join()
        return losses


def coordinate(config: CoordinatorConfig) -> CoordinatorReport:
    """Warms up, says ``ready``, waits for the go line, then times the steps."""
    workers = len(config.cluster["worker"])
    trainer = Trainer(config.cluster, SIZES[config.scale])
    remote = trainer.train(config.warmup * workers)
    ready_then_wait()
    cpu, start = time.process_time(), time.monotonic()
    remote += trainer.train(config.steps * workers)
    seconds, cpu = time.monotonic() - start, time.process_time() - cpu
    losses = [float(value.fetch()) for value in remote]
    return CoordinatorReport(seconds, config.steps * workers, losses, cpu)


def main(argv: Sequence[str]) -> int:
    """Runs the task ``argv`` names (see the module's docstring)."""
    if argv[0] == "server":
        serve(json.loads(argv[1]), argv[2], int(argv[3]))
    report = coordinate(CoordinatorConfig(**json.loads(read_stdin_line())))
    print(json.dumps(dataclasses.asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
