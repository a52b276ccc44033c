"""Concurrent pushes and pulls lose no update: with SGD(learning_rate=1.0) and
integer-valued gradients the final values are plain integer arithmetic."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tfps_client import Client, IndexedSlices
from tfps_server import RunningServer

from helpers import assert_all_bitwise_equal

THREADS = 8
PUSHES = 50
SGD = {"class_name": "SGD", "config": {"learning_rate": 1.0}}
ROWS = 16
DENSE_SHAPE = (4, 3)
SHARED_ROW = ROWS - 1
"""The embedding row that every push of every thread updates."""


def _gradients(thread: int, push: int) -> dict[str, object]:
    """Push ``push`` of ``thread``: dense and sparse for optimizer a, every other one also b.

    The dense gradient is ``thread + 1`` everywhere; the sparse one adds 1 to row
    ``thread`` twice (a repeated index, summed) and 1 to the shared last row.
    """
    gradients: dict[str, object] = {
        "dense_a": np.full(DENSE_SHAPE, thread + 1, np.float32),
        "emb_a": IndexedSlices(
            np.ones((3, 4), np.float32), np.array([thread, SHARED_ROW, thread], np.int32)
        ),
    }
    if push % 2 == 0:
        gradients["dense_b"] = np.ones(8, np.float32)
        if thread % 2:  # vary the order in which one push names the two optimizers
            gradients = dict(reversed(gradients.items()))
    return gradients


def _pusher(address: str, thread: int, start: threading.Barrier) -> None:
    with Client(address, timeout=120.0) as client:
        start.wait()
        for push in range(PUSHES):
            client.push(_gradients(thread, push))


def _puller(address: str, done: threading.Event, start: threading.Barrier) -> set[float]:
    """Pulls until ``done``; every pull must be a consistent state reached by whole pushes.

    Returns the values of the shared row seen, one per number of pushes applied.
    """
    seen: set[float] = set()
    last_shared = 1.0
    with Client(address, timeout=120.0) as client:
        start.wait()
        while not done.is_set() or not seen:
            values = client.pull(["dense_a", "emb_a"])
            dense, emb = values["dense_a"], values["emb_a"]
            assert np.all(dense == dense.flat[0]), dense  # one step is never half-applied
            assert float(dense.flat[0]).is_integer()
            shared = float(emb[SHARED_ROW, 0])
            assert np.all(emb[SHARED_ROW] == shared) and shared.is_integer()
            assert shared <= last_shared, "a later pull saw fewer updates"
            last_shared = shared
            rows = client.pull_rows("emb_a", [SHARED_ROW, 0])
            assert rows[0, 0] <= shared
            seen.add(shared)
    return seen


def test_concurrent_pushes_and_pulls_lose_no_update(server: RunningServer, client: Client) -> None:
    """8 threads x 50 pushes (dense, sparse, two optimizers) beside pullers: exact totals."""
    client.create_optimizer("a", SGD)
    client.create_optimizer("b", SGD)
    client.create_variables(
        {"dense_a": np.zeros(DENSE_SHAPE, np.float32), "emb_a": np.zeros((ROWS, 4), np.float32)},
        "a",
    )
    client.create_variables({"dense_b": np.zeros(8, np.float32)}, "b")
    address = f"127.0.0.1:{server.port}"
    start = threading.Barrier(THREADS + 2, timeout=60)
    done = threading.Event()
    with ThreadPoolExecutor(THREADS + 2) as pool:
        pullers = [pool.submit(_puller, address, done, start) for _ in range(2)]
        pushers = [pool.submit(_pusher, address, t, start) for t in range(THREADS)]
        try:
            for future in pushers:
                future.result()
        finally:
            done.set()
        seen = set().union(*(future.result() for future in pullers))
    assert len(seen) >= 3, f"pulls saw no intermediate state: {sorted(seen)}"

    emb = np.zeros((ROWS, 4), np.float32)
    emb[:THREADS] = -2.0 * PUSHES
    emb[SHARED_ROW] = -1.0 * PUSHES * THREADS
    expected = {
        "dense_a": np.full(DENSE_SHAPE, -PUSHES * sum(t + 1 for t in range(THREADS)), np.float32),
        "emb_a": emb,
        "dense_b": np.full(8, -(PUSHES // 2) * THREADS, np.float32),
    }
    assert_all_bitwise_equal(client.pull(), expected)
    assert client.iterations("a") == THREADS * PUSHES
    assert client.iterations("b") == THREADS * PUSHES // 2
