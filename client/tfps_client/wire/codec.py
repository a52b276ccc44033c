"""The numpy <-> wire codec.

A tensor travels as a :class:`TensorSpec` (dtype and shape) plus its raw
row-major little-endian bytes cut into :class:`TensorChunk` pieces, so tensors
of any size fit in gRPC messages of bounded size. Both client and server use
this module; there is no second copy of the codec.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

import ml_dtypes
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tfps_client.wire import framing
from tfps_client.wire._proto.tfps.v1 import tensor_pb2

DataType = tensor_pb2.DataType
TensorSpec = tensor_pb2.TensorSpec
TensorChunk = tensor_pb2.TensorChunk


class _Chunk(Protocol):
    """A TensorChunk, or a :class:`framing.Piece`."""

    @property
    def tensor_index(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def data(self) -> bytes | memoryview: ...


_Message = TypeVar("_Message")
_Built = TypeVar("_Built", bound=Message)

DEFAULT_CHUNK_BYTES = 3 << 20
"""Bytes of tensor data per stream message (3 MiB): few messages per tensor, each under
gRPC's default 4 MiB receive limit with room for its header, so that peers with default
channel settings read every message."""

MAX_RANK = 32
"""Most dimensions a tensor may have."""

MAX_EXTENT_BYTES = 1 << 62
"""Bound on a shape's extent: the product of its dimensions, a zero counted as one, times
the item size. numpy cannot describe a larger array, even an empty one."""

_WIRE_DTYPES: dict[tensor_pb2.DataType, np.dtype] = {
    DataType.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    DataType.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    DataType.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    DataType.DATA_TYPE_BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    DataType.DATA_TYPE_INT32: np.dtype("<i4"),
    DataType.DATA_TYPE_INT64: np.dtype("<i8"),
}
_BY_NAME: dict[str, tensor_pb2.DataType] = {
    dtype.name: wire for wire, dtype in _WIRE_DTYPES.items()
}


class CodecError(ValueError):
    """A tensor could not be encoded or decoded; the message says why."""


class TooLargeError(CodecError):
    """Tensors announced more bytes than the receiver accepts."""


def numpy_dtype(wire: int) -> np.dtype:
    """Returns the numpy dtype of a wire dtype.

    Raises:
        CodecError: the wire dtype is unspecified or unknown.
    """
    try:
        return _WIRE_DTYPES[cast(tensor_pb2.DataType, wire)]
    except KeyError:
        raise CodecError(
            f"expected one of {sorted(_BY_NAME)}, received dtype enum value {wire}"
        ) from None


def wire_dtype(dtype: np.dtype | str) -> tensor_pb2.DataType:
    """Returns the wire dtype of a numpy dtype (or dtype name).

    Raises:
        CodecError: the dtype cannot travel on the wire.
    """
    name = np.dtype(dtype).name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise CodecError(f"expected a dtype in {sorted(_BY_NAME)}, received {name}") from None


def spec_of(array: np.ndarray) -> tensor_pb2.TensorSpec:
    """Returns the wire description of an array."""
    return tensor_pb2.TensorSpec(dtype=wire_dtype(array.dtype), shape=array.shape)


def spec_shape(spec: tensor_pb2.TensorSpec) -> tuple[int, ...]:
    """Returns the shape of a spec as a tuple."""
    return tuple(int(d) for d in spec.shape)


def spec_nbytes(spec: tensor_pb2.TensorSpec) -> int:
    """Returns the byte length a spec announces.

    Raises:
        CodecError: the dtype is unknown, or the shape has a negative dimension, more
            than :data:`MAX_RANK` dimensions or an extent beyond :data:`MAX_EXTENT_BYTES`.
    """
    shape = spec_shape(spec)
    itemsize = numpy_dtype(spec.dtype).itemsize
    if len(shape) > MAX_RANK:
        raise CodecError(f"expected at most {MAX_RANK} dimensions, received {len(shape)}")
    if any(d < 0 for d in shape):
        raise CodecError(f"expected non-negative dimensions, received shape {list(shape)}")
    if math.prod(max(d, 1) for d in shape) * itemsize > MAX_EXTENT_BYTES:
        raise CodecError(
            f"expected a shape whose extent is at most 2**62 bytes, received {list(shape)}"
        )
    return math.prod(shape) * itemsize


def little_endian_bytes(array: np.ndarray) -> memoryview:
    """The array's row-major little-endian bytes: a view of it where it has that layout."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def iter_chunks(
    arrays: Sequence[np.ndarray], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[list[framing.Piece]]:
    """Cuts arrays into chunk lists of at most ``chunk_bytes`` data bytes each.

    Small tensors share one list; a large one spans several. Every list is meant
    for one stream message. At least one (possibly empty) list is yielded. The
    chunks' data are views of the arrays (of a little-endian copy, where one is not).

    Args:
        arrays: the tensors, in tensor-index order.
        chunk_bytes: the most data bytes per yielded list.
    """
    batch: list[framing.Piece] = []
    room = chunk_bytes
    yielded = False
    for index, array in enumerate(arrays):
        data = little_endian_bytes(array)
        offset = 0
        while offset < len(data):
            take = min(room, len(data) - offset)
            batch.append(framing.Piece(index, offset, data[offset : offset + take]))
            offset += take
            room -= take
            if room == 0:
                yield batch
                batch, room, yielded = [], chunk_bytes, True
    if batch or not yielded:
        yield batch


