"""Device placement, checked on logical devices: TensorFlow splits the CPU in two."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tfps_server.devices import canonical, default_device, resolve_device
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
    import json, logging, os, re, tempfile
    from tfps_client import Client, IndexedSlices
    from tfps_client.wire import checkpoint_layout
    from tfps_server import Registry, create_server
    from tfps_server.checkpoints import Checkpointer

    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("tfps_server").addHandler(handler)
    logging.getLogger("tfps_server").setLevel(logging.INFO)
    directory = tempfile.mkdtemp()
    registry = Registry("/cpu:1")
    running = create_server(registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, directory))
    client = Client(f"127.0.0.1:{running.port}")
    client.create_optimizer("opt", {"class_name": "Adam", "config": {}})
    client.create_variables({"w": np.ones((4, 2), np.float32)}, optimizer="opt")
    client.push({"w": IndexedSlices(np.ones((1, 2), np.float32), np.array([3]))})
    managed = registry.current().variable("w")
    optimizer = managed.optimizer.optimizer
    devices = [managed.variable.device, optimizer.iterations.device]
    devices += [optimizer.get_slot(managed.variable, s).device for s in optimizer.get_slot_names()]
    info = client.list_variables()[0]
    saved = client.save_checkpoint()
    metadata = checkpoint_layout.CheckpointMetadata.from_json(
        tf.train.load_variable(os.path.join(directory, saved.path), checkpoint_layout.METADATA_KEY)
    )
    (created,) = (re.search(r"variables on (\\S+)", m) for m in logged if "variables on" in m)
    shown = {
        "server": registry.device,
        "list_variables": info.device,
        "list_checkpoints": saved.variables[0].device,
        "checkpoint metadata": metadata.device,
        "log": created[1],
    }
    print(json.dumps(shown))
    print(*devices, sep="\\n")
    running.stop(None)
    """
)


def test_variables_and_slots_live_on_the_chosen_device() -> None:
    """Variables, slots and iterations are placed on the second logical CPU, and the server
    names it one way everywhere it shows it: ``/device:CPU:1`` (asked for as ``/cpu:1``)."""
    result = subprocess.run(
        [sys.executable, "-c", PLACEMENT_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    shown, *placed = result.stdout.splitlines()
    assert set(json.loads(shown).values()) == {"/device:CPU:1"}, shown
    assert all(line.endswith("device:CPU:1") for line in placed), placed


def test_auto_picks_the_first_gpu_else_the_cpu() -> None:
    import tensorflow as tf

    expected = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    assert default_device().endswith(expected)
    assert Registry("auto").device == resolve_device(f"/{expected}")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"device: expected one of .*received '/GPU:7'"):
        Registry("/GPU:7")


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("/job:localhost/replica:0/task:0/device:CPU:0", "/device:CPU:0"),
        ("/cpu:1", "/device:CPU:1"),
        ("GPU:2", "/device:GPU:2"),
        ("/device:gpu:0", "/device:GPU:0"),
        ("", ""),
    ],
)
def test_one_spelling_of_a_device(spelling: str, expected: str) -> None:
    assert canonical(spelling) == expected
