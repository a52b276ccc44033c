"""Suite 3: pushes per second from 1, 4 and 16 worker processes pushing 64 KiB gradients to
one shared variable, each level against the one before it; one worker against a bare grpcio
unary echo of the same bytes."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from bench.figures import Figure
from bench.references import echo_server
from bench.scale import KIB, Scale
from bench.server import BenchServer, cpu_seconds
from bench.workers import DensePush, Echo, Window, Workers
from tfps_client import Client

SECTION = "Concurrency (64 KiB pushes, SGD, async)"
GRADIENT_BYTES = 64 * KIB
VARIABLE = "model/dense"
SGD = {"class_name": "SGD", "config": {"learning_rate": 1e-3}}
TARGETS = {(1, 4): (1.0, "must rise (above 1)"), (4, 16): (1.0, "must not fall")}
"""The issue's targets by (fewer, more) workers; levels it does not name are reported only."""


@dataclasses.dataclass(frozen=True)
class Level:
    """One concurrency level: what its workers did, and the server CPU it took.

    Attributes:
        window: the workers' calls within the timed window.
        server_cpu: CPU seconds the server used while the workers ran.
    """

    window: Window
    server_cpu: float

    @property
    def workers(self) -> int:
        """How many worker processes pushed."""
        return self.window.workers

    def describe(self) -> str:
        """Latency percentiles and server CPU, for a figure's note."""
        window = self.window
        per_push = self.server_cpu / max(1, len(window.latencies))
        return (
            f"p50 {window.percentile_ms(50):.3g} ms, p99 {window.percentile_ms(99):.3g} ms, "
            f"server {self.server_cpu / window.seconds:.2f} CPU cores "
            f"({per_push * 1e3:.3g} ms CPU per push)"
        )


def run(scale: Scale) -> list[Figure]:
    """Measures every level of ``scale.concurrency_workers`` for
    ``scale.concurrency_seconds`` each, on one server, and the echo reference."""
    size = GRADIENT_BYTES // np.dtype(np.float32).itemsize
    with BenchServer() as server:
        with Client(server.address) as client:
            client.create_optimizer("default", SGD)
            client.create_variables({VARIABLE: np.zeros(size, np.float32)}, "default")
        push = DensePush(server.address, VARIABLE, size)
        levels = [
            _measure(push, workers, scale.concurrency_seconds, server.pid)
            for workers in scale.concurrency_workers
        ]
    with echo_server() as address, Workers(Echo(address, GRADIENT_BYTES), 1) as workers:
        echo = workers.run(scale.concurrency_seconds)
    rising = itertools.pairwise(levels)
    return [_single(levels[0], echo), *(_scaling(fewer, more) for fewer, more in rising)]


def _measure(push: DensePush, workers: int, seconds: float, server_pid: int) -> Level:
    with Workers(push, workers) as started:
        before = cpu_seconds(server_pid)
        window = started.run(seconds)
        return Level(window, cpu_seconds(server_pid) - before)


def _label(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def _single(push: Level, echo: Window) -> Figure:
    """One worker's push rate against one worker's rate of bare grpcio echo calls."""
    return Figure(
        SECTION,
        _label(push.workers),
        push.window.rate,
        echo.rate,
        "1 worker, bare grpcio unary echo",
        "pushes/s",
        better="higher",
        note=f"push {push.describe()}; echo p50 {echo.percentile_ms(50):.3g} ms, p99 "
        f"{echo.percentile_ms(99):.3g} ms. The echo is one call moving the same 64 KiB "
        "through grpcio from the same kind of worker process (its bytes come back too; a "
        "push's answer is small): the ratio is the share of gRPC's own cost in a push, "
        "the rest being tfps's streaming, checks and apply",
    )


def _scaling(fewer: Level, more: Level) -> Figure:
    """A level's throughput against the level before it."""
    target, rule = TARGETS.get((fewer.workers, more.workers), (None, ""))
    return Figure(
        SECTION,
        _label(more.workers),
        more.window.rate,
        fewer.window.rate,
        _label(fewer.workers),
        "pushes/s",
        better="higher",
        target=target,
        note=more.describe() + (f"; the issue: throughput {rule}" if rule else ""),
    )
