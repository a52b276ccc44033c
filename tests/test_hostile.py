"""A hostile client's review of the security work: tricks that must fail, and holes found.

Each test attacks a real server the way a client with network access, or with a
low-role token, could. Those that guard what already holds pass; those written
for a hole found in review state the behaviour the server now has.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tfps_client import Client
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_client.wire.reasons import Reason, decode_detail
from tfps_server import Registry, RunningServer, create_server
from tfps_server.auth import TokenFile
from tfps_server.checkpoints import Checkpointer
from tfps_server.limits import Limits

from helpers import (
    LISTENING,
    ServerProcess,
    chunk,
    dense_header,
    free_port,
    push_request,
    server_env,
)

MEBI = 1 << 20
WORKER = "worker-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
SGD = {"class_name": "SGD", "config": {"learning_rate": 0.1}}
GRADIENT = np.full(4, 0.5, np.float32)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Polls ``condition`` until it holds; fails after 30 s."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def status_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and tfps reason a raw call ends with."""
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as error:
        return error.code(), decode_detail(error.trailing_metadata())[0]
    return grpc.StatusCode.OK, ""


def held_open(release: threading.Event) -> Iterator[Any]:
    """A whole push of GRADIENT to ``w`` whose stream stays open until ``release`` is set."""
    yield from push_request([dense_header("w", GRADIENT)], [GRADIENT])
    release.wait()


