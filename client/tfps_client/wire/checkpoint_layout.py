"""The key layout of tfps checkpoints, readable without TensorFlow's object graph.

A tfps checkpoint is a TensorFlow checkpoint (``tf.train.Checkpoint`` written by
``tf.train.CheckpointManager`` as ``ckpt-<id>.index`` and ``ckpt-<id>.data-*``)
whose keys are::

    variables/<variable>/.ATTRIBUTES/VARIABLE_VALUE          a variable's value
    slots/<variable>/<slot>/.ATTRIBUTES/VARIABLE_VALUE       a slot, e.g. Adam's m
    optimizers/<optimizer>/<weight>/.ATTRIBUTES/VARIABLE_VALUE
                                                             iter, momentum_cache, ...
    metadata/.ATTRIBUTES/VARIABLE_VALUE                      JSON, see CheckpointMetadata

Names are escaped as TensorFlow escapes object-graph names: ``.`` becomes ``..``
and ``/`` becomes ``.S`` (``dense/kernel`` -> ``dense.Skernel``). Read any of
them with ``tf.train.load_checkpoint(prefix).get_tensor(key)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tfps_client.types import Async, OptimizerOptions, Partition, Placement, ShardIdentity, Sync

FORMAT = "tfps-checkpoint"
"""The ``format`` field of the metadata."""

VERSION = 1
"""The layout version written by this code."""

METADATA_KEY = "metadata/.ATTRIBUTES/VARIABLE_VALUE"
"""Key of the JSON metadata tensor."""

_SUFFIX = ".ATTRIBUTES/VARIABLE_VALUE"


def escape(name: str) -> str:
    """Escapes one object-graph name as TensorFlow does."""
    return name.replace(".", "..").replace("/", ".S")


def variable_key(variable: str) -> str:
    """Key of a variable's value."""
    return f"variables/{escape(variable)}/{_SUFFIX}"


def slot_key(variable: str, slot: str) -> str:
    """Key of one slot of one variable."""
    return f"slots/{escape(variable)}/{escape(slot)}/{_SUFFIX}"


def optimizer_weight_key(optimizer: str, weight: str) -> str:
    """Key of an optimizer's non-slot weight (``iter``, Nadam's ``momentum_cache``)."""
    return f"optimizers/{escape(optimizer)}/{escape(weight)}/{_SUFFIX}"


def weight_name(tf_name: str) -> str:
    """``Adam/iter:0`` -> ``iter``: how a non-slot optimizer weight is named in checkpoints."""
    return tf_name.rsplit("/", 1)[-1].split(":", 1)[0]


@dataclass(frozen=True)
class VariableEntry:
    """A variable recorded in a checkpoint."""

    name: str
    """Name of the variable."""
    optimizer: str
    """Optimizer it is bound to."""
    shape: tuple[int, ...]
    """Shape of the variable."""
    dtype: str
    """Element type, for example ``"float32"``."""
    batch: int
    """The creation request it came in (slots are created per request)."""
    placement: Placement | None = None
    """Where a sharded client placed it (None: an unsharded client, or a checkpoint written
    before the field existed)."""


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer recorded in a checkpoint."""

    name: str
    """Name of the optimizer."""
    class_name: str
    """Keras class, for example ``"Adam"``."""
    creation_config: dict[str, Any]
    """``{"class_name", "config"}`` as created (what idempotent creation compares with)."""
    config: dict[str, Any]
    """``{"class_name", "config"}`` at save time (hyperparameters as changed since)."""
    options: dict[str, Any]
    """Aggregation mode, non-finite policy and lazy_sparse, as :func:`options_to_json` writes
    them."""
    iterations: int
    """``iterations`` at save time."""
    weights: tuple[str, ...]
    """Non-slot weights (``iter`` first), under ``optimizers/<name>/<weight>``."""
    slots: tuple[str, ...]
    """Slot names, under ``slots/<variable>/<slot>``."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """What the ``metadata`` tensor of a checkpoint says."""

    saved_at: float
    """Unix time of the save."""
    optimizers: tuple[OptimizerEntry, ...]
    """Optimizers, by name."""
    variables: tuple[VariableEntry, ...]
    """Variables, in creation order."""
    requests: tuple[tuple[str, dict[str, list[Any]], bool], ...]
    """Exactly-once window: (request id, {optimizer: [outcome, iterations]}, complete)."""
    device: str = ""
    """The server's device at the save, as ``/device:CPU:0`` (``""``: a checkpoint written
    before the field existed). A checkpoint restores onto any device."""
    shard: ShardIdentity | None = None
    """The server's shard identity at the save (None: it had none, or a checkpoint written
    before the field existed); a restore gives the server this one."""
    group: str = ""
    """The label the save was given (``SaveCheckpointRequest.group``; ``""``: none, or a
    checkpoint written before the field existed)."""

    def to_json(self) -> str:
        """Serializes the metadata.

        ``placement``, ``shard`` and ``group`` are written only when set: the metadata of an
        unsharded server saved without a group stays readable by versions that came before
        them.
        """
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "saved_at": self.saved_at,
                "optimizers": [
                    vars(o) | {"weights": list(o.weights), "slots": list(o.slots)}
                    for o in self.optimizers
                ],
                "variables": [_variable_to_json(v) for v in self.variables],
                "requests": [list(r) for r in self.requests],
                "device": self.device,
                **({} if self.shard is None else {"shard": self.shard._asdict()}),
                **({"group": self.group} if self.group else {}),
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckpointMetadata:
        """Parses metadata written by :meth:`to_json`.

        Raises:
            ValueError: not tfps checkpoint metadata of a known version.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"expected {FORMAT} metadata, received {str(text)[:80]!r}")
        if data.get("version") != VERSION:
            raise ValueError(
                f"expected checkpoint layout version {VERSION}, received {data.get('version')}"
            )
        try:
            return cls(
                saved_at=float(data["saved_at"]),
                optimizers=tuple(
                    OptimizerEntry(
                        **(o | {"weights": tuple(o["weights"]), "slots": tuple(o["slots"])})
                    )
                    for o in data["optimizers"]
                ),
                variables=tuple(_variable_from_json(v) for v in data["variables"]),
                requests=tuple((r[0], r[1], bool(r[2])) for r in data["requests"]),
                device=str(data.get("device", "")),
                shard=_shard_from_json(data.get("shard")),
                group=str(data.get("group", "")),
            )
        except (AttributeError, IndexError, KeyError, TypeError) as error:
            raise ValueError(
                f"malformed {FORMAT} metadata: {type(error).__name__}: {error}"
            ) from error


