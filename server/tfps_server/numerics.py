"""Whole-array work on the push path, done without full-size temporary copies: the sum of
squares behind norms and finiteness checks, and handing an array to TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfps_client.wire.codec import ALIGNMENT

_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_DLPACK_DTYPES = frozenset(
    np.dtype(name) for name in ("float16", "float32", "float64", "int32", "int64")
)
_BLOCK = 1 << 20


def sum_of_squares(values: np.ndarray) -> float:
    """The sum of the squares of all elements, as a float64.

    Infinite or NaN exactly when an element is (or when the sum is past float64's
    range). float32 and float64 are summed in place, in their own precision; a float32
    sum that overflows, and other dtypes, are summed in float64 a block at a time.
    ``einsum`` rather than ``dot``: numpy's BLAS would split large sums over threads
    that then spin, idle, on the server's cores.
    """
    flat = values.reshape(-1)
    if flat.dtype in _NATIVE_DTYPES:
        total = float(np.einsum("i,i->", flat, flat))
        if math.isfinite(total) or flat.dtype == np.float64:
            return total
    total = 0.0
    for start in range(0, flat.size, _BLOCK):
        part = flat[start : start + _BLOCK].astype(np.float64)
        total += float(np.einsum("i,i->", part, part))
    return total


def to_tensor(values: np.ndarray) -> tf.Tensor:
    """``values`` as a TensorFlow tensor on the host; a writable, C-contiguous array
    aligned like TensorFlow's own buffers (as decoded requests are) is shared through
    DLPack rather than copied. Later writes to ``values`` show in the tensor."""
    shareable = (
        values.dtype in _DLPACK_DTYPES
        and values.flags.c_contiguous
        and values.flags.writeable
        and values.ctypes.data % ALIGNMENT == 0
    )
    if shareable:
        return tf.experimental.dlpack.from_dlpack(values.__dlpack__())
    return tf.constant(values)
