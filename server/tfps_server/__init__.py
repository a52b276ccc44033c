"""tfps-server: a parameter server whose updates are tf_keras's own OptimizerV2 updates."""

from tfps_server.server import RunningServer, create_server
from tfps_server.store import Store

__all__ = ["RunningServer", "Store", "create_server"]
