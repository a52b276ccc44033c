"""Python values <-> ``tfps.v1`` messages: every mapping besides tensor bytes, in one place.

Both sides convert here: the client encodes what the server decodes with the
function beside it, so there is one mapping to keep true. Tensor bytes are the
codec's (:mod:`tfps_client.wire.codec`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from tfps_client.types import (
    Aggregation,
    Async,
    CheckpointInfo,
    IndexedSlices,
    OptimizerOptions,
    Outcome,
    Partition,
    Placement,
    PushResult,
    ShardIdentity,
    Sync,
    VariableInfo,
)
from tfps_client.wire import codec
from tfps_client.wire._proto.tfps.v1 import parameter_server_pb2 as pb
from tfps_client.wire._proto.tfps.v1 import tensor_pb2

_T = TypeVar("_T")

_OUTCOMES = {
    Outcome.APPLIED: pb.PUSH_OUTCOME_APPLIED,
    Outcome.AGGREGATED: pb.PUSH_OUTCOME_AGGREGATED,
    Outcome.STALE: pb.PUSH_OUTCOME_STALE,
    Outcome.SKIPPED: pb.PUSH_OUTCOME_SKIPPED,
    Outcome.DROPPED: pb.PUSH_OUTCOME_DROPPED,
}
_OUTCOMES_BY_WIRE = {wire: outcome for outcome, wire in _OUTCOMES.items()}
_REDUCTIONS = {"sum": pb.REDUCTION_SUM, "mean": pb.REDUCTION_MEAN}
_TIMEOUT_ACTIONS = {"apply": pb.TIMEOUT_ACTION_APPLY, "drop": pb.TIMEOUT_ACTION_DROP}
_NON_FINITE = {"reject": pb.NON_FINITE_POLICY_REJECT, "skip": pb.NON_FINITE_POLICY_SKIP}


class DenseGradient(NamedTuple):
    """A dense gradient of one variable, as decoded from a push."""

    variable: str
    values: np.ndarray


class SparseGradient(NamedTuple):
    """Row updates of one variable, as decoded from a push.

    ``dense_shape`` empty means the variable's shape.
    """

    variable: str
    values: np.ndarray
    indices: np.ndarray
    dense_shape: tuple[int, ...]


Gradient = DenseGradient | SparseGradient
"""A decoded gradient."""


class OptimizerResult(NamedTuple):
    """What a push did for one optimizer."""

    outcome: Outcome
    iterations: int
    """The optimizer's ``iterations`` afterwards."""
    contributors: tuple[str, ...] = ()
    """Sync mode, when the push's step closed: the workers whose contributions formed it."""


class SyncStep(NamedTuple):
    """A sync step the first shard closed, which the other shards' parts of a push join."""

    optimizer: str
    outcome: Outcome
    """What the step did there; STALE: the push joined no step."""
    step: int
    """The optimizer's iterations when the step applies."""
    contributors: tuple[str, ...]
    """The workers whose contributions formed the step, sorted."""


class MissingGradientError(ValueError):
    """A gradient header that is neither dense nor sparse."""

    def __init__(self, variable: str) -> None:
        super().__init__("expected a dense or sparse gradient, received neither")
        self.variable = variable


# Push outcomes and results ---------------------------------------------------------------------


def outcome_to_wire(outcome: Outcome) -> pb.PushOutcome:
    """Returns the wire enum of a push outcome."""
    return _OUTCOMES[outcome]


def outcome_from_wire(wire: int) -> Outcome:
    """Returns the push outcome of a wire enum value.

    Raises:
        ValueError: an unspecified or unknown value.
    """
    return _lookup(_OUTCOMES_BY_WIRE, wire, "push outcome")


def push_response(results: Mapping[str, OptimizerResult]) -> pb.PushResponse:
    """Returns the response of a push from its result per optimizer."""
    return pb.PushResponse(
        results={
            name: pb.OptimizerPushResult(
                outcome=outcome_to_wire(result.outcome),
                iterations=result.iterations,
                contributors=result.contributors,
            )
            for name, result in results.items()
        }
    )


def push_result(response: pb.PushResponse, request_id: str) -> PushResult:
    """Returns the client's view of a push response."""
    return PushResult(
        outcomes={name: outcome_from_wire(r.outcome) for name, r in response.results.items()},
        iterations={name: r.iterations for name, r in response.results.items()},
        request_id=request_id,
    )


def step_closed(optimizer: str, result: pb.OptimizerPushResult) -> pb.SyncStep:
    """The sync step a shard's push result reports, for the other shards to follow: a step
    that applied (or skipped) ran at the iterations before the result's; one dropped did not
    change them."""
    closed = result.outcome in (pb.PUSH_OUTCOME_AGGREGATED, pb.PUSH_OUTCOME_SKIPPED)
    return pb.SyncStep(
        optimizer=optimizer,
        outcome=result.outcome,
        step=result.iterations - 1 if closed else result.iterations,
        contributors=result.contributors,
    )


