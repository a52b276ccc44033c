"""Tokens and roles: the tokens file, its reload, and every role against every RPC.

Constant-time comparison cannot be shown by timing in a test; the interface is
tested instead (no token text in errors or logs, a prefix of a token is unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tfps_client import Client, PermissionDeniedError, Reason, TfpsError, UnauthenticatedError
from tfps_client.errors import from_rpc_error
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_server import Registry, RunningServer, create_server
from tfps_server.auth import (
    MIN_TOKEN_CHARACTERS,
    REQUIRED_ROLE,
    Role,
    TokenFile,
    authorize,
    parse_tokens,
)
from tfps_server.checkpoints import Checkpointer
from tfps_server.errors import PermissionDenied, Unauthenticated

from helpers import assert_same_state, snapshot

SERVICE = pb.DESCRIPTOR.services_by_name["ParameterServer"]
READER = "reader-token-0123456789abcdef"
WORKER = "worker-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
TOKEN_OF = {Role.READER: READER, Role.WORKER: WORKER, Role.ADMIN: ADMIN}
TOKENS_FILE = f"# roles of the test\nreader {READER}\n\nworker {WORKER}\nadmin {ADMIN}\n"
SGD = {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}}
INITIAL = np.arange(8, dtype=np.float32).reshape(4, 2)
GRADIENT = np.full((4, 2), 0.5, np.float32)

LEAST_ROLE = {
    **dict.fromkeys(
        [
            "Pull",
            "PullRows",
            "GetOptimizerWeights",
            "GetOptimizerConfig",
            "GetIterations",
            "GetSlotNames",
            "GetSlot",
            "ListVariables",
            "ListCheckpoints",
            "DownloadCheckpoint",
        ],
        "reader",
    ),
    **dict.fromkeys(
        ["CreateOptimizer", "CreateVariables", "Push", "PushPull", "DeclareShard"], "worker"
    ),
    **dict.fromkeys(
        ["SetOptimizerWeights", "SetHyperparameter", "SaveCheckpoint", "RestoreCheckpoint"],
        "admin",
    ),
}
"""The issue's table: the least role that may call each RPC."""


@dataclass(frozen=True)
class Served:
    """A server requiring tokens, with a variable, its optimizer and a checkpoint."""

    server: RunningServer
    tokens: TokenFile
    checkpoint: int
    weights: list[np.ndarray]
    scratch: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, token: str) -> Client:
        return Client(self.address, timeout=60.0, token=token)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("auth")
    (directory / "tokens").write_text(TOKENS_FILE)
    tokens = TokenFile(directory / "tokens")
    registry = Registry()
    server = create_server(
        registry,
        checkpointer=Checkpointer(registry, directory / "checkpoints", keep=1000),
        tokens=tokens,
    )
    with Client(f"127.0.0.1:{server.port}", token=ADMIN) as admin:
        admin.create_optimizer("default", SGD)
        admin.create_variables({"w": INITIAL})
        checkpoint = admin.save_checkpoint().id
        weights = admin.get_weights("default")
    yield Served(server, tokens, checkpoint, weights, directory / "downloads")
    server.stop(None)


CALLS: dict[str, Callable[[Client, Served], Any]] = {
    "CreateOptimizer": lambda c, s: c.create_optimizer("default", SGD),
    "CreateVariables": lambda c, s: c.create_variables({"w": INITIAL}),
    "ListVariables": lambda c, s: c.list_variables(),
    "Push": lambda c, s: c.push({"w": GRADIENT}),
    "PushPull": lambda c, s: c.push_pull({"w": GRADIENT}, ["w"]),
    "Pull": lambda c, s: c.pull(["w"]),
    "PullRows": lambda c, s: c.pull_rows("w", [0, 2]),
    "GetOptimizerWeights": lambda c, s: c.get_weights("default"),
    "SetOptimizerWeights": lambda c, s: c.set_weights("default", s.weights),
    "GetOptimizerConfig": lambda c, s: c.get_config("default"),
    "GetIterations": lambda c, s: c.iterations("default"),
    "GetSlotNames": lambda c, s: c.slot_names("default"),
    "GetSlot": lambda c, s: c.get_slot("w", "momentum"),
    "SetHyperparameter": lambda c, s: c.set_hyperparameter("default", "learning_rate", 0.05),
    "SaveCheckpoint": lambda c, s: c.save_checkpoint(),
    "ListCheckpoints": lambda c, s: c.list_checkpoints(),
    "RestoreCheckpoint": lambda c, s: c.restore_checkpoint(s.checkpoint),
    "DownloadCheckpoint": lambda c, s: c.download_checkpoint(s.checkpoint, s.scratch),
    "DeclareShard": lambda c, s: _declare_shard(c),
}
"""One call of each RPC that succeeds when the role allows it."""