def _shard_from_json(data: Mapping[str, Any] | None) -> ShardIdentity | None:
    return None if data is None else ShardIdentity(int(data["shard"]), int(data["shards"]))


def _variable_to_json(entry: VariableEntry) -> dict[str, Any]:
    """A variable entry as metadata records it; ``placement`` only when set."""
    data = vars(entry) | {"shape": list(entry.shape)}
    placement = data.pop("placement")
    if placement is not None:
        part = placement.partition
        data["placement"] = {
            "shard": placement.shard,
            "shards": placement.shards,
            "partition": None if part is None else asdict(part) | {"shape": list(part.shape)},
            "order": placement.order,
            "batch": placement.batch,
        }
    return data


def _variable_from_json(data: Mapping[str, Any]) -> VariableEntry:
    """Inverse of :func:`_variable_to_json`; an entry without ``placement`` has none."""
    placement = data.get("placement")
    return VariableEntry(
        **{
            **data,
            "shape": tuple(data["shape"]),
            "placement": None if placement is None else _placement_from_json(placement),
        }
    )


def _placement_from_json(data: Mapping[str, Any]) -> Placement:
    part = data["partition"]
    partition = None
    if part is not None:
        partition = Partition(
            str(part["variable"]),
            int(part["index"]),
            int(part["count"]),
            int(part["row_offset"]),
            tuple(int(d) for d in part["shape"]),
        )
    return Placement(
        int(data["shard"]),
        int(data["shards"]),
        partition,
        int(data.get("order", 0)),
        int(data.get("batch", 0)),
    )


def options_to_json(options: OptimizerOptions) -> dict[str, Any]:
    """Returns optimizer options as checkpoint metadata records them."""
    mode = "sync" if isinstance(options.aggregation, Sync) else "async"
    return {
        "aggregation": mode,
        **asdict(options.aggregation),
        "on_non_finite": options.on_non_finite,
        "lazy_sparse": options.lazy_sparse,
    }


def options_from_json(data: Mapping[str, Any]) -> OptimizerOptions:
    """Inverse of :func:`options_to_json` (values are not checked here).

    Metadata written before ``lazy_sparse`` existed has none: False, the update it was saved with.

    Raises:
        ValueError: not options as :func:`options_to_json` writes them.
    """
    try:
        named = ("aggregation", "on_non_finite", "lazy_sparse")
        fields = {k: v for k, v in data.items() if k not in named}
        mode: type[Async] | type[Sync] = Sync if data["aggregation"] == "sync" else Async
        return OptimizerOptions(
            mode(**fields), data["on_non_finite"], data.get("lazy_sparse", False)
        )
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"expected optimizer options, received {str(data)[:200]}") from error
