"""Checkpoint files of the whole server state: atomic saves, retention, recovery, restore.

Checkpoints are TensorFlow checkpoints written by ``tf.train.CheckpointManager``
with the key layout of :mod:`tfps_client.wire.checkpoint_layout`. A save writes
the data and index files first and then atomically replaces the ``checkpoint``
state file, so a crash at any instant leaves the previous checkpoint as the
latest one, and a half-written one is never picked. A save that fails (a full
disk) removes what it wrote and changes nothing else.

The state file is checked at start: when it is missing, unreadable (garbage,
empty) or names a checkpoint that is not complete on disk (index and every data
shard), the complete checkpoints are found by scanning the directory, the state
file is rewritten to list them (the newest as the latest, each one known to
retention), and the log says so at WARNING level. The server never starts empty
while checkpoints exist, and good checkpoints are never left orphaned. A
checkpoint that looks complete but is unreadable is refused, never skipped.

Memory stays bounded: summaries of at most ``keep`` + 1 checkpoints are cached,
never their exactly-once windows.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from tfps_client.types import CheckpointInfo, VariableInfo
from tfps_client.wire import checkpoint_layout as layout
from tfps_client.wire.reasons import Reason
from tfps_server import snapshot
from tfps_server.barrier import NotReached
from tfps_server.errors import (
    DataLoss,
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    ServerError,
    shown,
)
from tfps_server.metrics import Metrics
from tfps_server.registry import Registry
from tfps_server.state import Generation
from tfps_server.validation import check_text_bytes

_log = logging.getLogger(__name__)

PREFIX = "ckpt"
"""File prefix of checkpoints: ``ckpt-<id>.index`` and ``ckpt-<id>.data-*``."""

STATE_FILE = "checkpoint"
"""TensorFlow's checkpoint state file, naming the latest and the retained checkpoints."""

_ID = re.compile(rf"{PREFIX}-(\d+)$")
_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


def checkpoint_files(prefix: str) -> list[Path]:
    """Returns the files of the checkpoint at ``prefix`` (index first, then data shards)."""
    base = Path(prefix)
    data = sorted(base.parent.glob(f"{base.name}.data-*"))
    return [base.parent / f"{base.name}.index", *data]


def is_complete(prefix: str) -> bool:
    """True if the index and every data shard of the checkpoint at ``prefix`` are on disk."""
    index, *data = checkpoint_files(prefix)
    if not index.is_file() or index.stat().st_size == 0 or not data:
        return False
    shards = [_SHARD.search(path.name) for path in data]
    if any(shard is None for shard in shards):
        return False
    counts = {int(shard.group(2)) for shard in shards if shard}
    numbers = sorted(int(shard.group(1)) for shard in shards if shard)
    return len(counts) == 1 and numbers == list(range(counts.pop()))


class Checkpointer:
    """Saves, lists and restores checkpoints of one registry in one directory.

    Args:
        registry: the state to save and restore.
        directory: where checkpoints live.
        keep: how many of the newest checkpoints are kept.
        metrics: where save durations, sizes and failures are recorded.
    """

    def __init__(
        self,
        registry: Registry,
        directory: str | Path,
        keep: int = 5,
        metrics: Metrics | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep: expected >= 1, received {keep}")
        self.registry = registry
        self.directory = Path(directory).absolute()
        """Absolute, as TensorFlow's state file lists paths relative to it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.metrics = metrics if metrics is not None else registry.metrics
        self._files_lock = threading.Lock()
        """Held while checkpoint files are written, deleted or opened."""
        self._infos: dict[str, CheckpointInfo] = {}
        """Summaries of the retained checkpoints, by prefix; pruned at every listing."""
        self._remove_leftovers()
        self._recover_state_file()

    # Saving -----------------------------------------------------------------------------------

    def save(
        self,
        at_iterations: Mapping[str, int] | None = None,
        group: str = "",
        deadline: float | None = None,
        ended: threading.Event | None = None,
    ) -> CheckpointInfo:
        """Writes a checkpoint of a consistent cut of the state; training goes on meanwhile.

        With ``at_iterations`` (optimizer -> iterations), the cut is taken once every named
        optimizer's iterations equal its value: the save waits for pushes to bring them
        there, and holds the pushes that would take one at its value past it until the cut
        (:mod:`tfps_server.barrier`). The wait is not counted as save time.

        Args:
            at_iterations: the iterations to save at; empty or None: now.
            group: a label stored with the checkpoint (``CheckpointInfo.group``).
            deadline: a ``time.monotonic()`` instant at which a save at iterations gives up.
            ended: set when the call ended (then ``registry.barrier.wake()``): a save at
                iterations gives up.

        Raises:
            ResourceExhausted: a group longer than ``limits.max_id_bytes``; the disk is
                full (or a quota or file size limit is reached): what this save wrote is
                removed, the latest checkpoint stays.
            Internal: the file system failed otherwise, with the same clean-up.
            NotFound, InvalidArgument, FailedPrecondition: an unknown optimizer, a value
                out of [0, 2**62], an optimizer past its value (``ITERATIONS_PASSED``);
                before anything waits.
            DeadlineExceeded: the deadline passed, or the call ended, first.
            Aborted: a restore replaced the state first.
            Unavailable: the server is stopping.
        """
        check_text_bytes(
            f"save group {shown(group)}", group, "max_id_bytes", self.registry.limits.max_id_bytes
        )
        if not at_iterations:
            return self._save(group)
        barrier = self.registry.barrier
        with barrier.target(
            self.registry, at_iterations, deadline, ended or threading.Event()
        ) as target:
            while True:
                target.wait_reached()
                try:
                    return self._save(group, target.check_cut, barrier.release)
                except NotReached:  # a set_weights lowered one after the wait saw it
                    continue

    def _save(
        self,
        group: str,
        check: Callable[[Generation], None] | None = None,
        cut: Callable[[], None] = lambda: None,
    ) -> CheckpointInfo:
        """Cuts (after ``check``, under every lock) and writes a checkpoint; ``cut`` runs
        once the cut is taken."""
        with self._files_lock:
            start = time.perf_counter()
            number = self._latest_id() + 1
            try:
                captured = snapshot.capture(self.registry, group, check)
            except (ServerError, NotReached):  # refused at the cut: nothing was written
                raise
            except (tf.errors.OpError, OSError) as error:
                self.metrics.checkpoint_failures.inc()
                raise _write_error(self.directory / f"{PREFIX}-{number}", error) from None
            except Exception:
                self.metrics.checkpoint_failures.inc()
                raise
            self.registry.hooks.reach("save.captured")
            cut()
            try:
                checkpoint = snapshot.to_checkpoint(captured)
                manager = tf.train.CheckpointManager(
                    checkpoint, str(self.directory), max_to_keep=self.keep, checkpoint_name=PREFIX
                )
                prefix = manager.save(checkpoint_number=number)
                self._infos.pop(prefix, None)
            except (tf.errors.OpError, OSError) as error:
                self.metrics.checkpoint_failures.inc()
                self._remove_partial(number)
                raise _write_error(self.directory / f"{PREFIX}-{number}", error) from None
            except Exception:
                self.metrics.checkpoint_failures.inc()
                self._remove_partial(number)
                raise
            info = self._summarize(prefix, captured.metadata)
        self.metrics.checkpoint_duration.observe(time.perf_counter() - start)
        self.metrics.checkpoint_size.set(info.size_bytes)
        self.metrics.checkpoint_last_success.set(info.saved_at)
        _log.info(
            "saved checkpoint %s (%d bytes) from %s", prefix, info.size_bytes, self.registry.device
        )
        return info

    # Finding and reading ----------------------------------------------------------------------

    def retained(self) -> list[CheckpointInfo]:
        """Returns the retained checkpoints, oldest first; the cache keeps the newest of them.

        A checkpoint whose metadata cannot be read is left out of the list, with a WARNING
        in the log; restoring it is still refused with DATA_LOSS.
        """
        with self._files_lock:
            prefixes = [p for p in self._retained_prefixes() if checkpoint_files(p)[0].exists()]
            listed: dict[str, CheckpointInfo] = {}
            for prefix in prefixes:
                try:
                    listed[prefix] = self._summarize(prefix)
                except DataLoss as error:
                    _log.warning("left out of the listing: %s", error.message)
            self._infos = dict(list(listed.items())[-(self.keep + 1) :])
        return list(listed.values())

    def find(self, which: str | int) -> str:
        """Returns the prefix of ``"latest"``, a checkpoint id, or a path prefix.

        Raises:
            NotFound: no such checkpoint.
        """
        if which == "latest":
            latest = tf.train.latest_checkpoint(str(self.directory))
            if latest is None:
                raise NotFound(
                    "the checkpoint directory holds no checkpoint yet", Reason.NO_CHECKPOINT
                )
            return latest
        if isinstance(which, int) or re.fullmatch(r"[0-9]+", which):
            prefix = str(self.directory / f"{PREFIX}-{int(which)}")
        else:
            prefix = str(which)
        if not checkpoint_files(prefix)[0].exists():
            raise _unknown(which)
        return prefix

    def open_files(self, which: str | int) -> tuple[CheckpointInfo, list[tuple[str, BinaryIO]]]:
        """Opens every file of a checkpoint, so that retention cannot take it while it is read.

        Returns:
            The checkpoint's summary, and (file name, open file) pairs, index first;
            the caller closes the files.

        Raises:
            NotFound: no such checkpoint, or retention deleted it already.
        """
        with ExitStack() as stack, self._files_lock:
            prefix = self.find(which)
            try:
                handles: list[tuple[str, BinaryIO]] = [
                    (path.name, stack.enter_context(path.open("rb")))
                    for path in checkpoint_files(prefix)
                ]
            except FileNotFoundError:
                raise _unknown(which) from None
            info = self._summarize(prefix)
            stack.pop_all()
        self.registry.hooks.reach("download.opened")
        return info, handles

    def restore(self, which: str | int = "latest") -> CheckpointInfo:
        """Replaces the registry's state with a checkpoint's.

        In-flight pushes of the replaced state are answered ABORTED and apply nothing.
        The replaced state's memory is freed as soon as no request uses it.

        Raises:
            NotFound: no such checkpoint.
            DataLoss: the checkpoint is unreadable; the state is left as it was.
            ServerError: the checkpoint holds what creation refuses (same status and
                message, naming the checkpoint); the state is left as it was.
        """
        with self._files_lock:
            prefix = self.find(which)
            try:  # before reading the tensors: a checkpoint past the bounds is never loaded
                snapshot.check_limits(_read_metadata(prefix), self.registry.limits)
            except ServerError as error:
                raise _naming(prefix, error) from None
            captured = snapshot.read_checkpoint(prefix)
        try:
            snapshot.restore(self.registry, captured)
        except ServerError as error:
            raise _naming(prefix, error) from None
        _log.info(
            "restored checkpoint %s (saved from %s) onto %s",
            prefix,
            captured.metadata.device or "an unrecorded device",
            self.registry.device,
        )
        with self._files_lock:
            return self._summarize(prefix, captured.metadata)

    # Files ------------------------------------------------------------------------------------

    def _retained_prefixes(self) -> list[str]:
        state = tf.train.get_checkpoint_state(str(self.directory))
        return list(state.all_model_checkpoint_paths) if state else []

    def _latest_id(self) -> int:
        ids = [_checkpoint_id(str(p)) for p in self.directory.glob(f"{PREFIX}-*.index")]
        return max(ids, default=0)

    def _summarize(
        self, prefix: str, metadata: layout.CheckpointMetadata | None = None
    ) -> CheckpointInfo:
        """Returns (and caches) a checkpoint's summary; the caller holds the files lock.

        Raises:
            NotFound: the checkpoint's files are gone.
            DataLoss: its metadata is unreadable.
        """
        cached = self._infos.get(prefix)
        if cached is not None:
            return cached
        if metadata is None:
            metadata = _read_metadata(prefix)
        try:
            size = sum(f.stat().st_size for f in checkpoint_files(prefix))
        except FileNotFoundError:
            raise _unknown(Path(prefix).name) from None
        info = CheckpointInfo(
            id=_checkpoint_id(prefix),
            path=prefix,
            saved_at=metadata.saved_at,
            size_bytes=size,
            iterations={o.name: o.iterations for o in metadata.optimizers},
            variables=tuple(
                VariableInfo(
                    v.name, v.shape, np.dtype(v.dtype), v.optimizer, metadata.device, v.placement
                )
                for v in metadata.variables
            ),
            group=metadata.group,
            shard=metadata.shard,
        )
        self._infos[prefix] = info
        while len(self._infos) > self.keep + 1:
            self._infos.pop(next(iter(self._infos)))
        return info

    def _remove_partial(self, number: int) -> None:
        """Removes what a failed save of checkpoint ``number`` left behind."""
        prefix = self.directory / f"{PREFIX}-{number}"
        shutil.rmtree(f"{prefix}_temp", ignore_errors=True)
        for path in [*checkpoint_files(str(prefix)), *self.directory.glob(f"{STATE_FILE}.tmp*")]:
            path.unlink(missing_ok=True)

    def _remove_leftovers(self) -> None:
        """Removes the temporary directories of saves that a crash interrupted."""
        for leftover in self.directory.glob(f"{PREFIX}-*_temp"):
            _log.warning("removing %s, left by an interrupted save", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def _recover_state_file(self) -> None:
        """Rewrites a missing or broken state file from the complete checkpoints on disk."""
        problem = self._state_file_problem()
        if not problem:
            return
        state_file = self.directory / STATE_FILE
        found = self._complete_checkpoints()
        if not found:
            if problem != "missing":
                _log.warning(
                    "checkpoint state file %s is %s and no checkpoint is on disk: removing it",
                    state_file,
                    problem,
                )
                state_file.unlink()
            return
        _log.warning(
            "checkpoint state file %s is %s; found %d complete checkpoints by scanning %s "
            "(%s); the latest is now %s, and the state file is rewritten to list them",
            state_file,
            problem,
            len(found),
            self.directory,
            ", ".join(Path(p).name for p in found),
            Path(found[-1]).name,
        )
        self._write_state_file(found)

    def _complete_checkpoints(self) -> list[str]:
        """Returns the prefixes of the complete checkpoints in the directory, oldest first."""
        prefixes = [
            str(index.with_suffix("")) for index in self.directory.glob(f"{PREFIX}-*.index")
        ]
        complete = [p for p in prefixes if _ID.search(Path(p).name) and is_complete(p)]
        return sorted(complete, key=_checkpoint_id)

    def _write_state_file(self, prefixes: list[str]) -> None:
        """Atomically replaces the state file with one listing ``prefixes``, the last as latest.

        Names are relative, so the directory may move. Every checkpoint gets its
        index file's time (never a future one) and is newer than the last preserved
        timestamp, so ``tf.train.CheckpointManager`` deletes them by retention as
        if it had written them.
        """
        now = time.time()
        timestamps = [min(checkpoint_files(p)[0].stat().st_mtime, now) for p in prefixes]
        names = [Path(p).name for p in prefixes]
        state = tf.compat.v1.train.generate_checkpoint_state_proto(
            str(self.directory),
            names[-1],
            all_model_checkpoint_paths=names,
            all_model_checkpoint_timestamps=timestamps,
            last_preserved_timestamp=min(timestamps) - 1,
        )
        temporary = self.directory / f"{STATE_FILE}.tmp-recovered"
        with temporary.open("w") as file:
            file.write(text_format.MessageToString(state))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.directory / STATE_FILE)

    def _state_file_problem(self) -> str:
        """Says what is wrong with the state file; empty when it names a complete checkpoint."""
        if not (self.directory / STATE_FILE).exists():
            return "missing"
        try:
            state = tf.train.get_checkpoint_state(str(self.directory))
        except ValueError:
            state = None
        if state is None:
            return "unreadable"
        latest = state.model_checkpoint_path
        if not is_complete(latest):
            return f"naming {Path(latest).name}, which is not complete on disk"
        return ""


def _naming(prefix: str, error: ServerError) -> ServerError:
    """The same refusal, naming the checkpoint (unless it does already)."""
    name = Path(prefix).name
    if error.metadata.get("checkpoint") == name:
        return error
    return type(error)(
        f"checkpoint {name}: {error.message}", error.reason, {**error.metadata, "checkpoint": name}
    )


def _read_metadata(prefix: str) -> layout.CheckpointMetadata:
    try:
        raw = tf.train.load_checkpoint(prefix).get_tensor(layout.METADATA_KEY)
        return layout.CheckpointMetadata.from_json(raw)
    except snapshot.UNREADABLE as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataLoss(
            f"checkpoint {Path(prefix).name} is unreadable: {message}",
            Reason.CHECKPOINT_UNREADABLE,
            {"checkpoint": Path(prefix).name},
        ) from None


def _write_error(prefix: Path, error: Exception) -> ServerError:
    """The status of a failed write: RESOURCE_EXHAUSTED for a full disk or memory, else INTERNAL."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if getattr(error, "errno", None) in _DISK_FULL_ERRNOS or any(
        marker in text for marker in _DISK_FULL_TEXTS
    ):
        _log.error("checkpoint %s not saved, the disk is full: %s", prefix.name, text)
        return ResourceExhausted(
            f"checkpoint {prefix.name} not saved: the disk is full ({text}); "
            "the previous checkpoint is still the latest",
            Reason.NO_SPACE,
            {"checkpoint": prefix.name},
        )
    _log.error("checkpoint %s not saved: %s", prefix.name, text)
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return ResourceExhausted(
            f"checkpoint {prefix.name} not saved: out of memory ({text}); "
            "the previous checkpoint is still the latest",
            Reason.TOO_LARGE,
            {"checkpoint": prefix.name},
        )
    return Internal(
        f"checkpoint {prefix.name} not saved: {text}; the previous checkpoint is still the latest",
        Reason.INTERNAL,
        {"checkpoint": prefix.name},
    )


