"""The push path's whole-array numerics: sums of squares that say exactly when a value is not
finite, and gradients handed to TensorFlow without a copy only when that is safe."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from tfps_client.wire import codec
from tfps_server.numerics import sum_of_squares, to_tensor


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_sum_of_squares_matches_float64(dtype: type) -> None:
    """Every dtype's sum of squares is the float64 one, up to the summation order."""
    values = np.random.default_rng(0).standard_normal((300, 7)).astype(dtype)
    expected = float(np.sum(values.astype(np.float64) ** 2))
    assert sum_of_squares(values) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sum_of_squares_is_not_finite_exactly_when_a_value_is_not(dtype: type, bad: float) -> None:
    """One NaN or Inf anywhere makes it non-finite."""
    values = np.ones(5000, dtype)
    values[4321] = bad
    assert not math.isfinite(sum_of_squares(values))


def test_a_float32_overflow_is_not_mistaken_for_a_non_finite_value() -> None:
    """float32 values whose squares overflow float32 are summed again in float64."""
    values = np.full(1000, 1e30, np.float32)
    assert sum_of_squares(values) == pytest.approx(1000 * 1e60, rel=1e-6)


def test_aligned_writable_arrays_are_shared_others_copied() -> None:
    """A decoded (aligned, writable) array is shared with TensorFlow; a read-only or
    unaligned one is copied, so later writes to it cannot reach the tensor."""
    shared = codec.aligned_empty(4 * 1024).view(np.float32)
    shared[:] = 1.0
    tensor = to_tensor(shared)
    shared[0] = 5.0
    assert float(tensor[0]) == 5.0
    for other in (
        np.frombuffer(bytes(4096), np.float32),
        codec.aligned_empty(4100)[4:].view(np.float32),
    ):
        copied = to_tensor(other)
        assert copied.numpy().tobytes() == other.tobytes()
        assert copied.numpy().ctypes.data != other.ctypes.data
