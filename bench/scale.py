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
        shard_counts: numbers of shards (server processes) the shards suite compares.
        shard_variable_bytes: size of each of the shards suite's dense variables.
        shard_workers: worker processes pushing at each number of shards.
        shard_seconds: how long they push at each number of shards.
        shard_latency_calls: pushes timed per variant of the one-push latency.
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
    shard_counts: tuple[int, ...]
    shard_variable_bytes: int
    shard_workers: int
    shard_seconds: float
    shard_latency_calls: int


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
    shard_counts=(1, 2, 3),
    shard_variable_bytes=2 * MIB,
    shard_workers=4,
    shard_seconds=8.0,
    shard_latency_calls=60,
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
    shard_counts=(1, 2, 3),
    shard_variable_bytes=256 * KIB,
    shard_workers=2,
    shard_seconds=0.5,
    shard_latency_calls=5,
)
