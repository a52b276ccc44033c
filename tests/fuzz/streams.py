"""Valid tensor streams of the client-streaming methods, and mutations of them.

A request is first built valid against the seed: declarations of the seed's variables
or new ones, dense and sparse gradients of the seed's variables (cast-up dtypes, sparse
rows, a worker for sync optimizers), an optimizer's weights in Keras order. Then a few
mutations break it where the server must look closely: values (dtype, shape, NaN, bad
indices), headers (names, duplicated or dropped entries, dense/sparse layout, specs
that no longer match their bytes, step and ids) and the stream itself (chunks dropped,
repeated, moved, cut or padded, offsets and tensor indices off, headers repeated,
empty messages, no message at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from tfps_client import VariableInfo
from tfps_client.wire import codec, tensor_pb2
from tfps_client.wire import parameter_server_pb2 as pb

from fuzz import seed, values
from fuzz.cases import Case
from fuzz.seed import SeedState

Draw = Callable[..., Any]

Stream = list[Any]
"""The messages of a request stream, each with a ``chunks`` field."""

ELEMENTS = (0.0, 0.25, -0.5, 1.0, 2.0)
"""Tensor elements of valid requests: exact in every float dtype."""

FLOATS = tuple(np.dtype(d) for d in ("float16", ml_dtypes.bfloat16, "float32", "float64"))
"""The float dtypes of the wire, narrowest first."""

WIRE_DTYPES = (*FLOATS, np.dtype("int32"), np.dtype("int64"))
"""Every dtype the wire carries."""

CHUNK_BYTES = (4096, 64, 8, 3, 1)
"""Tensor bytes per stream message, before the cap on messages per stream; the simplest
(one message) first, where shrinking goes."""

MAX_MESSAGES = 16
"""Most messages a stream is cut into."""

STEPS = (None, 0, 1, 2, 3, seed.LAST_ITERATIONS - 1, seed.LAST_ITERATIONS)
"""Steps of valid pushes: none, stale, current or ahead for one seed optimizer or another."""

ITERATIONS = (0, 1, 5, seed.LAST_ITERATIONS)
"""Iterations of valid weights, the last one an optimizer may reach included."""

MUTATIONS_PER_REQUEST = (0, 1, 1, 2)
"""How many mutations a request gets, each count as likely as the others listed."""

MUTATIONS_PER_STREAM = (0, 0, 1, 2)
"""How many mutations a stream gets: most break it outright, so none half of the time."""


@dataclass(frozen=True)
class _Layout:
    """Where a method's first message declares its tensors.

    Attributes:
        message: the request message class.
        entries: the repeated field of the declarations, one or two tensors each.
        specs: the tensor specs of one entry, as references into it.
        name: the entry's name field, if it has one.
    """

    message: type[Message]
    entries: str
    specs: Callable[[Any], list[tensor_pb2.TensorSpec]]
    name: str | None


def _gradient_specs(header: pb.GradientHeader) -> list[tensor_pb2.TensorSpec]:
    kind = header.WhichOneof("kind")
    if kind == "dense":
        return [header.dense.tensor]
    if kind == "sparse":
        return [header.sparse.values, header.sparse.indices]
    return []


LAYOUTS = {
    "CreateVariables": _Layout(pb.CreateVariablesRequest, "variables", lambda d: [d.spec], "name"),
    "Push": _Layout(pb.PushRequest, "gradients", _gradient_specs, "variable"),
    "PushPull": _Layout(pb.PushPullRequest, "gradients", _gradient_specs, "variable"),
    "SetOptimizerWeights": _Layout(pb.SetOptimizerWeightsRequest, "weights", lambda s: [s], None),
}
"""The client-streaming methods, by name."""

_PUSHES = (pb.PushRequest, pb.PushPullRequest)
"""The request messages of the pushing methods."""


@dataclass
class _Request:
    """A request being built: its method's layout, first message (no chunks) and tensors."""

    layout: _Layout
    header: Any
    arrays: list[np.ndarray]

    def entries(self) -> Any:
        return getattr(self.header, self.layout.entries)

    def specs(self) -> list[tensor_pb2.TensorSpec]:
        return [spec for entry in self.entries() for spec in self.layout.specs(entry)]

    def tensors_before(self, entry: int) -> int:
        return sum(len(self.layout.specs(e)) for e in list(self.entries())[:entry])