METHODS = sorted(method.name for method in SERVICE.methods)


def _declare_shard(client: Client) -> None:
    """DeclareShard(0 of 1) with the client's channel and token: the client has no method
    for it (a sharded client declares its shards)."""
    stub = pb_grpc.ParameterServerStub(client._channels[0])
    request = pb.DeclareShardRequest(shard=0, shards=1)
    try:
        stub.DeclareShard(request, metadata=client._settings.metadata, timeout=60)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def test_the_tables_cover_exactly_the_service() -> None:
    assert sorted(REQUIRED_ROLE) == METHODS
    assert sorted(LEAST_ROLE) == METHODS
    assert sorted(CALLS) == METHODS
    assert {name: str(role) for name, role in REQUIRED_ROLE.items()} == LEAST_ROLE


def assert_refused(
    error: TfpsError, code: grpc.StatusCode, reason: Reason, fragments: tuple[str, ...]
) -> None:
    assert error.code == code, error
    assert error.reason == reason, error
    for fragment in fragments:
        assert fragment in error.message, f"{fragment!r} not in {error.message!r}"
    for token in TOKEN_OF.values():
        assert token not in str(error) and token not in str(error.metadata)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("role", list(Role), ids=str)
def test_each_role_against_each_rpc(served: Served, role: Role, method: str) -> None:
    required = Role.parse(LEAST_ROLE[method])
    assert required is not None
    with served.client(TOKEN_OF[role]) as client, served.client(ADMIN) as admin:
        if role >= required:
            CALLS[method](client, served)
            return
        before = snapshot(admin)
        with pytest.raises(PermissionDeniedError) as refused:
            CALLS[method](client, served)
        assert_same_state(snapshot(admin), before)
    assert_refused(
        refused.value,
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.ROLE_REQUIRED,
        (method, f"role {required} or higher", f"role {role}"),
    )
    assert refused.value.metadata == {
        "method": method,
        "expected": str(required),
        "received": str(role),
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("token", "reason"),
    [("", Reason.MISSING_TOKEN), ("unknown-token-0123456789abcdef", Reason.UNKNOWN_TOKEN)],
    ids=["none", "unknown"],
)
def test_calls_without_a_known_token_are_unauthenticated(
    served: Served, method: str, token: str, reason: Reason
) -> None:
    with served.client(token) as client, served.client(ADMIN) as admin:
        before = snapshot(admin)
        with pytest.raises(UnauthenticatedError) as refused:
            CALLS[method](client, served)
        assert_same_state(snapshot(admin), before)
    assert_refused(refused.value, grpc.StatusCode.UNAUTHENTICATED, reason, (method,))
    assert not token or token not in str(refused.value)


