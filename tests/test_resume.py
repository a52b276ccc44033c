"""Durability with real processes: kill -9, restart, and continue exactly."""

from __future__ import annotations

import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tfps_client import Client, IndexedSlices, TfpsError
from tfps_server.snapshot import read_checkpoint

from helpers import (
    LocalReference,
    ServerProcess,
    State,
    assert_all_bitwise_equal,
    assert_same_state,
    free_port,
    snapshot,
    start_with_checkpoints,
)

LISTENING = re.compile(r"listening on \S+:(\d+)")
SCHEDULE = {
    "class_name": "ExponentialDecay",
    "config": {"initial_learning_rate": 0.05, "decay_steps": 2, "decay_rate": 0.6},
}
OPTIMIZERS = {
    "adam": {"class_name": "Adam", "config": {"learning_rate": SCHEDULE}},
    "ftrl": {
        "class_name": "Ftrl",
        "config": {"learning_rate": 0.1, "l1_regularization_strength": 0.01},
    },
}
INITIAL = {
    "adam": {
        "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
        "emb": np.linspace(0, 1, 24, dtype=np.float32).reshape(8, 3),
    },
    "ftrl": {"f": np.linspace(1, 2, 6, dtype=np.float32)},
}


def gradients(step: int) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "emb": IndexedSlices(rng.standard_normal((3, 3)).astype(np.float32), rng.integers(0, 8, 3)),
        "f": rng.standard_normal(6).astype(np.float32),
    }


def declare(client: Client) -> list[bool]:
    created = [client.create_optimizer(name, config) for name, config in OPTIMIZERS.items()]
    for name, variables in INITIAL.items():
        client.create_variables(variables, optimizer=name)
    return created


def server_state(client: Client) -> State:
    return snapshot(client, sorted(OPTIMIZERS))


def local_state(steps: int) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Values and optimizer weights of the same training in plain tf_keras, uninterrupted."""
    references = {name: LocalReference(OPTIMIZERS[name], INITIAL[name]) for name in OPTIMIZERS}
    for step in range(steps):
        for reference in references.values():
            reference.apply(gradients(step))
    values = {k: v for r in references.values() for k, v in r.values().items()}
    return values, {name: references[name].weights() for name in sorted(references)}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_then_restart_resumes_bitwise(tmp_path: Path) -> None:
    k, m = 4, 3
    process, client = start_with_checkpoints(tmp_path)
    with process:
        assert declare(client) == [True, True]
        for step in range(k):
            client.push(gradients(step))
        at_checkpoint = server_state(client)
        client.save_checkpoint()
        for step in range(k, k + m):
            client.push(gradients(step))
        process.process.kill()
        process.wait_exit()
    client.close()

    process, client = start_with_checkpoints(tmp_path)
    with process:
        assert "restored checkpoint 1" in process.output
        assert_same_state(server_state(client), at_checkpoint)
        assert declare(client) == [False, False]  # workers re-declare: a no-op after restore
        for step in range(k, k + m):
            client.push(gradients(step))
        values, weights = local_state(k + m)
        final = server_state(client)
        assert_all_bitwise_equal({k: final.values[k] for k in values}, values)
        assert list(final.weights) == list(weights)
        for name, expected in weights.items():
            assert_all_bitwise_equal(final.weights[name], expected)
        assert client.iterations("adam") == client.iterations("ftrl") == k + m
        assert process.terminate() == 0
    client.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_during_saves_always_leaves_a_loadable_latest(tmp_path: Path) -> None:
    rng = random.Random(5)
    for round_number in range(3):
        process, client = start_with_checkpoints(
            tmp_path, "--checkpoint-every-seconds", "0.01", "--keep-checkpoints", "3"
        )
        with process:
            if round_number == 0:
                client.create_optimizer("sgd", {"class_name": "SGD", "config": {"momentum": 0.9}})
                client.create_variables(
                    {"big": np.zeros((2048, 2048), np.float32)}, optimizer="sgd"
                )
            stop = threading.Event()

            def pusher(connected: Client = client, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    try:
                        connected.push({"big": np.ones((2048, 2048), np.float32)})
                    except TfpsError:
                        return

            thread = threading.Thread(target=pusher)
            thread.start()
            time.sleep(rng.uniform(0.5, 1.5))
            process.process.kill()
            process.wait_exit()
            stop.set()
            thread.join()
        client.close()
        latest = tf.train.latest_checkpoint(str(tmp_path))
        assert latest is not None
        snapshot = read_checkpoint(latest)  # raises DataLoss if half-written
        saved = snapshot.metadata.optimizers[0].iterations
        assert snapshot.variables["big"].shape == (2048, 2048)
    process, client = start_with_checkpoints(tmp_path)
    with process:
        assert client.iterations("sgd") == saved
        assert process.terminate() == 0
    client.close()


def test_sigterm_writes_a_final_checkpoint_and_steps_trigger_saves(tmp_path: Path) -> None:
    process, client = start_with_checkpoints(tmp_path, "--checkpoint-every-steps", "5")
    with process:
        declare(client)
        for step in range(6):  # 12 iterations in all: two optimizers per push
            client.push(gradients(step))
            time.sleep(0.1)
        periodic = client.list_checkpoints()
        assert periodic and all(sum(c.iterations.values()) >= 5 for c in periodic)
        assert process.terminate() == 0
    client.close()
    final = read_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
    assert {o.name: o.iterations for o in final.metadata.optimizers} == {"adam": 6, "ftrl": 6}


def test_health_is_not_serving_until_the_restore_finished(tmp_path: Path) -> None:
    process, client = start_with_checkpoints(tmp_path)
    with process:
        client.create_optimizer("sgd", {"class_name": "SGD", "config": {}})
        client.create_variables({"big": np.ones((4096, 4096), np.float32)}, optimizer="sgd")
        client.save_checkpoint()
        assert process.terminate() == 0
    client.close()

    port = free_port()
    with ServerProcess(["--port", str(port), "--checkpoint-dir", str(tmp_path)]) as restarted:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        seen = []
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                time.sleep(0.01)
                continue
            seen.append(status)
            if status == health_pb2.HealthCheckResponse.SERVING:
                assert "restored checkpoint" in restarted.output
                break
        with Client(f"127.0.0.1:{port}") as restored:
            assert restored.list_variables()[0].shape == (4096, 4096)
        channel.close()


def test_a_corrupted_latest_checkpoint_stops_the_start(tmp_path: Path) -> None:
    process, client = start_with_checkpoints(tmp_path)
    with process:
        declare(client)
        client.save_checkpoint()
        assert process.terminate() == 0  # the final save is checkpoint 2
    client.close()
    latest = Path(tf.train.latest_checkpoint(str(tmp_path)))
    data = next(latest.parent.glob(f"{latest.name}.data-*"))
    data.write_bytes(data.read_bytes()[:-10])
    with ServerProcess(["--port", str(free_port()), "--checkpoint-dir", str(tmp_path)]) as broken:
        assert broken.wait_exit() == 2
        assert re.search(r"cannot start: checkpoint '.*ckpt-2' is unreadable", broken.output)
