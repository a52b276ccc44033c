"""Every refusal: exact error class and status, a message and metadata naming what was
wrong, and no change at all to the server's state."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tfps_client import (
    AlreadyExistsError,
    Client,
    IndexedSlices,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TfpsError,
    UnavailableError,
)
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import tensor_pb2
from tfps_server import RunningServer
from tfps_server.limits import Limits

from helpers import (
    LocalReference,
    assert_all_bitwise_equal,
    assert_refused,
    assert_same_state,
    call_raw,
    chunk,
    dense_header,
    free_port,
    push_request,
    raw_stub,
    snapshot,
    spec,
)

F32 = tensor_pb2.DATA_TYPE_FLOAT32
INT64 = tensor_pb2.DATA_TYPE_INT64

OPTIMIZER = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
INITIAL = {
    "dense": np.arange(6, dtype=np.float32).reshape(3, 2) / 4,
    "emb": np.arange(10, dtype=np.float32).reshape(5, 2) / 8,
    "scalar": np.array(2.5, np.float32),
    "half": np.linspace(-1, 1, 4).astype(np.float16),
}
FIRST_PUSH = {
    "dense": np.full((3, 2), 0.5, np.float32),
    "emb": IndexedSlices(np.ones((3, 2), np.float32), np.array([1, 1, 4])),
    "scalar": np.array(-1.0, np.float32),
    "half": np.full(4, 0.25, np.float16),
}
"""Applied before each case, so slots and iterations are not at their initial values."""
WEIGHT_COUNT = 1 + 2 * len(INITIAL)
"""Adam's weights: iterations, then m and v of every variable."""


@dataclass(frozen=True)
class Env:
    """A server holding the variables above after one push, and a client of it."""

    client: Client
    port: int

    def raw(self, rpc: str, request: Any) -> Any:
        """Calls an RPC through the generated stub, bypassing the typed client."""
        with raw_stub(self.port) as stub:
            return call_raw(getattr(stub, rpc), request)


@pytest.fixture
def env(server: RunningServer, client: Client) -> Env:
    """The server after creating the optimizer and variables and applying FIRST_PUSH."""
    client.create_optimizer("default", OPTIMIZER)
    client.create_variables(INITIAL)
    client.push(FIRST_PUSH)
    return Env(client, server.port)


@dataclass(frozen=True)
class Case:
    """One refused request and what the refusal must say."""

    id: str
    call: Callable[[Env], object]
    error: type[TfpsError]
    reason: str
    fragments: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


def _f32(*shape: int, fill: float = 1.0) -> np.ndarray:
    return np.full(shape, fill, np.float32)


def _sparse(values: np.ndarray, indices: Any, dense_shape: tuple[int, ...] | None = None) -> Any:
    return IndexedSlices(values, np.asarray(indices), dense_shape)


def _bytes(*values: float) -> bytes:
    return np.asarray(values, np.float32).tobytes()


def _create_raw(
    specs: list[tensor_pb2.TensorSpec], *messages: list[Any], names: tuple[str, ...] = ()
) -> Callable[[Env], Any]:
    """A CreateVariables stream declaring ``names`` (default ``new0``, ...) with chunk lists."""

    def call(env: Env) -> Any:
        declared = names or tuple(f"new{i}" for i in range(len(specs)))
        declarations = [
            pb.VariableDeclaration(name=n, spec=s) for n, s in zip(declared, specs, strict=True)
        ]
        first = pb.CreateVariablesRequest(optimizer="default", variables=declarations)
        stream = [first, *(pb.CreateVariablesRequest(chunks=chunks) for chunks in messages)]
        return env.raw("CreateVariables", iter(stream))

    return call


def _push_raw(headers: list[pb.GradientHeader], *messages: list[Any]) -> Callable[[Env], Any]:
    """A Push stream with the given headers and chunk lists."""

    def call(env: Env) -> Any:
        stream = [pb.PushRequest(gradients=headers), *(pb.PushRequest(chunks=c) for c in messages)]
        return env.raw("Push", iter(stream))

    return call


def _set_weights_replacing(index: int, value: np.ndarray) -> Callable[[Env], None]:
    def call(env: Env) -> None:
        weights = env.client.get_weights("default")
        weights[index] = value
        env.client.set_weights("default", weights)

    return call


def _unknown_optimizer(id: str, call: Callable[[Client], object]) -> Case:
    return Case(
        f"unknown-optimizer-{id}",
        lambda env: call(env.client),
        NotFoundError,
        "UNKNOWN_OPTIMIZER",
        ("'nope'", "'default'"),
        {"optimizer": "nope"},
    )


def _unknown_variable(id: str, call: Callable[[Client], object]) -> Case:
    return Case(
        f"unknown-variable-{id}",
        lambda env: call(env.client),
        NotFoundError,
        "UNKNOWN_VARIABLE",
        ("'nope'",),
        {"variable": "nope"},
    )


