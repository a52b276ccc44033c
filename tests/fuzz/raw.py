"""Request bytes that are not a valid message: random, corrupted, or wire-level tricks.

A valid message's bytes get a byte flipped, are cut short, or get bytes inserted; or a
field is appended that the parser must refuse, or skip as unknown: a length past the
end, an over-long varint, a string that is not UTF-8, field number 0, a group, a wire
type that does not exist or does not fit the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

Draw = Callable[..., Any]

WIRE_TRICKS = (
    b"\x0a\x01\xff",  # field 1 as a string of one byte that is not UTF-8
    b"\x0a\x7f",  # field 1 length-delimited, 127 bytes announced, none follow
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1 announcing a 4 GiB length
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an 11-byte varint
    b"\x0b\x0c",  # field 1 as a (deprecated) group
    b"\x00\x00",  # field number 0
    b"\x0d\x00",  # field 1 as a fixed32 cut short
    b"\x0f",  # wire type 7, which does not exist
    b"\x12\x03\x08\x80\x80",  # field 2, a nested message whose varint runs past its end
)
"""Fields to append to a message, each one that the parser refuses, or keeps as an unknown
field where the number is not one of the message's or the wire type does not fit it."""


def corrupted(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes of a valid message, damaged one way, or random bytes."""
    return st.one_of(st.binary(max_size=64), _damaged(valid))


@st.composite
def _damaged(draw: Draw, valid: st.SearchStrategy[bytes]) -> bytes:
    data = draw(valid)
    where = draw(st.integers(0, len(data)))
    damage = draw(st.sampled_from(["flip", "cut", "insert", "trick"]))
    if damage == "flip" and data:
        index = min(where, len(data) - 1)
        return data[:index] + bytes([data[index] ^ draw(st.integers(1, 255))]) + data[index + 1 :]
    if damage == "cut":
        return data[:where]
    if damage == "insert":
        return data[:where] + draw(st.binary(min_size=1, max_size=8)) + data[where:]
    return data + draw(st.sampled_from(WIRE_TRICKS))
