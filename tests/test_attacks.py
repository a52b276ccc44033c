"""Hostile clients against the resource bounds: the server stays answerable, its memory bounded.

Each attack is what took the server down before the bounds: stalled request
streams, response streams never read, responses amplified from small requests,
more bytes in flight than memory, more calls than threads, requests declaring
millions of tensors. While an attack runs, the health check must answer within
a second and small calls must be served; afterwards every attacking call has
ended with the documented status, and the server serves as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tfps_client
from tfps_client import Client, RetryPolicy
from tfps_client.errors import from_rpc_error
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_client.wire.reasons import Reason
from tfps_server import Registry, RunningServer, create_server
from tfps_server.limits import GIB, Limits

from helpers import (
    LISTENING,
    ServerProcess,
    assert_refused,
    dense_header,
    free_port,
    push_request,
    server_env,
)
from interleave import BlockingHooks

MEBI = 1 << 20
BIG_SHAPE = (8 * MEBI // 4,)
"""A 8 MiB float32 variable."""
ROW_WIDTH = 1024
"""Floats per embedding row: 4 KiB rows."""
IDLE_SECONDS = 2.0


def health_answers(port: int) -> float:
    """Asks the standard health service on a fresh channel; returns the seconds it took.

    Raises:
        grpc.RpcError: no SERVING answer within a second.
    """
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        start = time.perf_counter()
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1.0
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        return time.perf_counter() - start


class Stalled:
    """Request streams that send their first messages, then nothing until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent = threading.Semaphore(0)

    def stream(self, messages: Iterator[Any], count: int = 1) -> Iterator[Any]:
        """Yields ``count`` messages of ``messages``, then waits for :attr:`release`."""
        for _, message in zip(range(count), messages, strict=False):
            yield message
        self.sent.release()
        self.release.wait()


def outcome(future: grpc.Future) -> tuple[grpc.StatusCode, str]:
    """The status code and tfps reason a call ended with."""
    try:
        future.result(timeout=120)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        typed = from_rpc_error(error)
        return typed.code, typed.reason


