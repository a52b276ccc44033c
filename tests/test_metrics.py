"""Prometheus metrics over HTTP: RPCs counted by method and status code exactly as they
happened (aborts, streams and cancellations included), and state read at scrape time."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from scrape import delta, labels, scrape, wait_until

import tfps_server
from tfps_client import Client, InvalidArgumentError, NotFoundError
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_server import Registry, RunningServer, create_server
from tfps_server.cli import build_parser

SGD = {"class_name": "SGD", "config": {"learning_rate": 0.25}}
ADAM_DECAYING = {
    "class_name": "Adam",
    "config": {
        "learning_rate": {
            "class_name": "ExponentialDecay",
            "config": {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5},
        }
    },
}
W = np.arange(12, dtype=np.float32).reshape(3, 4)
E = np.zeros((5, 2), np.float64)


def _serve(variable_labels: bool = False) -> RunningServer:
    return create_server(
        Registry(),
        "127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        metrics_variable_labels=variable_labels,
    )


@pytest.fixture
def served() -> Iterator[tuple[RunningServer, Client]]:
    """A server serving /metrics on a free port, and a client."""
    running = _serve()
    assert running.metrics_port is not None
    with Client(f"127.0.0.1:{running.port}", timeout=60) as client:
        yield running, client
    running.stop(None)


def test_rpcs_counted_by_method_and_code_exactly(served: tuple[RunningServer, Client]) -> None:
    """Every RPC is counted once under its method and final status; aborts (unary,
    client-streaming and server-streaming) under the code the servicer aborted with."""
    running, client = served
    port = running.metrics_port
    assert port is not None
    before = scrape(port)
    client.create_optimizer("adam", ADAM_DECAYING)
    client.create_variables({"w": W, "e": E}, optimizer="adam")
    for _ in range(3):
        client.push({"w": np.ones_like(W)})
    client.pull(["w"])
    client.pull(["w", "e"])
    client.pull_rows("e", [0, 2])
    client.get_slot("w", "m")
    with pytest.raises(NotFoundError):
        client.pull(["missing"])
    with pytest.raises(NotFoundError):
        client.get_slot("w", "nope")
    with pytest.raises(InvalidArgumentError):
        client.push({"w": np.ones(9, np.float32)})
    with pytest.raises(InvalidArgumentError):
        client.create_optimizer("bad", {"class_name": "NoSuchOptimizer", "config": {}})
    # gRPC sends an abort's status before the handler's end, where the RPC is counted
    after = wait_until(
        port, lambda s: sum(delta(s, before, "tfps_rpc_requests_total").values()) >= 13
    )

    assert delta(after, before, "tfps_rpc_requests_total") == {
        labels(method="CreateOptimizer", code="OK"): 1,
        labels(method="CreateOptimizer", code="INVALID_ARGUMENT"): 1,
        labels(method="CreateVariables", code="OK"): 1,
        labels(method="Push", code="OK"): 3,
        labels(method="Push", code="INVALID_ARGUMENT"): 1,
        labels(method="Pull", code="OK"): 2,
        labels(method="Pull", code="NOT_FOUND"): 1,
        labels(method="PullRows", code="OK"): 1,
        labels(method="GetSlot", code="OK"): 1,
        labels(method="GetSlot", code="NOT_FOUND"): 1,
    }
    per_method = {"CreateOptimizer": 2, "CreateVariables": 1, "Push": 4, "Pull": 3}
    per_method |= {"PullRows": 1, "GetSlot": 2}
    assert delta(after, before, "tfps_rpc_duration_seconds_count") == {
        labels(method=m): n for m, n in per_method.items()
    }
    for method, count in per_method.items():
        inf = after.value("tfps_rpc_duration_seconds_bucket", method=method, le="+Inf")
        assert inf == count
        assert after.value("tfps_rpc_duration_seconds_sum", method=method) > 0
    assert set(after.series("tfps_rpc_in_flight").values()) == {0.0}

    sent = delta(after, before, "tfps_rpc_request_bytes_total")
    assert sent[labels(method="Push")] >= 3 * W.nbytes + 9 * 4
    assert sent[labels(method="CreateVariables")] >= W.nbytes + E.nbytes
    received = delta(after, before, "tfps_rpc_response_bytes_total")
    assert received[labels(method="Pull")] >= 2 * W.nbytes + E.nbytes
    assert received[labels(method="PullRows")] >= 2 * E[0].nbytes


def test_every_method_starts_at_zero(served: tuple[RunningServer, Client]) -> None:
    """Before any RPC, each method has its OK counter, in-flight gauge and histogram at 0,
    so that rate() sees the first RPC."""
    running, _ = served
    assert running.metrics_port is not None
    fresh = scrape(running.metrics_port)
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["ParameterServer"].methods}
    assert {dict(k)["method"] for k in fresh.series("tfps_rpc_requests_total")} == methods
    assert set(fresh.series("tfps_rpc_requests_total").values()) == {0.0}
    assert {dict(k)["method"] for k in fresh.series("tfps_rpc_in_flight")} == methods
    assert {dict(k)["method"] for k in fresh.series("tfps_rpc_duration_seconds_count")} == methods
    assert fresh.series("tfps_build_info") == {labels(version=tfps_server.__version__): 1.0}
    assert "_created" not in fresh.text  # prometheus-client's creation-time series are off


def test_cancelled_stream_is_counted_and_leaves_flight(
    served: tuple[RunningServer, Client],
) -> None:
    """A client that cancels a server stream after its first message leaves no RPC in
    flight and counts as CANCELLED."""
    running, client = served
    port = running.metrics_port
    assert port is not None
    client.create_optimizer("sgd", SGD)
    client.create_variables({"big": np.zeros(4 << 20, np.float32)}, optimizer="sgd")  # 16 MiB
    # Without BDP probing the flow-control window stays small: the server must wait for
    # the client to read, so the stream is still open when the client cancels it.
    with grpc.insecure_channel(f"127.0.0.1:{running.port}", [("grpc.http2.bdp_probe", 0)]) as ch:
        responses = pb_grpc.ParameterServerStub(ch).Pull(pb.PullRequest(names=["big"]), timeout=60)
        next(responses)
        assert scrape(port).value("tfps_rpc_in_flight", method="Pull") == 1
        responses.cancel()
    after = wait_until(
        port,
        lambda s: (
            s.value("tfps_rpc_requests_total", method="Pull", code="CANCELLED") == 1
            and s.value("tfps_rpc_in_flight", method="Pull") == 0
        ),
    )
    assert after.value("tfps_rpc_requests_total", method="Pull", code="OK") == 0


def test_state_gauges_read_at_scrape_time(served: tuple[RunningServer, Client]) -> None:
    """Iterations and the learning rate per optimizer (a schedule's value at the current
    iterations), and variables and bytes held per device."""
    running, client = served
    port = running.metrics_port
    assert port is not None
    client.create_optimizer("adam", ADAM_DECAYING)
    client.create_optimizer("idle", SGD)
    client.create_variables({"w": W, "e": E}, optimizer="adam")
    for _ in range(3):
        client.push({"w": np.ones_like(W), "e": np.ones_like(E)})
    state = scrape(port)
    device = running.registry.device

    assert state.series("tfps_optimizer_iterations") == {
        labels(optimizer="adam"): 3,
        labels(optimizer="idle"): 0,
    }
    # ExponentialDecay at step 3: 0.1 * 0.5 ** (3 / 2), computed in float32 by Keras.
    assert state.value("tfps_learning_rate", optimizer="adam") == pytest.approx(
        0.1 * 0.5**1.5, rel=1e-6
    )
    assert state.value("tfps_learning_rate", optimizer="idle") == 0.25
    assert state.series("tfps_variables") == {labels(device=device): 2}
    held = W.nbytes + E.nbytes
    assert state.series("tfps_variable_bytes") == {labels(device=device): held}
    assert state.series("tfps_slot_bytes") == {labels(device=device): 2 * held}  # Adam: m, v
    if "GPU" in device:
        assert state.value("tfps_device_memory_bytes", device=device) >= held
    else:  # TensorFlow keeps no allocator statistics for the CPU
        assert state.series("tfps_device_memory_bytes") == {}

    client.set_hyperparameter("idle", "learning_rate", 0.5)
    client.push({"w": np.ones_like(W)})
    later = scrape(port)
    assert later.value("tfps_learning_rate", optimizer="idle") == 0.5
    assert later.value("tfps_optimizer_iterations", optimizer="adam") == 4
    assert later.value("tfps_learning_rate", optimizer="adam") == pytest.approx(
        0.1 * 0.5**2, rel=1e-6
    )


def test_variable_labels_are_opt_in() -> None:
    """With variable labels on, byte gauges have one series per variable."""
    running = _serve(variable_labels=True)
    try:
        assert running.metrics_port is not None
        with Client(f"127.0.0.1:{running.port}", timeout=60) as client:
            client.create_optimizer("adam", ADAM_DECAYING)
            client.create_variables({"w": W, "e": E}, optimizer="adam")
        state = scrape(running.metrics_port)
    finally:
        running.stop(None)
    device = running.registry.device
    assert state.series("tfps_variable_bytes") == {
        labels(device=device, variable="w"): W.nbytes,
        labels(device=device, variable="e"): E.nbytes,
    }
    assert state.series("tfps_slot_bytes") == {
        labels(device=device, variable="w"): 2 * W.nbytes,
        labels(device=device, variable="e"): 2 * E.nbytes,
    }


def test_metrics_endpoint_closes_with_the_server() -> None:
    """stop() releases the metrics port; without an address nothing is served."""
    running = _serve()
    port = running.metrics_port
    assert port is not None
    running.stop(None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # free again
    quiet = create_server(Registry(), "127.0.0.1:0")
    try:
        assert quiet.metrics_port is None
    finally:
        quiet.stop(None)


def test_busy_metrics_port_is_a_clear_error() -> None:
    """A metrics port already in use fails server creation, naming the address."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(RuntimeError, match=f"could not serve metrics on {address}"):
            create_server(Registry(), "127.0.0.1:0", metrics_address=address)


def test_metrics_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--metrics-port defaults to 9464 (0 disables); every metrics flag reads TFPS_*."""
    defaults = build_parser().parse_args([])
    assert (defaults.metrics_port, defaults.metrics_host) == (9464, None)
    assert defaults.metrics_variable_labels is False
    assert build_parser().parse_args(["--metrics-variable-labels"]).metrics_variable_labels
    monkeypatch.setenv("TFPS_METRICS_PORT", "0")
    monkeypatch.setenv("TFPS_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("TFPS_METRICS_VARIABLE_LABELS", "true")
    from_env = build_parser().parse_args([])
    assert (from_env.metrics_port, from_env.metrics_host) == (0, "0.0.0.0")
    assert from_env.metrics_variable_labels is True
    off = build_parser().parse_args(["--metrics-variable-labels", "false"])
    assert off.metrics_variable_labels is False
    monkeypatch.setenv("TFPS_METRICS_VARIABLE_LABELS", "maybe")
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
