"""Tensors larger than any gRPC message: a 1 GiB variable end to end, and the chunked
codec on many shapes and dtypes with chunks of a few bytes."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tfps_client import Client, IndexedSlices
from tfps_client.wire import codec, framing
from tfps_client.wire import parameter_server_pb2 as pb

from helpers import assert_all_bitwise_equal, assert_bitwise_equal

ROWS, COLUMNS = 262144, 1024
"""A float32 variable of exactly 1 GiB."""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_gib_variable_push_and_pull(client: Client) -> None:
    """Create, push and pull 1 GiB; small integers and halves keep float32 arithmetic exact."""
    assert ROWS * COLUMNS * 4 == 1 << 30
    client.create_optimizer("default", {"class_name": "SGD", "config": {"learning_rate": 0.5}})
    row = np.arange(COLUMNS, dtype=np.float32)
    value = np.empty((ROWS, COLUMNS), np.float32)
    value[:] = row
    value[:, 0] = np.arange(ROWS, dtype=np.float32)  # row i starts with i: rows are distinct
    assert client.create_variables({"big": value}).created == ("big",)
    del value

    gradient = np.full((ROWS, COLUMNS), 2.0, np.float32)
    assert client.push({"big": gradient}).iterations == {"default": 1}
    del gradient
    ends = np.array([0, ROWS - 1])
    client.push({"big": IndexedSlices(np.full((2, COLUMNS), 4.0, np.float32), ends)})

    pulled = client.pull(["big"])["big"]
    assert pulled.shape == (ROWS, COLUMNS) and pulled.dtype == np.float32
    expected_row = row - 1.0
    assert np.array_equal(
        pulled[1:-1, 1:], np.broadcast_to(expected_row[1:], (ROWS - 2, COLUMNS - 1))
    )
    assert np.array_equal(pulled[1:-1, 0], np.arange(1, ROWS - 1, dtype=np.float32) - 1.0)
    del pulled

    expected_ends = np.stack([expected_row, expected_row]) - 2.0
    expected_ends[:, 0] = ends.astype(np.float32) - 3.0
    assert_bitwise_equal(client.pull_rows("big", ends), expected_ends)
    assert client.iterations("default") == 2


# Codec -----------------------------------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int32, np.int64]
SHAPES = [(), (0,), (1,), (5,), (3, 0, 2), (2, 3), (4, 5, 6), (7, 1, 3)]
CHUNK_BYTES = 7


def _sample(shape: tuple[int, ...], dtype: Any, seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).normal(scale=100.0, size=shape)
    return np.asarray(values).astype(dtype)


def _round_trip(arrays: list[np.ndarray], chunk_bytes: int) -> tuple[int, list[np.ndarray]]:
    """Streams arrays as serialized PullResponse messages; returns (messages, decoded arrays).

    The bytes written by hand (framing) parse as protobuf's own, and protobuf's own
    serialization of them reads back the same: either side may use generated classes.
    """
    specs = [pb.NamedTensorSpec(name=str(i), spec=codec.spec_of(a)) for i, a in enumerate(arrays)]
    wire = list(codec.encode_stream(pb.PullResponse, {"tensors": specs}, arrays, chunk_bytes))
    messages = [pb.PullResponse.FromString(data) for data in wire]
    for message in messages:
        assert sum(len(c.data) for c in message.chunks) <= chunk_bytes
    assert all(not m.tensors for m in messages[1:]), "specs travel in the first message only"
    decoded = {}
    for name, serialized in (
        ("hand", wire),
        ("protobuf", [m.SerializeToString() for m in messages]),
    ):
        framed = [framing.decode(data, pb.PullResponse) for data in serialized]
        assert [f.message for f in framed] == [pb.PullResponse(tensors=m.tensors) for m in messages]
        _, decoded[name] = codec.read_stream(framed, lambda first: [t.spec for t in first.tensors])
    assert_all_bitwise_equal(decoded["hand"], decoded["protobuf"])
    return len(messages), decoded["hand"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_codec_round_trips_with_tiny_chunks(shape: tuple[int, ...], dtype: Any) -> None:
    """One tensor cut into 7-byte chunks comes back bitwise, with its dtype and shape."""
    array = _sample(shape, dtype, seed=len(shape))
    count, (decoded,) = _round_trip([array], CHUNK_BYTES)
    assert_bitwise_equal(decoded, array)
    assert count >= max(1, -(-array.nbytes // CHUNK_BYTES))


def test_codec_round_trips_many_tensors_in_one_stream() -> None:
    """Tensors of every dtype and shape, some not contiguous or big-endian, share one stream."""
    arrays = [
        _sample(shape, dtype, seed=i)
        for i, (shape, dtype) in enumerate((s, d) for s in SHAPES for d in DTYPES)
    ]
    arrays += [
        _sample((4, 6), np.float32, seed=1).T,  # Fortran order
        _sample((5, 8), np.float64, seed=2)[::2, 1::3],  # strided view
        _sample((3, 2), np.dtype(">f4"), seed=3),  # big-endian
        _sample((9,), np.dtype(">i8"), seed=4),
    ]
    count, decoded = _round_trip(arrays, CHUNK_BYTES)
    assert count > 1
    for index, (got, array) in enumerate(zip(decoded, arrays, strict=True)):
        assert_bitwise_equal(got, array.astype(array.dtype.newbyteorder("<")), f"tensor {index}")


def test_iter_chunks_cuts_large_tensors_and_packs_small_ones() -> None:
    """Chunk lists hold at most chunk_bytes each, in order, without gaps, across tensors."""
    arrays = [np.arange(10, dtype=np.int32), np.zeros(0, np.float32), np.arange(3, dtype=np.int64)]
    lists = list(codec.iter_chunks(arrays, chunk_bytes=16))
    sizes = [sum(len(c.data) for c in chunks) for chunks in lists]
    assert [size for size in sizes if size] == [16, 16, 16, 16]
    offsets: dict[int, int] = {}
    for chunk in (c for chunks in lists for c in chunks):
        assert chunk.offset == offsets.get(chunk.tensor_index, 0)
        offsets[chunk.tensor_index] = chunk.offset + len(chunk.data)
    assert offsets == {0: 40, 2: 24}
    assert list(codec.iter_chunks([], chunk_bytes=16)) == [[]]
