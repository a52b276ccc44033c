"""Tensor stream messages in protobuf's wire format, written and read around their chunks.

A message of a tensor stream is its header fields plus ``repeated TensorChunk chunks``.
Built and parsed by the protobuf runtime, a chunk's bytes would be copied three times
on the way out (slice, message, serialization) and twice on the way in (parse, field
access). Here the header goes through protobuf as usual, while the chunks are written
and read by hand in the same wire format: the tensor bytes are copied once when a
message is joined, and read as views of the received message, without a copy. The
bytes are exactly what protobuf would produce and accept, so a peer using the
generated classes interoperates unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from google.protobuf.message import Message

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_TENSOR_INDEX, _OFFSET, _DATA = 1, 2, 3
"""Field numbers of TensorChunk (tensor.proto)."""


class FramingError(ValueError):
    """Bytes are not a well-formed message of the expected kind; the message says where."""


class Piece(NamedTuple):
    """A run of one tensor's bytes: a TensorChunk, with its data as a view."""

    tensor_index: int
    """Position of the tensor in the stream's list of specs."""
    offset: int
    """Byte offset of ``data`` in the tensor."""
    data: memoryview
    """The bytes (a view of the sender's array or of the received message)."""


class Framed(NamedTuple):
    """A received tensor stream message: its header fields parsed, its chunks as views."""

    message: Any
    """The message without its chunks (the header fields; empty after the first)."""
    chunks: list[Piece]
    """The chunks, in order."""


def chunks_field(message_class: type[Message]) -> int:
    """The field number of ``chunks`` in a tensor stream message class."""
    return int(message_class.DESCRIPTOR.fields_by_name["chunks"].number)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode(header: bytes, field: int, pieces: Sequence[Piece]) -> bytes:
    """One serialized message: ``header`` (serialized fields) followed by the pieces as
    ``chunks`` entries of field number ``field``; the pieces' bytes are copied once."""
    parts: list[bytes | memoryview] = [header]
    chunk_tag = _varint(field << 3 | _LEN)
    for piece in pieces:
        prefix = b""
        if piece.tensor_index:
            prefix += _varint(_TENSOR_INDEX << 3 | _VARINT) + _varint(piece.tensor_index)
        if piece.offset:
            prefix += _varint(_OFFSET << 3 | _VARINT) + _varint(piece.offset)
        size = len(piece.data)
        prefix += _varint(_DATA << 3 | _LEN) + _varint(size)
        parts += [chunk_tag, _varint(len(prefix) + size), prefix, piece.data]
    return b"".join(parts)


def _read_varint(data: memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift >= 64:
            break
    raise FramingError(f"a malformed varint ends at byte {position}")


def _skip(data: memoryview, wire_type: int, position: int, end: int) -> int:
    """The position after a field's value of ``wire_type`` starting at ``position``."""
    if wire_type == _VARINT:
        return _read_varint(data, position, end)[1]
    if wire_type == _LEN:
        length, position = _read_varint(data, position, end)
        after = position + length
    elif wire_type in (_I64, _I32):
        after = position + (8 if wire_type == _I64 else 4)
    else:
        raise FramingError(f"unsupported wire type {wire_type} at byte {position}")
    if after > end:
        raise FramingError(f"a field runs past the end of its message at byte {position}")
    return after


def _fields(data: memoryview, start: int, end: int) -> Iterable[tuple[int, int, int, int]]:
    """Yields (field number, wire type, value start, value end) of the fields in a span.

    A length-delimited value's span excludes its length prefix.
    """
    position = start
    while position < end:
        key, position = _read_varint(data, position, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise FramingError(f"field number 0 at byte {position}")
        if wire_type == _LEN:
            length, value_start = _read_varint(data, position, end)
            position = value_start + length
            if position > end:
                raise FramingError(f"field {number} runs past the end of its message")
            yield number, wire_type, value_start, position
        else:
            value_start, position = position, _skip(data, wire_type, position, end)
            yield number, wire_type, value_start, position


def _piece(data: memoryview, start: int, end: int) -> Piece:
    index = offset = 0
    value = data[start:start]
    for number, wire_type, value_start, value_end in _fields(data, start, end):
        expected = _LEN if number == _DATA else _VARINT
        if number in (_TENSOR_INDEX, _OFFSET, _DATA) and wire_type != expected:
            raise FramingError(f"TensorChunk field {number} has wire type {wire_type}")
        if number == _TENSOR_INDEX:
            index = _read_varint(data, value_start, value_end)[0] & 0xFFFFFFFF
        elif number == _OFFSET:
            offset = _read_varint(data, value_start, value_end)[0]
        elif number == _DATA:
            value = data[value_start:value_end]
    return Piece(index, offset, value)


def decode(data: bytes, message_class: type[Message]) -> Framed:
    """Splits a serialized tensor stream message into its parsed header and its chunks.

    Args:
        data: the serialized message.
        message_class: its class; it has a ``repeated TensorChunk chunks`` field.

    Raises:
        FramingError: the bytes are not a well-formed message.
        google.protobuf.message.DecodeError: the header fields do not parse.
    """
    view = memoryview(data)
    field = chunks_field(message_class)
    header: list[memoryview] = []
    chunks: list[Piece] = []
    position = 0
    for number, wire_type, value_start, value_end in _fields(view, 0, len(view)):
        if number == field and wire_type == _LEN:
            chunks.append(_piece(view, value_start, value_end))
        else:
            header.append(view[position:value_end])
        position = value_end
    return Framed(message_class.FromString(b"".join(header)), chunks)
