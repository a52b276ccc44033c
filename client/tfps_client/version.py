"""The versions of tfps's distributions, as installed."""

from __future__ import annotations

from importlib import metadata


def installed_version(distribution: str) -> str:
    """Returns the installed version of ``distribution`` (``tfps-client``, ``tfps-server``),
    or ``0+unknown`` for a source tree put on ``sys.path`` without installing it."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0+unknown"
