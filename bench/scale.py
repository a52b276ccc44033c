"""The sizes a run uses: the full suite, or the quick one that keeps the suite from rotting."""

from __future__ import annotations

import dataclasses

KIB, MIB = 1 << 10, 1 << 20


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes and repetitions of one run.

    Attributes:
        name: "full" or "quick".
        dense_bytes: sizes of the dense tensors pushed and pulled.
        repeats: timed repetitions per figure (after one warm-up).
        latency_calls: calls timed for the small-push percentiles.
        concurrency_workers: numbers of concurrent worker processes.
        concurrency_seconds: how long each concurrency level pushes.
        sparse_rows: rows of the sparse table.
        sparse_ids: ids per sparse push.
        training_steps: steps timed per training run.
        memory_pushes: pushes of the memory run.
    """

    name: str
    dense_bytes: tuple[int, ...]
    repeats: int
    latency_calls: int
    concurrency_workers: tuple[int, ...]
    concurrency_seconds: float
    sparse_rows: int
    sparse_ids: int
    training_steps: int
    memory_pushes: int


FULL = Scale(
    name="full",
    dense_bytes=(4 * KIB, MIB, 16 * MIB, 128 * MIB, 512 * MIB),
    repeats=7,
    latency_calls=2000,
    concurrency_workers=(1, 4, 16),
    concurrency_seconds=8.0,
    sparse_rows=1_000_000,
    sparse_ids=4096,
    training_steps=60,
    memory_pushes=10_000,
)

QUICK = Scale(
    name="quick",
    dense_bytes=(4 * KIB, 256 * KIB),
    repeats=2,
    latency_calls=50,
    concurrency_workers=(1, 2),
    concurrency_seconds=0.5,
    sparse_rows=10_000,
    sparse_ids=256,
    training_steps=3,
    memory_pushes=200,
)
