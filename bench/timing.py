"""Timing helpers: medians and percentiles of repeated calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def times(call: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds each of ``repeats`` calls took, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    taken = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        taken.append(time.perf_counter() - start)
    return taken


def median(samples: Sequence[float]) -> float:
    """The median of ``samples``."""
    return float(np.median(samples))


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``."""
    return float(np.percentile(samples, q))


def ms(seconds: float) -> float:
    """Seconds in milliseconds."""
    return seconds * 1e3


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds each call took, ``repeats`` times, the calls taking turns (after ``warmup``
    untimed rounds), so that a machine whose load drifts weighs on each alike."""
    taken: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_ >= warmup:
                taken[name].append(time.perf_counter() - start)
    return taken
