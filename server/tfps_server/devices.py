"""Which TensorFlow device holds the state, and the one spelling of device names.

Every device name the server shows (its logs, ``list_variables``, checkpoint metadata,
metrics labels) is :func:`canonical`: ``/device:<TYPE>:<index>``, such as
``/device:CPU:0`` or ``/device:GPU:1``, the name TensorFlow gives a logical device.
"""

from __future__ import annotations

import tensorflow as tf

from tfps_client.wire.reasons import Reason
from tfps_server.errors import InvalidArgument


def canonical(device: str) -> str:
    """Returns ``/device:<TYPE>:<index>`` for any spelling TensorFlow takes of one device.

    ``CPU:1``, ``/cpu:1``, ``/device:CPU:1`` and a variable's
    ``/job:localhost/replica:0/task:0/device:CPU:1`` all become ``/device:CPU:1``;
    job, replica and task are dropped (a server is one task), a missing index is 0.
    A name without a device type (``""``) stays as it is.

    Raises:
        ValueError: TensorFlow cannot parse the name.
    """
    spec = tf.DeviceSpec.from_string(device)
    if not spec.device_type:
        return device
    return f"/device:{spec.device_type.upper()}:{spec.device_index or 0}"


def default_device() -> str:
    """Returns the first GPU if TensorFlow sees one, else the CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return canonical(gpus[0].name) if gpus else "/device:CPU:0"


def resolve_device(device: str | None) -> str:
    """Returns the canonical name of a logical device, or of the default one for
    ``None``/``"auto"``.

    Raises:
        InvalidArgument: TensorFlow has no such device.
    """
    if not device or device == "auto":
        return default_device()
    available = [canonical(d.name) for d in tf.config.list_logical_devices()]
    try:
        wanted: str | None = canonical(device)
    except ValueError:
        wanted = None
    if wanted is None or wanted not in available:
        raise InvalidArgument(
            f"device: expected one of {available}, received {device!r}", Reason.INVALID_CONFIG
        )
    return wanted