def big_push(size_bytes: int, variable: str = "big") -> Iterator[Any]:
    """The messages of a push of a flat float32 gradient of ``size_bytes``."""
    gradient = np.zeros(size_bytes // 4, np.float32)
    return push_request([dense_header(variable, gradient)], [gradient])


def emb_push() -> Iterator[Any]:
    """The messages of a valid push of 16 MiB to ``emb``."""
    gradient = np.zeros((4096, ROW_WIDTH), np.float32)
    return push_request([dense_header("emb", gradient)], [gradient])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Polls ``condition`` until it holds (what the server does is not observable otherwise)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


# A tfps-server process, so that its own memory can be measured ---------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


BUDGET_BYTES = 96 * MEBI
MEMORY_PER_BUDGET_BYTE = 4
"""Most bytes of memory one byte of the in-flight budget may cost (see SECURITY.md)."""


@pytest.fixture(scope="module")
def server_process() -> Iterator[tuple[ServerProcess, int]]:
    """``tfps-server`` with a 96 MiB in-flight budget and a short idle timeout, holding an
    8 MiB variable."""
    port = free_port()
    process = ServerProcess(
        [
            "--port",
            str(port),
            "--max-in-flight-gib",
            str(BUDGET_BYTES / GIB),
            "--stream-idle-seconds",
            str(IDLE_SECONDS),
            "--optimizer",
            '{"class_name": "SGD"}',
        ],
        server_env(),
    )
    with process:
        process.wait_for(LISTENING)
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            client.create_variables({"big": np.ones(BIG_SHAPE, np.float32)})
        yield process, port
        assert process.terminate() == 0


def test_stalled_push_streams_and_unread_pulls_hold_no_thread_and_bounded_memory(
    server_process: tuple[ServerProcess, int],
) -> None:
    """64 Push streams that stall after one message and 64 Pull streams of 8 MiB never read:
    health and small calls are answered meanwhile, the server's memory grows by less than
    its budget, and every attacking stream ends (STREAM_IDLE, or OVERLOADED for those that
    waited for the budget) once idle for ``--stream-idle-seconds``."""
    process, port = server_process
    baseline = rss_bytes(process.process.pid)
    stalled = Stalled()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ParameterServerStub(channel)
    pushes = [stub.Push.future(stalled.stream(big_push(MEBI))) for _ in range(64)]
    pulls = [stub.Pull(pb.PullRequest(names=["big"])) for _ in range(64)]  # never read
    peak = baseline
    try:
        for _ in range(64):
            assert stalled.sent.acquire(timeout=60)
        with Client(f"127.0.0.1:{port}", timeout=5, retry=tfps_client.RetryPolicy(1)) as client:
            while not all(p.done() for p in pushes):
                assert health_answers(port) < 1.0
                assert client.iterations("default") == 0
                peak = max(peak, rss_bytes(process.process.pid))
        push_outcomes = {outcome(p) for p in pushes}
        pull_outcomes = set()
        for pull in pulls:
            try:
                for _ in pull:
                    pass
                pull_outcomes.add((grpc.StatusCode.OK, ""))
            except grpc.RpcError as error:
                typed = from_rpc_error(error)
                pull_outcomes.add((typed.code, typed.reason))
    finally:
        stalled.release.set()
        channel.close()
    assert push_outcomes <= {
        (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.STREAM_IDLE),
        (grpc.StatusCode.UNAVAILABLE, Reason.OVERLOADED),
    }, push_outcomes
    assert (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.STREAM_IDLE) in push_outcomes
    assert pull_outcomes <= {
        (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.STREAM_IDLE),
        (grpc.StatusCode.UNAVAILABLE, Reason.OVERLOADED),
        (grpc.StatusCode.OK, ""),
    }, pull_outcomes
    # A byte in flight costs up to about three in memory while it is held (gRPC's buffer,
    # the parsed message, the tensor): the bound is a small multiple of the budget, where
    # the unbounded server grew by gigabytes.
    growth = peak - baseline
    assert growth < MEMORY_PER_BUDGET_BYTE * BUDGET_BYTES, f"RSS grew by {growth >> 20} MiB"
    with Client(f"127.0.0.1:{port}", timeout=60) as client:
        assert client.pull(["big"])["big"].shape == BIG_SHAPE


# In-process servers with small bounds ----------------------------------------------------------


@pytest.fixture
def bounded(hooks: BlockingHooks) -> Iterator[RunningServer]:
    """A server whose calls may carry 16 MiB each and 24 MiB together, with 1 s idle timeouts,
    four concurrent calls, and at most 64 tensors per request; with an 8 MiB variable ``big``
    and a 4096 x 1024 embedding ``emb`` (16 MiB) under Adam."""
    limits = Limits(
        max_payload_bytes=16 * MEBI,
        max_in_flight_bytes=24 * MEBI,
        stream_idle_seconds=1.0,
        max_concurrent_calls=4,
        max_tensors_per_request=64,
    )
    running = create_server(Registry(limits=limits, hooks=hooks), "127.0.0.1:0")
    with Client(f"127.0.0.1:{running.port}", timeout=60) as client:
        client.create_optimizer("default", {"class_name": "Adam"})
        client.create_variables({"big": np.ones(BIG_SHAPE, np.float32)})
        client.create_variables({"emb": np.ones((4096, ROW_WIDTH), np.float32)})
    yield running
    hooks.release_all()
    running.stop(None)


@contextmanager
def logged(logger_name: str, fragment: str) -> Iterator[threading.Event]:
    """An event set when ``logger_name`` logs a record (at any level) containing
    ``fragment``."""
    seen = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if fragment in record.getMessage():
                seen.set()

    logger, watch = logging.getLogger(logger_name), Watch(logging.DEBUG)
    level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)


def refused_at_once(call: Callable[[], Any]) -> tfps_client.TfpsError:
    """The error a call is refused with."""
    with pytest.raises(tfps_client.TfpsError) as raised:
        call()
    return raised.value


