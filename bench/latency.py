"""Suite 2: small-push latency against a bare grpcio unary echo of the same bytes."""

from __future__ import annotations

import numpy as np

from bench.figures import Figure
from bench.references import grpc_echo
from bench.scale import KIB, Scale
from bench.server import BenchServer
from bench.timing import ms, percentile, times
from tfps_client import Client

PUSH_BYTES = KIB
TARGET = 2.0


def run(scale: Scale) -> list[Figure]:
    """Times ``scale.latency_calls`` pushes of 1 KiB (SGD, async) and as many echoes."""
    gradient = np.full(PUSH_BYTES // 4, 1e-3, np.float32)
    payload = bytes(PUSH_BYTES + 64)  # the push's tensor plus its header, about
    with grpc_echo() as echo:
        echoes = times(lambda: echo(payload), scale.latency_calls, warmup=50)
    with BenchServer() as server, Client(server.address) as client:
        client.create_optimizer("default", {"class_name": "SGD", "config": {"learning_rate": 0.01}})
        client.create_variables({"small": np.zeros_like(gradient)})
        pushes = times(lambda: client.push({"small": gradient}), scale.latency_calls, warmup=50)
    return [
        Figure(
            "Small push latency (1 KiB, SGD)",
            quantile,
            ms(percentile(pushes, q)),
            ms(percentile(echoes, q)),
            "grpcio unary echo",
            "ms",
            target=TARGET if q == 50 else None,
            note=f"{len(pushes)} calls each; echo of {len(payload)} bytes",
        )
        for quantile, q in (("p50", 50), ("p99", 99))
    ]
