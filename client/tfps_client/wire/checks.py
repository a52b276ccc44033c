"""The checks of a gradient against its variable, shared by the server and a sharded client.

A server runs them on every push; a client of several shards runs them on the whole push
before it splits it, so that no shard applies its part of a push another would refuse.
The checks of an initial value and of an optimizer's weight are shared the same way.
Both raise what they find as their own error (:class:`Refusal` carries the reason, the
message and the facts), so the client's local refusal reads exactly as a server's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from tfps_client.wire.convert import DenseGradient, SparseGradient
from tfps_client.wire.reasons import Reason

ECHO_CHARACTERS = 200
"""Most characters of client input that a message repeats."""

MAX_SHAPE_ECHO = 32
"""Most dimensions of a shape a message lists (more are counted)."""

UPCASTS = {
    "float16": ("float16", "float32", "float64"),
    "bfloat16": ("bfloat16", "float32", "float64"),
    "float32": ("float32", "float64"),
    "float64": ("float64",),
}
"""Value dtype -> variable dtypes it may go into (cast up exactly, never down)."""


def shown(value: object, limit: int = ECHO_CHARACTERS) -> str:
    """Returns ``repr(value)`` cut to ``limit`` characters, for messages that echo client input.

    A status message must fit gRPC's metadata limit, and a name of megabytes must
    not make one; ``repr`` also escapes what cannot be encoded, such as a lone surrogate.
    """
    return clipped(repr(value), limit)


def clipped(text: str, limit: int = ECHO_CHARACTERS) -> str:
    """Returns ``text`` in ASCII (other characters escaped), cut to ``limit`` characters."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def fact(value: object, limit: int = ECHO_CHARACTERS) -> str:
    """Returns ``str(value)`` as the value of an ``ErrorInfo`` fact: as it is (a name that is
    not ASCII too, so that a program can compare it with the one it sent) up to ``limit``
    UTF-8 bytes, else cut there; what UTF-8 cannot encode (a lone surrogate) escaped."""
    text = str(value)
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    return f"{data[:limit].decode('utf-8', 'ignore')}... ({len(text)} characters)"


class Refusal(Exception):
    """A gradient that does not fit its variable (INVALID_ARGUMENT).

    Args:
        message: names the variable and what was expected and received.
        reason: the machine-readable reason.
        metadata: the facts that go with the reason.
    """

    def __init__(self, message: str, reason: Reason, metadata: Mapping[str, object]) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata)


class Described(Protocol):
    """A variable as the checks see it."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype | str: ...


VARIABLE_DTYPES = ("float32", "float64", "float16", "bfloat16")
"""Element types a variable may have."""

MAX_DIMENSION = 2**31 - 1
"""Largest dimension of a variable."""


def check_initial_value(name: str, value: np.ndarray, require_finite: bool = True) -> None:
    """Checks a declared variable's initial value: its dtype, dimensions and (unless a
    restore reads values training made non-finite) that every element is finite.

    Raises:
        Refusal: a dtype no variable may have, a dimension of more than 2**31 - 1, or a
            NaN or Inf.
    """
    dtype = value.dtype.name
    if dtype not in VARIABLE_DTYPES:
        raise Refusal(
            f"variable {shown(name)}: expected dtype in {list(VARIABLE_DTYPES)}, "
            f"received {clipped(dtype)}",
            Reason.INVALID_DTYPE,
            {"variable": name, "expected": VARIABLE_DTYPES, "received": dtype},
        )
    if any(d > MAX_DIMENSION for d in value.shape):
        raise Refusal(
            f"variable {shown(name)}: expected dimensions of at most 2**31 - 1, "
            f"received shape {list(value.shape)}",
            Reason.SHAPE_MISMATCH,
            {
                "variable": name,
                "expected": "dimensions <= 2**31 - 1",
                "received": list(value.shape),
            },
        )
    if require_finite:
        check_finite(f"variable {shown(name)}", "initial values", value, {"variable": name})


class WeightSpec(NamedTuple):
    """One of an optimizer's weights, in Keras order, as the checks see it."""

    label: str
    """What it is, for messages: ``iterations``, ``slot 'm' of 'dense'``, ..."""
    shape: tuple[int, ...]
    dtype: str