def streams(method: str, state: SeedState) -> st.SearchStrategy[Case]:
    """Cases of a client-streaming method: valid requests, then mutated."""
    return _streams(method, state)


@st.composite
def _streams(draw: Draw, method: str, state: SeedState) -> Case:
    request = _Request(LAYOUTS[method], *draw(_VALID[method](state)))
    for _ in range(draw(st.sampled_from(MUTATIONS_PER_REQUEST))):
        mutate = draw(st.sampled_from(_REQUEST_MUTATIONS))
        mutate(draw, request)
    messages = _cut(draw, request)
    for _ in range(draw(st.sampled_from(MUTATIONS_PER_STREAM))):
        mutate_stream = draw(st.sampled_from(_STREAM_MUTATIONS))
        messages = mutate_stream(draw, messages)
    return Case.of(method, messages)


# Valid requests --------------------------------------------------------------------------------


def _array(draw: Draw, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape)
    elements = draw(st.lists(st.sampled_from(ELEMENTS), min_size=size, max_size=size))
    return np.array(elements, np.float64).astype(dtype).reshape(shape)


def _cast_up(variable: VariableInfo) -> st.SearchStrategy[np.dtype]:
    """The variable's dtype, or a narrower float one that the server casts up."""
    dtype = np.dtype(variable.dtype)
    narrower = [d for d in FLOATS if d.itemsize < dtype.itemsize]
    return st.sampled_from([dtype, *narrower])


def _name(variable: VariableInfo) -> str:
    return variable.name


def _seed_variables(state: SeedState) -> st.SearchStrategy[list[VariableInfo]]:
    return st.lists(st.sampled_from(state.variables), min_size=1, max_size=3, unique_by=_name)


@st.composite
def _create_variables(draw: Draw, state: SeedState) -> tuple[Message, list[np.ndarray]]:
    optimizer = draw(st.sampled_from(sorted(state.weights)))
    own = [v for v in state.variables if v.optimizer == optimizer]
    declared: list[tuple[str, np.ndarray]] = []
    for variable in draw(st.lists(st.sampled_from(own), max_size=2, unique_by=_name)):
        declared.append((variable.name, _array(draw, variable.dtype, variable.shape)))
    for index in range(draw(st.integers(0 if declared else 1, 2))):
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        declared.append((f"fresh/{index}", _array(draw, draw(st.sampled_from(FLOATS)), shape)))
    header = pb.CreateVariablesRequest(
        optimizer=optimizer,
        variables=[pb.VariableDeclaration(name=n, spec=codec.spec_of(a)) for n, a in declared],
    )
    return header, [array for _, array in declared]


@st.composite
def _push(draw: Draw, state: SeedState, pull: bool) -> tuple[Message, list[np.ndarray]]:
    headers, arrays = [], []
    variables = draw(_seed_variables(state))
    for variable in variables:
        dtype = draw(_cast_up(variable))
        if variable.shape and draw(st.booleans()):
            rows, rest = variable.shape[0], variable.shape[1:]
            ids = draw(st.lists(st.integers(0, max(rows - 1, 0)), max_size=3 if rows else 0))
            indices = np.array(ids, draw(st.sampled_from(WIRE_DTYPES[-2:])))
            rows_values = _array(draw, dtype, (len(ids), *rest))
            dense_shape = draw(st.sampled_from([(), variable.shape]))
            sparse = tensor_pb2.IndexedSlicesSpec(
                values=codec.spec_of(rows_values),
                indices=codec.spec_of(indices),
                dense_shape=dense_shape,
            )
            headers.append(pb.GradientHeader(variable=variable.name, sparse=sparse))
            arrays += [rows_values, indices]
        else:
            value = _array(draw, dtype, variable.shape)
            dense = tensor_pb2.DenseSpec(tensor=codec.spec_of(value))
            headers.append(pb.GradientHeader(variable=variable.name, dense=dense))
            arrays.append(value)
    sync = any(v.optimizer in state.sync for v in variables)
    header = (pb.PushPullRequest if pull else pb.PushRequest)(
        gradients=headers,
        worker=draw(st.sampled_from(["w0", "w1"] if sync else ["", "w0"])),
        request_id=draw(st.sampled_from(["", seed.REMEMBERED_ID, "r1"])),
    )
    step = draw(st.sampled_from(STEPS))
    if step is not None:
        header.step = step
    if pull:
        names = [v.name for v in state.variables]
        header.pull.extend(draw(st.lists(st.sampled_from(names), max_size=3)))
    return header, arrays


