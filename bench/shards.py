"""The scale-out suite: the same model (dense float32 variables) and the same pushing
workers against 1, 2 and 3 shards, each shard a ``tfps-server`` process of its own on this
machine: push throughput at N shards against 1 shard, and the latency of one push fanned
out to every shard against one shard given the same bytes and against one single-shard
push per shard, one after another.

Every process here (the servers, the workers, this one) shares the same cores, so the
figures say what sharding buys on this machine, not on one host per shard: the notes give
the CPU the servers, the workers and the whole machine used."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.figures import Figure
from bench.scale import KIB, MIB, Scale
from bench.server import BenchServer, cpu_seconds, machine_busy_seconds
from bench.timing import interleaved, median, ms, percentile
from bench.workers import ShardedPush, Window, Workers
from tfps_client import Client

VARIABLES = 6
"""Dense variables of the model, all pushed by every push."""
SMALL_BYTES = KIB
"""Size of each variable of the small model, whose pushes are all fixed cost."""
SGD = {"class_name": "SGD", "config": {"learning_rate": 1e-3}}
SHARDED, WHOLE = "sharded", "whole"
"""The variables' name prefixes (and optimizers): spread over the shards, or all on the
first server through a plain client (the one-shard figures)."""


@dataclasses.dataclass(frozen=True)
class Level:
    """What the workers did against one number of shards, and the CPU it took.

    Attributes:
        shards: how many server processes held the variables.
        window: the workers' pushes within the timed window.
        push_bytes: gradient bytes in one push.
        server_cpu: CPU seconds the shards' servers used together.
        worker_cpu: CPU seconds the worker processes used together.
        machine_cpu: busy CPU seconds of the whole machine, other processes included.
    """

    shards: int
    window: Window
    push_bytes: int
    server_cpu: float
    worker_cpu: float
    machine_cpu: float

    @property
    def rate(self) -> float:
        """Pushes per second, over all workers."""
        return self.window.rate

    def describe(self) -> str:
        """Gradient throughput, latency and CPU, for a figure's note."""
        seconds, cores = self.window.seconds, os.cpu_count() or 1
        per_push = self.server_cpu / max(1, len(self.window.latencies))
        return (
            f"{self.rate:.3g} pushes/s = "
            f"{self.rate * self.push_bytes / MIB:.3g} MiB/s of gradients, p50 "
            f"{self.window.percentile_ms(50):.3g} ms, p99 {self.window.percentile_ms(99):.3g} "
            f"ms; CPU cores used: servers {self.server_cpu / seconds:.2f} "
            f"({per_push * 1e3:.3g} ms per push, all shards), workers "
            f"{self.worker_cpu / seconds:.2f}, whole machine {self.machine_cpu / seconds:.2f} "
            f"of {cores}"
        )


