"""Checkpoints of the whole server state: atomic saves, retention, restore, listing.

Checkpoints are TensorFlow checkpoints written by ``tf.train.CheckpointManager``
with the key layout of :mod:`tfps_client.checkpoint_layout`. A save writes the
data and index files first and then atomically replaces the ``checkpoint``
state file, so a crash at any instant leaves the previous checkpoint as the
latest one, and a half-written one is never picked.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfps_client import checkpoint_layout as layout
from tfps_server.errors import DataLoss, FailedPrecondition, NotFound
from tfps_server.metrics import Metrics
from tfps_server.store import Snapshot, Store

_log = logging.getLogger(__name__)

PREFIX = "ckpt"
"""File prefix of checkpoints: ``ckpt-<id>.index`` and ``ckpt-<id>.data-*``."""

_ID = re.compile(rf"{PREFIX}-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk."""

    id: int
    """Its number, growing with every save."""
    prefix: str
    """Path prefix, as ``tf.train.load_checkpoint`` takes it."""
    size_bytes: int
    """Bytes of its files."""
    metadata: layout.CheckpointMetadata
    """What it holds."""


def checkpoint_files(prefix: str) -> list[Path]:
    """Returns the files of the checkpoint at ``prefix`` (index first, then data shards)."""
    base = Path(prefix)
    data = sorted(base.parent.glob(f"{base.name}.data-*"))
    return [base.parent / f"{base.name}.index", *data]


def read_checkpoint(prefix: str) -> Snapshot:
    """Reads a whole checkpoint, checking it against its own metadata.

    Raises:
        DataLoss: the files are missing, truncated, corrupted or inconsistent.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        metadata = layout.CheckpointMetadata.from_json(reader.get_tensor(layout.METADATA_KEY))
        shapes = reader.get_variable_to_shape_map()

        def tensor(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
            if key not in shapes:
                raise ValueError(f"key {key!r} is missing")
            value = np.asarray(reader.get_tensor(key))
            if shape is not None and value.shape != shape:
                raise ValueError(f"{key}: expected shape {list(shape)}, found {list(value.shape)}")
            return value

        variables = {
            v.name: tensor(layout.variable_key(v.name), v.shape) for v in metadata.variables
        }
        slot_names = {o.name: o.slots for o in metadata.optimizers}
        slots = {
            v.name: {
                s: tensor(layout.slot_key(v.name, s), v.shape) for s in slot_names[v.optimizer]
            }
            for v in metadata.variables
        }
        weights = {
            o.name: {w: tensor(layout.optimizer_weight_key(o.name, w)) for w in o.weights}
            for o in metadata.optimizers
        }
        for key in shapes:  # TensorFlow's own entries too: each read checks the entry's CRC
            reader.get_tensor(key)
    except (tf.errors.OpError, ValueError, KeyError, IndexError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataLoss(
            f"checkpoint {prefix!r} is unreadable: {message}",
            "CHECKPOINT_UNREADABLE",
            {"checkpoint": prefix},
        ) from None
    return Snapshot(metadata, variables, slots, weights)


class Checkpointer:
    """Saves, lists and restores checkpoints of one store in one directory.

    Args:
        store: the state to save and restore.
        directory: where checkpoints live.
        keep: how many of the newest checkpoints are kept.
        metrics: where save durations, sizes and failures are recorded.
    """

    def __init__(
        self, store: Store, directory: str | Path, keep: int = 5, metrics: Metrics | None = None
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep: expected >= 1, received {keep}")
        self.store = store
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.metrics = metrics if metrics is not None else store.metrics
        self._save_lock = threading.Lock()
        self._metadata_cache: dict[str, layout.CheckpointMetadata] = {}

    def save(self) -> CheckpointInfo:
        """Writes a checkpoint of a consistent cut of the state; training goes on meanwhile."""
        with self._save_lock:
            start = time.perf_counter()
            try:
                snapshot = self.store.snapshot()
                checkpoint = _to_checkpoint(snapshot)
                manager = tf.train.CheckpointManager(
                    checkpoint, str(self.directory), max_to_keep=self.keep, checkpoint_name=PREFIX
                )
                prefix = manager.save(checkpoint_number=self._latest_id() + 1)
            except Exception:
                self.metrics.checkpoint_failures.inc()
                raise
            info = self._info(prefix, snapshot.metadata)
            self.metrics.checkpoint_duration.observe(time.perf_counter() - start)
            self.metrics.checkpoint_size.set(info.size_bytes)
            self.metrics.checkpoint_last_success.set(snapshot.metadata.saved_at)
            _log.info("saved checkpoint %s (%d bytes)", prefix, info.size_bytes)
            return info

    def list(self) -> list[CheckpointInfo]:
        """Returns the retained checkpoints, oldest first."""
        state = tf.train.get_checkpoint_state(str(self.directory))
        prefixes = list(state.all_model_checkpoint_paths) if state else []
        return [
            self._info(self._absolute(p))
            for p in prefixes
            if checkpoint_files(self._absolute(p))[0].exists()
        ]

    def find(self, which: str | int) -> str:
        """Returns the prefix of ``"latest"``, a checkpoint id, or a path prefix.

        Raises:
            NotFound: no such checkpoint.
        """
        if which == "latest":
            latest = tf.train.latest_checkpoint(str(self.directory))
            if latest is None:
                raise NotFound(f"no checkpoint in {str(self.directory)!r}", "NO_CHECKPOINT")
            return latest
        if isinstance(which, int) or str(which).isdigit():
            prefix = str(self.directory / f"{PREFIX}-{int(which)}")
        else:
            prefix = str(which)
        if not checkpoint_files(prefix)[0].exists():
            raise NotFound(
                f"checkpoint {which!r} not found in {str(self.directory)!r}",
                "UNKNOWN_CHECKPOINT",
                {"checkpoint": which},
            )
        return prefix

    def describe(self, prefix: str) -> CheckpointInfo:
        """Returns what the checkpoint at ``prefix`` holds.

        Raises:
            DataLoss: its metadata is unreadable.
        """
        return self._info(prefix)

    def restore(self, which: str | int = "latest") -> CheckpointInfo:
        """Replaces the store's state with a checkpoint's.

        Raises:
            NotFound: no such checkpoint.
            DataLoss: the checkpoint is unreadable; the state is left as it was.
        """
        prefix = self.find(which)
        snapshot = read_checkpoint(prefix)
        self.store.restore(snapshot)
        _log.info("restored checkpoint %s", prefix)
        return self._info(prefix, snapshot.metadata)

    def _latest_id(self) -> int:
        ids = [_checkpoint_id(str(p)) for p in self.directory.glob(f"{PREFIX}-*.index")]
        return max(ids, default=0)

    def _absolute(self, prefix: str) -> str:
        path = Path(prefix)
        return str(path if path.is_absolute() else self.directory / path)

    def _info(
        self, prefix: str, metadata: layout.CheckpointMetadata | None = None
    ) -> CheckpointInfo:
        if metadata is None:
            metadata = self._metadata_cache.get(prefix)
        if metadata is None:
            try:
                raw = tf.train.load_checkpoint(prefix).get_tensor(layout.METADATA_KEY)
                metadata = layout.CheckpointMetadata.from_json(raw)
            except (tf.errors.OpError, ValueError) as error:
                raise DataLoss(
                    f"checkpoint {prefix!r} is unreadable: {error}", "CHECKPOINT_UNREADABLE"
                ) from None
        self._metadata_cache[prefix] = metadata
        size = sum(f.stat().st_size for f in checkpoint_files(prefix) if f.exists())
        return CheckpointInfo(_checkpoint_id(prefix), prefix, size, metadata)


def _checkpoint_id(prefix: str) -> int:
    match = _ID.search(Path(prefix).name.removesuffix(".index"))
    return int(match.group(1)) if match else 0


def _to_checkpoint(snapshot: Snapshot) -> tf.train.Checkpoint:
    """Wraps a snapshot's values in variables laid out as checkpoint_layout documents."""
    with tf.device("/CPU:0"):
        return tf.train.Checkpoint(
            variables={name: tf.Variable(value) for name, value in snapshot.variables.items()},
            slots={
                name: {slot: tf.Variable(value) for slot, value in by_slot.items()}
                for name, by_slot in snapshot.slots.items()
            },
            optimizers={
                name: {weight: tf.Variable(value) for weight, value in by_weight.items()}
                for name, by_weight in snapshot.optimizer_weights.items()
            },
            metadata=tf.Variable(snapshot.metadata.to_json()),
        )