@st.composite
def _set_weights(draw: Draw, state: SeedState) -> tuple[Message, list[np.ndarray]]:
    optimizer = draw(st.sampled_from(sorted(state.weights)))
    iterations, *slots = state.weights[optimizer]
    arrays = [np.array(draw(st.sampled_from(ITERATIONS)), iterations.dtype)]
    arrays += [_array(draw, slot.dtype, slot.shape) for slot in slots]
    header = pb.SetOptimizerWeightsRequest(
        optimizer=optimizer, weights=[codec.spec_of(a) for a in arrays]
    )
    return header, arrays


_VALID: dict[str, Callable[[SeedState], st.SearchStrategy[tuple[Message, list[np.ndarray]]]]] = {
    "CreateVariables": _create_variables,
    "Push": lambda state: _push(state, pull=False),
    "PushPull": lambda state: _push(state, pull=True),
    "SetOptimizerWeights": _set_weights,
}


# Mutations of the request ----------------------------------------------------------------------


def _respec(request: _Request, tensor: int) -> None:
    """Makes a tensor's spec describe its (changed) array again, if both exist."""
    specs = request.specs()
    if tensor < len(specs):
        specs[tensor].CopyFrom(codec.spec_of(request.arrays[tensor]))


def _pick_tensor(draw: Draw, request: _Request) -> int | None:
    if not request.arrays:
        return None
    return int(draw(st.integers(0, len(request.arrays) - 1)))


def _retype(draw: Draw, request: _Request) -> None:
    """One tensor in another dtype, its spec saying so."""
    tensor = _pick_tensor(draw, request)
    if tensor is not None:
        dtype = draw(st.sampled_from(WIRE_DTYPES))
        with np.errstate(over="ignore", invalid="ignore"):  # 2**62 iterations as float16
            request.arrays[tensor] = request.arrays[tensor].astype(dtype)
        _respec(request, tensor)


def _reshape(draw: Draw, request: _Request) -> None:
    """One tensor of another shape (a dimension more, less, or changed), its spec saying so."""
    tensor = _pick_tensor(draw, request)
    if tensor is None:
        return
    shape = list(request.arrays[tensor].shape)
    change = draw(st.sampled_from(["add", "drop", "resize"]))
    if change == "add":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(0, 2)))
    elif shape:
        where = draw(st.integers(0, len(shape) - 1))
        if change == "drop":
            del shape[where]
        else:
            shape[where] = max(0, shape[where] + draw(st.sampled_from([-1, 1, 3])))
    request.arrays[tensor] = _array(draw, request.arrays[tensor].dtype, tuple(shape))
    _respec(request, tensor)


def _poison(draw: Draw, request: _Request) -> None:
    """A NaN or an infinity in a float tensor, or an edge value in an integer one."""
    tensor = _pick_tensor(draw, request)
    if tensor is None or request.arrays[tensor].size == 0:
        return
    array = request.arrays[tensor].copy()
    flat = array.reshape(-1)
    where = draw(st.integers(0, flat.size - 1))
    if array.dtype.kind == "f" or array.dtype == FLOATS[1]:
        flat[where] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    else:
        info = np.iinfo(array.dtype)
        edges = [-1, 6, 2**31 - 1, 2**62 + 1, int(info.min), int(info.max)]
        flat[where] = draw(st.sampled_from([e for e in edges if info.min <= e <= info.max]))
    request.arrays[tensor] = array


