"""Local checkpoint files: a directory's state file written without TensorFlow is the one
TensorFlow reads, and a path that names no checkpoint is a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from tfps_client import checkpoint_files


def _write(prefix: Path) -> None:
    tf.train.Checkpoint(value=tf.Variable(1.0)).write(str(prefix))


def test_the_last_recorded_checkpoint_is_the_latest_tensorflow_sees(tmp_path: Path) -> None:
    for name in ["ckpt-1", "ckpt-2", 'odd "name\\']:
        _write(tmp_path / name)
    checkpoint_files.record_latest(tmp_path, "ckpt-2")
    checkpoint_files.record_latest(tmp_path, 'odd "name\\')
    checkpoint_files.record_latest(tmp_path, "ckpt-1")
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path == str(tmp_path / "ckpt-1")
    assert list(state.all_model_checkpoint_paths) == [
        str(tmp_path / name) for name in ["ckpt-2", 'odd "name\\', "ckpt-1"]
    ]
    assert checkpoint_files.resolve(tmp_path) == tf.train.latest_checkpoint(str(tmp_path))
    assert checkpoint_files.resolve(tmp_path / "ckpt-2") == str(tmp_path / "ckpt-2")
    assert not list(tmp_path.glob("*.partial"))


def test_a_path_naming_no_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing"):
        checkpoint_files.resolve(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="'checkpoint' state file"):
        checkpoint_files.resolve(tmp_path)  # a directory without a state file
    checkpoint_files.record_latest(tmp_path, "ckpt-9")
    with pytest.raises(FileNotFoundError, match=r"names 'ckpt-9', but .*ckpt-9.index"):
        checkpoint_files.resolve(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tfps_client.ckpt_cli", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("tfps-ckpt inspect: no checkpoint at"), result.stderr
    assert "Traceback" not in result.stderr
