"""Checkpoints on a local disk: finding one by its prefix or its directory, and recording a
downloaded one as its directory's latest, without TensorFlow.

A TensorFlow checkpoint is a prefix (``dir/ckpt-3``) naming ``ckpt-3.index`` and
``ckpt-3.data-*`` files; its directory's ``checkpoint`` state file (a text
``CheckpointState``) names the latest, which ``tf.train.latest_checkpoint(dir)`` reads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

STATE_FILE = "checkpoint"
"""The state file of a checkpoint directory."""

_PATHS = re.compile(r'^all_model_checkpoint_paths:\s*"((?:[^"\\]|\\.)*)"\s*$', re.M)
_LATEST = re.compile(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"\s*$', re.M)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquoted(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def shard_directory(shard: int, shards: int) -> str:
    """The subdirectory a sharded client downloads shard ``shard``'s part of a logical
    checkpoint into."""
    return f"shard-{shard}-of-{shards}"


def shard_prefixes(path: str | Path) -> list[str] | None:
    """The checkpoint prefixes of a sharded client's logical checkpoint downloaded into the
    directory ``path`` (its ``shard-<i>-of-<n>`` subdirectories, in shard order); None when
    ``path`` holds none.

    Raises:
        FileNotFoundError: a shard's subdirectory is missing or holds no checkpoint.
    """
    given = Path(path)
    found = sorted(given.glob("shard-*-of-*")) if given.is_dir() else []
    if not found:
        return None
    shards = int(found[0].name.rsplit("-", 1)[1])
    return [resolve(given / shard_directory(shard, shards)) for shard in range(shards)]


def record_latest(directory: str | Path, name: str) -> None:
    """Makes checkpoint ``name`` (a prefix relative to ``directory``) the directory's latest
    in its state file, keeping the others it lists. Written to a temporary file and renamed,
    so a reader sees the old state file or the new one."""
    state = Path(directory) / STATE_FILE
    listed = _PATHS.findall(state.read_text()) if state.is_file() else []
    paths = [_unquoted(path) for path in listed if _unquoted(path) != name] + [name]
    lines = [f"model_checkpoint_path: {_quoted(name)}"]
    lines += [f"all_model_checkpoint_paths: {_quoted(path)}" for path in paths]
    partial = state.with_name(f"{STATE_FILE}.partial")
    partial.write_text("\n".join(lines) + "\n")
    os.replace(partial, state)


def resolve(path: str | Path) -> str:
    """Returns the checkpoint prefix ``path`` names: ``path`` itself when it is a prefix, or
    the latest checkpoint of the directory ``path``.

    Raises:
        FileNotFoundError: ``path`` is neither, naming what was looked for.
    """
    given = Path(path)
    if Path(f"{given}.index").is_file():
        return str(given)
    state = given / STATE_FILE
    if given.is_dir() and state.is_file():
        latest = _LATEST.search(state.read_text())
        if latest is not None:
            prefix = given / _unquoted(latest[1])
            if Path(f"{prefix}.index").is_file():
                return str(prefix)
            raise FileNotFoundError(
                f"{path}: its {STATE_FILE} file names {_unquoted(latest[1])!r}, "
                f"but {prefix}.index does not exist"
            )
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a checkpoint prefix (such as .../ckpt-3, beside "
        f"its .index and .data files) or a directory with a {STATE_FILE!r} state file"
    )