def _lie(draw: Draw, request: _Request) -> None:
    """A spec whose dtype or shape no longer matches the bytes that follow it."""
    specs = request.specs()
    if not specs:
        return
    spec = specs[draw(st.integers(0, len(specs) - 1))]
    if draw(st.booleans()):
        spec.dtype = draw(values.dtypes())
    else:
        spec.ClearField("shape")
        spec.shape.extend(draw(values.shapes()))


def _rename(draw: Draw, request: _Request) -> None:
    """An entry naming another (maybe unknown, maybe repeated) variable, another optimizer,
    or one more variable to pull."""
    entries, name = request.entries(), request.layout.name
    if name is not None and entries and draw(st.booleans()):
        entry = entries[draw(st.integers(0, len(entries) - 1))]
        setattr(entry, name, draw(values.names(values.VARIABLE_NAMES)))
    elif request.layout.message is pb.PushPullRequest:
        request.header.pull.append(draw(values.names(values.VARIABLE_NAMES)))
    elif request.layout.message is not pb.PushRequest:
        request.header.optimizer = draw(values.names(values.OPTIMIZER_NAMES))


def _pick_entry(draw: Draw, request: _Request) -> tuple[int, slice] | None:
    """One entry of the request: its index and the slice of its tensors; None if none."""
    entries = request.entries()
    if not entries:
        return None
    index = draw(st.integers(0, len(entries) - 1))
    first = request.tensors_before(index)
    return index, slice(first, first + len(request.layout.specs(entries[index])))


def _duplicate(draw: Draw, request: _Request) -> None:
    """An entry declared twice, its tensors twice too."""
    picked = _pick_entry(draw, request)
    if picked is None:
        return
    index, tensors = picked
    entries = request.entries()
    entries.add().CopyFrom(entries[index])
    request.arrays += [a.copy() for a in request.arrays[tensors]]


def _drop(draw: Draw, request: _Request) -> None:
    """An entry left out, with its tensors or (so that the rest shift) without."""
    picked = _pick_entry(draw, request)
    if picked is None:
        return
    index, tensors = picked
    del request.entries()[index]
    if draw(st.booleans()):
        del request.arrays[tensors]


def _relayout(draw: Draw, request: _Request) -> None:
    """A gradient whose dense/sparse layout changed, lost, or whose dense shape is off."""
    if request.layout.message not in _PUSHES or not request.entries():
        return
    entries = request.entries()
    header = entries[draw(st.integers(0, len(entries) - 1))]
    change = draw(st.sampled_from(["none", "flip", "dense_shape"]))
    if change == "none":
        header.ClearField("kind")
    elif change == "flip" and header.WhichOneof("kind") == "sparse":
        header.dense.tensor.CopyFrom(
            tensor_pb2.TensorSpec.FromString(header.sparse.values.SerializeToString())
        )
    elif change == "flip":
        rows = tensor_pb2.TensorSpec.FromString(header.dense.tensor.SerializeToString())
        header.sparse.values.CopyFrom(rows)
        header.sparse.indices.CopyFrom(codec.spec_of(np.zeros(rows.shape[:1], np.int64)))
    else:
        header.sparse.ClearField("dense_shape")
        header.sparse.dense_shape.extend(draw(values.shapes()))


def _context(draw: Draw, request: _Request) -> None:
    """A push's step, worker or request id at an edge."""
    if request.layout.message not in _PUSHES:
        return
    field = draw(st.sampled_from(["step", "worker", "request_id"]))
    if field == "step":
        request.header.step = draw(values.integers(FieldDescriptor.CPPTYPE_INT64))
    else:
        setattr(request.header, field, draw(values.names(values.WORKERS)))


_REQUEST_MUTATIONS = (
    _retype,
    _reshape,
    _poison,
    _lie,
    _rename,
    _duplicate,
    _drop,
    _relayout,
    _context,
)