def test_responses_are_sized_before_they_are_built(bounded: RunningServer) -> None:
    """A small request may not ask for a large response: repeated row ids past the payload
    limit, repeated names (answered once each), all variables past the limit, and the
    optimizer's weights (two slots per variable) past it, are refused or deduplicated
    before anything is read."""
    port = bounded.port
    with Client(f"127.0.0.1:{port}", timeout=60, retry=tfps_client.RetryPolicy(1)) as client:
        before = {name: client.pull([name])[name] for name in ("big", "emb")}
        error = refused_at_once(lambda: client.pull_rows("emb", np.zeros(300_000, np.int64)))
        assert_refused(
            error,
            tfps_client.ResourceExhaustedError,
            Reason.TOO_LARGE,
            ["'emb'", "--max-payload-gib", f"300000 rows of {ROW_WIDTH * 4} bytes"],
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pulled = list(
                pb_grpc.ParameterServerStub(channel).Pull(pb.PullRequest(names=["big"] * 50))
            )
        assert [t.name for t in pulled[0].tensors] == ["big"]
        assert sum(len(c.data) for m in pulled for c in m.chunks) == 8 * MEBI
        error = refused_at_once(client.pull)  # 8 + 16 MiB > 16 MiB
        assert_refused(error, tfps_client.ResourceExhaustedError, Reason.TOO_LARGE, ["Pull"])
        error = refused_at_once(lambda: client.get_weights("default"))  # 2 x 24 MiB of slots
        assert_refused(
            error, tfps_client.ResourceExhaustedError, Reason.TOO_LARGE, ["GetOptimizerWeights"]
        )
        rows = client.pull_rows("emb", np.arange(4000) % 7)  # 15.6 MiB: under the limit
        assert rows.shape == (4000, ROW_WIDTH)
        for name, value in before.items():
            assert client.pull([name])[name].tobytes() == value.tobytes()


def test_in_flight_budget_waits_then_refuses_and_never_over_commits(
    bounded: RunningServer, hooks: BlockingHooks
) -> None:
    """A push larger than the whole budget is refused at once; one that would fit waits for
    bytes held by a push being applied, and is refused as OVERLOADED (retryable) when they do
    not come free in time; one stalled sending holds its bytes only until idle; the budget is
    never over-committed and returns to zero."""
    port = bounded.port
    budget = bounded.registry.metrics.in_flight_bytes
    stalled = Stalled()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        too_large = stub.Push.future(big_push(25 * MEBI))
        assert outcome(too_large) == (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.TOO_LARGE)
        held = hooks.hold("push.validated")
        holder = stub.Push.future(emb_push())
        held.wait_arrivals()
        assert budget._value.get() == 16 * MEBI
        waiter = stub.Push.future(emb_push())
        assert outcome(waiter) == (grpc.StatusCode.UNAVAILABLE, Reason.OVERLOADED)
        held.release()
        assert outcome(holder) == (grpc.StatusCode.OK, "")
        staller = stub.Push.future(stalled.stream(emb_push()))
        assert outcome(staller) == (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.STREAM_IDLE)
        stalled.release.set()
    assert budget._value.get() == 0
    with Client(f"127.0.0.1:{port}", timeout=60) as client:
        client.push({"big": np.zeros(BIG_SHAPE, np.float32)})
    rejections = bounded.registry.metrics.rejections
    assert budget._value.get() == 0
    assert rejections.labels(Reason.OVERLOADED)._value.get() == 1
    assert rejections.labels(Reason.STREAM_IDLE)._value.get() == 1
    assert rejections.labels(Reason.TOO_LARGE)._value.get() == 1


def test_calls_past_the_concurrency_cap_are_refused_and_health_still_answers(
    bounded: RunningServer,
) -> None:
    """Four stalled calls take every slot: a fifth call is refused with UNAVAILABLE
    (OVERLOADED) at once, health answers, a client that retries gets through once the
    stalled calls end, and the slots come back."""
    port = bounded.port
    stalled = Stalled()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        holders = [stub.Push.future(stalled.stream(big_push(MEBI))) for _ in range(4)]
        wait_until(
            lambda: bounded.registry.metrics.in_flight_bytes._value.get() == 4 * MEBI,
            "four stalled pushes hold their bytes",
        )
        with Client(f"127.0.0.1:{port}", timeout=60, retry=tfps_client.RetryPolicy(1)) as client:
            error = refused_at_once(lambda: client.iterations("default"))
            assert_refused(
                error,
                tfps_client.UnavailableError,
                Reason.OVERLOADED,
                ["4 calls in progress, at most 4 (--max-concurrent-calls)", "retry later"],
            )
            assert health_answers(port) < 1.0
            retrying = RetryPolicy(100, initial_backoff=0.01, max_backoff=0.1)
            with (
                Client(f"127.0.0.1:{port}", timeout=60, retry=retrying) as patient,
                ThreadPoolExecutor(1) as pool,
                logged("tfps_client", "failed with UNAVAILABLE") as refused,
            ):
                answer = pool.submit(patient.iterations, "default")
                assert refused.wait(60), "the retrying call was never refused"
                assert answer.result(60) == 0  # once the stalled calls are cut off
            assert {outcome(h) for h in holders} == {
                (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.STREAM_IDLE)
            }
            stalled.release.set()
            assert client.iterations("default") == 0


def test_requests_declaring_too_many_tensors_are_refused_before_they_are_read(
    bounded: RunningServer,
) -> None:
    """A push declaring ten thousand empty gradients, and a pull naming 65 variables, are
    refused by count, before any spec is looked at. (Not many more: the message must decode
    well within the fixture's 1 s idle timeout on a loaded machine.)"""
    port = bounded.port
    empty = np.zeros((0,), np.float32)
    header = dense_header("big", empty)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        request = pb.PushRequest(gradients=[header] * 10_000)
        code, reason = outcome(stub.Push.future(iter([request])))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.LIMIT_EXCEEDED)
        pull = stub.Pull(pb.PullRequest(names=[f"v{i}" for i in range(65)]))
        with pytest.raises(grpc.RpcError) as raised:
            list(pull)
        typed = from_rpc_error(raised.value)
        assert (typed.code, typed.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            Reason.LIMIT_EXCEEDED,
        )
        assert "--max-tensors-per-request" in typed.message
