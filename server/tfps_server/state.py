"""What the server's state is made of, and the locks that guard it.

The state is one :class:`Generation`: optimizers, the variables bound to them,
and the exactly-once window of request ids. A restore replaces the whole
generation; everything that was validated against the old one finds its
optimizers retired and applies nothing. The rules are written down in
``docs/state-model.md``; :mod:`tfps_server.registry` is the code that keeps them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from tfps_client.types import OptimizerOptions, Placement, ShardIdentity
from tfps_client.wire.reasons import Reason
from tfps_server.aggregation import Policy
from tfps_server.compiled import CompiledApply
from tfps_server.errors import Aborted, NotFound, shown
from tfps_server.exactly_once import RequestLog
from tfps_server.optimizers import OptimizerSpec
from tfps_server.validation import check_name_length, check_same_shard, state_bytes

MAX_ITERATIONS = 2**62
"""The largest ``iterations`` an optimizer may reach; a step beyond it is refused."""


class Hooks:
    """Named points inside state-changing operations, where a test can hold a thread.

    The server calls :meth:`reach` at each point; this class does nothing there.
    Tests pass a subclass that blocks, to force an interleaving deterministically.
    The points are listed in ``docs/state-model.md``.
    """

    def reach(self, point: str) -> None:
        """Called when an operation reaches ``point``; returns at once."""


@dataclass(eq=False)
class ManagedOptimizer:
    """A named Keras optimizer of one generation, its aggregation policy and its lock.

    The lock guards the Keras optimizer, the values and slots of the variables
    bound to it, its policy's open sync step, and ``retired``.
    """

    name: str
    optimizer: Any
    """The ``tf_keras.optimizers.legacy`` instance."""
    spec: OptimizerSpec
    creation_config: dict[str, Any]
    """The Keras config at creation, to compare later declarations with."""
    options: OptimizerOptions
    lock: threading.Condition
    policy: Policy
    slot_names: tuple[str, ...]
    """The slots Keras creates for each variable (fixed at construction)."""
    bound: dict[str, tf.Variable] = field(default_factory=dict)
    """Names and values of the variables bound to it, in creation order. (Not the
    :class:`ManagedVariable` objects, which refer to their optimizer: without that cycle,
    a replaced generation is freed as soon as nothing uses it.)"""
    checked_dtypes: set[str] = field(default_factory=set)
    """Variable dtypes proven to apply with this optimizer."""
    retired: bool = False
    """Set (under the lock) when a restore replaced its generation."""
    compiled: CompiledApply = field(init=False)
    """Its applies traced per push signature (used under the lock)."""

    def __post_init__(self) -> None:
        self.compiled = CompiledApply(self.optimizer)

    def iterations(self) -> int:
        """Returns the optimizer's ``iterations``; the caller holds the lock."""
        return int(self.optimizer.iterations.numpy())

    def ensure_live(self) -> None:
        """Refuses work on an optimizer whose generation was replaced; the caller holds the lock.

        Raises:
            Aborted: a restore replaced the state after the request was validated.
        """
        if self.retired:
            raise Aborted(
                f"optimizer {shown(self.name)}: the state was replaced by a restore after this "
                "request was validated; nothing was applied",
                Reason.STATE_REPLACED,
                {"optimizer": self.name},
            )


@dataclass(eq=False)
class ManagedVariable:
    """A variable, its place in creation order and the optimizer it is bound to."""

    name: str
    variable: tf.Variable
    optimizer: ManagedOptimizer
    batch: int
    """Creation request the variable came in; slots were created per request."""
    placement: Placement | None = None
    """Where a sharded client placed it, as declared at creation (None: unsharded)."""
    position: int = -1
    """Index in its generation's creation order, set when it joins the generation."""

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the variable."""
        return tuple(self.variable.shape.as_list())

    @property
    def dtype(self) -> str:
        """Element type name of the variable, for example ``"float32"``."""
        return str(self.variable.dtype.name)

    @property
    def state_bytes(self) -> int:
        """Bytes of the variable and of its optimizer slots."""
        return state_bytes(self.shape, self.dtype, len(self.optimizer.slot_names))


@dataclass(eq=False)
class Generation:
    """The whole state between two restores.

    Membership (which optimizers and variables exist) changes only under the
    registry's structure lock; a variable's value only under its optimizer's lock.
    """

    requests: RequestLog
    """The exactly-once window of this generation."""
    max_name_bytes: int
    """The longest name a lookup may give (``Limits.max_name_bytes``)."""
    number: int = 0
    """Counts restores since the server started."""
    optimizers: dict[str, ManagedOptimizer] = field(default_factory=dict)
    variables: dict[str, ManagedVariable] = field(default_factory=dict)
    """By name, in creation order."""
    batches: int = 0
    """Creation requests so far."""
    state_bytes: int = 0
    """Bytes of every variable and of its optimizer slots."""
    shard: ShardIdentity | None = None
    """Which shard of a sharded client's list the server is; None until one is declared."""

    def optimizer(self, name: str) -> ManagedOptimizer:
        """Returns a named optimizer.

        Raises:
            NotFound: no such optimizer.
            ResourceExhausted: a name longer than any optimizer can have.
        """
        managed = self.optimizers.get(name)
        if managed is None:
            check_name_length("optimizer", name, self.max_name_bytes)
            raise NotFound(
                f"optimizer {shown(name)} not found; known optimizers: "
                f"{shown(sorted(self.optimizers))}",
                Reason.UNKNOWN_OPTIMIZER,
                {"optimizer": name},
            )
        return managed

    def variable(self, name: str) -> ManagedVariable:
        """Returns a named variable.

        Raises:
            NotFound: no such variable.
            ResourceExhausted: a name longer than any variable can have.
        """
        managed = self.variables.get(name)
        if managed is None:
            check_name_length("variable", name, self.max_name_bytes)
            raise NotFound(
                f"variable {shown(name)} not found", Reason.UNKNOWN_VARIABLE, {"variable": name}
            )
        return managed

    def claim_shard(self, identity: ShardIdentity) -> None:
        """Makes ``identity`` the generation's shard, or refuses another than the one it has;
        the caller holds the structure lock (or builds the generation).

        Raises:
            FailedPrecondition: the generation is another shard (``SHARD_MISMATCH``).
        """
        check_same_shard(self.shard, identity)
        self.shard = identity

    def add_variables(self, variables: Iterable[ManagedVariable]) -> None:
        """Appends variables of one creation request; the caller holds the structure lock."""
        self.batches += 1
        for managed in variables:
            managed.position = len(self.variables)
            self.variables[managed.name] = managed
            managed.optimizer.bound[managed.name] = managed.variable
            self.state_bytes += managed.state_bytes


@contextlib.contextmanager
def locked(optimizers: Iterable[ManagedOptimizer]) -> Iterator[None]:
    """Holds the locks of several optimizers, taken in name order (the one order, no deadlock)."""
    with contextlib.ExitStack() as stack:
        for managed in sorted(set(optimizers), key=lambda m: m.name):
            stack.enter_context(managed.lock)
        yield
