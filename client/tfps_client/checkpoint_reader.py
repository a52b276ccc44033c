"""Reading a tfps checkpoint on a local disk: one server's, or a sharded client's logical
checkpoint as ``download_checkpoint`` writes it (``DIR/shard-<i>-of-<n>/``), seen as one.

Needs TensorFlow (its checkpoint reader), imported when a checkpoint is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfps_client import checkpoint_files
from tfps_client.wire import checkpoint_layout as layout


@dataclass(frozen=True)
class _Shard:
    prefix: str
    reader: Any
    metadata: layout.CheckpointMetadata


class Checkpoint:
    """A checkpoint's values by variable, slot and optimizer weight.

    A sharded checkpoint's variables are the whole ones: a variable split by rows is read
    as its parts joined, and an optimizer's weights come from a shard holding its
    variables (every shard counts its iterations).

    Args:
        shards: each server's checkpoint, in shard order (one for an unsharded one).
    """

    def __init__(self, shards: Sequence[_Shard]) -> None:
        self._shards = list(shards)
        self.description = (
            self._shards[0].prefix
            if len(self._shards) == 1
            else f"{Path(self._shards[0].prefix).parent.parent} ({len(self._shards)} shards)"
        )
        """The prefix, or the directory and shard count of a sharded checkpoint."""
        self._parts: dict[str, list[tuple[int, layout.VariableEntry]]] = {}
        entries: list[layout.VariableEntry] = []
        for shard, read in enumerate(self._shards):
            for entry in read.metadata.variables:
                partition = entry.placement.partition if entry.placement else None
                whole = entry.name if partition is None else partition.variable
                if whole not in self._parts:
                    shape = entry.shape if partition is None else tuple(partition.shape)
                    entries.append(replace(entry, name=whole, shape=shape))
                self._parts.setdefault(whole, []).append((shard, entry))
        for parts in self._parts.values():
            parts.sort(key=lambda part: _part_index(part[1]))
        entries.sort(key=lambda e: e.placement.order if e.placement else 0)
        first = self._shards[0].metadata
        self.metadata = first
        """What the metadata says, of the whole variables."""
        if len(self._shards) > 1:
            self.metadata = replace(
                first,
                saved_at=max(s.metadata.saved_at for s in self._shards),
                optimizers=tuple(self._optimizer_entry(o.name) for o in first.optimizers),
                variables=tuple(entries),
            )

    def _home(self, optimizer: str) -> _Shard:
        """The first shard holding variables of ``optimizer`` (else the first)."""
        for read in self._shards:
            if any(entry.optimizer == optimizer for entry in read.metadata.variables):
                return read
        return self._shards[0]

    def _optimizer_entry(self, name: str) -> layout.OptimizerEntry:
        return next(o for o in self._home(name).metadata.optimizers if o.name == name)

    def value(self, variable: str) -> np.ndarray:
        """The variable's value (its parts joined)."""
        return self._joined(variable, layout.variable_key)

    def slot(self, variable: str, slot: str) -> np.ndarray:
        """One slot of the variable (its parts joined)."""
        return self._joined(variable, lambda name: layout.slot_key(name, slot))

    def optimizer_weight(self, optimizer: str, weight: str) -> np.ndarray:
        """A non-slot weight of the optimizer (``iter``, Nadam's ``momentum_cache``)."""
        key = layout.optimizer_weight_key(optimizer, weight)
        return np.asarray(self._home(optimizer).reader.get_tensor(key))

    def stored(self) -> list[tuple[str, list[int]]]:
        """Every stored key and its shape; a sharded checkpoint's prefixed ``shard-<i>:``."""
        listed = []
        for shard, read in enumerate(self._shards):
            mark = f"shard-{shard}:" if len(self._shards) > 1 else ""
            listed += [(mark + k, s) for k, s in read.reader.get_variable_to_shape_map().items()]
        return sorted(listed)

    def _joined(self, variable: str, key: Any) -> np.ndarray:
        parts = self._parts[variable]
        values = [self._shards[shard].reader.get_tensor(key(e.name)) for shard, e in parts]
        return np.asarray(values[0]) if len(values) == 1 else np.concatenate(values)


def _part_index(entry: layout.VariableEntry) -> int:
    partition = entry.placement.partition if entry.placement else None
    return 0 if partition is None else partition.index


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Opens the checkpoint ``path`` names: a prefix, a directory (its latest), or a
    directory a sharded client downloaded a logical checkpoint into.

    Raises:
        FileNotFoundError: ``path`` is none of these, naming what was looked for.
        ImportError: TensorFlow is not installed.
    """
    prefixes = checkpoint_files.shard_prefixes(path) or [checkpoint_files.resolve(path)]
    import tensorflow as tf

    shards = []
    for prefix in prefixes:
        reader = tf.train.load_checkpoint(prefix)
        metadata = layout.CheckpointMetadata.from_json(reader.get_tensor(layout.METADATA_KEY))
        shards.append(_Shard(prefix, reader, metadata))
    return Checkpoint(shards)
