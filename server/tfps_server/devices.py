"""Which TensorFlow device holds the state."""

from __future__ import annotations

import tensorflow as tf

from tfps_client.wire.reasons import Reason
from tfps_server.errors import InvalidArgument


def default_device() -> str:
    """Returns the first GPU if TensorFlow sees one, else the CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "/device:CPU:0"


def resolve_device(device: str | None) -> str:
    """Returns the full name of a logical device, or the default one for ``None``/``"auto"``.

    Raises:
        InvalidArgument: TensorFlow has no such device.
    """
    if device in (None, "", "auto"):
        device = default_device()
    wanted = tf.DeviceSpec.from_string(device)
    for logical in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(logical.name)
        if (spec.device_type or "").upper() == (wanted.device_type or "").upper() and (
            spec.device_index == (wanted.device_index or 0)
        ):
            return logical.name
    available = [d.name for d in tf.config.list_logical_devices()]
    raise InvalidArgument(
        f"device: expected one of {available}, received {device!r}", Reason.INVALID_CONFIG
    )
