"""Cheap checks that a file changed, for what the server re-reads without a restart."""

from __future__ import annotations

import os
from pathlib import Path

Stamp = tuple[int, int, int, int, int] | None
"""What identifies a file's content cheaply; None for a file that cannot be stat'ed."""


def stamp(path: str | Path) -> Stamp:
    """Returns the file's device, inode, size and modification and change times (ns).

    A replaced file (a new inode, as a Kubernetes Secret update's symlink swap makes),
    a rewrite (size or mtime) and ``cp -p`` (ctime) all give another stamp.
    """
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )
