"""The checkpoint directory under faults: a broken state file, a full disk, retention racing
a download.

A broken ``checkpoint`` state file (garbage, empty, deleted, naming a checkpoint that is gone
or incomplete) is rebuilt at start from the complete checkpoints on disk: ``tfps-server``
starts from the newest, lists them, and retention goes on deleting the oldest; a newest
checkpoint that looks complete but is corrupted stops the start instead of being skipped.
A save that finds the disk full (a small tmpfs, or a file size limit) is RESOURCE_EXHAUSTED
and leaves nothing behind. A download whose files are open survives retention deleting them.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfps_client import Client, NotFoundError, ResourceExhaustedError
from tfps_server import Registry, create_server
from tfps_server.checkpoints import Checkpointer
from tfps_server.cli import restore
from tfps_server.errors import DataLoss, NotFound
from tfps_server.snapshot import read_checkpoint

from helpers import (
    ServerProcess,
    State,
    assert_all_bitwise_equal,
    assert_refused,
    assert_same_state,
    free_port,
    snapshot,
    start_with_checkpoints,
)
from interleave import BlockingHooks, in_background

MOMENTUM = {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}}
SAVED = 5
"""Checkpoints in the directory the state-file tests start from."""
KEEP = 2
"""``--keep-checkpoints`` of the restarted server: fewer than the checkpoints found."""


def push_steps(client: Client, steps: int, names: tuple[str, ...] = ("w",)) -> None:
    """Pushes ``steps`` gradients of halves to the named variables (momentum makes every step
    change the values differently)."""
    shapes = {v.name: v.shape for v in client.list_variables()}
    for _ in range(steps):
        client.push({name: np.full(shapes[name], 0.5, np.float32) for name in names})


def state(client: Client) -> State:
    """Everything observable about the variables and optimizer "sgd"."""
    return snapshot(client, ["sgd"])


def on_disk(directory: Path, files: str = "index") -> list[str]:
    """Names (``ckpt-<id>``, by id) of the checkpoints with ``files`` (``index``, ``data-*``)."""
    names = {p.name.split(".")[0] for p in directory.glob(f"ckpt-*.{files}")}
    return sorted(names, key=lambda name: int(name.split("-")[1]))


# A broken state file ------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """A directory of checkpoints 1..SAVED and the server state each one holds."""

    directory: Path
    states: dict[int, State]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """Checkpoints 1..SAVED of a real server, one push apart, all retained."""
    directory = tmp_path_factory.mktemp("saved") / "ckpts"
    registry = Registry()
    running = create_server(
        registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, directory, keep=SAVED)
    )
    states = {}
    with Client(f"127.0.0.1:{running.port}", timeout=120) as client:
        client.create_optimizer("sgd", MOMENTUM)
        client.create_variables({"w": np.arange(6, dtype=np.float32)}, optimizer="sgd")
        for _ in range(SAVED):
            push_steps(client, 1)
            states[client.save_checkpoint().id] = state(client)
    running.stop(None)
    assert on_disk(directory) == [f"ckpt-{i}" for i in range(1, SAVED + 1)]
    return Saved(directory, states)


def copy_of(saved: Saved, tmp_path: Path) -> Path:
    """A copy of the saved checkpoint directory, for one test to damage."""
    directory = tmp_path / "ckpts"
    shutil.copytree(saved.directory, directory)
    return directory


def garbage(directory: Path) -> None:
    """Bytes that are neither UTF-8 nor a CheckpointState."""
    (directory / "checkpoint").write_bytes(b"\x00\xff\xfe\x80 not a CheckpointState {{{")


def empty(directory: Path) -> None:
    """An empty state file."""
    (directory / "checkpoint").write_bytes(b"")


def deleted(directory: Path) -> None:
    """No state file at all."""
    (directory / "checkpoint").unlink()


def latest_deleted(directory: Path) -> None:
    """The state file names a checkpoint whose files are gone."""
    for path in directory.glob(f"ckpt-{SAVED}.*"):
        path.unlink()


def latest_without_data(directory: Path) -> None:
    """The state file names a checkpoint whose index is there but not its data shard."""
    for path in directory.glob(f"ckpt-{SAVED}.data-*"):
        path.unlink()


def garbage_and_future_times(directory: Path) -> None:
    """Garbage, and files dated a day ahead (copied from a machine whose clock is ahead)."""
    garbage(directory)
    ahead = time.time() + 86400
    for path in directory.iterdir():
        os.utime(path, (ahead, ahead))


def intact(directory: Path) -> None:
    """Nothing broken: only ``--keep-checkpoints`` is lower than the checkpoints listed."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "newest"),
    [
        (garbage, SAVED),
        (empty, SAVED),
        (deleted, SAVED),
        (latest_deleted, SAVED - 1),
        (latest_without_data, SAVED - 1),
        (garbage_and_future_times, SAVED),
        (intact, SAVED),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_a_broken_state_file_is_rebuilt_from_the_checkpoints_on_disk(
    saved: Saved, tmp_path: Path, damage: Callable[[Path], None], newest: int
) -> None:
    """The server starts from the newest complete checkpoint, says so at WARNING level, lists
    every complete checkpoint (by names relative to the directory, which may move), numbers
    the next save after them, and retention then deletes all but the newest
    --keep-checkpoints."""
    directory = copy_of(saved, tmp_path)
    damage(directory)
    process, client = start_with_checkpoints(directory, "--keep-checkpoints", str(KEEP))
    with process, client:
        assert f"restored checkpoint {newest} " in process.output
        assert_same_state(state(client), saved.states[newest])
        warned = re.search(
            rf"WARNING tfps_server.checkpoints: checkpoint state file .* is .*; found {newest} "
            rf"complete checkpoints .* the latest is now ckpt-{newest}\b",
            process.output,
        )
        assert (warned is None) == (damage is intact), process.output
        assert [c.id for c in client.list_checkpoints()] == list(range(1, newest + 1))
        assert str(directory) not in (directory / "checkpoint").read_text()

        push_steps(client, 1)
        after = client.save_checkpoint()
        assert after.id > newest
        assert [c.id for c in client.list_checkpoints()] == [newest, after.id]
        assert on_disk(directory, "data-*") == [f"ckpt-{newest}", f"ckpt-{after.id}"]
        assert tf.train.latest_checkpoint(str(directory)) == str(directory / after.path)
        assert process.terminate() == 0


@pytest.mark.slow
def test_a_broken_state_file_without_checkpoints_starts_empty(tmp_path: Path) -> None:
    """A garbage state file and no checkpoint data: the server starts empty, and its first
    save is checkpoint 1, listed and restorable."""
    directory = tmp_path / "ckpts"
    directory.mkdir()
    garbage(directory)
    process, client = start_with_checkpoints(directory)
    with process, client:
        assert "starting empty" in process.output
        assert "WARNING tfps_server.checkpoints: checkpoint state file" in process.output
        assert client.list_variables() == []
        client.create_optimizer("sgd", MOMENTUM)
        client.create_variables({"w": np.ones(3, np.float32)}, optimizer="sgd")
        push_steps(client, 2)
        before = state(client)
        assert client.save_checkpoint().id == 1
        assert [c.id for c in client.list_checkpoints()] == [1]
        push_steps(client, 1)
        assert client.restore_checkpoint().id == 1
        assert_same_state(state(client), before)
        assert process.terminate() == 0


@pytest.mark.slow
def test_a_rebuilt_state_file_never_skips_a_corrupted_newest_checkpoint(
    saved: Saved, tmp_path: Path
) -> None:
    """A garbage state file and a truncated newest checkpoint: the start is refused (exit
    status 2, naming it), never continued from an older one."""
    directory = copy_of(saved, tmp_path)
    garbage(directory)
    data = next(directory.glob(f"ckpt-{SAVED}.data-*"))
    data.write_bytes(data.read_bytes()[:-10])
    with ServerProcess(["--port", str(free_port()), "--checkpoint-dir", str(directory)]) as broken:
        assert broken.wait_exit() == 2
        assert re.search(rf"cannot start: checkpoint .*ckpt-{SAVED}.* is unreadable", broken.output)
        assert "restored checkpoint" not in broken.output


def test_a_damaged_older_checkpoint_neither_stops_the_start_nor_the_listing(
    saved: Saved, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older retained checkpoint lost its data: the server still starts from the latest,
    the listing leaves the damaged one out with a WARNING, and restoring it is DATA_LOSS."""
    directory = copy_of(saved, tmp_path)
    for data in directory.glob("ckpt-1.data-*"):
        data.unlink()
    checkpointer = Checkpointer(Registry(), directory, keep=SAVED)
    restore(checkpointer, "latest")
    assert checkpointer.registry.iterations("sgd") == saved.states[SAVED].iterations["sgd"]
    assert [info.id for info in checkpointer.retained()] == list(range(2, SAVED + 1))
    assert "left out of the listing: checkpoint ckpt-1 is unreadable" in caplog.text
    with pytest.raises(DataLoss):
        checkpointer.restore(1)


@pytest.mark.slow
def test_a_relative_checkpoint_dir_restarts_from_its_checkpoints(
    saved: Saved, tmp_path: Path
) -> None:
    """--checkpoint-dir given relative to the working directory finds its checkpoints: the
    server starts from the latest, without rebuilding the state file."""
    directory = copy_of(saved, tmp_path)
    process, client = start_with_checkpoints(os.path.relpath(directory))
    with process, client:
        assert f"restored checkpoint {SAVED} " in process.output
        assert "WARNING tfps_server.checkpoints" not in process.output
        assert_same_state(state(client), saved.states[SAVED])
        assert [c.id for c in client.list_checkpoints()] == list(range(1, SAVED + 1))
        assert process.terminate() == 0


# A full disk ----------------------------------------------------------------------------------

DISK_BYTES = 512 * 1024
"""Room for a checkpoint of the small variable, not for one with the big one."""


@dataclass
class FullDisk:
    """A server whose checkpoint directory has room for DISK_BYTES only, until :meth:`free`."""

    client: Client
    directory: Path
    free: Callable[[], None]


@pytest.fixture
def tmpfs_disk(tmp_path: Path) -> Iterator[FullDisk]:
    """An in-process server checkpointing into a tmpfs of DISK_BYTES; free() grows it."""
    directory = tmp_path / "tmpfs"
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CI runs as root): {mounted.stderr.strip()}")

    def free() -> None:
        remount = ["mount", "-o", f"remount,size={64 * DISK_BYTES}", str(directory)]
        subprocess.run(remount, check=True)

    registry = Registry()
    running = create_server(
        registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, directory, keep=3)
    )
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=120) as client:
            yield FullDisk(client, directory, free)
    finally:
        running.stop(None)
        subprocess.run(["umount", str(directory)], check=True)


@pytest.fixture
def file_size_limit(tmp_path: Path) -> Iterator[FullDisk]:
    """A ``tfps-server`` process whose files may not grow past DISK_BYTES (RLIMIT_FSIZE, so
    writes fail with EFBIG; Python ignores SIGXFSZ); free() lifts the limit."""
    directory = tmp_path / "ckpts"
    process, client = start_with_checkpoints(directory, "--keep-checkpoints", "3")
    pid = process.process.pid
    unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (DISK_BYTES, unlimited[1]))

    def free() -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)

    with process, client:
        yield FullDisk(client, directory, free)


@pytest.fixture(params=["tmpfs_disk", "file_size_limit"])
def full_disk(request: pytest.FixtureRequest) -> FullDisk:
    """Each way of running out of disk space."""
    disk: FullDisk = request.getfixturevalue(request.param)
    return disk


@pytest.mark.slow
def test_a_save_on_a_full_disk_leaves_the_previous_checkpoint_latest(full_disk: FullDisk) -> None:
    """A save that runs out of space is RESOURCE_EXHAUSTED (NO_SPACE) and leaves no partial
    files and no _temp directory; the previous checkpoint stays the latest and restorable, the
    server keeps serving, and once there is room the next save succeeds."""
    client, directory = full_disk.client, full_disk.directory
    client.create_optimizer("sgd", MOMENTUM)
    client.create_variables({"w": np.ones(16, np.float32)}, optimizer="sgd")
    push_steps(client, 2)
    first = client.save_checkpoint()
    at_first = state(client)
    files = sorted(p.name for p in directory.iterdir())
    client.create_variables({"big": np.ones(DISK_BYTES // 2, np.float32)}, optimizer="sgd")

    for _ in range(2):
        with pytest.raises(ResourceExhaustedError) as refused:
            client.save_checkpoint()
        assert_refused(refused.value, ResourceExhaustedError, "NO_SPACE", ["ckpt-2 not saved"])
        assert sorted(p.name for p in directory.iterdir()) == files
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / first.path)
    assert [c.id for c in client.list_checkpoints()] == [first.id]

    push_steps(client, 1, ("w", "big"))
    assert client.iterations("sgd") == 3
    full_disk.free()
    second = client.save_checkpoint()
    assert second.id == 2 and second.iterations == {"sgd": 3}
    assert_all_bitwise_equal(read_checkpoint(str(directory / second.path)).variables, client.pull())
    assert client.restore_checkpoint(first.id).id == first.id
    assert_same_state(state(client), at_first)


# Retention racing a download ------------------------------------------------------------------


def digests(directory: Path, name: str) -> dict[str, str]:
    """SHA-256 of every file of checkpoint ``name`` in ``directory``."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.glob(f"{name}.*"))
    }


def test_a_download_survives_retention_deleting_its_checkpoint(tmp_path: Path) -> None:
    """A download with its files open completes, verified, with the checkpoint's bytes while
    retention deletes that checkpoint; a later download of it is NOT_FOUND."""
    hooks = BlockingHooks()
    registry = Registry(hooks=hooks)
    directory = tmp_path / "ckpts"
    running = create_server(
        registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, directory, keep=2)
    )
    client = Client(f"127.0.0.1:{running.port}", timeout=120)
    try:
        client.create_optimizer("sgd", MOMENTUM)
        client.create_variables({"w": np.arange(300_000, dtype=np.float32)}, optimizer="sgd")
        push_steps(client, 1)
        first = client.save_checkpoint()
        values = client.pull()
        original = digests(directory, "ckpt-1")
        opened = hooks.hold("download.opened")
        download = in_background(lambda: client.download_checkpoint(first.id, tmp_path / "dl"))
        opened.wait_arrivals(1)

        for _ in range(2):
            push_steps(client, 1)
            client.save_checkpoint()
        assert on_disk(directory) == ["ckpt-2", "ckpt-3"]
        opened.release()

        prefix = download.result()
        assert digests(tmp_path / "dl", "ckpt-1") == original
        assert_all_bitwise_equal(read_checkpoint(prefix).variables, values)
        with pytest.raises(NotFoundError) as gone:
            client.download_checkpoint(first.id, tmp_path / "again")
        assert_refused(gone.value, NotFoundError, "UNKNOWN_CHECKPOINT", ["checkpoint 1 not found"])
    finally:
        hooks.release_all()
        client.close()
        running.stop(None)


@pytest.mark.parametrize("which", ["²", "-1", "1.0", "ckpt-1"])
def test_a_checkpoint_named_oddly_is_not_found(tmp_path: Path, which: str) -> None:
    """--restore with something that is neither an id nor a checkpoint on disk is NOT_FOUND
    (a Unicode digit is not an id), never an unhandled error."""
    with pytest.raises(NotFound):
        Checkpointer(Registry(), tmp_path).find(which)