# The stream and mutations of it ----------------------------------------------------------------


def _cut(draw: Draw, request: _Request) -> Stream:
    """The request as a stream: the header in the first message, chunks spread over all."""
    total = sum(a.nbytes for a in request.arrays)
    chunk_bytes = max(draw(st.sampled_from(CHUNK_BYTES)), -(-total // MAX_MESSAGES))
    batches = [
        [tensor_pb2.TensorChunk(tensor_index=i, offset=o, data=bytes(d)) for i, o, d in pieces]
        for pieces in codec.iter_chunks(request.arrays, chunk_bytes)
    ]
    first: Any = request.layout.message()
    first.CopyFrom(request.header)
    first.chunks.extend(batches[0])
    return [first, *(request.layout.message(chunks=b) for b in batches[1:])]


def _chunk_positions(messages: Stream) -> list[tuple[int, int]]:
    return [(m, c) for m, message in enumerate(messages) for c in range(len(message.chunks))]


def _pick_chunk(draw: Draw, messages: Stream) -> tensor_pb2.TensorChunk | None:
    positions = _chunk_positions(messages)
    if not positions:
        return None
    message, chunk = draw(st.sampled_from(positions))
    return messages[message].chunks[chunk]


def _drop_chunk(draw: Draw, messages: Stream) -> Stream:
    positions = _chunk_positions(messages)
    if positions:
        message, chunk = draw(st.sampled_from(positions))
        del messages[message].chunks[chunk]
    return messages


def _repeat_chunk(draw: Draw, messages: Stream) -> Stream:
    chunk = _pick_chunk(draw, messages)
    if chunk is not None:
        messages[draw(st.integers(0, len(messages) - 1))].chunks.add().CopyFrom(chunk)
    return messages


def _swap_chunks(draw: Draw, messages: Stream) -> Stream:
    first, second = _pick_chunk(draw, messages), _pick_chunk(draw, messages)
    if first is not None and second is not None:
        saved = tensor_pb2.TensorChunk()
        saved.CopyFrom(first)
        first.CopyFrom(second)
        second.CopyFrom(saved)
    return messages


def _move_offset(draw: Draw, messages: Stream) -> Stream:
    chunk = _pick_chunk(draw, messages)
    if chunk is not None:
        moved = chunk.offset + draw(st.sampled_from([-1, 1, 2, 2**62, 2**63]))
        chunk.offset = min(max(moved, 0), 2**64 - 1)
    return messages


def _retarget(draw: Draw, messages: Stream) -> Stream:
    chunk = _pick_chunk(draw, messages)
    if chunk is not None:
        chunk.tensor_index = draw(st.one_of(st.integers(0, 4), st.just(2**32 - 1)))
    return messages


def _resize_data(draw: Draw, messages: Stream) -> Stream:
    chunk = _pick_chunk(draw, messages)
    if chunk is not None:
        cut = draw(st.integers(0, len(chunk.data)))
        chunk.data = chunk.data[:cut] + draw(st.binary(max_size=8))
    return messages


def _repeat_header(draw: Draw, messages: Stream) -> Stream:
    """The first message's fields again in a later one (they count in the first only)."""
    if messages:
        header = type(messages[0])()
        header.CopyFrom(messages[0])
        header.ClearField("chunks")
        messages[draw(st.integers(0, len(messages) - 1))].MergeFrom(header)
    return messages


def _empty_message(draw: Draw, messages: Stream) -> Stream:
    """An empty message somewhere, the first place included (the header then comes second)."""
    if messages:
        messages.insert(draw(st.integers(0, len(messages))), type(messages[0])())
    return messages


def _no_messages(draw: Draw, messages: Stream) -> Stream:
    return []


_STREAM_MUTATIONS = (
    _drop_chunk,
    _repeat_chunk,
    _swap_chunks,
    _move_offset,
    _retarget,
    _resize_data,
    _repeat_header,
    _empty_message,
    _no_messages,
)
