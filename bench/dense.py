"""Suite 1: dense push + apply, pull and push_pull, against moving the same bytes over raw
TCP and applying the same gradient in-process."""

from __future__ import annotations

import numpy as np

from bench.figures import Figure
from bench.references import InProcessApply, RawTcp, raw_tcp
from bench.scale import MIB, Scale
from bench.server import BenchServer
from bench.timing import median, ms, times
from tfps_client import Client

OPTIMIZERS = {
    "SGD": {"class_name": "SGD", "config": {"learning_rate": 0.01}},
    "Adam": {"class_name": "Adam", "config": {"learning_rate": 0.001}},
}
TARGET = 1.5


def run(scale: Scale) -> list[Figure]:
    """Measures every size of ``scale.dense_bytes`` for each optimizer of :data:`OPTIMIZERS`."""
    figures: list[Figure] = []
    with BenchServer() as server, Client(server.address) as client, raw_tcp() as tcp:
        for name, config in OPTIMIZERS.items():
            client.create_optimizer(name, config)
            for nbytes in scale.dense_bytes:
                figures += _measure(client, tcp, scale, name, config, nbytes)
    return figures


def _label(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes >> 10} KiB"


def _measure(
    client: Client, tcp: RawTcp, scale: Scale, optimizer: str, config: dict, nbytes: int
) -> list[Figure]:
    variable = f"{optimizer}/{_label(nbytes)}"
    shape = (nbytes // 4,)
    gradient = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 1e-3
    client.create_variables({variable: np.zeros(shape, np.float32)}, optimizer)
    local = InProcessApply(config, shape)
    apply = median(times(lambda: local.apply(gradient), scale.repeats))
    wire = median(times(lambda: tcp.send(gradient.data), scale.repeats))
    push = median(times(lambda: client.push({variable: gradient}), scale.repeats))
    pull = median(times(lambda: client.pull([variable]), scale.repeats))
    both = median(times(lambda: client.push_pull({variable: gradient}, [variable]), scale.repeats))
    what = f"{optimizer}, {_label(nbytes)}"
    return [
        Figure(
            "Dense push + apply (float32)",
            what,
            ms(push),
            ms(wire + apply),
            "raw TCP + in-process apply",
            "ms",
            target=TARGET,
            note=f"raw TCP {ms(wire):.3g} ms, in-process apply {ms(apply):.3g} ms",
        ),
        Figure("Dense pull (float32)", what, ms(pull), ms(wire), "raw TCP", "ms", target=TARGET),
        Figure(
            "Dense push_pull (float32)",
            what,
            ms(both),
            ms(2 * wire + apply),
            "2x raw TCP + in-process apply",
            "ms",
            target=TARGET,
        ),
    ]