def check_weight(
    optimizer: str, index: int, spec: WeightSpec, value: np.ndarray, require_finite: bool = True
) -> None:
    """Checks weight ``index`` (after ``iterations``) of an optimizer's list against its spec:
    a dtype that casts up to the weight's exactly, its shape, and (unless a restore reads
    values training made non-finite) that every element is finite.

    Raises:
        Refusal: another dtype or shape (``WEIGHTS_MISMATCH``), or a NaN or Inf.
    """
    what = f"optimizer {shown(optimizer)}: weight {index} ({spec.label})"
    allowed = [d for d, targets in UPCASTS.items() if spec.dtype in targets]
    if value.dtype.name not in allowed:
        raise Refusal(
            f"{what}: expected dtype in {allowed}, received {value.dtype.name}",
            Reason.WEIGHTS_MISMATCH,
            {"optimizer": optimizer, "expected": allowed, "received": value.dtype.name},
        )
    if value.shape != spec.shape:
        raise Refusal(
            f"{what}: expected shape {list(spec.shape)}, received {list(value.shape)}",
            Reason.WEIGHTS_MISMATCH,
            {"optimizer": optimizer, "expected": list(spec.shape), "received": value.shape},
        )
    if require_finite:
        check_finite(what, "values", value, {"optimizer": optimizer})


def check_gradient(variable: Described, gradient: DenseGradient | SparseGradient) -> None:
    """Checks a gradient's dtype, shape and indices against its variable.

    Raises:
        Refusal: a dtype it cannot be cast up from, another shape or ``dense_shape``, a
            sparse gradient of a scalar or of rows without elements, indices that are not a
            vector of int32 or int64, or a row out of range.
    """
    name, target = variable.name, np.dtype(variable.dtype).name
    dtype = gradient.values.dtype.name
    if target not in UPCASTS.get(dtype, ()):
        allowed = [d for d, targets in UPCASTS.items() if target in targets]
        raise Refusal(
            f"variable {shown(name)}: expected a gradient dtype in {allowed}, received {dtype}",
            Reason.DTYPE_MISMATCH,
            {"variable": name, "expected": allowed, "received": dtype},
        )
    if isinstance(gradient, DenseGradient):
        _check_shape(name, "gradient shape", variable.shape, gradient.values.shape)
        return
    if not variable.shape:
        raise Refusal(
            f"variable {shown(name)}: a scalar cannot take a sparse gradient",
            Reason.SPARSE_SCALAR,
            {"variable": name},
        )
    if gradient.dense_shape:
        _check_shape(name, "dense_shape", variable.shape, gradient.dense_shape)
    if 0 in variable.shape[1:]:
        raise Refusal(
            f"variable {shown(name)}: expected a dense gradient, as rows of shape "
            f"{list(variable.shape[1:])} hold no elements, received a sparse one",
            Reason.SHAPE_MISMATCH,
            {"variable": name, "expected": "a dense gradient", "received": "a sparse gradient"},
        )
    if gradient.indices.ndim != 1 or gradient.indices.dtype.name not in ("int32", "int64"):
        raise Refusal(
            f"variable {shown(name)}: expected int32 or int64 indices of rank 1, received "
            f"{gradient.indices.dtype.name} of shape {list(gradient.indices.shape)}",
            Reason.INVALID_INDICES,
            {"variable": name},
        )
    expected_values = (len(gradient.indices), *variable.shape[1:])
    _check_shape(name, "sparse values shape", expected_values, gradient.values.shape)
    check_rows(variable, gradient.indices)


def check_rows(variable: Described, indices: np.ndarray) -> None:
    """Checks that every index names a row of the variable.

    Raises:
        Refusal: the variable is a scalar, or an index is out of range (the lowest when
            one is negative, else the highest is named).
    """
    if not variable.shape:
        raise Refusal(
            f"variable {shown(variable.name)}: a scalar has no rows",
            Reason.SPARSE_SCALAR,
            {"variable": variable.name},
        )
    rows = variable.shape[0]
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= rows:
            bad = low if low < 0 else high
            raise Refusal(
                f"variable {shown(variable.name)}: expected row indices in [0, {rows}), "
                f"received {bad}",
                Reason.INDEX_OUT_OF_RANGE,
                {"variable": variable.name, "expected": f"[0, {rows})", "received": bad},
            )


def check_finite(
    where: str,
    what: str,
    values: np.ndarray,
    metadata: Mapping[str, object],
    reason: Reason = Reason.NON_FINITE_VALUE,
) -> None:
    """Refuses NaN and Inf anywhere in ``values``.

    Raises:
        Refusal: some are not finite (the count is named).
    """
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise Refusal(
            f"{where}: expected finite {what}, received {bad} non-finite",
            reason,
            {**metadata, "received": bad},
        )


def shape_text(shape: Sequence[int]) -> str:
    """A shape as messages show it; one of more dimensions than any tensor (a client's
    dense_shape) by their number only."""
    if len(shape) > MAX_SHAPE_ECHO:
        return f"{len(shape)} dimensions"
    return str(list(shape))


def _check_shape(name: str, what: str, expected: Sequence[int], received: Sequence[int]) -> None:
    if tuple(expected) != tuple(received):
        shape = shape_text(received)
        raise Refusal(
            f"variable {shown(name)}: expected {what} {list(expected)}, received {shape}",
            Reason.SHAPE_MISMATCH,
            {"variable": name, "expected": list(expected), "received": shape},
        )
