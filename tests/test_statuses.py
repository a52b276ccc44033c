"""No request a client can send is answered INTERNAL or UNKNOWN.

Every refusal has its precise status, a reason, a message of bounded length naming what
was wrong, and changes nothing; the server answers the next request. The tables cover
bytes that are not the request message (every RPC), absurd tensor shapes, hostile JSON,
echoed input of a megabyte, out-of-range options, steps and ids, and every field of
every request message set to empty, huge, negative and non-finite values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from tfps_client import Client, IndexedSlices, NotFoundError, Sync, TfpsError
from tfps_client.errors import error_class, from_rpc_error
from tfps_client.wire import codec, tensor_pb2
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire.checks import MAX_DIMENSION
from tfps_server import Registry, RunningServer, create_server
from tfps_server.aggregation import MAX_SYNC_TIMEOUT_SECONDS
from tfps_server.checkpoints import Checkpointer
from tfps_server.errors import ECHO_CHARACTERS, STATUS_MESSAGE_CHARACTERS
from tfps_server.limits import Limits
from tfps_server.service import as_server_error
from tfps_server.validation import MAX_JSON_DEPTH

from helpers import (
    LocalReference,
    assert_all_bitwise_equal,
    assert_same_state,
    call_raw,
    chunk,
    dense_header,
    raw_stub,
    snapshot,
    spec,
)

Code = grpc.StatusCode
F32 = tensor_pb2.DATA_TYPE_FLOAT32
INT64 = tensor_pb2.DATA_TYPE_INT64
SERVICE = pb.DESCRIPTOR.services_by_name["ParameterServer"]
METHODS = {method.name: method for method in SERVICE.methods}

MEBI = 1 << 20
BIG = "n" * MEBI
"""A megabyte of name: echoed whole, it would overflow gRPC's 8 KiB of metadata."""
LONG_VARIABLE = "long/" + "v" * MEBI
ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
NAMED = {"class_name": "SGD", "config": {"name": "c" * MEBI}}
"""An optimizer whose config holds a megabyte: a conflicting declaration echoes it."""
OPTIMIZERS = ("default", "ada", "named")
LIMITS = Limits(max_name_bytes=2 * MEBI, max_id_bytes=2 * MEBI, max_config_bytes=4 * MEBI)
"""The world's limits: names, ids and configs of a megabyte pass them, so that their echo is
what is tested here (tests/test_bounds.py tests the bounds themselves)."""
MAX_BOUNDARIES = LIMITS.max_schedule_boundaries
ROWS_LIMIT = 1 << 16
"""The world's max_payload_bytes: PullRows may answer at most this many bytes."""
MAX_MESSAGE = STATUS_MESSAGE_CHARACTERS + 40
"""Longest message a client may see: the cut, and the note of how long it was."""
MAX_DETAIL = ECHO_CHARACTERS + 40
"""Longest metadata value a client may see."""


@dataclass
class World:
    """A server with variables of three optimizers, shared by the refusals of this module."""

    running: RunningServer
    client: Client
    changed: bool = False
    """Set while a request that must change nothing runs, cleared once that is checked."""

    @property
    def port(self) -> int:
        """The server's port."""
        return self.running.port

    def raw(self, rpc: str, request: Any) -> Any:
        """Calls an RPC with protobuf messages through the generated stub."""
        with raw_stub(self.port) as stub:
            return call_raw(getattr(stub, rpc), request)

    def call_bytes(self, method: MethodDescriptor, messages: Sequence[bytes]) -> Any:
        """Calls an RPC with request bytes as they are (identity serializers)."""
        kind = "_".join(
            "stream" if streaming else "unary"
            for streaming in (method.client_streaming, method.server_streaming)
        )
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            call = getattr(channel, kind)(f"/{SERVICE.full_name}/{method.name}")
            request = iter(messages) if method.client_streaming else messages[0]
            try:
                response = call(request, timeout=60)
                return list(response) if method.server_streaming else response
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None

    def close(self) -> None:
        """Stops the client and the server."""
        self.client.close()
        self.running.stop(None)


def _build_world() -> World:
    """Dense, sparse, megabyte-named and zero-element variables, after one push."""
    running = create_server(
        Registry(limits=dataclasses.replace(LIMITS, max_payload_bytes=ROWS_LIMIT)), "127.0.0.1:0"
    )
    client = Client(f"127.0.0.1:{running.port}", timeout=120.0)
    client.create_optimizer("default", ADAM)
    client.create_optimizer("ada", {"class_name": "Adagrad"})
    client.create_optimizer("named", NAMED)
    client.create_variables(
        {
            "dense": np.arange(6, dtype=np.float32).reshape(3, 2),
            "emb": np.ones((5, 2), np.float32),
            LONG_VARIABLE: np.ones(1, np.float32),
        }
    )
    client.create_variables({"hollow": np.zeros((3, 0), np.float32)}, optimizer="ada")
    client.push({"dense": np.ones((3, 2), np.float32), "emb": _slices([[1.0, 2.0]], [4])})
    return World(running, client)


