"""tfps-server: a parameter server whose updates are tf_keras's own OptimizerV2 updates."""

import os

# Before TensorFlow loads: keep its C++ start-up chatter out of the server's log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfps_server.server import RunningServer, create_server
from tfps_server.store import Store

__all__ = ["RunningServer", "Store", "create_server"]
