"""Typed values <-> protobuf messages, shared by the client and the server.

Optimizer options and push outcomes travel as ``tfps.v1`` messages and enums;
both sides convert them here, so there is one mapping to keep true.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from tfps_client._proto.tfps.v1 import parameter_server_pb2 as pb
from tfps_client.types import Aggregation, Async, OptimizerOptions, Outcome, Sync

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


def outcome_to_wire(outcome: Outcome) -> pb.PushOutcome:
    """Returns the wire enum of a push outcome."""
    return _OUTCOMES[outcome]


def outcome_from_wire(wire: int) -> Outcome:
    """Returns the push outcome of a wire enum value.

    Raises:
        ValueError: an unspecified or unknown value.
    """
    return _lookup(_OUTCOMES_BY_WIRE, wire, "push outcome")


def options_to_message(options: OptimizerOptions) -> pb.OptimizerOptions:
    """Returns the wire form of optimizer options.

    Raises:
        ValueError: a reduction, timeout action or non-finite policy has no wire form.
    """
    message = pb.OptimizerOptions(on_non_finite=_wire(_NON_FINITE, options.on_non_finite))
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
    return OptimizerOptions(aggregation, on_non_finite)


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