def sync_step_from_message(message: pb.SyncStep) -> SyncStep:
    """Returns a decoded sync step.

    Raises:
        ValueError: an unspecified or unknown outcome.
    """
    return SyncStep(
        message.optimizer,
        outcome_from_wire(message.outcome),
        message.step,
        tuple(message.contributors),
    )


# Optimizer options -----------------------------------------------------------------------------


def options_to_message(options: OptimizerOptions) -> pb.OptimizerOptions:
    """Returns the wire form of optimizer options.

    Raises:
        ValueError: a reduction, timeout action or non-finite policy has no wire form.
    """
    message = pb.OptimizerOptions(
        on_non_finite=_wire(_NON_FINITE, options.on_non_finite),
        lazy_sparse=options.lazy_sparse,
    )
    aggregation = options.aggregation
    if isinstance(aggregation, Sync):
        message.synchronous.CopyFrom(
            pb.SyncAggregation(
                replicas_to_aggregate=aggregation.replicas_to_aggregate,
                total_num_replicas=aggregation.total_num_replicas or 0,
                reduction=_wire(_REDUCTIONS, aggregation.reduction),
                timeout_seconds=aggregation.timeout,
                on_timeout=_wire(_TIMEOUT_ACTIONS, aggregation.on_timeout),
            )
        )
    else:
        message.asynchronous.SetInParent()
        if aggregation.max_staleness is not None:
            message.asynchronous.max_staleness = aggregation.max_staleness
    return message


def options_from_message(message: pb.OptimizerOptions) -> OptimizerOptions:
    """Returns optimizer options from their wire form; unspecified enums take the defaults.

    Raises:
        ValueError: an enum value this version does not know.
    """
    aggregation: Aggregation
    if message.HasField("synchronous"):
        sync = message.synchronous
        aggregation = Sync(
            replicas_to_aggregate=sync.replicas_to_aggregate,
            total_num_replicas=sync.total_num_replicas or None,
            reduction=_name(_REDUCTIONS, sync.reduction, "sum", "reduction"),
            timeout=sync.timeout_seconds,
            on_timeout=_name(_TIMEOUT_ACTIONS, sync.on_timeout, "apply", "on_timeout"),
        )
    else:
        bounded = message.asynchronous.HasField("max_staleness")
        aggregation = Async(message.asynchronous.max_staleness if bounded else None)
    on_non_finite = _name(_NON_FINITE, message.on_non_finite, "reject", "on_non_finite")
    return OptimizerOptions(aggregation, on_non_finite, message.lazy_sparse)


# Variables and checkpoints ---------------------------------------------------------------------


def placement_to_message(placement: Placement) -> pb.Placement:
    """Returns the wire form of a variable's placement."""
    part = placement.partition
    return pb.Placement(
        shard=placement.shard,
        shards=placement.shards,
        partition=None
        if part is None
        else pb.Partition(
            variable=part.variable,
            index=part.index,
            count=part.count,
            row_offset=part.row_offset,
            shape=part.shape,
        ),
        order=placement.order,
        batch=placement.batch,
    )


def placement_of(message: pb.VariableDeclaration | pb.VariableInfo) -> Placement | None:
    """Returns the placement a declaration or a variable's description carries; None when
    it carries none."""
    if not message.HasField("placement"):
        return None
    wire = message.placement
    part = wire.partition
    partition = (
        Partition(part.variable, part.index, part.count, part.row_offset, tuple(part.shape))
        if wire.HasField("partition")
        else None
    )
    return Placement(wire.shard, wire.shards, partition, wire.order, wire.batch)


def variable_info_to_message(info: VariableInfo) -> pb.VariableInfo:
    """Returns the wire description of a variable."""
    return pb.VariableInfo(
        name=info.name,
        spec=tensor_pb2.TensorSpec(dtype=codec.wire_dtype(info.dtype), shape=info.shape),
        optimizer=info.optimizer,
        device=info.device,
        placement=None if info.placement is None else placement_to_message(info.placement),
    )


def variable_info_from_message(message: pb.VariableInfo) -> VariableInfo:
    """Returns the description of a variable from its wire form."""
    return VariableInfo(
        name=message.name,
        shape=codec.spec_shape(message.spec),
        dtype=codec.numpy_dtype(message.spec.dtype),
        optimizer=message.optimizer,
        device=message.device,
        placement=placement_of(message),
    )


def checkpoint_info_to_message(info: CheckpointInfo) -> pb.CheckpointInfo:
    """Returns the wire description of a checkpoint."""
    return pb.CheckpointInfo(
        id=info.id,
        path=info.path,
        saved_at=info.saved_at,
        size_bytes=info.size_bytes,
        iterations=info.iterations,
        variables=[variable_info_to_message(v) for v in info.variables],
        group=info.group,
        shard=None
        if info.shard is None
        else pb.ShardIdentity(shard=info.shard.shard, shards=info.shard.shards),
    )