ALIGNMENT = 64
"""Byte alignment of decoded tensors: what TensorFlow's CPU kernels align their own to, so
that a server can hand a decoded gradient to TensorFlow without a copy."""


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialized uint8 array of ``nbytes`` whose data starts on :data:`ALIGNMENT`."""
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes]


class TensorAssembler:
    """Rebuilds tensors from their specs and chunks, checking every byte.

    Chunks of a tensor must arrive in order, without gaps or overlaps. Memory
    for a tensor is reserved when its first chunk arrives and committed by the
    operating system only as bytes are written. Every tensor is copied once, into
    a writable array aligned to :data:`ALIGNMENT`.

    Args:
        specs: the tensors announced by the sender, in tensor-index order.
        max_total_bytes: refuse announcements larger than this, before allocating.

    Raises:
        CodecError: a spec is invalid.
        TooLargeError: the specs announce more than ``max_total_bytes``.
    """

    def __init__(
        self, specs: Sequence[tensor_pb2.TensorSpec], max_total_bytes: int | None = None
    ) -> None:
        self._specs = list(specs)
        self._sizes = [spec_nbytes(spec) for spec in self._specs]
        self.nbytes = sum(self._sizes)
        """Bytes of all the tensors announced."""
        if max_total_bytes is not None and self.nbytes > max_total_bytes:
            raise TooLargeError(
                f"expected at most {max_total_bytes} bytes of tensors, "
                f"received a request for {self.nbytes}"
            )
        self._received = [0] * len(self._specs)
        self._buffers: list[np.ndarray | None] = [None] * len(self._specs)

    def add(self, chunks: Iterable[_Chunk]) -> None:
        """Adds the chunks of one stream message.

        Raises:
            CodecError: a chunk names an unknown tensor, is out of order or too long.
        """
        for chunk in chunks:
            index = chunk.tensor_index
            if index >= len(self._specs):
                raise CodecError(
                    f"expected a tensor index below {len(self._specs)}, received {index}"
                )
            expected_offset = self._received[index]
            if chunk.offset != expected_offset:
                raise CodecError(
                    f"tensor {index}: expected a chunk at byte offset {expected_offset}, "
                    f"received offset {chunk.offset}"
                )
            end = expected_offset + len(chunk.data)
            if end > self._sizes[index]:
                raise CodecError(
                    f"tensor {index}: expected {self._sizes[index]} bytes, received at least {end}"
                )
            buffer = self._buffers[index]
            if buffer is None:
                buffer = self._buffers[index] = aligned_empty(self._sizes[index])
            buffer[expected_offset:end] = np.frombuffer(chunk.data, np.uint8)
            self._received[index] = end

    def finish(self) -> list[np.ndarray]:
        """Returns the tensors, in tensor-index order.

        Raises:
            CodecError: a tensor's bytes are incomplete.
        """
        arrays = []
        for index, spec in enumerate(self._specs):
            if self._received[index] != self._sizes[index]:
                raise CodecError(
                    f"tensor {index}: expected {self._sizes[index]} bytes, "
                    f"received {self._received[index]}"
                )
            buffer = self._buffers[index]
            if buffer is None:
                buffer = aligned_empty(0)
            arrays.append(buffer.view(numpy_dtype(spec.dtype)).reshape(spec_shape(spec)))
        return arrays


def encode_stream(
    message_class: type[Message],
    header: Mapping[str, Any],
    arrays: Sequence[np.ndarray],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[bytes]:
    """Yields the serialized messages of a tensor stream; the header fields go in the first.

    Each message costs one copy of its tensor bytes (see :mod:`framing`).

    Args:
        message_class: the message class; it has a ``repeated TensorChunk chunks`` field.
        header: fields of the first message, including the tensor specs.
        arrays: the tensors whose bytes follow, in tensor-index order.
        chunk_bytes: the most data bytes per message.
    """
    field = framing.chunks_field(message_class)
    first = build_message(message_class, **header).SerializeToString()
    return _framed(first, field, iter_chunks(arrays, chunk_bytes))


def _framed(first: bytes, field: int, pieces: Iterator[list[framing.Piece]]) -> Iterator[bytes]:
    for position, piece_list in enumerate(pieces):
        yield framing.encode(first if position == 0 else b"", field, piece_list)


_PYTHON_TYPES = {
    FieldDescriptor.CPPTYPE_INT32: "int",
    FieldDescriptor.CPPTYPE_INT64: "int",
    FieldDescriptor.CPPTYPE_UINT32: "int",
    FieldDescriptor.CPPTYPE_UINT64: "int",
    FieldDescriptor.CPPTYPE_DOUBLE: "float",
    FieldDescriptor.CPPTYPE_FLOAT: "float",
    FieldDescriptor.CPPTYPE_BOOL: "bool",
    FieldDescriptor.CPPTYPE_ENUM: "int (an enum value)",
    FieldDescriptor.CPPTYPE_STRING: "str",
}


def build_message(message_class: type[_Built], /, **fields: Any) -> _Built:
    """Returns ``message_class(**fields)``; a field given a value of a wrong type raises
    TypeError naming the field and the expected and received types (protobuf's own error
    names neither), at the call rather than later in the thread that sends a stream.

    Raises:
        TypeError: a field has a value of a wrong type.
    """
    try:
        return message_class(**fields)
    except (TypeError, ValueError) as error:
        for name, value in fields.items():
            try:
                message_class(**{name: value})
            except (TypeError, ValueError):
                raise TypeError(_wrong_field(message_class, name, value)) from None
        raise TypeError(f"{message_class.DESCRIPTOR.name}: {error}") from None


def _wrong_field(message_class: type[Message], name: str, value: Any) -> str:
    where = f"{message_class.DESCRIPTOR.name}.{name}"
    field = message_class.DESCRIPTOR.fields_by_name[name]
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        expected = field.message_type.name if field.message_type else "a message"
    elif field.type == FieldDescriptor.TYPE_BYTES:
        expected = "bytes"
    else:
        expected = _PYTHON_TYPES[field.cpp_type]
    if field.is_repeated:
        expected = f"a sequence of {expected}"
        if isinstance(value, (list, tuple)):
            kinds = sorted({type(item).__name__ for item in value})
            return f"{where}: expected {expected}, received items of type {', '.join(kinds)}"
    return f"{where}: expected {expected}, received {type(value).__name__} {repr(value)[:60]}"


def stream_messages(
    message_class: type[_Message],
    header: Mapping[str, Any],
    arrays: Sequence[np.ndarray],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[_Message]:
    """Yields the messages of a tensor stream as protobuf objects, for callers that send
    them through generated stubs; see :func:`encode_stream` for the arguments."""
    for data in encode_stream(message_class, header, arrays, chunk_bytes):  # type: ignore[arg-type]
        yield message_class.FromString(data)  # type: ignore[attr-defined]


def read_stream(
    messages: Iterable[framing.Framed],
    specs_of: Callable[[Any], Sequence[tensor_pb2.TensorSpec]],
    max_total_bytes: int | None = None,
) -> tuple[Any, list[np.ndarray]]:
    """Reads a tensor stream and returns its first message's header and its tensors.

    Args:
        messages: the stream, decoded by :func:`framing.decode`; its first message
            carries the header.
        specs_of: returns the tensor specs announced by the first message's header.
        max_total_bytes: refuse announcements larger than this, before allocating.

    Raises:
        CodecError: the stream is empty or its tensors are malformed.
    """
    iterator = iter(messages)
    first = next(iterator, None)
    if first is None:
        raise CodecError("expected at least one message in the stream, received none")
    assembler = TensorAssembler(specs_of(first.message), max_total_bytes)
    assembler.add(first.chunks)
    for message in iterator:
        assembler.add(message.chunks)
    return first.message, assembler.finish()
