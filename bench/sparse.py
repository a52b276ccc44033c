"""Suite 4: sparse pushes into an embedding table, against Keras's sparse apply in-process;
and the cost of a push against the table's size."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.figures import Figure
from bench.references import InProcessApply
from bench.scale import Scale
from bench.server import BenchServer
from bench.timing import median, ms, times
from tfps_client import Client, IndexedSlices

DIM = 64
OPTIMIZERS: dict[str, tuple[dict[str, Any], bool]] = {
    "Adagrad": ({"class_name": "Adagrad", "config": {"learning_rate": 0.01}}, False),
    "Ftrl": ({"class_name": "Ftrl", "config": {"learning_rate": 0.01}}, False),
    "SGD": ({"class_name": "SGD", "config": {"learning_rate": 0.01}}, False),
    "Adam": ({"class_name": "Adam", "config": {"learning_rate": 0.001}}, False),
    "Adam, lazy_sparse": ({"class_name": "Adam", "config": {"learning_rate": 0.001}}, True),
}
"""Name -> (Keras config, lazy_sparse)."""
TARGET = 2.0
SMALL_TABLE_DIVISOR = 10
"""The table-size figure compares against a table this many times smaller."""


def _push_ids(scale: Scale, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``scale.sparse_ids`` ids with repeats (a Zipf-like draw, as real lookups are) and
    their gradient rows."""
    rng = np.random.default_rng(0)
    ids = np.minimum(rng.zipf(1.2, scale.sparse_ids) - 1, rows - 1).astype(np.int64)
    values = rng.standard_normal((scale.sparse_ids, DIM), dtype=np.float32) * 1e-3
    return ids, values


def run(scale: Scale) -> list[Figure]:
    """Per optimizer: a push of ``scale.sparse_ids`` ids into a ``scale.sparse_rows`` x 64
    table against the same apply in-process; then the cost against the table's size."""
    rows = scale.sparse_rows
    ids, values = _push_ids(scale, rows)
    local_figures = {
        name: _in_process(config, (rows, DIM), ids, values, scale)
        for name, (config, _) in OPTIMIZERS.items()
        if name in ("Adagrad", "Ftrl", "SGD", "Adam")
    }
    figures = []
    with BenchServer() as server, Client(server.address) as client:
        pushed = {
            name: _pushes(client, name, config, lazy, (rows, DIM), ids, values, scale)
            for name, (config, lazy) in OPTIMIZERS.items()
        }
        small = (rows // SMALL_TABLE_DIVISOR, DIM)
        small_ids = ids % small[0]
        smaller = {
            name: _pushes(
                client,
                f"{name} small",
                OPTIMIZERS[name][0],
                OPTIMIZERS[name][1],
                small,
                small_ids,
                values,
                scale,
            )
            for name in ("Adagrad", "Adam, lazy_sparse")
        }
    section = f"Sparse push ({rows:,} x {DIM} float32 table, {len(ids):,} ids with repeats)"
    for name, seconds in pushed.items():
        lazy = OPTIMIZERS[name][1]
        reference = local_figures["Adagrad" if lazy else name]
        label = "in-process Keras Adagrad apply" if lazy else "in-process Keras apply"
        figures.append(
            Figure(
                section,
                name,
                ms(seconds),
                ms(reference),
                label,
                "ms",
                target=None if name == "Adam" else TARGET,
                note="only the rows pushed, and their slots, change"
                if lazy
                else (
                    "Keras decays all of m and v on every sparse step: the cost of the table"
                    if name == "Adam"
                    else ""
                ),
            ),
        )
    for name, seconds in smaller.items():
        figures.append(
            Figure(
                "Sparse push cost against the table's size",
                f"{name}, {rows:,} rows",
                ms(pushed[name]),
                ms(seconds),
                f"{rows // SMALL_TABLE_DIVISOR:,} rows",
                "ms",
                target=1.5,
                note="same ids and rows pushed: the cost must follow the rows, not the table",
            )
        )
    return figures


def _in_process(
    config: dict[str, Any],
    shape: tuple[int, int],
    ids: np.ndarray,
    values: np.ndarray,
    scale: Scale,
) -> float:
    local = InProcessApply(config, shape)
    return median(times(lambda: local.apply_sparse(values, ids), scale.repeats))


def _pushes(
    client: Client,
    name: str,
    config: dict[str, Any],
    lazy: bool,
    shape: tuple[int, int],
    ids: np.ndarray,
    values: np.ndarray,
    scale: Scale,
) -> float:
    client.create_optimizer(name, config, lazy_sparse=lazy)
    table = f"{name}/table"
    client.create_variables({table: np.zeros(shape, np.float32)}, name)
    gradient = IndexedSlices(values, ids, shape)
    return median(times(lambda: client.push({table: gradient}), scale.repeats))