def in_flight(server: RunningServer) -> float:
    return server.registry.metrics.in_flight_bytes._value.get()  # type: ignore[no-any-return]


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    """A server requiring tokens (a worker's and an admin's), with a variable ``w`` under SGD;
    and its tokens file."""
    path = tmp_path / "tokens"
    path.write_text(f"worker {WORKER}\nadmin {ADMIN}\n")
    server = create_server(Registry(), tokens=TokenFile(path))
    with Client(f"127.0.0.1:{server.port}", timeout=60, token=ADMIN) as admin:
        admin.create_optimizer("default", SGD)
        admin.create_variables({"w": np.zeros(4, np.float32)})
    yield server, path
    server.stop(None)


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {WORKER}"), ("authorization", f"Bearer {ADMIN}")],
        [("authorization-bin", f"Bearer {ADMIN}".encode())],
        [("authorization", f"Basic {ADMIN}")],
        [("authorization", ADMIN)],
        [("authorization", "Bearer")],
        [("authorization", f"Bearer {ADMIN} {ADMIN}")],
        [("authorization", f"Bearer {ADMIN[:-1]}")],
        [("authorization", "Bearer " + "a" * 4000)],
    ],
    ids=["two", "bin", "basic", "bare", "empty", "doubled", "prefix", "long"],
)
def test_no_metadata_trick_passes_for_an_admin(
    guarded: tuple[RunningServer, Path], metadata: list[tuple[str, Any]]
) -> None:
    """Two entries (one an admin's), a binary key, other schemes, a bare or doubled token,
    a prefix of one, a long one: none is taken as the admin's token, and nothing changes."""
    server, _ = guarded
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        request = pb.SetHyperparameterRequest(optimizer="default", name="learning_rate", number=0.5)
        code, _ = status_of(lambda: stub.SetHyperparameter(request, metadata=metadata, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    with Client(f"127.0.0.1:{server.port}", timeout=60, token=ADMIN) as admin:
        assert admin.get_config("default")["config"]["learning_rate"] == pytest.approx(0.1)


def test_a_token_removed_by_reload_cannot_finish_a_push_it_opened(
    guarded: tuple[RunningServer, Path],
) -> None:
    """A worker whose token is revoked while its push stream is open does not change the
    state when it completes the stream: the token is checked again once the stream ends,
    before anything is applied."""
    server, path = guarded
    release = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        push = stub.Push.future(held_open(release), metadata=bearer(WORKER), timeout=60)
        wait_until(lambda: in_flight(server) == GRADIENT.nbytes, "the push to be admitted")
        path.write_text(f"admin {ADMIN}\n")
        assert server.reload()
        release.set()
        code, reason = status_of(push.result)
    with Client(f"127.0.0.1:{server.port}", timeout=60, token=ADMIN) as admin:
        assert admin.pull(["w"])["w"].tolist() == [0.0] * 4, "a revoked token changed the state"
        assert admin.iterations("default") == 0
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, Reason.UNKNOWN_TOKEN)


@pytest.fixture
def bounded() -> Iterator[RunningServer]:
    """An open server whose calls may carry 4 MiB each and 8 MiB together, with 1 s idle
    timeouts and four concurrent calls; with a 4-float variable ``w`` under SGD."""
    limits = Limits(
        max_payload_bytes=4 * MEBI,
        max_in_flight_bytes=8 * MEBI,
        stream_idle_seconds=1.0,
        max_concurrent_calls=4,
    )
    server = create_server(Registry(limits=limits))
    with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
        client.create_optimizer("default", SGD)
        client.create_variables({"w": np.zeros(4, np.float32)})
        client.create_variables({"big": np.zeros(MEBI // 2, np.float32)})
    yield server
    server.stop(None)


def test_abandoned_calls_give_back_their_bytes_and_their_admission(
    bounded: RunningServer,
) -> None:
    """Pushes cancelled, timed out, closed under or broken mid-stream, and pulls cancelled or
    closed mid-download, leave no bytes reserved and no call counted: afterwards as many
    calls as the cap allows are admitted at once."""
    port = bounded.port
    big = np.zeros(MEBI // 2, np.float32)
    messages = list(push_request([dense_header("big", big)], [big], chunk_bytes=MEBI))
    release = threading.Event()

    def stalled() -> Iterator[Any]:
        yield messages[0]
        release.wait()

    def broken() -> Iterator[Any]:
        yield messages[0]
        bad = pb.PushRequest()
        bad.CopyFrom(messages[1])
        bad.chunks[0].offset += 1
        yield bad

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        cancelled = stub.Push.future(stalled(), timeout=60)
        wait_until(lambda: in_flight(bounded) > 0, "the push to reserve")
        cancelled.cancel()
        assert status_of(lambda: stub.Push(stalled(), timeout=0.5))[0] == (
            grpc.StatusCode.DEADLINE_EXCEEDED
        )
        assert status_of(lambda: stub.Push(broken(), timeout=60)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.MALFORMED_TENSOR,
        )
        download = stub.Pull(pb.PullRequest(names=["big"]), timeout=60)
        next(download)
        download.cancel()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as closed:
        # Held until the channel closes under it: a dropped future would cancel the call.
        abandoned = pb_grpc.ParameterServerStub(closed).Push.future(stalled(), timeout=60)
        wait_until(lambda: in_flight(bounded) > 0, "the push to reserve")
    del abandoned
    with grpc.insecure_channel(f"127.0.0.1:{port}") as closed:
        next(pb_grpc.ParameterServerStub(closed).Pull(pb.PullRequest(names=["big"]), timeout=60))
    release.set()
    wait_until(lambda: in_flight(bounded) == 0, "the budget to return to zero")

    held = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        pushes = [stub.Push.future(held_open(held), timeout=60) for _ in range(4)]
        wait_until(lambda: in_flight(bounded) == 4 * GRADIENT.nbytes, "four pushes admitted")
        held.set()
        assert [status_of(push.result)[0] for push in pushes] == [grpc.StatusCode.OK] * 4
    assert in_flight(bounded) == 0


def test_a_request_stream_that_trickles_is_cut_off(bounded: RunningServer) -> None:
    """A push sending one byte every half idle period would hold its reservation (and a call
    of the concurrency cap) for as long as it liked if the idle timeout were all: a stream
    must also keep --min-stream-mib-per-second on average, and this one is ended
    (DEADLINE_EXCEEDED, STREAM_IDLE) without applying anything."""
    data = GRADIENT.tobytes()

    def trickle() -> Iterator[Any]:
        (header,) = push_request([dense_header("w", GRADIENT)], [GRADIENT])
        yield pb.PushRequest(gradients=header.gradients, chunks=[chunk(0, 0, data[:1])])
        for offset in range(1, len(data)):
            time.sleep(0.5)  # the attacker's pace, half the idle timeout
            yield pb.PushRequest(chunks=[chunk(0, offset, data[offset : offset + 1])])

    with grpc.insecure_channel(f"127.0.0.1:{bounded.port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        code, reason = status_of(lambda: stub.Push(trickle(), timeout=60))
    with Client(f"127.0.0.1:{bounded.port}", timeout=60) as client:
        assert client.pull(["w"])["w"].tolist() == [0.0] * 4, "the trickled push was applied"
    assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.STREAM_IDLE)


def test_a_checkpoint_larger_than_the_payload_limit_can_be_downloaded(tmp_path: Path) -> None:
    """A download holds a window of the budget, not the checkpoint's size, and files are not
    tensors of one call: a checkpoint larger than --max-payload-gib is served."""
    registry = Registry(limits=Limits(max_payload_bytes=4 * MEBI))
    server = create_server(registry, checkpointer=Checkpointer(registry, tmp_path / "ckpt"))
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
            client.create_optimizer("default", SGD)
            for name in ("a", "b"):  # each under the limit, together over it
                client.create_variables({name: np.ones(3 * MEBI // 4, np.float32)})
            saved = client.save_checkpoint()
            assert saved.size_bytes > 4 * MEBI
            path = client.download_checkpoint(saved.id, tmp_path / "download")
        assert sum(f.stat().st_size for f in Path(path).parent.iterdir()) >= saved.size_bytes
    finally:
        server.stop(None)


def health_answers(port: int) -> None:
    """Fails unless the health service answers SERVING within a second."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError as error:
            pytest.fail(f"health did not answer within a second: {error.code().name}")
    assert response.status == health_pb2.HealthCheckResponse.SERVING


LISTER = """
import sys
from tfps_client import Client
with Client(f"127.0.0.1:{sys.argv[1]}", timeout=120) as reader:
    for _ in range(2):
        assert len(reader.list_variables()) == 1024
"""
"""A reader process listing every variable twice."""

READERS = min(4, max(2, os.cpu_count() or 1))
"""Reader processes listing at once."""


def test_listing_variables_at_the_name_bound_leaves_health_answering() -> None:
    """ListVariables answers a page of about 1 MiB at most, cut in a worker thread from
    variables serialized once: with 1024 variables named at a 64 KiB name bound (128 MiB of
    names, the same bytes as 65536 variables at the default 1 KiB bound), reader processes
    listing at once (one per core) leave health answering within a second. The whole listing
    in one answer did not: the event loop's write of a message of 130 MB could hold it past
    health's deadline. The server and the readers are processes of their own, as in a
    deployment: in one process, the readers' parsing would hold the server's interpreter too."""
    name_bytes = 65_000
    optimizer = "o" * name_bytes
    port = free_port()
    with ServerProcess(["--port", str(port), "--max-name-bytes", "65536"], server_env()) as server:
        server.wait_for(LISTENING)
        with Client(f"127.0.0.1:{port}", timeout=120) as client:
            client.create_optimizer(optimizer, SGD)
            for start in range(0, 1024, 128):  # 128 names of 64 KiB: 8 MiB per request
                names = [
                    f"{index:04d}".ljust(name_bytes, "v") for index in range(start, start + 128)
                ]
                client.create_variables(
                    {name: np.zeros((), np.float32) for name in names}, optimizer=optimizer
                )
        listers = [  # one per core: more would measure the machine, not the server
            subprocess.Popen([sys.executable, "-c", LISTER, str(port)]) for _ in range(READERS)
        ]
        try:
            while any(lister.poll() is None for lister in listers):
                health_answers(port)
        finally:
            codes = [lister.wait(120) for lister in listers]
        assert codes == [0] * READERS
        assert server.terminate() == 0