class _Worlds:
    """Keeps one world for the module, and builds a fresh one after a test that changed it,
    so that one failure does not fail the tests after it."""

    def __init__(self) -> None:
        self._world: World | None = None

    def clean(self) -> World:
        """A world in its initial state."""
        if self._world is not None and self._world.changed:
            self.close()
        if self._world is None:
            self._world = _build_world()
        return self._world

    def close(self) -> None:
        """Stops the current world."""
        if self._world is not None:
            self._world.close()
            self._world = None


@pytest.fixture(scope="module")
def worlds() -> Iterator[_Worlds]:
    """The module's worlds."""
    keeper = _Worlds()
    yield keeper
    keeper.close()


@pytest.fixture
def world(worlds: _Worlds) -> World:
    """The shared world, in its initial state."""
    return worlds.clean()


@pytest.fixture(autouse=True)
def no_server_faults(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No request of this module makes the server log an error or a traceback."""
    yield
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not faults, "\n".join(r.getMessage() for r in faults)


def _slices(values: Any, indices: Any, dense_shape: tuple[int, ...] | None = None) -> Any:
    return IndexedSlices(np.asarray(values, np.float32), np.asarray(indices), dense_shape)


def assert_status(
    error: TfpsError,
    code: grpc.StatusCode,
    reason: str,
    fragments: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Asserts the status, its error class and reason, a bounded message holding
    ``fragments``, and bounded metadata holding ``metadata``."""
    assert (error.code, type(error)) == (code, error_class(code)), str(error)[:2000]
    assert error.reason == reason, f"reason {error.reason!r}: {error.message[:2000]}"
    assert len(error.message) <= MAX_MESSAGE, f"a message of {len(error.message)} characters"
    for fragment in fragments:
        assert fragment in error.message, f"{fragment!r} not in {error.message!r}"
    for key, value in error.metadata.items():
        assert len(value) <= MAX_DETAIL, f"metadata {key} of {len(value)} characters"
    for key, value in (metadata or {}).items():
        assert error.metadata.get(key) == value, f"metadata {error.metadata} lacks {key}={value!r}"


@contextmanager
def unchanged(world: World) -> Iterator[None]:
    """Asserts that nothing observable changes inside, no optimizer "new" appearing either;
    the snapshot after shows that the server still answers."""
    before = snapshot(world.client, OPTIMIZERS)
    world.changed = True
    yield
    assert_same_state(snapshot(world.client, OPTIMIZERS), before)
    with pytest.raises(NotFoundError):
        world.client.iterations("new")
    world.changed = False


def refused(
    world: World,
    call: Callable[[World], object],
    code: grpc.StatusCode,
    reason: str,
    fragments: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> TfpsError:
    """Makes a call that must be refused; asserts the refusal, and that nothing changed."""
    with unchanged(world), pytest.raises(TfpsError) as caught:
        call(world)
    assert_status(caught.value, code, reason, fragments, metadata)
    return caught.value


@dataclass(frozen=True)
class Case:
    """One refused request and what its refusal must say."""

    id: str
    call: Callable[[World], object]
    code: grpc.StatusCode
    reason: str
    fragments: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


def _run(world: World, case: Case) -> TfpsError:
    return refused(world, case.call, case.code, case.reason, case.fragments, case.metadata)


# Bytes that are not the request message ----------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bad_utf8_paths(descriptor: Descriptor) -> list[list[FieldDescriptor]]:
    """Paths to the first string field of the message, and of its first message field."""
    paths: list[list[FieldDescriptor]] = []
    strings = [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]
    if strings:
        paths.append([strings[0]])
    for outer in descriptor.fields:
        inner = outer.message_type
        nested = [f for f in inner.fields if f.type == FieldDescriptor.TYPE_STRING] if inner else []
        if nested:
            paths.append([outer, nested[0]])
            break
    return paths


def _bad_utf8(path: Sequence[FieldDescriptor]) -> bytes:
    """A message whose string field at ``path`` holds bytes that are not UTF-8."""
    payload = b"\xff\xfeok"
    for step in reversed(path):
        payload = _length_delimited(step.number, payload)
    return payload


def _valid_first(method: str, world: World) -> bytes:
    """A first stream message that, alone, would change the state."""
    value = np.full((3, 2), 2.0, np.float32)
    if method == "CreateVariables":
        declaration = pb.VariableDeclaration(name="fresh", spec=codec.spec_of(value))
        message: Message = pb.CreateVariablesRequest(
            optimizer="default", variables=[declaration], chunks=[chunk(0, 0, value.tobytes())]
        )
    elif method == "SetOptimizerWeights":
        weights = [np.int64(7), *world.client.get_weights("default")[1:]]
        message = next(
            codec.stream_messages(
                pb.SetOptimizerWeightsRequest,
                {"optimizer": "default", "weights": [codec.spec_of(w) for w in weights]},
                weights,
            )
        )
    else:
        message = pb.PushRequest(
            gradients=[dense_header("dense", value)], chunks=[chunk(0, 0, value.tobytes())]
        )
    return message.SerializeToString()


def _malformed_cases() -> list[Any]:
    cases = []
    for method in SERVICE.methods:
        variants: list[tuple[str, Callable[[World], list[bytes]]]] = [
            ("garbage", lambda world: [b"\xff\xff\xff"])
        ]
        for path in _bad_utf8_paths(method.input_type):
            data = _bad_utf8(path)
            label = ".".join(step.name for step in path)
            variants.append((f"bad-utf8-{label}", lambda world, data=data: [data]))
        if method.client_streaming:
            variants.append(
                (
                    "after-a-valid-message",
                    lambda world, name=method.name: [_valid_first(name, world), b"\x0a\x01"],
                )
            )
        cases += [pytest.param(method, make, id=f"{method.name}-{v}") for v, make in variants]
    return cases


@pytest.mark.parametrize(("method", "messages"), _malformed_cases())
def test_bytes_that_do_not_parse_are_invalid_argument_with_one_log_line(
    world: World,
    caplog: pytest.LogCaptureFixture,
    method: MethodDescriptor,
    messages: Callable[[World], list[bytes]],
) -> None:
    """Garbage, or a string that is not UTF-8, is MALFORMED_REQUEST, logged in one line,
    never gRPC's traceback; a stream with a valid message before applies nothing."""
    sent = messages(world)
    caplog.clear()
    refused(
        world,
        lambda w: w.call_bytes(method, sent),
        Code.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        (f"/{SERVICE.full_name}/{method.name}", "do not parse"),
        {"received": str(len(sent[-1]))},
    )
    logged = [r for r in caplog.records if r.name == "tfps_server.interceptors"]
    assert [(r.levelno, r.exc_info) for r in logged] == [(logging.WARNING, None)]
    assert "Exception deserializing" not in caplog.text


# Tensors ---------------------------------------------------------------------------------


def _create(*specs: tensor_pb2.TensorSpec) -> Callable[[World], Any]:
    """A CreateVariables stream declaring "fresh0", ... with the given specs and no bytes."""

    def call(world: World) -> Any:
        declared = [pb.VariableDeclaration(name=f"fresh{i}", spec=s) for i, s in enumerate(specs)]
        return world.raw(
            "CreateVariables",
            iter([pb.CreateVariablesRequest(optimizer="default", variables=declared)]),
        )

    return call


def _push_header(header: pb.GradientHeader, *arrays: np.ndarray) -> Callable[[World], Any]:
    return lambda world: world.raw(
        "Push", codec.stream_messages(pb.PushRequest, {"gradients": [header]}, arrays)
    )


def _sparse_header(
    values: tensor_pb2.TensorSpec, indices: tensor_pb2.TensorSpec, dense_shape: Sequence[int] = ()
) -> pb.GradientHeader:
    return pb.GradientHeader(
        variable="emb",
        sparse=tensor_pb2.IndexedSlicesSpec(
            values=values, indices=indices, dense_shape=dense_shape
        ),
    )


def _malformed(id: str, call: Callable[[World], Any], *fragments: str) -> Case:
    return Case(id, call, Code.INVALID_ARGUMENT, "MALFORMED_TENSOR", fragments)


def _too_wide(*shape: int) -> Case:
    return Case(
        f"variable-dimension-{'x'.join(map(str, shape))}",
        _create(spec(F32, *shape)),
        Code.INVALID_ARGUMENT,
        "SHAPE_MISMATCH",
        ("variable 'fresh0'", "dimensions of at most 2**31 - 1", str(list(shape))),
        {"variable": "fresh0", "received": str(list(shape))},
    )


def _indices(dtype: Any, *shape: int) -> Case:
    indices = np.zeros(shape, dtype)
    return Case(
        f"sparse-indices-{np.dtype(dtype).name}-rank-{len(shape)}",
        lambda world: world.client.push(
            {"emb": IndexedSlices(np.ones((1, 2), np.float32), indices)}
        ),
        Code.INVALID_ARGUMENT,
        "INVALID_INDICES",
        ("'emb'", "int32 or int64 indices of rank 1", np.dtype(dtype).name),
        {"variable": "emb"},
    )


def _row(id: str, call: Callable[[Client], object], received: int) -> Case:
    return Case(
        id,
        lambda world: call(world.client),
        Code.INVALID_ARGUMENT,
        "INDEX_OUT_OF_RANGE",
        ("'emb'", "[0, 5)", f"received {received}"),
        {"variable": "emb", "received": str(received)},
    )


EXTENT = "expected a shape whose extent is at most 2**62 bytes"
ONE_ROW = np.ones((1, 2), np.float32)
TENSOR_CASES = [
    _malformed("zero-size-huge-dimension", _create(spec(F32, 0, 2**62)), EXTENT),
    _malformed("huge-dimension-zero-size", _create(spec(F32, 2**62, 0)), EXTENT),
    _malformed("zero-size-int64-max", _create(spec(F32, 0, 2**63 - 1)), EXTENT),
    _malformed("zero-size-extent-overflow", _create(spec(F32, 0, 2**40, 2**40)), EXTENT),
    _malformed("rank-33", _create(spec(F32, *[1] * 33)), "at most 32 dimensions, received 33"),
    _malformed("rank-100000", _create(spec(F32, *[0] * 100_000)), "received 100000"),
    _malformed(
        "push-dense-zero-size-huge-dimension",
        _push_header(
            pb.GradientHeader(
                variable="dense", dense=tensor_pb2.DenseSpec(tensor=spec(F32, 0, 2**62))
            )
        ),
        EXTENT,
    ),
    _malformed(
        "push-sparse-values-rank-33",
        _push_header(_sparse_header(spec(F32, *[1] * 33), spec(INT64, 1))),
        "at most 32 dimensions",
    ),
    _malformed(
        "push-sparse-indices-huge",
        _push_header(_sparse_header(spec(F32, 0, 2), spec(INT64, 2**62))),
        EXTENT,
    ),
    _malformed(
        "set-weights-rank-33",
        lambda world: world.raw(
            "SetOptimizerWeights",
            iter(
                [
                    pb.SetOptimizerWeightsRequest(
                        optimizer="default", weights=[spec(INT64, *[1] * 33)]
                    )
                ]
            ),
        ),
        "at most 32 dimensions",
    ),
    _too_wide(0, MAX_DIMENSION + 1),
    _too_wide(MAX_DIMENSION + 1, 0),
    _too_wide(0, 2**59),
    Case(
        "sparse-rows-without-elements",
        lambda world: world.client.push({"hollow": _slices(np.ones((1, 0)), [1])}),
        Code.INVALID_ARGUMENT,
        "SHAPE_MISMATCH",
        ("'hollow'", "expected a dense gradient", "hold no elements"),
        {"variable": "hollow"},
    ),
    Case(
        "sparse-no-rows-without-elements",
        lambda world: world.client.push(
            {"hollow": _slices(np.ones((0, 0)), np.zeros(0, np.int64))}
        ),
        Code.INVALID_ARGUMENT,
        "SHAPE_MISMATCH",
        ("'hollow'", "hold no elements"),
    ),
    Case(
        "dense-shape-of-100000-dimensions",
        _push_header(
            _sparse_header(codec.spec_of(ONE_ROW), spec(INT64, 1), [-1] * 100_000),
            ONE_ROW,
            np.zeros(1, np.int64),
        ),
        Code.INVALID_ARGUMENT,
        "SHAPE_MISMATCH",
        ("'emb'", "expected dense_shape [5, 2]", "received 100000 dimensions"),
        {"variable": "emb", "received": "100000 dimensions"},
    ),
    Case(
        "sparse-values-int32",
        lambda world: world.client.push({"emb": IndexedSlices(np.ones((1, 2), np.int32), [0])}),
        Code.INVALID_ARGUMENT,
        "DTYPE_MISMATCH",
        ("'emb'", "received int32"),
    ),
    _indices(np.float16, 1),
    _indices(np.float64, 1),
    _indices(ml_dtypes.bfloat16, 1),
    _indices(np.int64),
    _indices(np.int32, 1, 1),
    _row(
        "sparse-index-int64-min", lambda c: c.push({"emb": _slices(ONE_ROW, [-(2**63)])}), -(2**63)
    ),
    _row(
        "sparse-index-int64-max",
        lambda c: c.push({"emb": _slices(ONE_ROW, [2**63 - 1])}),
        2**63 - 1,
    ),
    _row("pull-rows-int64-min", lambda c: c.pull_rows("emb", [0, -(2**63)]), -(2**63)),
    _row("pull-rows-int64-max", lambda c: c.pull_rows("emb", [2**63 - 1]), 2**63 - 1),
    Case(
        "pull-rows-answer-too-large",
        lambda world: world.client.pull_rows("emb", np.zeros(ROWS_LIMIT // 8 + 1, np.int64)),
        Code.RESOURCE_EXHAUSTED,
        "TOO_LARGE",
        ("'emb'", f"at most {ROWS_LIMIT} bytes", f"{ROWS_LIMIT // 8 + 1} rows of 8 bytes"),
        {"variable": "emb", "expected": str(ROWS_LIMIT), "received": str(ROWS_LIMIT + 8)},
    ),
]


@pytest.mark.parametrize("case", TENSOR_CASES, ids=lambda case: case.id)
def test_absurd_tensors_are_refused_precisely(world: World, case: Case) -> None:
    """Shapes numpy or TensorFlow cannot hold, and gradients no kernel can apply."""
    _run(world, case)


def test_pull_rows_up_to_the_limit_and_pulls_each_variable_once(world: World) -> None:
    """The row limit is inclusive; a name pulled twice is answered once."""
    rows = world.client.pull_rows("emb", np.zeros(ROWS_LIMIT // 8, np.int64))
    assert rows.shape == (ROWS_LIMIT // 8, 2)
    (header, *_) = world.raw("Pull", pb.PullRequest(names=["dense", "emb"] * 1000))
    assert [t.name for t in header.tensors] == ["dense", "emb"]


@pytest.mark.parametrize("name", ["Adagrad", "Ftrl", "Adam"])
def test_zero_element_variables_of_the_largest_dimensions_apply_dense_gradients(
    client: Client, name: str
) -> None:
    """Slots of the variable's shape (tf.fill once wrapped 2**59 to 0), and updates apply."""
    client.create_optimizer("default", {"class_name": name})
    shapes = {"wide": (0, MAX_DIMENSION), "tall": (MAX_DIMENSION, 0), "hollow": (3, 0)}
    client.create_variables({n: np.zeros(s, np.float32) for n, s in shapes.items()})
    client.push({n: np.zeros(s, np.float32) for n, s in shapes.items()})
    assert client.iterations("default") == 1
    for variable, shape in shapes.items():
        for slot in client.slot_names("default"):
            assert client.get_slot(variable, slot).shape == shape
    assert {n: v.shape for n, v in client.pull().items()} == shapes


# JSON ------------------------------------------------------------------------------------

HOSTILE_JSON = [
    pytest.param(
        '{"class_name": "SGD", "config": {"momentum": ' + "9" * 400 + "}}",
        "out of the range of int64",
        id="400-digit-integer",
    ),
    pytest.param("-9223372036854775809", "out of the range of int64", id="int64-min-minus-one"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested at most 32 deep", id="100000-deep-arrays"),
    pytest.param(
        '{"a": ' * 100_000 + "1" + "}" * 100_000, "nested at most 32 deep", id="100000-deep-objects"
    ),
    pytest.param(
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
        f"nested at most {MAX_JSON_DEPTH} deep",
        id="one-too-deep",
    ),
    pytest.param('{"class_name": "SGD\\ud800"}', "encodable as UTF-8", id="lone-surrogate"),
    pytest.param(
        '{"class_name": "SGD", "config": {"\\udfff": 1}}',
        "encodable as UTF-8",
        id="lone-surrogate-key",
    ),
    pytest.param(
        '{"class_name": "SGD", "config": {"momentum": NaN}}', "NaN is not a finite number", id="NaN"
    ),
    pytest.param(
        '{"class_name": "SGD", "config": {"momentum": Infinity}}',
        "Infinity is not a finite",
        id="Infinity",
    ),
    pytest.param("-Infinity", "-Infinity is not a finite number", id="minus-Infinity"),
    pytest.param(
        '{"class_name": "SGD", "config": {"momentum": 1e400}}',
        "1e400 overflows a float",
        id="1e400",
    ),
    pytest.param("-1e400", "overflows a float", id="minus-1e400"),
    pytest.param("", "expected JSON", id="empty"),
]


def _create_optimizer(config_json: str) -> Callable[[World], Any]:
    return lambda world: world.raw(
        "CreateOptimizer", pb.CreateOptimizerRequest(name="new", config_json=config_json)
    )


def _set_schedule(schedule_json: str) -> Callable[[World], Any]:
    return lambda world: world.raw(
        "SetHyperparameter",
        pb.SetHyperparameterRequest(
            optimizer="default", name="learning_rate", schedule_json=schedule_json
        ),
    )


@pytest.mark.parametrize(("text", "fragment"), HOSTILE_JSON)
def test_hostile_config_json_is_invalid_config(world: World, text: str, fragment: str) -> None:
    """An optimizer config that Python's parser takes, or chokes on, is refused alike."""
    refused(
        world,
        _create_optimizer(text),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
        ("optimizer 'new': optimizer config: ", fragment),
        {"optimizer": "new"},
    )


@pytest.mark.parametrize(("text", "fragment"), HOSTILE_JSON)
def test_hostile_schedule_json_is_invalid_config(world: World, text: str, fragment: str) -> None:
    """A learning-rate schedule is parsed by the same rules as a config."""
    refused(
        world,
        _set_schedule(text),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
        ("optimizer 'default': schedule JSON: ", fragment),
        {"optimizer": "default"},
    )


@pytest.mark.parametrize("text", ["true", "1e39", "[]", "null", '"ExponentialDecay"', "0"])
def test_schedule_json_that_is_not_an_object_is_invalid_config(world: World, text: str) -> None:
    """Valid JSON of another kind is refused before it reaches Keras."""
    refused(
        world,
        _set_schedule(text),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
        ("optimizer 'default'", "expected schedule JSON to be an object", repr(text)),
        {"optimizer": "default"},
    )


@pytest.mark.parametrize(
    "text", ["true", "null", "1e39", '"Adam"', "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH]
)
def test_config_json_that_is_not_an_object_is_invalid_config(world: World, text: str) -> None:
    """The same for an optimizer config (nested as deep as allowed, too)."""
    refused(
        world,
        _create_optimizer(text),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
        ("optimizer 'new'", "expected an object with 'class_name' and 'config'"),
        {"optimizer": "new"},
    )


def _piecewise(boundaries: int) -> dict[str, Any]:
    return {
        "class_name": "PiecewiseConstantDecay",
        "config": {
            "boundaries": list(range(1, boundaries + 1)),
            "values": [0.5 ** (i % 20) for i in range(boundaries + 1)],
        },
    }


@pytest.mark.parametrize("boundaries", [MAX_BOUNDARIES + 1, 20_000])
@pytest.mark.parametrize("path", ["create", "set-hyperparameter"])
def test_piecewise_schedules_with_too_many_boundaries_are_limit_exceeded(
    world: World, boundaries: int, path: str
) -> None:
    """tf.case nests a call per boundary: 20,000 once ended in INTERNAL RecursionError."""
    schedule = _piecewise(boundaries)
    call: Callable[[World], Any] = (
        _create_optimizer(json.dumps({"class_name": "SGD", "config": {"learning_rate": schedule}}))
        if path == "create"
        else _set_schedule(json.dumps(schedule))
    )
    name = "new" if path == "create" else "default"
    refused(
        world,
        call,
        Code.RESOURCE_EXHAUSTED,
        "LIMIT_EXCEEDED",
        (
            f"optimizer '{name}'",
            f"expected at most {MAX_BOUNDARIES} numbers for 'boundaries' "
            "(--max-schedule-boundaries)",
            f"received {boundaries}",
        ),
        {"optimizer": name, "limit": "max_schedule_boundaries"},
    )


@pytest.mark.parametrize(
    "aggregation", [None, Sync(replicas_to_aggregate=1)], ids=["async", "sync"]
)
def test_the_longest_piecewise_schedule_applies_at_every_step(
    client: Client, aggregation: Sync | None
) -> None:
    """At its deepest interval, pushed through a server thread, it applies as Keras does
    (a few hundred boundaries exhausted the recursion limit at the step of the push)."""
    config = {"class_name": "SGD", "config": {"learning_rate": _piecewise(MAX_BOUNDARIES)}}
    client.create_optimizer("default", config, aggregation=aggregation)
    initial = {"w": np.linspace(-1, 1, 4, dtype=np.float32)}
    client.create_variables(initial)
    reference = LocalReference(config, initial)
    gradient = {"w": np.full(4, 0.25, np.float32)}
    for step in (0, MAX_BOUNDARIES // 2, MAX_BOUNDARIES - 1, MAX_BOUNDARIES, MAX_BOUNDARIES + 1):
        client.set_weights("default", [np.int64(step)])
        reference.optimizer.iterations.assign(step)
        client.push(gradient, worker="w0")
        reference.apply(gradient)
        assert_all_bitwise_equal(client.pull(), reference.values())


# Echoed input of a megabyte --------------------------------------------------------------


def _echo(id: str, call: Callable[[Client], object], code: grpc.StatusCode, reason: str) -> Case:
    return Case(f"echo-{id}", lambda world: call(world.client), code, reason, ("characters)",))


ONE = np.ones(1, np.float32)
DENSE = np.ones((3, 2), np.float32)
ECHO_CASES = [
    _echo(
        "push-unknown-variable", lambda c: c.push({BIG: ONE}), Code.NOT_FOUND, "UNKNOWN_VARIABLE"
    ),
    _echo("pull-unknown-variable", lambda c: c.pull([BIG]), Code.NOT_FOUND, "UNKNOWN_VARIABLE"),
    _echo("pull-rows", lambda c: c.pull_rows(BIG, [0]), Code.NOT_FOUND, "UNKNOWN_VARIABLE"),
    _echo("push-pull", lambda c: c.push_pull({}, pull=[BIG]), Code.NOT_FOUND, "UNKNOWN_VARIABLE"),
    _echo("get-slot-variable", lambda c: c.get_slot(BIG, "m"), Code.NOT_FOUND, "UNKNOWN_VARIABLE"),
    _echo("get-slot", lambda c: c.get_slot("dense", BIG), Code.NOT_FOUND, "UNKNOWN_SLOT"),
    _echo("iterations", lambda c: c.iterations(BIG), Code.NOT_FOUND, "UNKNOWN_OPTIMIZER"),
    _echo("get-config", lambda c: c.get_config(BIG), Code.NOT_FOUND, "UNKNOWN_OPTIMIZER"),
    _echo("slot-names", lambda c: c.slot_names(BIG), Code.NOT_FOUND, "UNKNOWN_OPTIMIZER"),
    _echo("get-weights", lambda c: c.get_weights(BIG), Code.NOT_FOUND, "UNKNOWN_OPTIMIZER"),
    _echo(
        "set-weights",
        lambda c: c.set_weights(BIG, [np.int64(0)]),
        Code.NOT_FOUND,
        "UNKNOWN_OPTIMIZER",
    ),
    _echo(
        "create-variables-optimizer",
        lambda c: c.create_variables({"fresh": ONE}, optimizer=BIG),
        Code.NOT_FOUND,
        "UNKNOWN_OPTIMIZER",
    ),
    _echo(
        "set-hyperparameter-optimizer",
        lambda c: c.set_hyperparameter(BIG, "learning_rate", 0.1),
        Code.NOT_FOUND,
        "UNKNOWN_OPTIMIZER",
    ),
    _echo(
        "set-hyperparameter-name",
        lambda c: c.set_hyperparameter("default", BIG, 0.1),
        Code.INVALID_ARGUMENT,
        "UNKNOWN_HYPERPARAMETER",
    ),
    _echo(
        "schedule-class",
        lambda c: c.set_hyperparameter("default", "learning_rate", {"class_name": BIG}),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
    ),
    _echo(
        "variable-name-unprintable",
        lambda c: c.create_variables({BIG + "\n": ONE}),
        Code.INVALID_ARGUMENT,
        "INVALID_NAME",
    ),
    _echo(
        "optimizer-name-unprintable",
        lambda c: c.create_optimizer(BIG + "\n", ADAM),
        Code.INVALID_ARGUMENT,
        "INVALID_NAME",
    ),
    _echo(
        "optimizer-named-in-refusal",
        lambda c: c.create_optimizer(BIG, {"class_name": "SGD", "config": {"momentum": "x"}}),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
    ),
    _echo(
        "config-class",
        lambda c: c.create_optimizer("new", {"class_name": BIG}),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
    ),
    _echo(
        "config-argument",
        lambda c: c.create_optimizer("new", {"class_name": "SGD", "config": {BIG: 1}}),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
    ),
    _echo(
        "config-not-json",
        lambda c: c.create_optimizer("new", "{" + BIG),
        Code.INVALID_ARGUMENT,
        "INVALID_CONFIG",
    ),
    _echo(
        "config-conflicting",
        lambda c: c.create_optimizer("named", {**NAMED, "config": {"name": "d" * MEBI}}),
        Code.ALREADY_EXISTS,
        "OPTIMIZER_EXISTS",
    ),
    _echo(
        "variable-conflicting",
        lambda c: c.create_variables({LONG_VARIABLE: np.ones(2, np.float32)}),
        Code.ALREADY_EXISTS,
        "VARIABLE_EXISTS",
    ),
    _echo(
        "variable-wrong-shape",
        lambda c: c.push({LONG_VARIABLE: np.ones(2, np.float32)}),
        Code.INVALID_ARGUMENT,
        "SHAPE_MISMATCH",
    ),
    _echo(
        "worker-step-ahead",
        lambda c: c.push({"dense": DENSE}, worker=BIG, step=c.iterations("default") + 1),
        Code.FAILED_PRECONDITION,
        "STEP_AHEAD",
    ),
    Case(
        "request-id-of-a-megabyte",
        lambda world: world.client.push({"dense": np.ones(6, np.float32)}, request_id=BIG),
        Code.INVALID_ARGUMENT,
        "SHAPE_MISMATCH",
        ("'dense'",),
    ),
]


@pytest.mark.parametrize("case", ECHO_CASES, ids=lambda case: case.id)
def test_a_megabyte_of_echoed_input_arrives_cut_with_its_status(world: World, case: Case) -> None:
    """A status that echoed its input whole would overflow gRPC's metadata limit and reach
    the client as RESOURCE_EXHAUSTED "Stream removed"; cut, it arrives intact."""
    _run(world, case)


# Options, steps, checkpoint ids ------------------------------------------------------------


def _options(id: str, options: pb.OptimizerOptions, fragment: str) -> Any:
    return pytest.param(options, fragment, id=id)


def _sync(**fields: Any) -> pb.OptimizerOptions:
    return pb.OptimizerOptions(
        synchronous=pb.SyncAggregation(
            **{"replicas_to_aggregate": 2, "timeout_seconds": 1.0, **fields}
        )
    )


TIMEOUT_TOO_LONG = f"expected a timeout of at most {MAX_SYNC_TIMEOUT_SECONDS:.0f} seconds"
BAD_OPTIONS = [
    _options("timeout-1e300", _sync(timeout_seconds=1e300), TIMEOUT_TOO_LONG),
    _options(
        "timeout-past-wait", _sync(timeout_seconds=threading.TIMEOUT_MAX * 2), TIMEOUT_TOO_LONG
    ),
    _options("timeout-nan", _sync(timeout_seconds=math.nan), "positive finite timeout"),
    _options("timeout-unset", _sync(timeout_seconds=0.0), "positive finite timeout"),
    _options("timeout-negative", _sync(timeout_seconds=-1.0), "positive finite timeout"),
    _options("replicas-zero", _sync(replicas_to_aggregate=0), "replicas_to_aggregate >= 1"),
    _options(
        "replicas-negative", _sync(replicas_to_aggregate=-(2**31)), "replicas_to_aggregate >= 1"
    ),
    _options("total-below-replicas", _sync(total_num_replicas=1), "total_num_replicas >="),
    _options("reduction-unknown", _sync(reduction=99), "reduction: expected one of"),
    _options("on-timeout-unknown", _sync(on_timeout=-1), "on_timeout: expected one of"),
    _options("non-finite-unknown", pb.OptimizerOptions(on_non_finite=7), "on_non_finite"),
    _options(
        "staleness-negative",
        pb.OptimizerOptions(asynchronous=pb.AsyncAggregation(max_staleness=-1)),
        "max_staleness >= 0",
    ),
]


@pytest.mark.parametrize(("options", "fragment"), BAD_OPTIONS)
def test_impossible_options_are_invalid_options_naming_the_optimizer(
    world: World, options: pb.OptimizerOptions, fragment: str
) -> None:
    """Refused at creation, naming the optimizer; a sync timeout past what a thread can
    wait was accepted, and then answered every push INTERNAL."""
    refused(
        world,
        lambda w: w.raw(
            "CreateOptimizer",
            pb.CreateOptimizerRequest(name="new", config_json=json.dumps(ADAM), options=options),
        ),
        Code.INVALID_ARGUMENT,
        "INVALID_OPTIONS",
        ("optimizer 'new': optimizer options: ", fragment),
        {"optimizer": "new"},
    )


def test_a_sync_step_may_wait_the_longest_timeout(client: Client) -> None:
    """Two workers, the first waiting with the longest timeout allowed: one step, applied."""
    sync = Sync(replicas_to_aggregate=2, timeout=MAX_SYNC_TIMEOUT_SECONDS)
    client.create_optimizer("default", {"class_name": "SGD"}, aggregation=sync)
    client.create_variables({"w": np.zeros(2, np.float32)})
    gradient = {"w": np.ones(2, np.float32)}
    with ThreadPoolExecutor(2) as pool:
        pushes = [pool.submit(client.push, gradient, worker=w, step=0) for w in ("w0", "w1")]
        results = [push.result() for push in pushes]
    assert [r.iterations for r in results] == [{"default": 1}] * 2
    assert_all_bitwise_equal(client.pull(), {"w": np.full(2, -0.02, np.float32)})


@pytest.mark.parametrize("step", [-1, -(2**63), 2**62 + 1, 2**63 - 1])
def test_a_step_out_of_range_is_invalid_iterations(world: World, step: int) -> None:
    """No optimizer's iterations can be negative or past 2**62; nothing is applied."""
    refused(
        world,
        lambda w: w.client.push({"dense": DENSE}, step=step),
        Code.INVALID_ARGUMENT,
        "INVALID_ITERATIONS",
        ("expected step", "[0, 2**62]", f"received {step}"),
        {"received": str(step)},
    )


@pytest.mark.parametrize("checkpoint", [-1, -(2**63), 2**63 - 1])
@pytest.mark.parametrize("rpc", ["RestoreCheckpoint", "DownloadCheckpoint"])
def test_checkpoint_ids_out_of_range_are_not_found(
    tmp_path: Path, rpc: str, checkpoint: int
) -> None:
    """A checkpoint id no save can give is UNKNOWN_CHECKPOINT."""
    registry = Registry()
    running = create_server(
        registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, tmp_path / "ckpts")
    )
    try:
        request = getattr(pb, f"{rpc}Request")(id=checkpoint)
        with pytest.raises(TfpsError) as caught, raw_stub(running.port) as stub:
            call_raw(getattr(stub, rpc), request)
        assert_status(
            caught.value, Code.NOT_FOUND, "UNKNOWN_CHECKPOINT", (f"checkpoint {checkpoint}",)
        )
    finally:
        running.stop(None)


# Every field of every request --------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Values for every field of a request message."""

    text: str
    low: bool
    """Integers at their type's least value; else at its greatest."""
    number: float
    enum: int


PROFILES = {
    "megabyte-and-maximum": Profile(BIG, low=False, number=1.7976931348623157e308, enum=99),
    "unprintable-and-minimum": Profile("\x00\u2028", low=True, number=-math.inf, enum=-1),
    "blank-and-nan": Profile(" ", low=True, number=math.nan, enum=2**31 - 1),
}
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _scalar(descriptor: FieldDescriptor, profile: Profile) -> Any:
    kind = descriptor.cpp_type
    if kind in _INT_RANGES:
        return _INT_RANGES[kind][0 if profile.low else 1]
    return {
        FieldDescriptor.CPPTYPE_STRING: (
            profile.text.encode() if descriptor.type == FieldDescriptor.TYPE_BYTES else profile.text
        ),
        FieldDescriptor.CPPTYPE_DOUBLE: profile.number,
        FieldDescriptor.CPPTYPE_BOOL: True,
        FieldDescriptor.CPPTYPE_ENUM: profile.enum,
    }[kind]


def _fill(message: Message, profile: Profile) -> Message:
    """Sets every field (the last member of a oneof wins), one element for repeated ones."""
    for descriptor in message.DESCRIPTOR.fields:
        entry = descriptor.message_type
        if entry is not None and entry.GetOptions().map_entry:  # one entry, key and value filled
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            target = getattr(message, descriptor.name)
            if value.message_type is None:
                target[_scalar(key, profile)] = _scalar(value, profile)
            else:
                _fill(target[_scalar(key, profile)], profile)
        elif descriptor.message_type is not None:
            target = getattr(message, descriptor.name)
            sub = target.add() if descriptor.is_repeated else target
            sub.SetInParent()
            _fill(sub, profile)
        elif descriptor.is_repeated:
            getattr(message, descriptor.name).append(_scalar(descriptor, profile))
        else:
            setattr(message, descriptor.name, _scalar(descriptor, profile))
    return message


@pytest.mark.parametrize("profile", [*PROFILES, "empty"])
@pytest.mark.parametrize("method", METHODS)
def test_any_field_values_get_a_precise_status(world: World, method: str, profile: str) -> None:
    """Each request message with every field empty, huge, negative, unprintable or NaN:
    never INTERNAL or UNKNOWN; a refusal has a reason and a bounded message; no change."""
    descriptor = METHODS[method]
    message = getattr(pb, descriptor.input_type.name)()
    if profile != "empty":
        _fill(message, PROFILES[profile])
    with unchanged(world):
        try:
            world.call_bytes(descriptor, [message.SerializeToString()])
        except TfpsError as error:
            assert error.code not in (Code.INTERNAL, Code.UNKNOWN), str(error)[:2000]
            assert error.reason, str(error)[:2000]
            assert_status(error, error.code, error.reason)


# Memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"), MemoryError()],
    ids=["tensorflow-oom", "memory-error"],
)
def test_running_out_of_memory_is_resource_exhausted(
    caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    """A request that asks for more memory than the server has is not a fault of the server."""
    refusal = as_server_error(error, "PullRows")
    assert (refusal.code, refusal.reason) == (Code.RESOURCE_EXHAUSTED, "TOO_LARGE")
    assert refusal.message.startswith("PullRows: the server ran out of memory")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