def checkpoint_info_from_message(message: pb.CheckpointInfo) -> CheckpointInfo:
    """Returns the description of a checkpoint from its wire form."""
    return CheckpointInfo(
        id=message.id,
        path=message.path,
        saved_at=message.saved_at,
        size_bytes=message.size_bytes,
        iterations=dict(message.iterations),
        variables=tuple(variable_info_from_message(v) for v in message.variables),
        group=message.group,
        shard=ShardIdentity(message.shard.shard, message.shard.shards)
        if message.HasField("shard")
        else None,
    )


def named_specs(named: Sequence[tuple[str, np.ndarray]]) -> list[pb.NamedTensorSpec]:
    """Returns the specs of named arrays, as pull responses announce them."""
    return [pb.NamedTensorSpec(name=name, spec=codec.spec_of(value)) for name, value in named]


# Gradients -------------------------------------------------------------------------------------


def to_numpy(value: Any) -> np.ndarray:
    """Converts an array-like, or a TensorFlow tensor or variable, to numpy."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    return np.asarray(value)


def as_indexed_slices(value: Any) -> IndexedSlices | None:
    """Returns ``value`` as :class:`IndexedSlices` if it is one (ours or TensorFlow's)."""
    if isinstance(value, IndexedSlices):
        return value
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(value, tf.IndexedSlices):
        dense_shape = value.dense_shape
        return IndexedSlices(
            values=value.values.numpy(),
            indices=value.indices.numpy(),
            dense_shape=None if dense_shape is None else tuple(dense_shape.numpy().tolist()),
        )
    return None


def gradients_to_wire(
    gradients: Mapping[str, Any],
) -> tuple[list[pb.GradientHeader], list[np.ndarray]]:
    """Returns the headers and tensors of a push; ``None`` gradients are left out.

    A dense gradient takes one tensor, a sparse one two (values, then indices).
    """
    headers: list[pb.GradientHeader] = []
    arrays: list[np.ndarray] = []
    for name, value in gradients.items():
        if value is None:
            continue
        slices = as_indexed_slices(value)
        if slices is None:
            dense = to_numpy(value)
            headers.append(
                codec.build_message(
                    pb.GradientHeader,
                    variable=name,
                    dense=tensor_pb2.DenseSpec(tensor=codec.spec_of(dense)),
                )
            )
            arrays.append(dense)
            continue
        values, indices = np.asarray(slices.values), np.asarray(slices.indices)
        headers.append(
            codec.build_message(
                pb.GradientHeader,
                variable=name,
                sparse=codec.build_message(
                    tensor_pb2.IndexedSlicesSpec,
                    values=codec.spec_of(values),
                    indices=codec.spec_of(indices),
                    dense_shape=slices.dense_shape or (),
                ),
            )
        )
        arrays.extend([values, indices])
    return headers, arrays


def gradient_specs(headers: Iterable[pb.GradientHeader]) -> list[tensor_pb2.TensorSpec]:
    """Returns the tensor specs a push's headers announce, in tensor-index order.

    Raises:
        ValueError: a header is neither dense nor sparse; the message names its variable.
    """
    specs: list[tensor_pb2.TensorSpec] = []
    for header in headers:
        kind = header.WhichOneof("kind")
        if kind == "dense":
            specs.append(header.dense.tensor)
        elif kind == "sparse":
            specs.extend([header.sparse.values, header.sparse.indices])
        else:
            raise MissingGradientError(header.variable)
    return specs


def gradients_from_wire(
    headers: Iterable[pb.GradientHeader], arrays: Sequence[np.ndarray]
) -> list[Gradient]:
    """Returns the gradients of a push from its headers and decoded tensors."""
    tensors_left = iter(arrays)
    gradients: list[Gradient] = []
    for header in headers:
        if header.WhichOneof("kind") == "dense":
            gradients.append(DenseGradient(header.variable, next(tensors_left)))
        else:
            values, indices = next(tensors_left), next(tensors_left)
            dense_shape = tuple(int(d) for d in header.sparse.dense_shape)
            gradients.append(SparseGradient(header.variable, values, indices, dense_shape))
    return gradients


# Enums -----------------------------------------------------------------------------------------


def _wire(table: Mapping[str, Any], name: str) -> Any:
    if name not in table:
        raise ValueError(f"expected one of {sorted(table)}, received {name!r}")
    return table[name]


def _name(table: Mapping[str, Any], wire: int, default: str, what: str) -> Any:
    if wire == 0:
        return default
    names = {value: name for name, value in table.items()}
    return _lookup(names, wire, what)


def _lookup(table: Mapping[Any, _T], wire: int, what: str) -> _T:
    if wire not in table:
        raise ValueError(f"{what}: expected one of {sorted(table)}, received enum value {wire}")
    return table[wire]
