"""Plain value types of the client API."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

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


class ShardIdentity(NamedTuple):
    """Which server of a sharded client's list of servers a server is."""

    shard: int
    """Index of the server in the list, < ``shards``."""
    shards: int
    """Number of servers in the list, >= 1."""


@dataclass(frozen=True)
class Partition:
    """One part of a variable split by rows over shards."""

    variable: str
    """Name of the whole variable, for example ``"emb"`` (its parts: ``"emb/part_0"``, ...)."""
    index: int
    """Index of this part, < ``count``."""
    count: int
    """Number of parts."""
    row_offset: int
    """First row of the whole variable that this part holds."""
    shape: tuple[int, ...]
    """Shape of the whole variable."""


@dataclass(frozen=True)
class Placement:
    """Where a sharded client placed a variable."""

    shard: int
    """Index of the server holding it in the client's list of servers, < ``shards``."""
    shards: int
    """Number of servers in the client's list."""
    partition: Partition | None = None
    """Set when the variable is one row range of a bigger one."""
    order: int = 0
    """Position of the variable in the sharded client's creation order over all shards."""
    batch: int = 0
    """``order`` of the first variable of the create call that declared it (the batch
    Keras created its slots in)."""

    @property
    def identity(self) -> ShardIdentity:
        """The server's identity that this placement names."""
        return ShardIdentity(self.shard, self.shards)


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
    """Device the variable and its slots live on, as ``/device:<TYPE>:<index>``
    (``/device:CPU:0``): the spelling of the server's logs and checkpoint metadata."""
    placement: Placement | None = None
    """Where a sharded client placed it, as declared at its creation; None for a variable
    an unsharded client created."""


class CreateVariablesResult(NamedTuple):
    """What a ``create_variables`` call did."""

    created: tuple[str, ...]
    """Names this call created."""
    existing: tuple[str, ...]
    """Names that existed with an identical declaration and were kept as they were."""


@dataclass(frozen=True)
class Async:
    """Asynchronous training: each push is applied as it arrives (the default).

    Attributes:
        max_staleness: a push whose ``step`` is more than this many iterations
            behind the optimizer is dropped and reported stale (bounded
            staleness); None applies every push.
    """

    max_staleness: int | None = None


@dataclass(frozen=True)
class Sync:
    """Synchronous training with the semantics of TF1's SyncReplicasOptimizer.

    Gradients for the same step from ``replicas_to_aggregate`` distinct workers
    are combined in worker-id order and applied in one ``apply_gradients``.
    Pushes for a step already applied are dropped and reported stale.

    Attributes:
        replicas_to_aggregate: contributions that close a step (N).
        total_num_replicas: workers in the job (M >= N); the extra ones are
            backups. None means N.
        reduction: "sum" (Keras's default aggregation) or "mean".
        timeout: seconds after a step's first contribution before it closes
            with what arrived.
        on_timeout: "apply" the contributions that arrived, or "drop" them
            (iterations unchanged; workers push the step again).
    """

    replicas_to_aggregate: int
    total_num_replicas: int | None = None
    reduction: Literal["sum", "mean"] = "sum"
    timeout: float = 60.0
    on_timeout: Literal["apply", "drop"] = "apply"


Aggregation = Async | Sync
"""An optimizer's aggregation mode."""


@dataclass(frozen=True)
class OptimizerOptions:
    """Server-side behaviour of an optimizer beyond its Keras config."""

    aggregation: Aggregation = Async()
    """The aggregation mode."""
    on_non_finite: Literal["reject", "skip"] = "reject"
    """What pushes with NaN or Inf gradients do."""
    lazy_sparse: bool = False
    """Sparse gradients update only the slots and values of the rows they hold (TF Addons'
    LazyAdam semantics; ``iterations`` still grows by one per push): a different update from
    Keras's, whose Adam, Nadam and RMSprop (without momentum) decay every row's slots at each
    sparse step. Only Adam, Nadam and RMSprop take it; dense gradients are applied exactly as
    Keras applies them."""


class Outcome(enum.Enum):
    """What a push did for one optimizer."""

    APPLIED = "applied"
    """Applied on its own (async)."""
    AGGREGATED = "aggregated"
    """Aggregated into a sync step, which was then applied."""
    STALE = "stale"
    """Dropped: computed from a step already applied, or beyond max_staleness."""
    SKIPPED = "skipped"
    """Skipped for non-finite values ("skip" policy); iterations grew by one."""
    DROPPED = "dropped"
    """Dropped with its sync step, closed by timeout with on_timeout="drop"."""


@dataclass(frozen=True)
class PushResult:
    """What a push did, per optimizer it touched."""

    outcomes: dict[str, Outcome]
    """Outcome per optimizer name."""
    iterations: dict[str, int]
    """``iterations`` per optimizer name, after the push."""
    request_id: str
    """The id the push was sent with; a retry with it is never applied twice."""

    @property
    def stale(self) -> bool:
        """True if the push was dropped as stale for any optimizer."""
        return Outcome.STALE in self.outcomes.values()

    @property
    def applied(self) -> bool:
        """True if every optimizer applied or aggregated the push."""
        return all(o in (Outcome.APPLIED, Outcome.AGGREGATED) for o in self.outcomes.values())


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries calls that failed with UNAVAILABLE or DEADLINE_EXCEEDED.

    Every call is safe to retry: pushes carry a request id the server
    deduplicates, and the other calls are idempotent.
    """

    max_attempts: int = 5
    """Attempts in all, the first included; 1 disables retries."""
    initial_backoff: float = 0.1
    """Seconds before the first retry."""
    max_backoff: float = 5.0
    """Longest wait between attempts, in seconds."""
    multiplier: float = 2.0
    """Growth of the wait after each attempt."""

    def __post_init__(self) -> None:
        """Raises ``TypeError`` for a field of a wrong type and ``ValueError`` for one out of
        its range: ``max_attempts`` at least 1, the waits finite and not negative, and
        ``multiplier`` finite and at least 1."""
        if isinstance(self.max_attempts, bool) or not isinstance(
            self.max_attempts, (int, np.integer)
        ):
            raise TypeError(
                f"RetryPolicy.max_attempts: expected int, received "
                f"{type(self.max_attempts).__name__}"
            )
        if self.max_attempts < 1:
            raise ValueError(
                f"RetryPolicy.max_attempts: expected at least 1, received {self.max_attempts}"
            )
        for name, least in (("initial_backoff", 0.0), ("max_backoff", 0.0), ("multiplier", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(
                    f"RetryPolicy.{name}: expected a number, received {type(value).__name__}"
                )
            if not least <= value < math.inf:
                raise ValueError(
                    f"RetryPolicy.{name}: expected a finite number of at least {least:g}, "
                    f"received {value}"
                )


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint on the server's disk."""

    id: int
    """Its number, growing with every save."""
    path: str
    """Its name (path prefix) relative to the server's checkpoint directory, e.g.
    ``ckpt-3``: no path of the server's filesystem is shown to clients."""
    saved_at: float
    """Unix time of the save."""
    size_bytes: int
    """Bytes of its files."""
    iterations: dict[str, int]
    """``iterations`` of every optimizer at the save."""
    variables: tuple[VariableInfo, ...]
    """The variables it holds, in creation order; ``device`` is the server's device at the
    save (empty for checkpoints older than that record)."""
    group: str = ""
    """The label the save was given (a sharded client's logical checkpoint); empty: none,
    or a checkpoint older than that record."""
    shard: ShardIdentity | None = None
    """The server's shard identity at the save; None: it had none, or a checkpoint older
    than that record."""
