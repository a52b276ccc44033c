"""Device placement, checked on logical devices: TensorFlow splits the CPU in two."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tfps_server.devices import default_device, resolve_device
from tfps_server.errors import InvalidArgument
from tfps_server.registry import Registry

PLACEMENT_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    from tfps_client import Client, IndexedSlices
    from tfps_server import Registry, create_server

    running = create_server(Registry("/CPU:1"), "127.0.0.1:0")
    client = Client(f"127.0.0.1:{running.port}")
    client.create_optimizer("opt", {"class_name": "Adam", "config": {}})
    client.create_variables({"w": np.ones((4, 2), np.float32)}, optimizer="opt")
    client.push({"w": IndexedSlices(np.ones((1, 2), np.float32), np.array([3]))})
    registry = running.registry
    managed = registry.current().variable("w")
    optimizer = managed.optimizer.optimizer
    devices = [managed.variable.device, optimizer.iterations.device]
    devices += [optimizer.get_slot(managed.variable, s).device for s in optimizer.get_slot_names()]
    info = client.list_variables()[0]
    print(registry.device, info.device, *devices, sep="\\n")
    running.stop(None)
    """
)


def test_variables_and_slots_live_on_the_chosen_device() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PLACEMENT_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0].endswith("CPU:1")
    assert all(line.endswith("device:CPU:1") for line in lines[1:]), lines


def test_auto_picks_the_first_gpu_else_the_cpu() -> None:
    import tensorflow as tf

    expected = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    assert default_device().endswith(expected)
    assert Registry("auto").device == resolve_device(f"/{expected}")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"device: expected one of .*received '/GPU:7'"):
        Registry("/GPU:7")
