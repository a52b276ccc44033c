"""Training steps per second: tfps against TensorFlow's ParameterServerStrategy, same run.

The model (:mod:`bench.training_model`), its batches, the legacy Adam and the machine are
the same on both sides; two workers train asynchronously on each, each worker cycling
through the same batches from the first, so the two sides' losses compare step for step.

- **tfps**: one ``tfps-server`` process and two worker processes
  (:mod:`bench.training_tfps`), which train with each of the server's two Adams in turn:
  Keras's update (the figure with the target: the same arithmetic as the reference) and
  ``lazy_sparse`` (reported only: rows absent from a push keep their moments, as TF
  Addons' ``LazyAdam``, so it is another update than the reference's). The rate is the
  steps both workers finished while both were timing, over that window.
- **ParameterServerStrategy**: real ``tf.distribute.Server`` tasks on localhost, one ps
  and two workers, and a coordinator (the ``chief``) that schedules the steps
  (:mod:`bench.training_ps`). The coordinator runs in a process of its own too:
  connecting to a cluster changes TensorFlow's global context for good, which the
  benchmark's own process must not carry into the suites that follow. The rate is the
  steps scheduled over the time until the coordinator's ``join`` returned.

Each repeat starts every process afresh, tfps then ParameterServerStrategy, so that noise
on the machine falls on both alike; the figure is the median of the repeats.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.figures import Figure
from bench.scale import Scale
from bench.server import BenchServer, free_port
from bench.training_model import SIZES, ModelSizes
from bench.training_ps import CoordinatorConfig, CoordinatorReport
from bench.training_tasks import Task, cpu_seconds, tasks
from bench.training_tfps import OPTIMIZERS, PHASES, WorkerConfig, WorkerReport

WORKERS = 2
WARMUP_STEPS = 3
"""Untimed steps per worker before the timed ones: tracing, first allocations."""
REPEATS = {"full": 3, "quick": 1}
"""Runs of each side, by ``Scale.name``."""
START_SECONDS = 300.0
"""Time a process gets to start (import TensorFlow) and finish its warm-up."""
STEP_SECONDS = 30.0
"""Time a timed step may take at most, before the run is declared stuck."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One side's measurement.

    Attributes:
        steps_per_second: training steps of all workers together per second.
        cpu: CPU milliseconds per step (over all workers' steps) of each kind of process.
        first_loss: the mean loss of the first steps (warm-up included).
        last_loss: the mean loss of the last steps.
        phases: milliseconds per step in each part of a tfps worker's step; empty for
            the reference.
    """

    steps_per_second: float
    cpu: dict[str, float]
    first_loss: float
    last_loss: float
    phases: dict[str, float] = dataclasses.field(default_factory=dict)


def run(scale: Scale) -> list[Figure]:
    """Measures both sides ``REPEATS[scale.name]`` times; returns the one figure."""
    sizes = SIZES[scale.name]
    tfps: dict[str, list[Run]] = {optimizer: [] for optimizer in OPTIMIZERS}
    reference: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="tfps-bench-training-") as logs:
        for _ in range(REPEATS[scale.name]):
            for optimizer, measured in tfps_run(scale.name, scale.training_steps, Path(logs)):
                tfps[optimizer].append(measured)
            reference.append(ps_run(scale.name, scale.training_steps, Path(logs)))
    return [
        figure(sizes, scale.training_steps, optimizer, runs, reference)
        for optimizer, runs in tfps.items()
    ]


def tfps_run(scale: str, steps: int, logs: Path) -> list[tuple[str, Run]]:
    """Trains through a tfps server with :data:`WORKERS` workers, with each of
    :data:`OPTIMIZERS` in turn; times ``steps`` steps per worker and optimizer.

    The workers start (import TensorFlow) while the server does; each gets its
    :class:`WorkerConfig`, with the server's address, once the server listens.
    """
    with (
        tasks([("bench.training_tfps", [])] * WORKERS, logs, "tfps-worker") as workers,
        BenchServer() as server,
    ):
        config = WorkerConfig(server.address, scale, WARMUP_STEPS, steps, list(OPTIMIZERS))
        for worker in workers:
            worker.write_line(json.dumps(dataclasses.asdict(config)))
        return [(optimizer, _tfps_window(server.pid, workers, steps)) for optimizer in OPTIMIZERS]


def _tfps_window(server: int, workers: Sequence[Task], steps: int) -> Run:
    """Starts the workers' timed steps once all are ready; measures them and the server
    (process id ``server``)."""
    for worker in workers:
        worker.expect("ready", START_SECONDS)
    server_cpu = cpu_seconds(server)
    for worker in workers:
        worker.write_line("go")
    reports = [WorkerReport(**worker.read_json(STEP_SECONDS * steps)) for worker in workers]
    server_cpu = cpu_seconds(server) - server_cpu
    timed = sum(len(report.ends) for report in reports)
    first_loss, last_loss = _loss_ends(np.mean([report.losses for report in reports], axis=0))
    return Run(
        steps_per_second=concurrent_rate(reports),
        cpu={
            "server": server_cpu / timed * 1e3,
            "workers": sum(report.cpu_seconds for report in reports) / timed * 1e3,
        },
        first_loss=first_loss,
        last_loss=last_loss,
        phases={
            phase: sum(report.phases[phase] for report in reports) / timed * 1e3 for phase in PHASES
        },
    )


def concurrent_rate(reports: Sequence[WorkerReport]) -> float:
    """Steps per second of all workers together while every one of them was timing: the
    steps finished from the last worker's start to the first worker's last step."""
    start = max(report.start for report in reports)
    end = min(report.ends[-1] for report in reports)
    steps = sum(start < t <= end for report in reports for t in report.ends)
    return steps / (end - start)


def ps_run(scale: str, steps: int, logs: Path) -> Run:
    """Trains with ParameterServerStrategy on :data:`WORKERS` workers; times ``steps`` each.

    The coordinator starts (imports TensorFlow) while the servers do, and gets its
    :class:`CoordinatorConfig` once they all serve.
    """
    cluster = {
        "chief": [f"localhost:{free_port()}"],
        "ps": [f"localhost:{free_port()}"],
        "worker": [f"localhost:{free_port()}" for _ in range(WORKERS)],
    }
    specs = [("bench.training_ps", ["coordinator"])] + [
        ("bench.training_ps", ["server", json.dumps(cluster), job, str(index)])
        for job in ("ps", "worker")
        for index in range(len(cluster[job]))
    ]
    with tasks(specs, logs, "ps") as (coordinator, ps, *workers):
        for server in (ps, *workers):
            server.expect("ready", START_SECONDS)
        config = CoordinatorConfig(cluster, scale, WARMUP_STEPS, steps)
        coordinator.write_line(json.dumps(dataclasses.asdict(config)))
        coordinator.expect("ready", START_SECONDS)
        before = [cpu_seconds(task.pid) for task in (ps, *workers)]
        coordinator.write_line("go")
        report = CoordinatorReport(**coordinator.read_json(STEP_SECONDS * steps))
        ps_cpu, *worker_cpu = (
            cpu_seconds(task.pid) - start
            for task, start in zip((ps, *workers), before, strict=True)
        )
    first_loss, last_loss = _loss_ends(report.losses)
    return Run(
        steps_per_second=report.steps / report.seconds,
        cpu={
            "ps": ps_cpu / report.steps * 1e3,
            "workers": sum(worker_cpu) / report.steps * 1e3,
            "coordinator": report.cpu_seconds / report.steps * 1e3,
        },
        first_loss=first_loss,
        last_loss=last_loss,
    )


def _loss_ends(losses: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The mean of the first and of the last fifth of the losses (at least one each), in
    step order."""
    count = max(1, len(losses) // 5)
    return float(np.mean(losses[:count])), float(np.mean(losses[-count:]))


def figure(
    sizes: ModelSizes, steps: int, optimizer: str, tfps: Sequence[Run], reference: Sequence[Run]
) -> Figure:
    """The figure of one of :data:`OPTIMIZERS`: medians of the repeats, with their spread,
    CPU time and losses."""
    lazy = OPTIMIZERS[optimizer]
    tfps_rates = [r.steps_per_second for r in tfps]
    reference_rates = [r.steps_per_second for r in reference]
    update = (
        "tfps's Adam with lazy_sparse (the embedding's rows absent from a push keep their "
        "moments: another update than the reference's Keras Adam, so reported only)"
        if lazy
        else "Keras's Adam on both sides"
    )
    note = (
        f"{sizes.describe()}; {update}. {WORKERS} workers x {steps} timed steps after "
        f"{WARMUP_STEPS} warm-up steps each; {len(tfps)} runs per side: tfps "
        f"{_spread(tfps_rates)}, ParameterServerStrategy {_spread(reference_rates)} steps/s. "
        f"CPU per step: tfps {_milliseconds(tfps, 'cpu')}; ParameterServerStrategy "
        f"{_milliseconds(reference, 'cpu')}. A tfps worker's step: "
        f"{_milliseconds(tfps, 'phases')}. Loss, first to last fifth of the last run: tfps "
        f"{tfps[-1].first_loss:.3f} -> {tfps[-1].last_loss:.3f}, ParameterServerStrategy "
        f"{reference[-1].first_loss:.3f} -> {reference[-1].last_loss:.3f}."
    )
    return Figure(
        section="Training (2 workers, Adam)",
        what=f"{_count(sizes.dense_parameters())} dense + {_count(sizes.vocabulary)} x "
        f"{sizes.embedding_dim} embedding, batch {sizes.batch}"
        + (", tfps lazy_sparse" if lazy else ""),
        value=float(np.median(tfps_rates)),
        reference=float(np.median(reference_rates)),
        reference_label="ParameterServerStrategy",
        unit="steps/s",
        better="higher",
        target=None if lazy else 2.5,
        note=note,
    )


def _count(number: int) -> str:
    """``4.3M``, ``200k`` or ``609``."""
    if number >= 1_000_000:
        return f"{number / 1e6:.1f}M"
    return f"{number / 1e3:.0f}k" if number >= 10_000 else str(number)


def _spread(rates: Sequence[float]) -> str:
    return f"{min(rates):.2f} to {max(rates):.2f}"


def _milliseconds(runs: Sequence[Run], field: str) -> str:
    """The median over ``runs`` of each entry of a ``Run`` field of milliseconds."""
    parts: dict[str, float] = getattr(runs[0], field)
    return ", ".join(
        f"{part} {np.median([getattr(r, field)[part] for r in runs]):.0f} ms" for part in parts
    )
