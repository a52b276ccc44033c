"""Worker processes that call a server together: each its own process and connection, all
started, connected and warmed up before one common start signal, then timed over one window.

Workers are spawned (not forked) and import no TensorFlow, so starting one costs an
interpreter with grpcio, numpy and the client, as a real worker's start does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import grpc
import numpy as np

from bench.references import ECHO_METHOD
from bench.timing import percentile
from tfps_client import Client

_SPAWN = multiprocessing.get_context("spawn")
START_SECONDS = 120.0
"""How long workers may take to start, connect and warm up together."""
LATE_SECONDS = 60.0
"""How long after the window a worker may take to report (its last call may be slow)."""
POLL_SECONDS = 0.5
"""How often a wait for workers checks whether one has ended."""
WARMUP_CALLS = 10
"""Untimed calls each worker makes before the start signal."""


class CallFactory(Protocol):
    """Makes, inside a worker process, the call that worker repeats (picklable)."""

    def __call__(self, worker: int) -> Callable[[], object]:
        """Connects worker number ``worker``; returns its call."""


@dataclasses.dataclass(frozen=True)
class DensePush:
    """Pushes one dense float32 gradient to one variable, as a data-parallel worker does.

    Attributes:
        address: ``host:port`` of the tfps server.
        variable: the variable's name.
        size: the gradient's number of float32 elements.
    """

    address: str
    variable: str
    size: int

    def __call__(self, worker: int) -> Callable[[], object]:
        """Connects worker number ``worker``; returns its push."""
        client = Client(self.address)
        client.wait_for_ready()
        rng = np.random.default_rng(worker)
        gradient = rng.standard_normal(self.size, dtype=np.float32) * 1e-3
        name = f"worker-{worker}"
        return lambda: client.push({self.variable: gradient}, worker=name)


@dataclasses.dataclass(frozen=True)
class ShardedPush:
    """Pushes one dense float32 gradient to each of several variables in one call, through a
    client of one server or of several as shards (which fans the push out to them at once).

    Attributes:
        addresses: ``host:port`` of each server; one: a plain, unsharded client.
        variables: the variables' names.
        size: each gradient's number of float32 elements.
    """

    addresses: tuple[str, ...]
    variables: tuple[str, ...]
    size: int

    def __call__(self, worker: int) -> Callable[[], object]:
        """Connects worker number ``worker``; returns its push."""
        one = len(self.addresses) == 1
        client = Client(self.addresses[0] if one else list(self.addresses))
        client.wait_for_ready()
        rng = np.random.default_rng(worker)
        gradients = {
            name: rng.standard_normal(self.size, dtype=np.float32) * 1e-3 for name in self.variables
        }
        name = f"worker-{worker}"
        return lambda: client.push(gradients, worker=name)


@dataclasses.dataclass(frozen=True)
class Echo:
    """Sends bytes to a bare grpcio unary echo method (:func:`bench.references.echo_server`)
    and gets them back.

    Attributes:
        address: ``host:port`` of the echo server.
        nbytes: the request's size.
    """

    address: str
    nbytes: int

    def __call__(self, worker: int) -> Callable[[], object]:
        """Connects worker number ``worker``; returns its echo call."""
        channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(channel).result(timeout=START_SECONDS)
        echo = channel.unary_unary(ECHO_METHOD)
        payload = bytes(self.nbytes)
        return lambda: echo(payload)


@dataclasses.dataclass(frozen=True)
class Window:
    """What the workers did within one timed window.

    Attributes:
        workers: how many worker processes called.
        seconds: the window's length.
        latencies: seconds of every call that completed within the window.
    """

    workers: int
    seconds: float
    latencies: tuple[float, ...]

    @property
    def rate(self) -> float:
        """Calls completed per second, over all workers."""
        return len(self.latencies) / self.seconds

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of call latency, in milliseconds; NaN if none."""
        return percentile(self.latencies, q) * 1e3 if self.latencies else float("nan")


class Workers:
    """Worker processes, each calling ``factory(i)``'s call in a loop over one timed window.

    On entering, every worker is spawned, connects and makes :data:`WARMUP_CALLS` calls,
    then waits for one start signal; once all are waiting, :meth:`run` sets the window's
    end and starts them together. Calls completing after the end are not counted.

    Args:
        factory: makes each worker's call, inside the worker.
        count: how many worker processes.
    """

    def __init__(self, factory: CallFactory, count: int) -> None:
        self.count = count
        self._ready = _SPAWN.Semaphore(0)
        self._go, self._end = _SPAWN.Event(), _SPAWN.Value("d", 0.0)
        self._reports: Any = _SPAWN.Queue()
        self._processes = [
            _SPAWN.Process(
                target=_work,
                args=(factory, worker, self._ready, self._go, self._end, self._reports),
                daemon=True,
                name=f"bench-worker-{worker}",
            )
            for worker in range(count)
        ]

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, once started."""
        return [process.pid for process in self._processes if process.pid is not None]

    def __enter__(self) -> Workers:
        for process in self._processes:
            process.start()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._go.set()  # workers still waiting for the start end at once
        _stop(self._processes)

    def _wait_ready(self) -> None:
        """Waits for every worker to be warmed up; fails as soon as one has ended.

        Raises:
            RuntimeError: a worker ended, or not all were ready in :data:`START_SECONDS`.
        """
        deadline = time.monotonic() + START_SECONDS
        waiting = self.count
        while waiting:
            if self._ready.acquire(timeout=POLL_SECONDS):
                waiting -= 1
            elif any(process.exitcode is not None for process in self._processes):
                raise RuntimeError(f"a worker failed to start: {_failures(self._reports)}")
            elif time.monotonic() > deadline:
                raise RuntimeError(f"{waiting} workers not ready after {START_SECONDS:g} s")

    def run(self, seconds: float) -> Window:
        """Lets every worker call for ``seconds``; returns what they did.

        Raises:
            RuntimeError: a worker failed, or did not report in time.
        """
        self._end.value = time.monotonic() + seconds
        self._go.set()
        try:
            outcomes = [self._reports.get(timeout=seconds + LATE_SECONDS) for _ in self._processes]
        except queue.Empty:
            raise RuntimeError(f"a worker did not report within {LATE_SECONDS:g} s") from None
        failures = [text for failed, text in outcomes if failed]
        if failures:
            raise RuntimeError(f"{len(failures)} of {self.count} workers failed:\n{failures[0]}")
        latencies = tuple(latency for _, samples in outcomes for latency in samples)
        return Window(self.count, seconds, latencies)


def _work(factory: CallFactory, worker: int, ready: Any, go: Any, end: Any, reports: Any) -> None:
    """A worker process: connects, warms up, waits for the start, then calls until the end."""
    try:
        call = factory(worker)
        for _ in range(WARMUP_CALLS):
            call()
        ready.release()
        go.wait()
        deadline = end.value
        latencies = []
        while (begun := time.monotonic()) < deadline:
            call()
            if (done := time.monotonic()) <= deadline:
                latencies.append(done - begun)
        reports.put((False, latencies))
    except BaseException:
        reports.put((True, f"worker {worker}: {traceback.format_exc()}"))


def _failures(reports: Any) -> str:
    """What failed workers reported."""
    texts = []
    with contextlib.suppress(queue.Empty):
        while True:
            failed, text = reports.get(timeout=POLL_SECONDS)
            if failed:
                texts.append(text)
    return "\n".join(texts) or "it reported nothing (killed, or failed before it could run)"


def _stop(processes: list[Any]) -> None:
    """Joins worker processes, killing those that do not end."""
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