def _unknown(which: object) -> NotFound:
    """No such checkpoint; the message names no path of the server's (clients see it)."""
    return NotFound(
        f"checkpoint {shown(which)} not found in the checkpoint directory (retention may "
        "have deleted it)",
        Reason.UNKNOWN_CHECKPOINT,
        {"checkpoint": which},
    )


def _checkpoint_id(prefix: str) -> int:
    match = _ID.search(Path(prefix).name.removesuffix(".index"))
    return int(match.group(1)) if match else 0


def require(checkpointer: Checkpointer | None) -> Checkpointer:
    """Returns the checkpointer, or refuses when the server has no checkpoint directory.

    Raises:
        FailedPrecondition: the server runs without ``--checkpoint-dir``.
    """
    if checkpointer is None:
        raise FailedPrecondition(
            "checkpoints: the server runs without --checkpoint-dir", Reason.NO_CHECKPOINT_DIR
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
        registry = self._checkpointer.registry
        last_time, last_steps = time.monotonic(), registry.total_iterations()
        poll = min(self._every_seconds or 1.0, 1.0) if not self._every_steps else 0.05
        while not self._stop.wait(poll):
            steps = registry.total_iterations()
            due_by_time = (
                self._every_seconds > 0 and time.monotonic() - last_time >= self._every_seconds
            )
            due_by_steps = self._every_steps > 0 and steps - last_steps >= self._every_steps
            if not (due_by_time or due_by_steps):
                continue
            try:
                info = self._checkpointer.save()
            except ServerError as error:
                _log.error("periodic checkpoint failed: %s", error.message)
                continue
            except Exception:
                _log.exception("periodic checkpoint failed")
                continue
            last_time = time.monotonic()
            last_steps = sum(info.iterations.values())