def run(scale: Scale) -> list[Figure]:
    """Measures each number of ``scale.shard_counts`` (which must hold 1) for
    ``scale.shard_seconds`` with ``scale.shard_workers`` workers, and one push's latency at
    the most shards."""
    counts = sorted(set(scale.shard_counts))
    if counts[0] != 1 or len(counts) < 2:
        raise ValueError(f"shard_counts must hold 1 and more: {scale.shard_counts}")
    most, size = counts[-1], scale.shard_variable_bytes // 4
    levels: dict[int, Level] = {}
    with _servers(most) as servers:
        addresses = [server.address for server in servers]
        _create(addresses, SHARDED, {"big": size, "small": SMALL_BYTES // 4})
        # One shard: the first server again, through a plain client, with variables of its
        # own (created after the sharded ones, so that their placement is as on fresh servers).
        _create(addresses[:1], WHOLE, {"big": size, "small": SMALL_BYTES // 4})
        levels[1] = _measure(scale, servers[:1], WHOLE, size)
        levels[most] = _measure(scale, servers, SHARDED, size)
        latency = _latencies(scale, servers)
    for count in counts[1:-1]:
        with _servers(count) as servers:
            _create([server.address for server in servers], SHARDED, {"big": size})
            levels[count] = _measure(scale, servers, SHARDED, size)
    return [*_throughput(scale, levels), *latency]


@contextlib.contextmanager
def _servers(count: int) -> Iterator[list[BenchServer]]:
    """``count`` servers, started together, stopped when the block ends."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(BenchServer) for _ in range(count)]
    started, errors = [], []
    for future in futures:
        try:
            started.append(future.result())
        except Exception as error:  # the others are stopped, then it is raised
            errors.append(error)
    try:
        if errors:
            raise errors[0]
        yield started
    finally:
        for server in started:
            server.stop()


def _client(addresses: Sequence[str]) -> Client:
    """A plain client of one server, or a sharded client of several."""
    return Client(addresses[0] if len(addresses) == 1 else list(addresses))


def _names(prefix: str, model: str) -> list[str]:
    return [f"{prefix}/{model}/{i}" for i in range(VARIABLES)]


def _create(addresses: Sequence[str], prefix: str, models: dict[str, int]) -> None:
    """Creates optimizer ``prefix`` and, per model, :data:`VARIABLES` variables of the
    model's number of float32 elements (one call per model, so each spreads evenly)."""
    with _client(addresses) as client:
        client.create_optimizer(prefix, SGD)
        for model, size in models.items():
            zeros = np.zeros(size, np.float32)
            client.create_variables({name: zeros for name in _names(prefix, model)}, prefix)


def _measure(scale: Scale, servers: Sequence[BenchServer], prefix: str, size: int) -> Level:
    """The workers pushing every big variable of ``prefix`` to ``servers`` over one window."""
    push = ShardedPush(
        tuple(server.address for server in servers), tuple(_names(prefix, "big")), size
    )
    with Workers(push, scale.shard_workers) as workers:
        pids = [server.pid for server in servers], workers.pids

        def used() -> tuple[float, float, float]:
            return (
                sum(map(cpu_seconds, pids[0])),
                sum(map(cpu_seconds, pids[1])),
                machine_busy_seconds(),
            )

        before = used()
        window = workers.run(scale.shard_seconds)
        after = used()
    server_cpu, worker_cpu, machine_cpu = (b - a for a, b in zip(before, after, strict=True))
    return Level(len(servers), window, VARIABLES * size * 4, server_cpu, worker_cpu, machine_cpu)


def _latencies(scale: Scale, servers: Sequence[BenchServer]) -> list[Figure]:
    """One push of every variable, fanned out to the shards, against the same bytes pushed
    to one shard and against one push per shard in sequence; each model."""
    section = f"Shards: one push's latency (SGD, {len(servers)} shards)"
    pids = [server.pid for server in servers]
    figures = []
    with contextlib.ExitStack() as stack:
        sharded = stack.enter_context(_client([server.address for server in servers]))
        singles = [stack.enter_context(Client(server.address)) for server in servers]
        for model, nbytes in (("small", SMALL_BYTES), ("big", scale.shard_variable_bytes)):
            gradient = np.full(nbytes // 4, 1e-3, np.float32)
            prefix = f"{SHARDED}/{model}/"
            parts = [
                (single, {v.name: gradient for v in listed if v.name.startswith(prefix)})
                for single, listed in ((single, single.list_variables()) for single in singles)
            ]
            parts = [(single, part) for single, part in parts if part]

            def sequential(parts: list[tuple[Client, dict[str, np.ndarray]]] = parts) -> None:
                for single, part in parts:
                    single.push(part)

            fanned = {name: gradient for name in _names(SHARDED, model)}
            whole = {name: gradient for name in _names(WHOLE, model)}
            calls: dict[str, Callable[[], object]] = {
                "fanned": functools.partial(sharded.push, fanned),
                "whole": functools.partial(singles[0].push, whole),
                "sequential": sequential,
            }
            taken = interleaved(calls, scale.shard_latency_calls, warmup=2)
            cpu = {
                key: _cpu_per_call(call, scale.shard_latency_calls, pids)
                for key, call in calls.items()
            }
            figures += _latency_figures(section, model, nbytes, len(parts), taken, cpu)
    return figures


def _cpu_per_call(
    call: Callable[[], object], repeats: int, pids: Sequence[int]
) -> tuple[float, float]:
    """CPU seconds per call of this process (the client, all its threads) and of the
    servers ``pids`` together, over ``repeats`` calls in a row."""
    client, servers = time.process_time(), sum(map(cpu_seconds, pids))
    for _ in range(repeats):
        call()
    client, servers = time.process_time() - client, sum(map(cpu_seconds, pids)) - servers
    return client / repeats, servers / repeats


def _latency_figures(
    section: str,
    model: str,
    nbytes: int,
    shards: int,
    taken: dict[str, list[float]],
    cpu: dict[str, tuple[float, float]],
) -> list[Figure]:
    what = f"{VARIABLES} x {_size(nbytes)} to {shards} shards at once"
    spread = ", ".join(
        f"{label} p10-p90 {ms(percentile(taken[key], 10)):.3g}-"
        f"{ms(percentile(taken[key], 90)):.3g} ms"
        for key, label in (
            ("fanned", "fanned out"),
            ("whole", "one shard"),
            ("sequential", "in sequence"),
        )
    )
    cores = os.cpu_count() or 1
    used = "; ".join(
        f"{label} client {ms(cpu[key][0]):.3g} ms + servers {ms(cpu[key][1]):.3g} ms "
        f"(at least {ms(sum(cpu[key]) / cores):.3g} ms of wall time on {cores} cores)"
        for key, label in (
            ("fanned", "fanned out"),
            ("whole", "one shard"),
            ("sequential", "in sequence"),
        )
    )
    common = (
        f"medians of {len(taken['fanned'])} pushes of each kind, taking turns; {spread}. "
        f"CPU per push (another {len(taken['fanned'])} of each in a row): {used}. "
    )
    if model == "small":
        why = (
            "A push this small is all fixed cost (a round trip and the CPU around it): fanned "
            f"out, the shards' round trips overlap, so with a core per shard it would cost about "
            f"one round trip, not {shards}. Here each shard still spends a whole call's CPU, "
            "and the shards, the client and whatever else runs share the cores: a fanned-out "
            "push cannot take less than its CPU over the cores, which is what sets it above one "
            "shard's push"
        )
    else:
        why = (
            "A larger push is CPU work on both sides: copying, sending, receiving and applying "
            "the bytes (the same whichever shards take them), plus each shard's call's fixed "
            "CPU. All of it runs on this machine's cores: fanning out beats the sequence by "
            "overlapping the shards' calls, and cannot beat one shard's push, whose CPU is "
            "smaller, while the shards share the cores"
        )
    return [
        Figure(
            section,
            what,
            ms(median(taken["fanned"])),
            ms(median(taken["sequential"])),
            f"{shards} single-shard pushes in sequence",
            "ms",
            note=common + why,
        ),
        Figure(
            section,
            what,
            ms(median(taken["fanned"])),
            ms(median(taken["whole"])),
            "1 shard, same bytes",
            "ms",
        ),
    ]


def _throughput(scale: Scale, levels: dict[int, Level]) -> list[Figure]:
    """Each number of shards' push rate against one shard's."""
    size = _size(scale.shard_variable_bytes)
    section = (
        f"Shards: push throughput ({VARIABLES} x {size} dense float32 per push, SGD, async, "
        f"{scale.shard_workers} worker processes)"
    )
    one = levels[1]
    figures = []
    for count, level in sorted(levels.items()):
        if count == 1:
            continue
        note = f"{level.describe()}. 1 shard: {one.describe()}"
        if count == max(levels):
            note += (
                ". Every server, worker and this process (and any other load) share the "
                f"machine's {os.cpu_count()} cores: throughput can rise with shards only while "
                "one server's GIL, not the cores, is the limit. Once the servers and the "
                "workers keep every core busy, more shards split the same CPU, and each adds "
                "a call's fixed CPU to every push (the servers' CPU per push above), so "
                "throughput falls. With a host per shard they would not share it"
            )
        figures.append(
            Figure(
                section,
                _shards(count),
                level.rate,
                one.rate,
                "1 shard",
                "pushes/s",
                better="higher",
                note=note,
            )
        )
    return figures


def _shards(count: int) -> str:
    return f"{count} shard{'s' if count > 1 else ''}"


def _size(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"
