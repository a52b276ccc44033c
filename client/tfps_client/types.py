"""Plain value types of the client API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class IndexedSlices:
    """Row updates of a variable, as ``tf.IndexedSlices``: ``values[i]`` goes to row ``indices[i]``.

    Repeated indices are summed on the server, exactly as Keras does.

    Attributes:
        values: array of shape ``[k, ...]``.
        indices: int32 or int64 array of shape ``[k]``.
        dense_shape: shape of the full variable; ``None`` means the variable's shape.
    """

    values: npt.ArrayLike
    indices: npt.ArrayLike
    dense_shape: tuple[int, ...] | None = None


class VariableInfo(NamedTuple):
    """A variable held by the server."""

    name: str
    """Name of the variable."""
    shape: tuple[int, ...]
    """Shape of the variable."""
    dtype: np.dtype
    """Element type of the variable."""
    optimizer: str
    """Name of the optimizer the variable is bound to."""
    device: str
    """Device the variable and its slots live on."""


class CreateVariablesResult(NamedTuple):
    """What a ``create_variables`` call did."""

    created: tuple[str, ...]
    """Names this call created."""
    existing: tuple[str, ...]
    """Names that existed with an identical declaration and were kept as they were."""
