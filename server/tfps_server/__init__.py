"""tfps-server: a parameter server whose updates are tf_keras's own OptimizerV2 updates."""

import os

# Before TensorFlow loads: keep its C++ start-up chatter out of the server's log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfps_server.app import RunningServer, create_server
from tfps_server.push import Pusher
from tfps_server.registry import Registry

__all__ = ["Pusher", "Registry", "RunningServer", "create_server"]
