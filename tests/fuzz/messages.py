"""Protobuf messages built field by field from their descriptors, with biased values.

Any request message of the service comes out of :func:`messages`: each oneof sets at
most one member, each other field is set or left out, repeated fields hold a few
elements. Fields whose meaning the server checks (names, configs, shapes, timeouts)
draw from the pools of :mod:`fuzz.values`; the others from their type's edges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from fuzz import values

DEPTH = 3
"""Levels of nested messages filled in; deeper ones are left empty."""

MAX_REPEATED = 3
"""Most elements of a repeated field, unless :data:`LISTS` says otherwise."""

_VARIABLE = values.names(values.VARIABLE_NAMES)
_OPTIMIZER = values.names(values.OPTIMIZER_NAMES)
_WORKER = values.names(values.WORKERS)

ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "tfps.v1.CreateOptimizerRequest.name": _OPTIMIZER,
    "tfps.v1.CreateOptimizerRequest.config_json": values.json_texts(values.configs()),
    "tfps.v1.SyncAggregation.timeout_seconds": st.sampled_from(values.SYNC_TIMEOUTS),
    "tfps.v1.SyncAggregation.replicas_to_aggregate": st.integers(-1, 3),
    "tfps.v1.SyncAggregation.total_num_replicas": st.integers(-1, 4),
    "tfps.v1.VariableDeclaration.name": _VARIABLE,
    "tfps.v1.CreateVariablesRequest.optimizer": _OPTIMIZER,
    "tfps.v1.GradientHeader.variable": _VARIABLE,
    "tfps.v1.PushRequest.request_id": _WORKER,
    "tfps.v1.PushRequest.worker": _WORKER,
    "tfps.v1.PushPullRequest.request_id": _WORKER,
    "tfps.v1.PushPullRequest.worker": _WORKER,
    "tfps.v1.PushPullRequest.pull": _VARIABLE,
    "tfps.v1.PullRequest.names": _VARIABLE,
    "tfps.v1.PullRowsRequest.variable": _VARIABLE,
    "tfps.v1.GetOptimizerWeightsRequest.optimizer": _OPTIMIZER,
    "tfps.v1.SetOptimizerWeightsRequest.optimizer": _OPTIMIZER,
    "tfps.v1.GetOptimizerConfigRequest.optimizer": _OPTIMIZER,
    "tfps.v1.GetIterationsRequest.optimizer": _OPTIMIZER,
    "tfps.v1.GetSlotNamesRequest.optimizer": _OPTIMIZER,
    "tfps.v1.GetSlotRequest.variable": _VARIABLE,
    "tfps.v1.GetSlotRequest.slot": values.names(values.SLOT_NAMES),
    "tfps.v1.SetHyperparameterRequest.optimizer": _OPTIMIZER,
    "tfps.v1.SetHyperparameterRequest.name": values.names(values.HYPERPARAMETERS),
    "tfps.v1.SetHyperparameterRequest.schedule_json": values.json_texts(values.schedules()),
    "tfps.v1.SaveCheckpointRequest.AtIterationsEntry.key": _OPTIMIZER,
    "tfps.v1.SaveCheckpointRequest.AtIterationsEntry.value": st.sampled_from(
        values.SAVE_AT_ITERATIONS
    ),
    "tfps.v1.SaveCheckpointRequest.group": _WORKER,
    "tfps.v1.TensorSpec.dtype": values.dtypes(),
    "tfps.v1.TensorChunk.tensor_index": st.one_of(st.integers(0, 3), st.just(2**32 - 1)),
    "tfps.v1.TensorChunk.data": st.binary(max_size=64),
}
"""Values of one element of a field, by the field's full name."""

LISTS: dict[str, st.SearchStrategy[list[Any]]] = {
    "tfps.v1.TensorSpec.shape": values.shapes(),
    "tfps.v1.IndexedSlicesSpec.dense_shape": values.shapes(),
    "tfps.v1.PullRowsRequest.indices": st.lists(
        values.integers(FieldDescriptor.CPPTYPE_INT64), max_size=8
    ),
}
"""Whole values of repeated fields, by the field's full name."""


def messages(descriptor: Descriptor, depth: int = DEPTH) -> st.SearchStrategy[Message]:
    """Messages of the type ``descriptor`` describes, nested messages filled ``depth`` deep."""
    return _messages(descriptor, depth)


@st.composite
def _messages(draw: Callable[..., Any], descriptor: Descriptor, depth: int) -> Message:
    message = GetMessageClass(descriptor)()
    if depth <= 0:
        return message
    for oneof in descriptor.oneofs:
        member = draw(st.none() | st.sampled_from(list(oneof.fields)))
        if member is not None:
            _set(message, member, draw(_element(member, depth)))
    for field in descriptor.fields:
        if field.containing_oneof is not None:
            continue
        if field.is_repeated:
            _extend(message, field, draw(_list(field, depth)))
        elif draw(st.booleans()):
            _set(message, field, draw(_element(field, depth)))
    return message


def _element(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.full_name in ELEMENTS:
        return ELEMENTS[field.full_name]
    if field.message_type is not None:
        return messages(field.message_type, depth - 1)
    return _scalars(field)


def _list(field: FieldDescriptor, depth: int) -> st.SearchStrategy[list[Any]]:
    if field.full_name in LISTS:
        return LISTS[field.full_name]
    return st.lists(_element(field, depth), max_size=MAX_REPEATED)


def _scalars(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.cpp_type
    if kind in values.INT_RANGES:
        return values.integers(kind)
    if kind == FieldDescriptor.CPPTYPE_ENUM and field.enum_type is not None:
        defined = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), values.integers(FieldDescriptor.CPPTYPE_INT32))
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return values.doubles()
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.CPPTYPE_STRING:
        return values.texts()
    raise TypeError(f"{field.full_name}: no values for protobuf C++ type {kind}")


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.message_type is not None:
        getattr(message, field.name).SetInParent()
        getattr(message, field.name).MergeFrom(value)
    else:
        setattr(message, field.name, value)


def _extend(message: Message, field: FieldDescriptor, items: list[Any]) -> None:
    container = getattr(message, field.name)
    if field.message_type is None:
        container.extend(items)
        return
    if field.message_type.GetOptions().map_entry:  # a map: its entries by key, the last wins
        for item in items:
            if field.message_type.fields_by_name["value"].message_type is None:
                container[item.key] = item.value
            else:
                container[item.key].CopyFrom(item.value)
        return
    for item in items:
        container.add().CopyFrom(item)


def redraw_field(draw: Callable[..., Any], message: Message) -> None:
    """Replaces one top-level field of ``message`` (a repeated one whole) by a drawn value."""
    fields = list(message.DESCRIPTOR.fields)
    if not fields:
        return
    field = draw(st.sampled_from(fields))
    message.ClearField(field.name)
    if field.is_repeated:
        _extend(message, field, draw(_list(field, DEPTH)))
    else:
        _set(message, field, draw(_element(field, DEPTH)))
