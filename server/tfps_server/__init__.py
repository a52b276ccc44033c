"""tfps-server: a parameter server whose updates are tf_keras's own OptimizerV2 updates.

The public names load TensorFlow, so they are imported when first used: the
command line (``tfps_server.cli``) answers ``--help`` and refuses a taken port
without loading it.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from tfps_client.version import installed_version

# Before TensorFlow loads: keep its C++ chatter out of the log of a program that embeds the
# server (tfps-server sets the variable from --log-level instead).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if TYPE_CHECKING:
    from tfps_server.app import RunningServer, create_server
    from tfps_server.push import Pusher
    from tfps_server.registry import Registry

_PUBLIC = {
    "Pusher": "tfps_server.push",
    "Registry": "tfps_server.registry",
    "RunningServer": "tfps_server.app",
    "create_server": "tfps_server.app",
}

__all__ = ["Pusher", "Registry", "RunningServer", "__version__", "create_server"]

__version__ = installed_version("tfps-server")
"""The installed tfps-server's version."""


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tfps_server' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
