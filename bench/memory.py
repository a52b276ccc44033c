"""Suite 6: the server's peak RSS against the bytes of its variables and Adam slots, and
whether its RSS stays steady over many pushes of dense and sparse gradients."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from concurrent import futures
from typing import Any

import numpy as np

from bench.figures import Figure
from bench.scale import MIB, Scale
from bench.server import BenchServer
from tfps_client import Client, IndexedSlices

SECTION = "Memory (Adam, 64 MiB of variables)"
ADAM = {"class_name": "Adam", "config": {"learning_rate": 1e-3}}
EMBEDDING = "embedding/embeddings"
VARIABLES = {
    EMBEDDING: (65536, 64),  # 16 MiB, pushed sparse
    "tower/kernel": (4096, 2048),  # 32 MiB
    "tower_1/kernel": (2048, 2048),  # 16 MiB
    "head/kernel": (512, 16),  # 32 KiB, pushed every step
    "head/bias": (16,),
}
"""A recommendation-like model: an embedding table, two large dense layers, a small head."""
SPARSE_EVERY = 20
"""Every this many pushes also carry embedding rows (a sparse Adam update touches whole slots,
so they cost tens of milliseconds)."""
LARGE_EVERY = 500
"""Every this many pushes also carry the large dense layers' gradients (48 MiB)."""
SPARSE_IDS = 256
THREADS = 2
SAMPLES = 50
"""RSS samples over the run, taken every ``pushes / SAMPLES`` pushes."""
STEADY_TARGET = 1.05


@dataclasses.dataclass(frozen=True)
class Run:
    """The server's memory over one run, in bytes.

    Attributes:
        idle: RSS right after start, before any optimizer or variable.
        created: RSS once the variables and their slots exist.
        created_peak: peak RSS by then (creation's transient buffers included).
        peak: peak RSS at the end of the run.
        state: bytes of variables, slots and ``iterations``.
        samples: (pushes done, RSS) every ``pushes / SAMPLES`` pushes.
    """

    idle: int
    created: int
    created_peak: int
    peak: int
    state: int
    samples: tuple[tuple[int, int], ...]

    def tenth_peak(self, last: bool) -> int:
        """The highest RSS sampled over the first tenth of the pushes, or over the last.

        Freed push buffers go back to the system in bursts, so RSS is a sawtooth; the top
        of a tenth does not depend on where in a tooth a single sample falls.
        """
        pushes = self.samples[-1][0]
        return max(
            rss
            for done, rss in self.samples
            if (done * 10 > pushes * 9 if last else done * 10 <= pushes)
        )


def run(scale: Scale) -> list[Figure]:
    """Creates the model of :data:`VARIABLES` and pushes ``scale.memory_pushes`` times."""
    with BenchServer() as server, Client(server.address) as client:
        idle, _ = server.memory()
        client.create_optimizer("default", ADAM)
        client.create_variables({n: np.zeros(s, np.float32) for n, s in VARIABLES.items()})
        created, created_peak = server.memory()
        state = _state_bytes(len(client.slot_names("default")))
        samples = _push(client, scale.memory_pushes, lambda: server.memory()[0])
        peak = server.memory()[1]
    measured = Run(idle, created, created_peak, peak, state, samples)
    return [_overhead(measured), _steadiness(measured)]


def _state_bytes(slots: int) -> int:
    """Bytes of :data:`VARIABLES` (float32), their ``slots`` slots each, and ``iterations``."""
    variables = sum(math.prod(shape) * 4 for shape in VARIABLES.values())
    return variables * (1 + slots) + np.dtype(np.int64).itemsize


def _push(client: Client, pushes: int, rss: Callable[[], int]) -> tuple[tuple[int, int], ...]:
    """Pushes ``pushes`` times from :data:`THREADS` threads; returns the sampled RSS curve."""
    every = max(1, pushes // SAMPLES)
    samples = []
    with futures.ThreadPoolExecutor(THREADS) as pool:
        for start in range(0, pushes, every):
            done = min(pushes, start + every)
            list(pool.map(lambda step: client.push(_gradients(step)), range(start, done)))
            samples.append((done, rss()))
    return tuple(samples)


def _gradients(step: int) -> dict[str, Any]:
    """The gradients of push number ``step``: the head always, embedding rows every
    :data:`SPARSE_EVERY` pushes, the large layers every :data:`LARGE_EVERY`."""
    rng = np.random.default_rng(step)
    gradients: dict[str, Any] = {
        name: _normal(rng, shape) for name, shape in VARIABLES.items() if name.startswith("head")
    }
    if step % SPARSE_EVERY == 0:
        rows, width = VARIABLES[EMBEDDING]
        ids = rng.integers(0, rows, SPARSE_IDS)
        values = _normal(rng, (SPARSE_IDS, width))
        gradients[EMBEDDING] = IndexedSlices(values, ids, (rows, width))
    if step % LARGE_EVERY == 0:
        for name in ("tower/kernel", "tower_1/kernel"):
            gradients[name] = _normal(rng, VARIABLES[name])
    return gradients


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * 1e-3


def _mib(nbytes: float) -> float:
    return nbytes / MIB


def _overhead(measured: Run) -> Figure:
    """Peak RSS above the idle server against the state's bytes."""
    above = [_mib(rss - measured.idle) for _, rss in measured.samples]
    return Figure(
        SECTION,
        "peak RSS above the idle server",
        _mib(measured.peak - measured.idle),
        _mib(measured.state),
        "variables + slots",
        "MiB",
        note=f"idle server {_mib(measured.idle):.0f} MiB (Python, TensorFlow, gRPC); above "
        f"it: {_mib(measured.created - measured.idle):.0f} MiB once the variables and Adam's "
        f"m and v exist (peak while creating {_mib(measured.created_peak - measured.idle):.0f}"
        f" MiB: the received values are held while the variables are built), "
        f"{min(above):.0f} to {max(above):.0f} MiB while pushing. The peak adds a push's "
        "transients to the state: received gradients and their tensor copies, and legacy "
        "Adam's sparse update, which rescales whole slots (temporaries the size of the "
        "table); and what malloc keeps of them once freed",
    )


def _steadiness(measured: Run) -> Figure:
    """The top of RSS over the last tenth of the pushes against that over the first tenth."""
    pushes = measured.samples[-1][0]
    curve = [rss for _, rss in measured.samples]
    return Figure(
        SECTION,
        f"RSS over pushes {pushes - pushes // 10 + 1}-{pushes} (highest)",
        _mib(measured.tenth_peak(last=True)),
        _mib(measured.tenth_peak(last=False)),
        f"over pushes 1-{pushes // 10}",
        "MiB",
        target=STEADY_TARGET,
        note=f"sampled every {measured.samples[0][0]} pushes: min {_mib(min(curve)):.0f} MiB, "
        f"max {_mib(max(curve)):.0f} MiB, last {_mib(curve[-1]):.0f} MiB; pushes from "
        f"{THREADS} threads, each with the head's dense gradient, embedding rows every "
        f"{SPARSE_EVERY}, the large layers every {LARGE_EVERY}. It includes the exactly-once "
        "window, which keeps every push's result until --request-window ids (100,000 by "
        "default) are held",
    )
