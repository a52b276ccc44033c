"""Refusals in gRPC's standard rich error model, as a client in any language reads them.

Every refusal carries a ``google.rpc.Status`` in the trailing metadata entry
``grpc-status-details-bin``, holding one ``google.rpc.ErrorInfo``: the reason, the domain
``tfps.dev`` and the facts as strings. These tests read it with grpcio-status and the
generated stub only (no tfps client), for a unary, a client-streaming, a server-streaming
and a bidirectional RPC, and for refusals made by the interceptors; the typed errors of
tfps_client carry the same reason and facts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tfps_client import Client, NotFoundError, UnauthenticatedError
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_server import Registry, RunningServer, create_server
from tfps_server.auth import TokenFile

from helpers import dense_header, push_request

READER = "reader-token-0123456789abcdef"
GRADIENT = np.ones(3, np.float32)

RawCall = Callable[[grpc.Channel], object]
"""One call with the generated stub (or a bare channel) that the server refuses."""


@pytest.fixture(scope="module")
def open_server() -> Iterator[RunningServer]:
    """A server without tokens and with an empty state."""
    server = create_server(Registry())
    yield server
    server.stop(None)


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that requires tokens; it knows one, of the reader role."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"reader {READER}\n")
    server = create_server(Registry(), tokens=TokenFile(Path(tokens)))
    yield server
    server.stop(None)


def _stub(channel: grpc.Channel) -> pb_grpc.ParameterServerStub:
    return pb_grpc.ParameterServerStub(channel)


def _error_info(server: RunningServer, call: RawCall) -> tuple[grpc.StatusCode, dict[str, object]]:
    """The status code and the ErrorInfo of a refused call, read as grpcio-status reads them;
    nothing else travels in the trailing metadata."""
    address = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        call(channel)
    error = raised.value
    assert [key for key, _ in error.trailing_metadata()] == ["grpc-status-details-bin"]
    status = rpc_status.from_call(error)  # also checks the code and message match the call's
    assert status is not None and status.message
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info), detail.type_url
    return error.code(), {
        "reason": info.reason,
        "domain": info.domain,
        "metadata": dict(info.metadata),
    }


REFUSALS: dict[str, tuple[str, RawCall, grpc.StatusCode, str, dict[str, str]]] = {
    "unary": (
        "open_server",
        lambda c: _stub(c).GetIterations(pb.GetIterationsRequest(optimizer="nope"), timeout=30),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_OPTIMIZER",
        {"optimizer": "nope"},
    ),
    "client-streaming": (
        "open_server",
        lambda c: _stub(c).Push(
            iter(push_request([dense_header("nope", GRADIENT)], [GRADIENT])), timeout=30
        ),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_VARIABLE",
        {"variable": "nope"},
    ),
    "server-streaming": (
        "open_server",
        lambda c: list(_stub(c).Pull(pb.PullRequest(names=["nope"]), timeout=30)),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_VARIABLE",
        {"variable": "nope"},
    ),
    "bidirectional": (
        "open_server",
        lambda c: list(_stub(c).PushPull(iter([pb.PushPullRequest(pull=["nope"])]), timeout=30)),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_VARIABLE",
        {"variable": "nope"},
    ),
    "name-not-ascii": (  # the fact is the name as sent, not escaped as the message has it
        "open_server",
        lambda c: _stub(c).GetIterations(
            pb.GetIterationsRequest(optimizer="Pr\u00e9\u65e5"), timeout=30
        ),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_OPTIMIZER",
        {"optimizer": "Pr\u00e9\u65e5"},
    ),
    "long-name": (  # the fact is cut to 200 UTF-8 bytes, on a character's boundary
        "open_server",
        lambda c: _stub(c).GetIterations(
            pb.GetIterationsRequest(optimizer="\u00e9" * 300), timeout=30
        ),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_OPTIMIZER",
        {"optimizer": "\u00e9" * 100 + "... (300 characters)"},
    ),
    "undecodable-request": (  # refused by the decoding interceptor
        "open_server",
        lambda c: c.unary_unary("/tfps.v1.ParameterServer/GetIterations")(b"\xff", timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        {"received": "1"},
    ),
    "no-token": (  # refused by the admission interceptor
        "guarded_server",
        lambda c: list(_stub(c).Pull(pb.PullRequest(names=["w"]), timeout=30)),
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_TOKEN",
        {"method": "Pull"},
    ),
    "role-required": (  # refused by the admission interceptor
        "guarded_server",
        lambda c: _stub(c).Push(
            iter(push_request([dense_header("w", GRADIENT)], [GRADIENT])),
            metadata=[("authorization", f"Bearer {READER}")],
            timeout=30,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_REQUIRED",
        {"method": "Push", "expected": "worker", "received": "reader"},
    ),
}
"""Refusals of every kind of RPC and of each interceptor: the server fixture, the call, and
the status code, reason and facts it is answered with."""


@pytest.mark.parametrize(
    ("server", "call", "code", "reason", "metadata"), REFUSALS.values(), ids=REFUSALS.keys()
)
def test_a_refusal_carries_error_info_in_the_standard_status_details(
    request: pytest.FixtureRequest,
    server: str,
    call: RawCall,
    code: grpc.StatusCode,
    reason: str,
    metadata: dict[str, str],
) -> None:
    assert _error_info(request.getfixturevalue(server), call) == (
        code,
        {"reason": reason, "domain": "tfps.dev", "metadata": metadata},
    )


def test_the_clients_typed_errors_carry_the_reason_and_facts(
    open_server: RunningServer, guarded_server: RunningServer
) -> None:
    with Client(f"127.0.0.1:{open_server.port}") as client, pytest.raises(NotFoundError) as unknown:
        client.push_pull({}, pull=["nope"])
    assert (unknown.value.reason, unknown.value.metadata) == (
        "UNKNOWN_VARIABLE",
        {"variable": "nope"},
    )
    anonymous_client = Client(f"127.0.0.1:{guarded_server.port}", token="")
    with anonymous_client as client, pytest.raises(UnauthenticatedError) as anonymous:
        client.pull(["w"])
    assert (anonymous.value.reason, anonymous.value.metadata) == (
        "MISSING_TOKEN",
        {"method": "Pull"},
    )