def _dtype(variable: str, gradient: np.ndarray, allowed: str) -> Case:
    received = gradient.dtype.name
    return Case(
        f"dtype-{received}-for-{variable}",
        lambda env: env.client.push({variable: gradient}),
        InvalidArgumentError,
        "DTYPE_MISMATCH",
        (f"'{variable}'", allowed, received),
        {"variable": variable, "expected": allowed, "received": received},
    )


def _non_finite(id: str, variable: str, gradient: Any) -> Case:
    return Case(
        f"non-finite-{id}",
        lambda env: env.client.push({variable: gradient}),
        InvalidArgumentError,
        "NON_FINITE_GRADIENT",
        (f"'{variable}'", "expected finite", "received 1 non-finite"),
        {"variable": variable, "received": "1"},
    )


def _shape(id: str, variable: str, gradient: Any, what: str, expected: str, got: str) -> Case:
    return Case(
        f"shape-{id}",
        lambda env: env.client.push({variable: gradient}),
        InvalidArgumentError,
        "SHAPE_MISMATCH",
        (f"'{variable}'", f"expected {what} {expected}", f"received {got}"),
        {"variable": variable, "expected": expected, "received": got},
    )


def _row_index(id: str, call: Callable[[Client], object], received: int) -> Case:
    return Case(
        id,
        lambda env: call(env.client),
        InvalidArgumentError,
        "INDEX_OUT_OF_RANGE",
        ("'emb'", "[0, 5)", f"received {received}"),
        {"variable": "emb", "expected": "[0, 5)", "received": str(received)},
    )


def _hyper(id: str, name: str, value: Any, reason: str, *fragments: str) -> Case:
    return Case(
        f"hyperparameter-{id}",
        lambda env: env.client.set_hyperparameter("default", name, value),
        InvalidArgumentError,
        reason,
        ("'default'", *fragments),
        {"optimizer": "default"},
    )


def _malformed(id: str, call: Callable[[Env], object], *fragments: str) -> Case:
    return Case(f"malformed-{id}", call, InvalidArgumentError, "MALFORMED_TENSOR", fragments)


SCHEDULE = {
    "class_name": "ExponentialDecay",
    "config": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5},
}
ALLOWED_FOR_F32 = "['float16', 'bfloat16', 'float32']"
NAN, INF = float("nan"), float("inf")