def test_the_client_reads_its_token_from_the_environment(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFPS_TOKEN", f"{WORKER}\n")
    with Client(served.address) as client:
        client.push({"w": GRADIENT})
        with pytest.raises(PermissionDeniedError):
            client.save_checkpoint()
    with Client(served.address, token="") as client, pytest.raises(UnauthenticatedError):
        client.pull(["w"])


def test_the_client_refuses_a_token_it_cannot_send_and_never_shows_one() -> None:
    with pytest.raises(ValueError, match="printable ASCII") as refused:
        Client("127.0.0.1:1", token="secret token with spaces")
    assert "secret" not in str(refused.value)
    with Client("127.0.0.1:1", token=ADMIN) as client:
        assert ADMIN not in repr(client)


def test_health_and_reflection_answer_without_a_token(served: Served) -> None:
    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert SERVICE.full_name in reflected_services(channel)


def reflected_services(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    return [service.name for service in answer.list_services_response.service]


def test_reflection_describes_the_service(served: Served) -> None:
    """A reflection client (grpcurl's way: v1alpha, as grpcio-reflection serves it) gets the
    file that declares the service, and with it every request and response message."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE.full_name)
    with grpc.insecure_channel(served.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in answer.file_descriptor_response.file_descriptor_proto
    ]
    declared = {message.name for file in files for message in file.message_type}
    for method in SERVICE.methods:
        assert {method.input_type.name, method.output_type.name} <= declared, method.name


def test_reflection_can_be_turned_off() -> None:
    server = create_server(Registry(), reflection=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                reflected_services(channel)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None)


# Reload ----------------------------------------------------------------------------------------

OTHER = "other-token-0123456789abcdef"


def test_reload_adds_and_removes_tokens_and_keeps_them_when_the_file_breaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"reader {READER}\nadmin {ADMIN}\n")
    tokens = TokenFile(path)
    server = create_server(Registry(), tokens=tokens)
    address = f"127.0.0.1:{server.port}"
    try:
        with Client(address, token=OTHER) as other, Client(address, token=READER) as reader:
            with pytest.raises(UnauthenticatedError):
                other.list_variables()
            path.write_text(f"admin {ADMIN}\nworker {OTHER}\n")
            assert tokens.reload()
            other.create_optimizer("default", SGD)
            with pytest.raises(UnauthenticatedError) as removed:
                reader.list_variables()
            assert removed.value.reason == Reason.UNKNOWN_TOKEN

            path.write_text(f"admin {ADMIN}\nworker {OTHER} {READER}\n")
            with caplog.at_level(logging.ERROR, logger="tfps_server.auth"):
                assert not tokens.reload()
            assert "line 2" in caplog.text and str(path) in caplog.text
            for token in (ADMIN, OTHER, READER):
                assert token not in caplog.text
            assert other.list_variables() == []
            with pytest.raises(UnauthenticatedError):
                reader.list_variables()
    finally:
        server.stop(None)


def test_a_changed_tokens_file_is_read_again_without_a_signal(tmp_path: Path) -> None:
    """A Secret update swaps the file under the server: the next lookup after the check
    interval sees the new tokens; a broken replacement keeps the old ones."""
    path = tmp_path / "tokens"
    path.write_text(f"reader {READER}\n")
    tokens = TokenFile(path, check_every_seconds=0)
    assert tokens.role_of(OTHER) is None
    replacement = tmp_path / "tokens.new"
    replacement.write_text(f"admin {OTHER}\n")
    replacement.replace(path)  # a new inode, as the kubelet's symlink swap makes
    assert tokens.role_of(OTHER) is Role.ADMIN
    assert tokens.role_of(READER) is None
    path.write_text("admin\n")
    assert tokens.role_of(OTHER) is Role.ADMIN


def test_lookups_look_for_changes_at_most_once_per_interval(tmp_path: Path) -> None:
    """Within the interval a lookup does not touch the file; a reload still does."""
    path = tmp_path / "tokens"
    path.write_text(f"reader {READER}\n")
    tokens = TokenFile(path, check_every_seconds=3600)
    path.write_text(f"worker {READER}\n")
    assert tokens.role_of(READER) is Role.READER
    assert tokens.reload()
    assert tokens.role_of(READER) is Role.WORKER


def test_a_tokens_file_that_becomes_unreadable_keeps_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"reader {READER}\n")
    tokens = TokenFile(path)
    path.unlink()
    assert not tokens.reload()
    assert tokens.role_of(READER) is Role.READER


# The tokens file ------------------------------------------------------------------------------


def test_a_tokens_file_with_comments_blank_lines_and_windows_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(
        f"\ufeff# tfps tokens\r\n\r\n  reader\t{READER}  \r\n  # admins\r\nadmin {ADMIN}".encode()
    )
    tokens = TokenFile(path)
    assert len(tokens) == 2
    assert tokens.summary() == "2 tokens: 1 admin, 1 reader"
    assert tokens.role_of(READER) is Role.READER
    assert tokens.role_of(ADMIN) is Role.ADMIN
    assert tokens.role_of(WORKER) is None
    assert tokens.role_of(READER[:-1]) is None
    assert tokens.role_of(READER + "0") is None
    assert tokens.role_of("") is None


SECRET = "s3cret-0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (f"reader {READER}\nworker\n", ["line 2", "'ROLE TOKEN'", "received 1 fields"]),
        (f"reader {SECRET} extra\n", ["line 1", "received 3 fields"]),
        (f"{SECRET} reader\n", ["line 1", "expected a role (reader, worker, admin)"]),
        (f"Admin {SECRET}\n", ["line 1", "expected a role"]),
        (f"root {SECRET}\n", ["line 1", "expected a role"]),
        ("reader short-token\n", ["line 1", f"at least {MIN_TOKEN_CHARACTERS}", "received 11"]),
        (f"reader {SECRET}\u00e9\n", ["line 1", "not all of them printable ASCII"]),
        (f"reader {SECRET}\nadmin {SECRET}\n", ["line 2", "the token of line 1 again"]),
        ("# only comments\n\n", ["expected at least one 'ROLE TOKEN' line, received none"]),
        ("", ["received none"]),
    ],
    ids=[
        "one-field",
        "three-fields",
        "token-first",
        "role-case",
        "unknown-role",
        "short",
        "non-ascii",
        "duplicate",
        "comments-only",
        "empty",
    ],
)
def test_malformed_tokens_files_are_refused_by_line_without_showing_tokens(
    text: str, fragments: list[str]
) -> None:
    with pytest.raises(ValueError) as refused:
        parse_tokens(text, "/etc/tfps/tokens")
    message = str(refused.value)
    assert message.startswith("tokens file /etc/tfps/tokens")
    for fragment in fragments:
        assert fragment in message, message
    for secret in (SECRET, READER, "short-token"):
        assert secret not in message


def test_a_tokens_file_that_is_not_utf8_is_refused_by_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(f"reader {READER}\nadmin ".encode() + b"\xff" * 20 + b"\n")
    with pytest.raises(ValueError, match=r"line 2: .*not all of them printable ASCII"):
        TokenFile(path)


def test_a_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tokens file .*missing: cannot read it \(No such file"):
        TokenFile(tmp_path / "missing")


# authorize -------------------------------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> TokenFile:
    (tmp_path / "tokens").write_text(TOKENS_FILE)
    return TokenFile(tmp_path / "tokens")


def test_an_open_server_authorizes_everything_without_a_token() -> None:
    assert authorize(None, "RestoreCheckpoint", []) is None


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {WORKER}")],
        [("Authorization", f"bearer {WORKER}")],
        [("authorization", f"BEARER   {WORKER}  ")],
        [("authorization", f"Bearer\t{WORKER}".encode())],
        [("user-agent", "grpc-python"), ("authorization", f"Bearer {WORKER}")],
    ],
    ids=["canonical", "capitalized", "spaces", "bytes", "among-others"],
)
def test_authorize_reads_one_bearer_token(
    tokens: TokenFile, metadata: list[tuple[str, str | bytes]]
) -> None:
    assert authorize(tokens, "Push", metadata) is Role.WORKER


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", f"Basic {WORKER}")],
        [("authorization", WORKER)],
        [("authorization", "Bearer ")],
        [("authorization", f"Bearer {WORKER}"), ("authorization", f"Bearer {ADMIN}")],
        [("x-authorization", f"Bearer {WORKER}")],
    ],
    ids=["none", "basic", "no-scheme", "empty", "two", "other-key"],
)
def test_authorize_refuses_calls_without_one_bearer_token(
    tokens: TokenFile, metadata: list[tuple[str, str | bytes]]
) -> None:
    with pytest.raises(Unauthenticated) as refused:
        authorize(tokens, "Push", metadata)
    assert refused.value.reason == Reason.MISSING_TOKEN
    assert refused.value.metadata == {"method": "Push"}
    assert WORKER not in refused.value.message


def test_authorize_names_the_role_expected_and_received(tokens: TokenFile) -> None:
    with pytest.raises(PermissionDenied) as refused:
        authorize(tokens, "SaveCheckpoint", [("authorization", f"Bearer {WORKER}")])
    assert refused.value.reason == Reason.ROLE_REQUIRED
    assert refused.value.metadata == {
        "method": "SaveCheckpoint",
        "expected": "admin",
        "received": "worker",
    }
    assert authorize(tokens, "SaveCheckpoint", [("authorization", f"Bearer {ADMIN}")]) is (
        Role.ADMIN
    )


def test_a_method_missing_from_the_table_needs_admin(tokens: TokenFile) -> None:
    with pytest.raises(PermissionDenied):
        authorize(tokens, "DropEverything", [("authorization", f"Bearer {WORKER}")])
    assert authorize(tokens, "DropEverything", [("authorization", f"Bearer {ADMIN}")]) is (
        Role.ADMIN
    )


def test_roles_are_ordered_and_spelled_as_in_the_file() -> None:
    assert Role.READER < Role.WORKER < Role.ADMIN
    assert [str(role) for role in Role] == ["reader", "worker", "admin"]
    assert Role.parse("worker") is Role.WORKER
    assert Role.parse("WORKER") is None
    assert Role.parse("root") is None
