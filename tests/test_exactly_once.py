"""Exactly-once pushes through a proxy that loses responses and duplicates requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import generate_latest

from tfps_client import Client, Outcome, RetryPolicy, UnavailableError
from tfps_client.wire.convert import DenseGradient, OptimizerResult
from tfps_server import Pusher, Registry, RunningServer
from tfps_server import snapshot as snapshots

from fault_proxy import DROP_RESPONSE, DUPLICATE, PASS, FaultProxy

SCHEDULE = (PASS, DUPLICATE, DROP_RESPONSE, DROP_RESPONSE, DUPLICATE)
"""Faults for consecutive Push calls; retries of a lost response count as calls too."""


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[FaultProxy]:
    faulty = FaultProxy(f"127.0.0.1:{server.port}", lambda n: SCHEDULE[n % len(SCHEDULE)])
    yield faulty
    faulty.stop()


def test_every_push_is_applied_exactly_once(server: RunningServer, proxy: FaultProxy) -> None:
    retry = RetryPolicy(max_attempts=10, initial_backoff=0.001, max_backoff=0.01)
    with Client(proxy.address, timeout=30, retry=retry) as client:
        client.create_optimizer("sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
        client.create_variables({"w": np.zeros(3, np.float32)}, optimizer="sgd")
        results = [client.push({"w": np.full(3, i + 1, np.float32)}) for i in range(40)]
    assert proxy.upstream_pushes > proxy.push_calls > 40  # the faults really happened
    assert [r.iterations["sgd"] for r in results] == list(range(1, 41))
    assert all(r.outcomes == {"sgd": Outcome.APPLIED} for r in results)
    direct = Client(f"127.0.0.1:{server.port}")
    assert direct.iterations("sgd") == 40
    np.testing.assert_array_equal(direct.pull(["w"])["w"], np.full(3, -sum(range(1, 41))))


def test_a_caller_supplied_request_id_is_applied_once(client: Client) -> None:
    client.create_optimizer("sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
    client.create_variables({"w": np.zeros(3, np.float32)}, optimizer="sgd")
    first = client.push({"w": np.ones(3, np.float32)}, request_id="job-7/step-1/worker-0")
    again = client.push({"w": np.ones(3, np.float32)}, request_id="job-7/step-1/worker-0")
    assert first.iterations == again.iterations == {"sgd": 1}
    assert again.outcomes == {"sgd": Outcome.APPLIED}
    np.testing.assert_array_equal(client.pull(["w"])["w"], -np.ones(3, np.float32))


def test_without_retries_a_lost_response_surfaces(server: RunningServer) -> None:
    faulty = FaultProxy(f"127.0.0.1:{server.port}", lambda n: DROP_RESPONSE)
    try:
        with Client(faulty.address, retry=RetryPolicy(max_attempts=1)) as client:
            client.create_optimizer("sgd", {"class_name": "SGD", "config": {}})
            client.create_variables({"w": np.zeros(3, np.float32)}, optimizer="sgd")
            with pytest.raises(UnavailableError, match="response dropped"):
                client.push({"w": np.ones(3, np.float32)})
    finally:
        faulty.stop()
    scrape = generate_latest(server.registry.metrics.registry).decode()
    assert 'tfps_pushes_total{optimizer="sgd",outcome="applied"} 1.0' in scrape


def test_a_push_a_checkpoint_caught_half_way_is_completed_not_repeated() -> None:
    """A restored window entry with only some optimizers' results applies only the rest."""
    registry = Registry()
    pusher = Pusher(registry)
    for name in ("a", "b"):
        registry.create_optimizer(name, '{"class_name": "SGD", "config": {"learning_rate": 1.0}}')
        registry.create_variables(name, [(f"w_{name}", np.zeros(3, np.float32))])
    gradients = [DenseGradient(f"w_{name}", np.ones(3, np.float32)) for name in ("a", "b")]
    pusher.push(gradients[:1], request_id="earlier")  # optimizer a is at iterations 1
    snapshot = snapshots.capture(registry)
    # As if the checkpoint was cut while "half" had updated a (recorded) but not yet b.
    half = ("half", {"a": ["applied", 1]}, False)
    metadata = dataclasses.replace(snapshot.metadata, requests=(*snapshot.metadata.requests, half))
    snapshots.restore(registry, snapshot._replace(metadata=metadata))

    results = pusher.push(gradients, request_id="half")
    assert results == {
        "a": OptimizerResult(Outcome.APPLIED, 1),  # recorded before the cut: not applied again
        "b": OptimizerResult(Outcome.APPLIED, 1),  # missing from the cut: applied now
    }
    assert registry.iterations("a") == 1 and registry.iterations("b") == 1
    assert dict(registry.pull(["w_a", "w_b"]))["w_a"].tolist() == [-1.0, -1.0, -1.0]
    assert pusher.push(gradients, request_id="half") == results  # now complete: replayed
    assert registry.iterations("b") == 1