def require(checkpointer: Checkpointer | None) -> Checkpointer:
    """Returns the checkpointer, or refuses when the server has no checkpoint directory.

    Raises:
        FailedPrecondition: the server runs without ``--checkpoint-dir``.
    """
    if checkpointer is None:
        raise FailedPrecondition(
            "checkpoints: the server runs without --checkpoint-dir", "NO_CHECKPOINT_DIR"
        )
    return checkpointer


class PeriodicSaver:
    """Saves a checkpoint every ``every_seconds`` and/or every ``every_steps`` iterations.

    Steps are the sum of every optimizer's ``iterations``. Saves run on a
    background thread; a failed save is logged and counted, and retried at the
    next due time.

    Args:
        checkpointer: what saves.
        every_seconds: seconds between saves; 0 disables.
        every_steps: iterations between saves; 0 disables.
    """

    def __init__(
        self, checkpointer: Checkpointer, every_seconds: float = 0, every_steps: int = 0
    ) -> None:
        self._checkpointer = checkpointer
        self._every_seconds = every_seconds
        self._every_steps = every_steps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tfps-checkpoints", daemon=True)

    def start(self) -> None:
        """Starts saving in the background, if any interval is set."""
        if self._every_seconds > 0 or self._every_steps > 0:
            self._thread.start()

    def stop(self) -> None:
        """Stops saving; waits for a save in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        store = self._checkpointer.store
        last_time, last_steps = time.monotonic(), store.total_iterations()
        poll = min(self._every_seconds or 1.0, 1.0) if not self._every_steps else 0.05
        while not self._stop.wait(poll):
            steps = store.total_iterations()
            due_by_time = (
                self._every_seconds > 0 and time.monotonic() - last_time >= self._every_seconds
            )
            due_by_steps = self._every_steps > 0 and steps - last_steps >= self._every_steps
            if not (due_by_time or due_by_steps):
                continue
            try:
                info = self._checkpointer.save()
            except Exception:
                _log.exception("periodic checkpoint failed")
                continue
            last_time = time.monotonic()
            last_steps = sum(o.iterations for o in info.metadata.optimizers)
