"""Tensor stream messages written and read by hand (framing) are protobuf's wire format:
both directions agree with the generated classes, and malformed bytes are refused, by a
server too, without a change."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tfps_client import Client
from tfps_client.errors import from_rpc_error
from tfps_client.wire import codec, framing, tensor_pb2
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire.reasons import Reason
from tfps_server import RunningServer

from helpers import assert_same_state, dense_header, snapshot

_chunks = st.lists(
    st.builds(
        tensor_pb2.TensorChunk,
        tensor_index=st.integers(0, 2**32 - 1),
        offset=st.integers(0, 2**64 - 1),
        data=st.binary(max_size=64),
    ),
    max_size=6,
)
_headers = st.builds(
    pb.PushPullRequest,
    request_id=st.text(max_size=20),
    worker=st.text(max_size=20),
    pull=st.lists(st.text(max_size=10), max_size=3),
)


def _as_pieces(chunks: list[tensor_pb2.TensorChunk]) -> list[tuple[int, int, bytes]]:
    return [(c.tensor_index, c.offset, bytes(c.data)) for c in chunks]


@settings(max_examples=200, deadline=None)
@given(header=_headers, chunks=_chunks)
def test_protobuf_bytes_decode_to_the_same_header_and_chunks(
    header: pb.PushPullRequest, chunks: list[tensor_pb2.TensorChunk]
) -> None:
    """What protobuf serializes, framing reads back: the header without its chunks, and
    the chunks in order with their data as views."""
    message = pb.PushPullRequest()
    message.CopyFrom(header)
    message.chunks.extend(chunks)
    framed = framing.decode(message.SerializeToString(), pb.PushPullRequest)
    assert framed.message == header
    assert _as_pieces(framed.chunks) == _as_pieces(chunks)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(header=_headers, chunks=_chunks)
def test_hand_written_bytes_parse_as_protobuf(
    header: pb.PushPullRequest, chunks: list[tensor_pb2.TensorChunk]
) -> None:
    """What framing writes, protobuf parses to the same message."""
    pieces = [framing.Piece(c.tensor_index, c.offset, memoryview(c.data)) for c in chunks]
    data = framing.encode(
        header.SerializeToString(), framing.chunks_field(pb.PushPullRequest), pieces
    )
    parsed = pb.PushPullRequest.FromString(data)
    assert parsed.request_id == header.request_id and list(parsed.pull) == list(header.pull)
    assert _as_pieces(list(parsed.chunks)) == _as_pieces(chunks)


def test_unknown_fields_are_kept_in_the_header_and_skipped_in_chunks() -> None:
    """A newer peer's fields: unknown ones at the top level reach the header parse (which
    keeps them), unknown ones inside a chunk are skipped, as protobuf does."""
    chunk = tensor_pb2.TensorChunk(tensor_index=1, offset=3, data=b"abc").SerializeToString()
    chunk += bytes([15 << 3 | 0, 7])  # field 15, varint 7
    field = framing.chunks_field(pb.PushRequest)
    data = bytes([field << 3 | 2, len(chunk)]) + chunk
    data += b"\xa0\x06\x05"  # field 100, varint 5: unknown at the top level
    framed = framing.decode(data, pb.PushRequest)
    assert _as_pieces(framed.chunks) == [(1, 3, b"abc")]  # type: ignore[arg-type]
    assert framed.message.SerializeToString() == b"\xa0\x06\x05"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x12", "varint"),  # a chunk's key (PushRequest field 2), then nothing
        (b"\x12\x05ab", "past the end"),  # length 5, 2 bytes
        (b"\x12\x01\x08", "varint"),  # chunk body: a key without its value
        (b"\x12\x02\x1a\x01", "past the end"),  # chunk data of 1 byte missing
        (b"\x12\x02\x18\x01", "wire type"),  # chunk data (field 3) as a varint
        (b"\x12\x02\x0a\x00", "wire type"),  # tensor_index as length-delimited
        (b"\x1b", "wire type 3"),  # a group start
        (b"\x00\x01", "field number 0"),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint"),  # an 11-byte varint
    ],
)
def test_malformed_bytes_are_refused_with_where(data: bytes, expected: str) -> None:
    """Bytes that are not a message are refused with what was wrong, never misread."""
    with pytest.raises(framing.FramingError, match=expected):
        framing.decode(data, pb.PushRequest)


def test_a_malformed_header_is_refused_by_protobuf() -> None:
    """The header's own fields are parsed by protobuf, which refuses bad ones."""
    with pytest.raises(DecodeError):
        framing.decode(b"\x0a\x02\xff\xff", pb.PushRequest)  # gradients = 2 bad bytes


def test_decoded_tensors_are_aligned_writable_copies() -> None:
    """Decoded tensors are fresh, writable, aligned arrays: TensorFlow can share them."""
    array = np.arange(1000, dtype=np.float32)
    messages = codec.encode_stream(
        pb.PullResponse,
        {"tensors": [pb.NamedTensorSpec(name="a", spec=codec.spec_of(array))]},
        [array],
        chunk_bytes=1024,
    )
    framed = [framing.decode(m, pb.PullResponse) for m in messages]
    _, (decoded,) = codec.read_stream(framed, lambda first: [t.spec for t in first.tensors])
    assert decoded.flags.writeable and decoded.ctypes.data % codec.ALIGNMENT == 0
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    "chunk",
    [
        b"\x12\x02\x18\x01",  # chunk data as a varint
        b"\x12\x05ab",  # a chunk running past the end of the message
        b"\x12\x01\x08",  # a chunk whose tensor_index has no value
    ],
)
def test_a_server_refuses_malformed_chunks_without_a_change(
    server: RunningServer, client: Client, chunk: bytes
) -> None:
    """A push whose chunks are not well-formed is INVALID_ARGUMENT (MALFORMED_REQUEST),
    names the method and what was wrong, and changes nothing."""
    client.create_optimizer("default", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
    client.create_variables({"w": np.zeros(4, np.float32)})
    before = snapshot(client)
    header = pb.PushRequest(
        gradients=[dense_header("w", np.ones(4, np.float32))]
    ).SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        push = channel.stream_unary("/tfps.v1.ParameterServer/Push")
        with pytest.raises(grpc.RpcError) as raised:
            push(iter([header + chunk]), timeout=30)
    error = from_rpc_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == Reason.MALFORMED_REQUEST
    assert "/tfps.v1.ParameterServer/Push" in str(error)
    assert_same_state(snapshot(client), before)
