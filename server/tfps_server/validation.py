"""What a request must satisfy before the store changes anything.

Pure checks, raising :class:`~tfps_server.errors.ServerError` subclasses whose
messages name the variable and the expected and received values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from tfps_server.errors import AlreadyExists, InvalidArgument


class Described(Protocol):
    """A variable as the checks see it."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...


VARIABLE_DTYPES = ("float32", "float64", "float16", "bfloat16")
"""Element types a variable may have."""

UPCASTS = {
    "float16": ("float16", "float32", "float64"),
    "bfloat16": ("bfloat16", "float32", "float64"),
    "float32": ("float32", "float64"),
    "float64": ("float64",),
}
"""Gradient dtype -> variable dtypes it may update (cast up, never down)."""


class DenseGradient(NamedTuple):
    """A dense gradient of one variable."""

    variable: str
    values: np.ndarray


class SparseGradient(NamedTuple):
    """Row updates of one variable; ``dense_shape`` empty means the variable's shape."""

    variable: str
    values: np.ndarray
    indices: np.ndarray
    dense_shape: tuple[int, ...]


Gradient = DenseGradient | SparseGradient


def check_name(kind: str, name: str) -> None:
    """Refuses empty or unprintable variable and optimizer names."""
    if not name or not name.isprintable():
        raise InvalidArgument(
            f"{kind} name: expected a non-empty printable string, received {name!r}",
            "INVALID_NAME",
            {kind: name},
        )


def check_declarations(declarations: Sequence[tuple[str, np.ndarray]]) -> None:
    """Checks the names and dtypes of variables declared in one request."""
    seen: set[str] = set()
    for name, value in declarations:
        check_name("variable", name)
        if name in seen:
            raise InvalidArgument(
                f"variable {name!r}: declared twice in one request",
                "DUPLICATE_VARIABLE",
                {"variable": name},
            )
        seen.add(name)
        if value.dtype.name not in VARIABLE_DTYPES:
            raise InvalidArgument(
                f"variable {name!r}: expected dtype in {list(VARIABLE_DTYPES)}, "
                f"received {value.dtype.name}",
                "INVALID_DTYPE",
                {"variable": name, "expected": VARIABLE_DTYPES, "received": value.dtype.name},
            )


def check_same_declaration(
    existing: Described, existing_optimizer: str, optimizer: str, value: np.ndarray
) -> None:
    """Refuses a declaration that differs from the existing variable, naming what differs."""
    differences: list[tuple[str, object, object]] = []
    if existing.shape != value.shape:
        differences.append(("shape", list(existing.shape), list(value.shape)))
    if existing.dtype != value.dtype.name:
        differences.append(("dtype", existing.dtype, value.dtype.name))
    if existing_optimizer != optimizer:
        differences.append(("optimizer", existing_optimizer, optimizer))
    if differences:
        text = "; ".join(
            f"{what}: exists with {old}, received {new}" for what, old, new in differences
        )
        what, old, new = differences[0]
        raise AlreadyExists(
            f"variable {existing.name!r}: {text}",
            "VARIABLE_EXISTS",
            {"variable": existing.name, "field": what, "expected": old, "received": new},
        )


def check_gradient(managed: Described, gradient: Gradient) -> None:
    """Checks a gradient's dtype, shape and indices against its variable."""
    name = managed.name
    dtype = gradient.values.dtype.name
    if managed.dtype not in UPCASTS.get(dtype, ()):
        allowed = [d for d, targets in UPCASTS.items() if managed.dtype in targets]
        raise InvalidArgument(
            f"variable {name!r}: expected a gradient dtype in {allowed}, received {dtype}",
            "DTYPE_MISMATCH",
            {"variable": name, "expected": allowed, "received": dtype},
        )
    if isinstance(gradient, DenseGradient):
        _check_shape(name, "gradient shape", managed.shape, gradient.values.shape)
    else:
        if not managed.shape:
            raise InvalidArgument(
                f"variable {name!r}: a scalar cannot take a sparse gradient",
                "SPARSE_SCALAR",
                {"variable": name},
            )
        if gradient.dense_shape:
            _check_shape(name, "dense_shape", managed.shape, gradient.dense_shape)
        if gradient.indices.ndim != 1 or gradient.indices.dtype.name not in ("int32", "int64"):
            raise InvalidArgument(
                f"variable {name!r}: expected int32 or int64 indices of rank 1, received "
                f"{gradient.indices.dtype.name} of shape {list(gradient.indices.shape)}",
                "INVALID_INDICES",
                {"variable": name},
            )
        expected_values = (len(gradient.indices), *managed.shape[1:])
        _check_shape(name, "sparse values shape", expected_values, gradient.values.shape)
        check_rows(managed, gradient.indices)


def _check_shape(name: str, what: str, expected: Sequence[int], received: Sequence[int]) -> None:
    if tuple(expected) != tuple(received):
        raise InvalidArgument(
            f"variable {name!r}: expected {what} {list(expected)}, received {list(received)}",
            "SHAPE_MISMATCH",
            {"variable": name, "expected": list(expected), "received": list(received)},
        )


def check_rows(managed: Described, indices: np.ndarray) -> None:
    """Checks that every index names a row of the variable."""
    if not managed.shape:
        raise InvalidArgument(
            f"variable {managed.name!r}: a scalar has no rows",
            "SPARSE_SCALAR",
            {"variable": managed.name},
        )
    rows = managed.shape[0]
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= rows:
            bad = low if low < 0 else high
            raise InvalidArgument(
                f"variable {managed.name!r}: expected row indices in [0, {rows}), received {bad}",
                "INDEX_OUT_OF_RANGE",
                {"variable": managed.name, "expected": f"[0, {rows})", "received": bad},
            )
