"""The regression corpus: one file per case, replayed by ``tests/test_fuzz.py``.

A file holds length-prefixed records (a 4-byte big-endian length, then the bytes): the
method's short name in UTF-8, then each request message as sent. It is named
``METHOD-<sha8>.bin`` after its method and the first 8 hex digits of its SHA-256, so that
a case saved twice is one file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from fuzz.cases import Case

DIRECTORY = Path(__file__).resolve().parent / "corpus"
"""Where the committed corpus lives."""

_LENGTH_BYTES = 4


def encode(case: Case) -> bytes:
    """The file contents of a case."""
    records = [case.method.encode(), *case.messages]
    return b"".join(len(r).to_bytes(_LENGTH_BYTES, "big") + r for r in records)


def decode(data: bytes) -> Case:
    """The case of a file's contents.

    Raises:
        ValueError: the bytes are not a sequence of records naming a method first.
    """
    records = []
    position = 0
    while position < len(data):
        start = position + _LENGTH_BYTES
        end = start + int.from_bytes(data[position:start], "big")
        if end > len(data):
            raise ValueError(f"a record at byte {position} runs past the end ({len(data)} bytes)")
        records.append(data[start:end])
        position = end
    if not records:
        raise ValueError("expected a method name record, received no records")
    return Case(records[0].decode(), tuple(records[1:]))


def file_name(case: Case) -> str:
    """The name a case's file has: ``METHOD-<sha8>.bin``."""
    return f"{case.method}-{hashlib.sha256(encode(case)).hexdigest()[:8]}.bin"


def write(case: Case, path: Path) -> None:
    """Writes a case into a file."""
    path.write_bytes(encode(case))


def save(case: Case, directory: Path = DIRECTORY) -> Path:
    """Writes a case into ``directory`` (once: its name is its digest) and returns its path."""
    path = directory / file_name(case)
    directory.mkdir(parents=True, exist_ok=True)
    write(case, path)
    return path


def load(directory: Path = DIRECTORY) -> Iterator[tuple[str, Case]]:
    """Every case in ``directory``, with its file's stem, in name order."""
    for path in sorted(directory.glob("*.bin")):
        yield path.stem, decode(path.read_bytes())