CASES = [
    # NOT_FOUND ---------------------------------------------------------------------------------
    _unknown_variable("push", lambda c: c.push({"dense": _f32(3, 2), "nope": _f32(2)})),
    _unknown_variable("pull", lambda c: c.pull(["dense", "nope"])),
    _unknown_variable("pull-rows", lambda c: c.pull_rows("nope", [0])),
    _unknown_variable("get-slot", lambda c: c.get_slot("nope", "m")),
    _unknown_optimizer("iterations", lambda c: c.iterations("nope")),
    _unknown_optimizer("get-config", lambda c: c.get_config("nope")),
    _unknown_optimizer("slot-names", lambda c: c.slot_names("nope")),
    _unknown_optimizer("get-weights", lambda c: c.get_weights("nope")),
    _unknown_optimizer("set-weights", lambda c: c.set_weights("nope", [np.int64(0)])),
    _unknown_optimizer("set-hyper", lambda c: c.set_hyperparameter("nope", "learning_rate", 1)),
    _unknown_optimizer("create-variables", lambda c: c.create_variables({"x": _f32(2)}, "nope")),
    Case(
        "unknown-slot",
        lambda env: env.client.get_slot("dense", "bogus"),
        NotFoundError,
        "UNKNOWN_SLOT",
        ("'dense'", "['m', 'v']", "'bogus'"),
        {"variable": "dense", "expected": "['m', 'v']", "received": "bogus"},
    ),
    # Dense gradients ---------------------------------------------------------------------------
    _shape("dense-transposed", "dense", _f32(2, 3), "gradient shape", "[3, 2]", "[2, 3]"),
    _shape("dense-rank", "dense", _f32(6), "gradient shape", "[3, 2]", "[6]"),
    _shape("scalar-as-vector", "scalar", _f32(1), "gradient shape", "[]", "[1]"),
    _dtype("dense", np.ones((3, 2), np.int32), ALLOWED_FOR_F32),
    _dtype("dense", np.ones((3, 2), np.int64), ALLOWED_FOR_F32),
    _dtype("dense", np.ones((3, 2), np.float64), ALLOWED_FOR_F32),
    _dtype("half", np.ones(4, np.float32), "['float16']"),
    _dtype("half", np.ones(4, ml_dtypes.bfloat16), "['float16']"),
    _non_finite("nan-dense", "dense", np.array([[0, 1], [NAN, 2], [3, 4]], np.float32)),
    _non_finite("inf-dense", "dense", np.array([[0, 1], [2, 3], [4, INF]], np.float32)),
    _non_finite("minus-inf-scalar", "scalar", np.array(-INF, np.float32)),
    _non_finite("inf-float16", "half", np.array([0, 0, INF, 0], np.float16)),
    _non_finite(
        "nan-bfloat16", "dense", np.array([[0, NAN], [0, 0], [0, 0]], ml_dtypes.bfloat16)[:, ::-1]
    ),
    # Sparse gradients --------------------------------------------------------------------------
    _row_index(
        "sparse-negative-index", lambda c: c.push({"emb": _sparse(_f32(2, 2), [0, -1])}), -1
    ),
    _row_index("sparse-index-too-large", lambda c: c.push({"emb": _sparse(_f32(2, 2), [5, 1])}), 5),
    Case(
        "sparse-float-indices",
        lambda env: env.client.push({"emb": _sparse(_f32(1, 2), np.zeros(1, np.float32))}),
        InvalidArgumentError,
        "INVALID_INDICES",
        ("'emb'", "int32 or int64 indices of rank 1", "received float32 of shape [1]"),
        {"variable": "emb"},
    ),
    Case(
        "sparse-indices-rank-2",
        lambda env: env.client.push({"emb": _sparse(_f32(1, 2), [[0]])}),
        InvalidArgumentError,
        "INVALID_INDICES",
        ("'emb'", "int32 or int64 indices of rank 1", "received int64 of shape [1, 1]"),
        {"variable": "emb"},
    ),
    _shape(
        "sparse-values-width",
        "emb",
        _sparse(_f32(2, 3), [0, 1]),
        "sparse values shape",
        "[2, 2]",
        "[2, 3]",
    ),
    _shape(
        "sparse-values-count",
        "emb",
        _sparse(_f32(3, 2), [0, 1]),
        "sparse values shape",
        "[2, 2]",
        "[3, 2]",
    ),
    _shape(
        "sparse-dense-shape",
        "emb",
        _sparse(_f32(1, 2), [0], (6, 2)),
        "dense_shape",
        "[5, 2]",
        "[6, 2]",
    ),
    Case(
        "sparse-float64-values",
        lambda env: env.client.push({"emb": _sparse(np.ones((1, 2)), [0])}),
        InvalidArgumentError,
        "DTYPE_MISMATCH",
        ("'emb'", ALLOWED_FOR_F32, "float64"),
        {"variable": "emb", "received": "float64"},
    ),
    _non_finite("nan-sparse", "emb", _sparse(np.array([[1, 2], [NAN, 3]], np.float32), [0, 3])),
    _non_finite("inf-sparse", "emb", _sparse(np.array([[1, -INF]], np.float32), [2])),
    Case(
        "sparse-for-scalar",
        lambda env: env.client.push({"scalar": _sparse(_f32(1), [0])}),
        InvalidArgumentError,
        "SPARSE_SCALAR",
        ("'scalar'",),
        {"variable": "scalar"},
    ),
    # Atomic pushes: valid gradients first, one invalid last -> nothing applied -----------------
    Case(
        "atomic-last-non-finite",
        lambda env: env.client.push({**FIRST_PUSH, "scalar": np.array(NAN, np.float32)}),
        InvalidArgumentError,
        "NON_FINITE_GRADIENT",
        ("'scalar'",),
    ),
    Case(
        "atomic-last-wrong-shape",
        lambda env: env.client.push({**FIRST_PUSH, "half": np.ones(5, np.float16)}),
        InvalidArgumentError,
        "SHAPE_MISMATCH",
        ("'half'", "[4]", "[5]"),
    ),
    Case(
        "atomic-last-bad-index",
        lambda env: env.client.push({"dense": _f32(3, 2), "emb": _sparse(_f32(1, 2), [9])}),
        InvalidArgumentError,
        "INDEX_OUT_OF_RANGE",
        ("'emb'", "received 9"),
    ),
    Case(
        "atomic-last-unknown",
        lambda env: env.client.push({**FIRST_PUSH, "nope": _f32(1)}),
        NotFoundError,
        "UNKNOWN_VARIABLE",
        ("'nope'",),
    ),
    Case(
        "duplicate-variable-in-push",
        lambda env: env.raw(
            "Push",
            push_request(
                [dense_header("dense", _f32(3, 2)), dense_header("dense", _f32(3, 2))],
                [_f32(3, 2), _f32(3, 2)],
            ),
        ),
        InvalidArgumentError,
        "DUPLICATE_GRADIENT",
        ("'dense'", "more than one gradient"),
        {"variable": "dense"},
    ),
    # Variable creation -------------------------------------------------------------------------
    Case(
        "create-integer-variable",
        lambda env: env.client.create_variables({"ints": np.ones(3, np.int32)}),
        InvalidArgumentError,
        "INVALID_DTYPE",
        ("'ints'", "float32", "received int32"),
        {"variable": "ints", "received": "int32"},
    ),
    Case(
        "create-empty-name",
        lambda env: env.client.create_variables({"": _f32(2)}),
        InvalidArgumentError,
        "INVALID_NAME",
        ("variable name", "received ''"),
    ),
    Case(
        "create-twice-in-one-request",
        _create_raw(
            [spec(F32, 1), spec(F32, 1)],
            [chunk(0, 0, _bytes(1)), chunk(1, 0, _bytes(2))],
            names=("twice", "twice"),
        ),
        InvalidArgumentError,
        "DUPLICATE_VARIABLE",
        ("'twice'", "declared twice"),
        {"variable": "twice"},
    ),
    Case(
        "create-new-beside-conflicting",
        lambda env: env.client.create_variables({"fresh": _f32(2), "dense": _f32(2, 3)}),
        AlreadyExistsError,
        "VARIABLE_EXISTS",
        ("'dense'", "[3, 2]", "[2, 3]"),
        {"variable": "dense", "field": "shape", "expected": "[3, 2]", "received": "[2, 3]"},
    ),
    Case(
        "create-optimizer-empty-name",
        lambda env: env.client.create_optimizer("", OPTIMIZER),
        InvalidArgumentError,
        "INVALID_NAME",
        ("optimizer name", "received ''"),
        {"optimizer": ""},
    ),
    # Optimizer weights -------------------------------------------------------------------------
    Case(
        "set-weights-too-few",
        lambda env: env.client.set_weights("default", env.client.get_weights("default")[:-1]),
        InvalidArgumentError,
        "WEIGHTS_MISMATCH",
        ("'default'", f"expected {WEIGHT_COUNT} weights", f"received {WEIGHT_COUNT - 1}"),
        {"optimizer": "default"},
    ),
    Case(
        "set-weights-wrong-shape-first-slot",
        _set_weights_replacing(1, _f32(2, 3)),
        InvalidArgumentError,
        "WEIGHTS_MISMATCH",
        ("'default'", "weight 1 (slot 'm' of 'dense')", "expected shape [3, 2]", "received [2, 3]"),
        {"optimizer": "default", "expected": "[3, 2]", "received": "(2, 3)"},
    ),
    Case(
        "set-weights-wrong-shape-last-slot",
        _set_weights_replacing(-1, np.ones(5, np.float16)),
        InvalidArgumentError,
        "WEIGHTS_MISMATCH",
        ("'default'", "(slot 'v' of 'half')", "expected shape [4]", "received [5]"),
        {"optimizer": "default"},
    ),
    Case(
        "set-weights-narrowing-dtype",
        _set_weights_replacing(1, np.ones((3, 2), np.float64)),
        InvalidArgumentError,
        "WEIGHTS_MISMATCH",
        ("(slot 'm' of 'dense')", "expected dtype in ['float16', 'bfloat16', 'float32']"),
        {"optimizer": "default", "received": "float64"},
    ),
    Case(
        "set-weights-non-finite-slot",
        _set_weights_replacing(
            2, np.array([[0, 1], [NAN, 2], [3, INF], [4, 5], [6, 7]], np.float32)
        ),
        InvalidArgumentError,
        "NON_FINITE_VALUE",
        ("weight 2 (slot 'm' of 'emb')", "expected finite values", "received 2 non-finite"),
        {"optimizer": "default", "received": "2"},
    ),
    Case(
        "set-weights-float-iterations",
        _set_weights_replacing(0, np.float64(3.5)),
        InvalidArgumentError,
        "INVALID_ITERATIONS",
        ("'default'", "expected iterations as an integer scalar", "received float64"),
    ),
    Case(
        "set-weights-iterations-out-of-range",
        _set_weights_replacing(0, np.int64(2**63 - 1)),
        InvalidArgumentError,
        "INVALID_ITERATIONS",
        ("'default'", "expected iterations in [0, 2**62]", f"received {2**63 - 1}"),
    ),
    Case(
        "set-weights-negative-iterations",
        _set_weights_replacing(0, np.int64(-1)),
        InvalidArgumentError,
        "INVALID_ITERATIONS",
        ("expected iterations in [0, 2**62]", "received -1"),
    ),
    Case(
        "create-non-finite-initial-value",
        lambda env: env.client.create_variables(
            {"fine": _f32(2), "bad": np.array([1, NAN, INF], np.float32)}
        ),
        InvalidArgumentError,
        "NON_FINITE_VALUE",
        ("variable 'bad'", "expected finite initial values", "received 2 non-finite"),
        {"variable": "bad", "received": "2"},
    ),
    # Hyperparameters ---------------------------------------------------------------------------
    Case(
        "hyperparameter-unknown",
        lambda env: env.client.set_hyperparameter("default", "bogus", 0.5),
        InvalidArgumentError,
        "UNKNOWN_HYPERPARAMETER",
        ("'default'", "'bogus'", "'learning_rate'"),
        {
            "optimizer": "default",
            "expected": "['beta_1', 'beta_2', 'decay', 'learning_rate']",
            "received": "bogus",
        },
    ),
    _hyper("nan", "learning_rate", NAN, "INVALID_CONFIG", "'learning_rate'", "received nan"),
    _hyper("inf", "beta_1", INF, "INVALID_CONFIG", "'beta_1'", "received inf"),
    _hyper("negative-decay", "decay", -0.5, "INVALID_CONFIG", "decay >= 0", "-0.5"),
    _hyper("schedule-for-beta", "beta_1", SCHEDULE, "INVALID_CONFIG", "expected a number"),
    _hyper("beta-one", "beta_1", 1.0, "INVALID_CONFIG", "non-finite"),
    _hyper("huge-learning-rate", "learning_rate", 1e39, "INVALID_CONFIG", "cannot update float32"),
    Case(
        "hyperparameter-unknown-schedule",
        lambda env: env.client.set_hyperparameter(
            "default", "learning_rate", {"class_name": "Sometimes", "config": {}}
        ),
        InvalidArgumentError,
        "INVALID_CONFIG",
        ("ExponentialDecay", "'Sometimes'"),
        {"received": "Sometimes"},
    ),
    Case(
        "hyperparameter-schedule-not-json",
        lambda env: env.raw(
            "SetHyperparameter",
            pb.SetHyperparameterRequest(
                optimizer="default", name="learning_rate", schedule_json="{oops"
            ),
        ),
        InvalidArgumentError,
        "INVALID_CONFIG",
        ("'default'", "schedule JSON: expected JSON", "'{oops'"),
        {"optimizer": "default"},
    ),
    Case(
        "hyperparameter-without-value",
        lambda env: env.raw(
            "SetHyperparameter", pb.SetHyperparameterRequest(optimizer="default", name="beta_1")
        ),
        InvalidArgumentError,
        "MISSING_VALUE",
        ("'default'", "'beta_1'", "received neither"),
        {"optimizer": "default"},
    ),
    # Rows --------------------------------------------------------------------------------------
    _row_index("pull-rows-negative", lambda c: c.pull_rows("emb", [0, -2]), -2),
    _row_index("pull-rows-too-large", lambda c: c.pull_rows("emb", [4, 5, 1]), 5),
    Case(
        "pull-rows-of-scalar",
        lambda env: env.client.pull_rows("scalar", [0]),
        InvalidArgumentError,
        "SPARSE_SCALAR",
        ("'scalar'", "no rows"),
        {"variable": "scalar"},
    ),
    # Malformed tensor streams, sent with the generated stub ------------------------------------
    _malformed(
        "too-few-bytes",
        _create_raw([spec(F32, 2, 2)], [chunk(0, 0, _bytes(1, 2, 3))]),
        "tensor 0: expected 16 bytes, received 12",
    ),
    _malformed(
        "too-many-bytes",
        _create_raw([spec(F32, 2)], [chunk(0, 0, _bytes(1, 2)), chunk(0, 8, _bytes(3))]),
        "tensor 0: expected 8 bytes, received at least 12",
    ),
    _malformed(
        "bytes-missing-in-later-message",
        _push_raw([dense_header("dense", _f32(3, 2))], [chunk(0, 0, _bytes(1, 2))], []),
        "tensor 0: expected 24 bytes, received 8",
    ),
    _malformed(
        "offset-gap",
        _create_raw([spec(F32, 4)], [chunk(0, 0, _bytes(1))], [chunk(0, 8, _bytes(3, 4))]),
        "tensor 0: expected a chunk at byte offset 4, received offset 8",
    ),
    _malformed(
        "offset-overlap",
        _create_raw([spec(F32, 3)], [chunk(0, 0, _bytes(1, 2)), chunk(0, 4, _bytes(2, 3))]),
        "tensor 0: expected a chunk at byte offset 8, received offset 4",
    ),
    _malformed(
        "first-chunk-not-at-zero",
        _create_raw([spec(F32, 2)], [chunk(0, 4, _bytes(1))]),
        "expected a chunk at byte offset 0, received offset 4",
    ),
    _malformed(
        "unknown-tensor-index",
        _create_raw([spec(F32, 1)], [chunk(0, 0, _bytes(1)), chunk(3, 0, _bytes(2))]),
        "expected a tensor index below 1, received 3",
    ),
    _malformed(
        "unspecified-dtype",
        _create_raw([spec(tensor_pb2.DATA_TYPE_UNSPECIFIED, 1)], [chunk(0, 0, _bytes(1))]),
        "received dtype enum value 0",
    ),
    _malformed(
        "negative-dimension",
        _create_raw([spec(F32, 2, -1)], []),
        "expected non-negative dimensions, received shape [2, -1]",
    ),
    _malformed(
        "unspecified-dtype-of-sparse-indices",
        _push_raw(
            [
                pb.GradientHeader(
                    variable="emb",
                    sparse=tensor_pb2.IndexedSlicesSpec(values=spec(F32, 1, 2), indices=spec(0, 1)),
                )
            ],
            [chunk(0, 0, _bytes(1, 2)), chunk(1, 0, np.zeros(1, np.int64).tobytes())],
        ),
        "received dtype enum value 0",
    ),
    _malformed(
        "sparse-indices-bytes-missing",
        _push_raw(
            [
                pb.GradientHeader(
                    variable="emb",
                    sparse=tensor_pb2.IndexedSlicesSpec(
                        values=spec(F32, 1, 2), indices=spec(INT64, 1)
                    ),
                )
            ],
            [chunk(0, 0, _bytes(1, 2))],
        ),
        "tensor 1: expected 8 bytes, received 0",
    ),
    _malformed(
        "set-weights-bytes-missing",
        lambda env: env.raw(
            "SetOptimizerWeights",
            iter([pb.SetOptimizerWeightsRequest(optimizer="default", weights=[spec(INT64)])]),
        ),
        "tensor 0: expected 8 bytes, received 0",
    ),
    _malformed(
        "empty-stream", lambda env: env.raw("Push", iter([])), "expected at least one message"
    ),
    Case(
        "gradient-neither-dense-nor-sparse",
        _push_raw([dense_header("dense", _f32(3, 2)), pb.GradientHeader(variable="emb")]),
        InvalidArgumentError,
        "MISSING_GRADIENT",
        ("'emb'", "expected a dense or sparse gradient, received neither"),
        {"variable": "emb"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_refused_without_any_change(env: Env, case: Case) -> None:
    """The request fails with the exact error, and the server's state is untouched."""
    before = snapshot(env.client)
    with pytest.raises(TfpsError) as caught:
        case.call(env)
    assert_refused(caught.value, case.error, case.reason, case.fragments, case.metadata)
    assert_same_state(snapshot(env.client), before)


def test_server_still_answers_after_every_refusal(env: Env) -> None:
    """After every refused request on one server, updates continue exactly as if none happened."""
    for case in CASES:
        with pytest.raises(case.error):
            case.call(env)
    reference = LocalReference(OPTIMIZER, INITIAL)
    second = {
        "dense": _f32(3, 2, fill=-0.25),
        "emb": IndexedSlices(_f32(2, 2, fill=2.0), np.array([0, 4], np.int32)),
    }
    for gradients in (FIRST_PUSH, second):
        reference.apply(gradients)
    assert env.client.push(second).iterations == {"default": 2}
    assert_all_bitwise_equal(env.client.pull(), reference.values())
    assert_all_bitwise_equal(env.client.get_weights("default"), reference.weights())


@pytest.mark.parametrize(
    ("gradients", "reason"),
    [
        ({"dense": _f32(3, 2), "other_w": np.array([NAN, 0], np.float32)}, "NON_FINITE_GRADIENT"),
        ({"other_w": _f32(2), "dense": _f32(2, 3)}, "SHAPE_MISMATCH"),
        ({"other_w": _f32(2), "emb": _sparse(_f32(1, 2), [-3])}, "INDEX_OUT_OF_RANGE"),
    ],
    ids=["invalid-for-second-optimizer", "invalid-for-first-optimizer", "bad-index-for-first"],
)
def test_push_across_optimizers_applies_nothing_when_one_gradient_is_invalid(
    env: Env, gradients: dict[str, Any], reason: str
) -> None:
    """A push touching two optimizers is checked whole before either optimizer applies."""
    env.client.create_optimizer("other", {"class_name": "SGD", "config": {"momentum": 0.5}})
    env.client.create_variables({"other_w": _f32(2, fill=3.0)}, optimizer="other")
    before = snapshot(env.client, ["default", "other"])
    with pytest.raises(InvalidArgumentError) as caught:
        env.client.push(gradients)
    assert caught.value.reason == reason
    assert_same_state(snapshot(env.client, ["default", "other"]), before)


# Optimizer configs -----------------------------------------------------------------------------

ADAM_SCHEDULE = {"class_name": "Adam", "config": {"learning_rate": SCHEDULE}}
BAD_CONFIGS = [
    pytest.param({"class_name": "Foo"}, ("'Foo'", "SGD", "Adam"), id="unknown-class"),
    pytest.param({"config": {}}, ("'class_name'",), id="missing-class"),
    pytest.param(
        {"class_name": "SGD", "config": {"learning_rate": 0.1, "bogus": 1}},
        ("['bogus']", "SGD", "'momentum'"),
        id="unknown-kwarg",
    ),
    pytest.param(
        {"class_name": "SGD", "config": {"learning_rate": "fast"}},
        ("expected a number for 'learning_rate'", "received 'fast'"),
        id="string-for-number",
    ),
    pytest.param(
        {"class_name": "Adam", "config": {"amsgrad": 1}},
        ("expected a boolean for 'amsgrad'", "received 1"),
        id="number-for-boolean",
    ),
    pytest.param(
        {"class_name": "SGD", "config": {"clipnorm": -1.0}},
        ("Expected clipnorm >= 0", "-1.0"),
        id="negative-clipnorm",
    ),
    pytest.param(
        {"class_name": "SGD", "config": {"clipvalue": -0.5}},
        ("Expected clipvalue >= 0", "-0.5"),
        id="negative-clipvalue",
    ),
    pytest.param(
        {"class_name": "SGD", "config": {"clipnorm": 1.0, "global_clipnorm": 1.0}},
        ("clipnorm", "global_clipnorm"),
        id="clipnorm-and-global-clipnorm",
    ),
    pytest.param("{not json", ("expected JSON", "'{not json'"), id="invalid-json"),
    pytest.param("[1, 2]", ("'class_name'", "[1, 2]"), id="json-not-an-object"),
    pytest.param(
        {"class_name": "Nadam", "config": {"learning_rate": SCHEDULE}},
        ("Nadam", "LearningRateSchedule"),
        id="nadam-with-schedule",
    ),
    pytest.param(
        {"class_name": "SGD", "config": {"learning_rate": {"class_name": "Wobbly", "config": {}}}},
        ("'Wobbly'", "ExponentialDecay"),
        id="unknown-schedule-class",
    ),
    pytest.param(
        {"class_name": "SGD", "config": {"learning_rate": {**SCHEDULE, "config": {"x": 1}}}},
        ("ExponentialDecay", "['x']"),
        id="unknown-schedule-kwarg",
    ),
]


def _config_json(config: Any) -> str:
    return config if isinstance(config, str) else json.dumps(config)


@pytest.mark.parametrize(("config", "fragments"), BAD_CONFIGS)
def test_bad_optimizer_config_refused_at_creation(
    env: Env, config: Any, fragments: tuple[str, ...]
) -> None:
    """A config Keras would refuse, or that could not apply, fails and creates nothing."""
    before = snapshot(env.client)
    with pytest.raises(TfpsError) as caught:
        env.client.create_optimizer("other", _config_json(config))
    assert_refused(caught.value, InvalidArgumentError, "INVALID_CONFIG", fragments)
    with pytest.raises(NotFoundError):
        env.client.iterations("other")
    assert_same_state(snapshot(env.client), before)
    assert env.client.create_optimizer("other", {"class_name": "SGD"}) is True


def test_bad_optimizer_config_error_names_the_optimizer(env: Env) -> None:
    """A config refusal names the optimizer being created, in the message or the metadata."""
    unnamed = []
    for param in BAD_CONFIGS:
        config = param.values[0]
        with pytest.raises(InvalidArgumentError) as caught:
            env.client.create_optimizer("encoder", _config_json(config))
        error = caught.value
        if "'encoder'" not in error.message and error.metadata.get("optimizer") != "encoder":
            unnamed.append(f"{param.id}: {error.message} {error.metadata}")
    assert not unnamed, "errors that do not name optimizer 'encoder':\n" + "\n".join(unnamed)


@pytest.mark.parametrize(
    "config",
    [
        {"class_name": "Adam", "config": {"learning_rate": 0.1}},
        {"class_name": "adam", "config": {"lr": 0.1}},
        {"class_name": "Adam", "config": {"learning_rate": 0.1, "beta_1": 0.9, "amsgrad": False}},
    ],
    ids=["same", "lower-case-and-lr", "explicit-defaults"],
)
def test_create_optimizer_again_with_equal_config_is_a_no_op(env: Env, config: Any) -> None:
    """An equal config (as Keras normalizes it) returns False and changes nothing."""
    before = snapshot(env.client)
    assert env.client.create_optimizer("default", config) is False
    assert_same_state(snapshot(env.client), before)


def test_create_optimizer_with_schedule_twice_is_a_no_op(env: Env) -> None:
    """An optimizer with a learning-rate schedule compares equal to its own config."""
    assert env.client.create_optimizer("scheduled", ADAM_SCHEDULE) is True
    assert env.client.create_optimizer("scheduled", ADAM_SCHEDULE) is False


@pytest.mark.parametrize(
    ("config", "received"),
    [
        (
            {"class_name": "Adam", "config": {"learning_rate": 0.2}},
            ("learning_rate: exists with 0.1", "received 0.2"),
        ),
        (
            {"class_name": "SGD", "config": {"learning_rate": 0.1}},
            'class_name: exists with "Adam", received "SGD"',
        ),
        (
            ADAM_SCHEDULE,
            'learning_rate: exists with 0.1, received {"class_name": "ExponentialDecay"',
        ),
    ],
    ids=["other-learning-rate", "other-class", "schedule"],
)
def test_create_optimizer_again_with_other_config_is_refused(
    env: Env, config: Any, received: tuple[str, ...]
) -> None:
    """A different config under an existing name raises AlreadyExistsError naming the field
    that differs, with both values."""
    before = snapshot(env.client)
    with pytest.raises(TfpsError) as caught:
        env.client.create_optimizer("default", config)
    assert_refused(
        caught.value,
        AlreadyExistsError,
        "OPTIMIZER_EXISTS",
        ("'default'", *received),
        {"optimizer": "default"},
    )
    assert_same_state(snapshot(env.client), before)


# Robustness ------------------------------------------------------------------------------------


def test_absurd_announced_size_is_refused_cleanly(env: Env) -> None:
    """A spec announcing 4 EiB with 4 bytes sent is refused before anything is allocated."""
    before = snapshot(env.client)
    with pytest.raises(TfpsError) as caught:
        _create_raw([spec(F32, 1 << 40, 1 << 20)], [chunk(0, 0, _bytes(1))])(env)
    assert_refused(
        caught.value,
        ResourceExhaustedError,
        "TOO_LARGE",
        (f"expected at most {Limits().max_payload_bytes} bytes", f"a request for {1 << 62}"),
    )
    assert_same_state(snapshot(env.client), before)


def test_waiting_for_a_server_that_is_not_there_raises_the_librarys_error() -> None:
    client = Client(f"127.0.0.1:{free_port()}")
    with client, pytest.raises(UnavailableError, match=r"not reachable within 0\.2 s") as caught:
        client.wait_for_ready(timeout=0.2)
    assert isinstance(caught.value, TfpsError)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda c: c.push({"scalar": np.float32(1)}, worker=1),
            "PushRequest.worker: expected str, received int",
        ),
        (
            lambda c: c.push({"scalar": np.float32(1)}, step="3"),
            "PushRequest.step: expected int, received str",
        ),
        (
            lambda c: c.push({"scalar": np.float32(1)}, request_id=5),
            "PushRequest.request_id: expected str",
        ),
        (
            lambda c: c.push({1: np.float32(1)}),
            "GradientHeader.variable: expected str, received int",
        ),
        (
            lambda c: c.push({"emb": IndexedSlices(np.ones((1, 2), np.float32), [0], ("5", 2))}),
            "IndexedSlicesSpec.dense_shape: expected a sequence of int, "
            "received items of type int, str",
        ),
        (
            lambda c: c.push_pull({"scalar": np.float32(1)}, pull=[1]),
            "pull: expected variable names (str), received 1 (int)",
        ),
        (
            lambda c: c.push_pull({"scalar": np.float32(1)}, pull="scalar"),
            "pull: expected an iterable of variable names, received the single str 'scalar'",
        ),
        (
            lambda c: c.pull("scalar"),
            "names: expected an iterable of variable names, received the single str 'scalar'",
        ),
        (lambda c: c.pull([b"scalar"]), "names: expected variable names (str), received b'scalar'"),
        (lambda c: c.iterations(3), "GetIterationsRequest.optimizer: expected str, received int"),
        (lambda c: c.create_optimizer(5, {"class_name": "SGD"}), "CreateOptimizerRequest.name"),
        (lambda c: c.set_hyperparameter("default", 2, 0.1), "SetHyperparameterRequest.name"),
    ],
    ids=[
        "worker",
        "step",
        "request-id",
        "gradient-name",
        "dense-shape",
        "pull",
        "pull-one-string",
        "pull-names-one-string",
        "pull-names-bytes",
        "iterations",
        "optimizer-name",
        "hyperparameter",
    ],
)
def test_an_argument_of_a_wrong_type_is_a_clear_type_error_at_the_call(
    env: Env, call: Callable[[Client], object], expected: str
) -> None:
    """Raised before anything is sent (never the opaque UNKNOWN of a stream whose request
    could not be built), naming the field, the expected type and the received one."""
    before = snapshot(env.client)
    with pytest.raises(TypeError, match=re.escape(expected)):
        call(env.client)
    assert_same_state(snapshot(env.client), before)
