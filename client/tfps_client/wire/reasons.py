"""Why a call failed, in a form programs can test: the reason enum and its wire encoding.

Every refusal carries the standard rich status of gRPC (``google.rpc.Status``, in the
trailing metadata entry :data:`STATUS_DETAILS_KEY`) holding one ``google.rpc.ErrorInfo``:
its ``reason`` is a :class:`Reason` name, its ``domain`` :data:`ERROR_DOMAIN`, and its
``metadata`` the facts that go with the reason, as strings. grpcurl, Envoy and the gRPC
libraries of other languages read it as they read Google's APIs' errors. The server
encodes it here and the client decodes it here, so the two never disagree on the format.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""Trailing metadata key carrying a serialized ``google.rpc.Status``, as gRPC defines it."""

ERROR_DOMAIN = "tfps.dev"
"""``ErrorInfo.domain`` of tfps's reasons: the namespace that :class:`Reason` names live in."""


class Reason(str, enum.Enum):
    """Machine-readable reasons; each member is (and compares equal to) its name as a string."""

    def __str__(self) -> str:
        return self.value

    # Names and declarations
    INVALID_NAME = "INVALID_NAME"
    """An empty or unprintable variable or optimizer name."""
    INVALID_DTYPE = "INVALID_DTYPE"
    """A variable of an element type the server does not hold."""
    DUPLICATE_VARIABLE = "DUPLICATE_VARIABLE"
    """A variable declared twice in one request."""
    VARIABLE_EXISTS = "VARIABLE_EXISTS"
    """A variable exists with another shape, dtype or optimizer."""
    OPTIMIZER_EXISTS = "OPTIMIZER_EXISTS"
    """An optimizer exists with another config or options."""
    UNKNOWN_VARIABLE = "UNKNOWN_VARIABLE"
    """No variable of that name."""
    UNKNOWN_OPTIMIZER = "UNKNOWN_OPTIMIZER"
    """No optimizer of that name."""
    UNKNOWN_SLOT = "UNKNOWN_SLOT"
    """The optimizer has no slot of that name."""
    # Configs and values
    INVALID_CONFIG = "INVALID_CONFIG"
    """An optimizer config, schedule or hyperparameter value that creation refuses."""
    INVALID_OPTIONS = "INVALID_OPTIONS"
    """Impossible aggregation options or non-finite policy."""
    UNKNOWN_HYPERPARAMETER = "UNKNOWN_HYPERPARAMETER"
    """The optimizer has no hyperparameter of that name."""
    MISSING_VALUE = "MISSING_VALUE"
    """A hyperparameter change without a value."""
    NON_FINITE_VALUE = "NON_FINITE_VALUE"
    """NaN or Inf in a variable's initial value or an optimizer weight."""
    INVALID_ITERATIONS = "INVALID_ITERATIONS"
    """An ``iterations`` value that is not an integer in [0, MAX_ITERATIONS]."""
    WEIGHTS_MISMATCH = "WEIGHTS_MISMATCH"
    """Optimizer weights of the wrong number, shape or dtype."""
    # Gradients
    MISSING_GRADIENT = "MISSING_GRADIENT"
    """A gradient header that is neither dense nor sparse."""
    DUPLICATE_GRADIENT = "DUPLICATE_GRADIENT"
    """Two gradients for one variable in one push."""
    DTYPE_MISMATCH = "DTYPE_MISMATCH"
    """A gradient dtype that does not cast up to the variable's."""
    SHAPE_MISMATCH = "SHAPE_MISMATCH"
    """A gradient or value of the wrong shape."""
    SPARSE_SCALAR = "SPARSE_SCALAR"
    """Rows of a scalar were named."""
    INVALID_INDICES = "INVALID_INDICES"
    """Row indices that are not int32 or int64 of rank 1."""
    INDEX_OUT_OF_RANGE = "INDEX_OUT_OF_RANGE"
    """A row index outside the variable."""
    NON_FINITE_GRADIENT = "NON_FINITE_GRADIENT"
    """NaN or Inf in a gradient, refused by the "reject" policy."""
    # Aggregation
    MISSING_WORKER = "MISSING_WORKER"
    """A sync push without a worker id."""
    DUPLICATE_CONTRIBUTION = "DUPLICATE_CONTRIBUTION"
    """A second contribution of one worker to one sync step."""
    STEP_AHEAD = "STEP_AHEAD"
    """Gradients computed at a step the optimizer has not reached."""
    ITERATIONS_EXHAUSTED = "ITERATIONS_EXHAUSTED"
    """The optimizer is at MAX_ITERATIONS and cannot take another step."""
    STATE_REPLACED = "STATE_REPLACED"
    """The state a request was validated against was replaced (restore, set_weights) first;
    for a page of variables, the state its listing began in (restore, restart)."""
    # Identity
    MISSING_TOKEN = "MISSING_TOKEN"
    """The call carried no ``authorization: Bearer`` token and the server requires one."""
    UNKNOWN_TOKEN = "UNKNOWN_TOKEN"
    """The call's token is not one the server knows."""
    ROLE_REQUIRED = "ROLE_REQUIRED"
    """The token's role may not make this call; the metadata names the role needed."""
    # Transport
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    """Bytes that are not the request message the method takes."""
    MALFORMED_TENSOR = "MALFORMED_TENSOR"
    """Tensor specs or chunks that do not add up."""
    TOO_LARGE = "TOO_LARGE"
    """More bytes than the server accepts."""
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    """More of something than a bound allows: name or id length, tensors per request,
    variables, optimizers, schedule or config size, concurrent calls."""
    STATE_QUOTA = "STATE_QUOTA"
    """The state (variables and slots) would grow past the server's quota."""
    OVERLOADED = "OVERLOADED"
    """The server's budget of bytes in flight, or its cap on calls in progress, is taken by
    other calls now; nothing was done, and retrying is safe (clients retry it)."""
    STREAM_IDLE = "STREAM_IDLE"
    """A stream sent or read nothing for longer than the server's idle timeout, or moved
    slower than its minimum rate."""
    NOT_READY = "NOT_READY"
    """The server is restoring a checkpoint before serving."""
    SHUTTING_DOWN = "SHUTTING_DOWN"
    """The server is stopping; retry against its successor."""
    INVALID_ADVANCE = "INVALID_ADVANCE"
    """An optimizer named twice in a push's ``advance`` or ``non_finite``, named in
    ``advance`` and touched by a gradient of the same push, or named in ``non_finite`` and of
    the "reject" policy or neither touched nor advanced."""
    INVALID_FOLLOW = "INVALID_FOLLOW"
    """A push's ``follow`` names an optimizer twice, one that is not in sync mode or that the
    push neither touches nor advances, or a closed step without the pushing worker."""
    # Shards
    INVALID_SHARD = "INVALID_SHARD"
    """A shard identity out of range: ``shards`` < 1, or ``shard`` >= ``shards``."""
    SHARD_MISMATCH = "SHARD_MISMATCH"
    """The server is another shard than the one a client declared: the client's list of
    servers is another (reordered, shorter or longer) than the one that declared it."""
    INVALID_PLACEMENT = "INVALID_PLACEMENT"
    """Placements that differ in one creation request, or a partition that does not fit
    the variable or its whole (index, count, shape or rows)."""
    # Listings
    INVALID_PAGE = "INVALID_PAGE"
    """A negative page size, or a page token that no page gave."""
    # Checkpoints
    NO_CHECKPOINT_DIR = "NO_CHECKPOINT_DIR"
    """The server runs without a checkpoint directory."""
    NO_CHECKPOINT = "NO_CHECKPOINT"
    """The checkpoint directory holds no checkpoint yet."""
    UNKNOWN_CHECKPOINT = "UNKNOWN_CHECKPOINT"
    """No checkpoint of that id, or it was deleted by retention."""
    CHECKPOINT_UNREADABLE = "CHECKPOINT_UNREADABLE"
    """A checkpoint whose files are missing, truncated or corrupted."""
    CHECKPOINT_MISMATCH = "CHECKPOINT_MISMATCH"
    """A readable checkpoint whose contents do not fit together."""
    NO_SPACE = "NO_SPACE"
    """The disk is full (or a quota reached) while writing a checkpoint."""
    ITERATIONS_PASSED = "ITERATIONS_PASSED"
    """A save asked to wait for an optimizer's iterations to reach a value the optimizer
    is already past; the metadata names the optimizer, its iterations and the value."""
    TARGET_NOT_REACHED = "TARGET_NOT_REACHED"
    """A save waiting for optimizers to reach given iterations gave up at its call's
    deadline (or the call ended) before they did; nothing was saved."""
    INTERNAL = "INTERNAL"
    """A fault of the server itself; its log has the details."""


def error_status(
    code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str]
) -> status_pb2.Status:
    """Returns the ``google.rpc.Status`` of a refusal: its code and message, and an
    ``ErrorInfo`` with the reason and its facts."""
    info = error_details_pb2.ErrorInfo(
        reason=str(reason), domain=ERROR_DOMAIN, metadata=dict(metadata)
    )
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return status


def decode_detail(
    trailing_metadata: Iterable[tuple[str, Any]] | None,
) -> tuple[str, dict[str, str]]:
    """Returns (reason, metadata) of the tfps ``ErrorInfo`` in a call's trailing metadata;
    ("", {}) when there is none (or the status details do not parse)."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            details = status_pb2.Status.FromString(value).details
        except DecodeError:
            return "", {}
        for detail in details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info.reason, dict(info.metadata)
    return "", {}
