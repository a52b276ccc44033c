"""Graceful shutdown and logs: SIGTERM while pushes are in flight answers all of them,
health reports NOT_SERVING first, new RPCs are refused, the process exits 0; logs are
JSON lines with ``--log-format json``; shutdown hooks run once no RPC runs."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scrape import wait_until

from tfps_client import Client, RetryPolicy, Sync, UnavailableError
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_server import Registry, create_server
from tfps_server.app import SERVICE_NAME
from tfps_server.logs import REDACTED, JsonFormatter, redacted
from tfps_server.snapshot import read_checkpoint

from helpers import LISTENING, ServerProcess, chunk, dense_header, free_port, server_env
from interleave import BlockingHooks, in_background

PUSHES = 4
GRACE_SECONDS = 30.0
GRADIENT = np.ones(64, np.float32)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HeldPushes:
    """Pushes whose request streams stop after their first message until released, so
    that they are in flight on the server for as long as the test wants."""

    def __init__(self, port: int, count: int) -> None:
        self.release = threading.Event()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.ParameterServerStub(self._channel)
        self.futures = [stub.Push.future(self._messages(), timeout=120) for _ in range(count)]

    def _messages(self) -> Iterator[pb.PushRequest]:
        yield pb.PushRequest(gradients=[dense_header("w", GRADIENT)])
        self.release.wait()
        yield pb.PushRequest(chunks=[chunk(0, 0, GRADIENT.tobytes())])

    def results(self) -> list[pb.PushResponse | grpc.RpcError]:
        """Releases the pushes and returns each one's response or error."""
        self.release.set()
        outcomes: list[pb.PushResponse | grpc.RpcError] = []
        for future in self.futures:
            try:
                outcomes.append(future.result(timeout=60))
            except grpc.RpcError as error:
                outcomes.append(error)
        self._channel.close()
        return outcomes


class HealthWatch:
    """Streams the service's health status changes (grpc.health.v1 Watch) into a list."""

    def __init__(self, port: int) -> None:
        self.statuses: list[int] = []
        self.not_serving = threading.Event()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        self._stream = health_pb2_grpc.HealthStub(self._channel).Watch(request)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            for response in self._stream:
                self.statuses.append(response.status)
                if response.status == NOT_SERVING:
                    self.not_serving.set()
        except grpc.RpcError:
            pass  # cancelled by close()

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()
        self._thread.join(10)


def _refused(port: int, timeout: float = 10.0) -> grpc.StatusCode | None:
    """Calls GetIterations on fresh channels until one is refused; returns its code.

    A call that reaches gRPC at the very instant its shutdown begins is CANCELLED by gRPC
    itself; the calls after that are what this looks at.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ParameterServerStub(channel)
            try:
                stub.GetIterations(pb.GetIterationsRequest(optimizer="default"), timeout=5)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    return error.code()
        time.sleep(0.05)
    return None


@dataclass
class ShutdownRun:
    """What happened when a server got SIGTERM with pushes in flight."""

    port: int
    metrics_port: int
    statuses_seen_while_held: list[int] = field(default_factory=list)
    refused_while_held: grpc.StatusCode | None = None
    outcomes: list[pb.PushResponse | grpc.RpcError] = field(default_factory=list)
    exit_code: int | None = None
    seconds_to_exit_after_release: float = 0.0
    output: str = ""


@pytest.fixture(scope="module")
def sigterm_run() -> ShutdownRun:
    """Starts tfps-server (JSON logs), holds pushes in flight, sends SIGTERM, waits for
    NOT_SERVING and a refused RPC, then releases the pushes and waits for the exit."""
    run = ShutdownRun(port=free_port(), metrics_port=free_port())
    args = [
        "--port", str(run.port),
        "--optimizer", json.dumps({"class_name": "SGD", "config": {"learning_rate": 0.5}}),
        "--grace-seconds", str(GRACE_SECONDS),
        "--log-format", "json",
    ]  # fmt: skip
    with ServerProcess(args, server_env(TFPS_METRICS_PORT=str(run.metrics_port))) as process:
        process.wait_for(LISTENING)
        with Client(f"127.0.0.1:{run.port}", timeout=60) as client:
            client.create_variables({"w": np.zeros_like(GRADIENT)})
        watch = HealthWatch(run.port)
        held = HeldPushes(run.port, PUSHES)
        try:
            wait_until(
                run.metrics_port, lambda s: s.value("tfps_rpc_in_flight", method="Push") == PUSHES
            )
            process.process.send_signal(signal.SIGTERM)
            assert watch.not_serving.wait(30), f"no NOT_SERVING:\n{process.output}"
            run.statuses_seen_while_held = list(watch.statuses)
            run.refused_while_held = _refused(run.port)
        finally:
            released = time.monotonic()
            run.outcomes = held.results()
            watch.close()
        run.exit_code = process.wait_exit(GRACE_SECONDS + 30)
        run.seconds_to_exit_after_release = time.monotonic() - released
        run.output = process.output
    return run


def test_in_flight_pushes_are_all_answered(sigterm_run: ShutdownRun) -> None:
    """Every push in flight at SIGTERM completes OK and is applied, in some order."""
    errors = [o for o in sigterm_run.outcomes if isinstance(o, grpc.RpcError)]
    assert not errors, [(e.code(), e.details()) for e in errors]  # type: ignore[attr-defined]
    responses = [o for o in sigterm_run.outcomes if isinstance(o, pb.PushResponse)]
    assert sorted(r.results["default"].iterations for r in responses) == list(range(1, PUSHES + 1))


def test_health_goes_not_serving_first_and_new_rpcs_are_refused(
    sigterm_run: ShutdownRun,
) -> None:
    """While the pushes are still in flight, health has gone SERVING -> NOT_SERVING and a
    new RPC is refused as UNAVAILABLE."""
    assert sigterm_run.statuses_seen_while_held == [SERVING, NOT_SERVING]
    assert sigterm_run.refused_while_held == grpc.StatusCode.UNAVAILABLE


def test_exit_code_zero_without_waiting_out_the_grace(sigterm_run: ShutdownRun) -> None:
    """The process exits 0 as soon as the in-flight RPCs are done, not after the grace."""
    assert sigterm_run.exit_code == 0, sigterm_run.output
    assert sigterm_run.seconds_to_exit_after_release < GRACE_SECONDS / 2


def test_json_log_lines(sigterm_run: ShutdownRun) -> None:
    """With --log-format json every Python log line is one JSON object with timestamp,
    level, logger and message; start-up logs the effective configuration."""
    text_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
    lines = sigterm_run.output.splitlines()
    assert not [line for line in lines if text_line.match(line)]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["timestamp"])
    messages = [entry["message"] for entry in entries]
    (config,) = (e["config"] for e in entries if e["message"] == "effective configuration")
    assert config["port"] == sigterm_run.port
    assert config["metrics_port"] == sigterm_run.metrics_port
    assert config["grace_seconds"] == GRACE_SECONDS
    assert config["log_format"] == "json"
    assert any(m.startswith("tfps-server listening on") for m in messages)
    assert any(m.startswith("received SIGTERM") for m in messages)
    assert messages[-1] == "stopped"


def test_shutdown_hooks_run_after_in_flight_rpcs() -> None:
    """A hook (the place of the final checkpoint) sees every in-flight push already
    applied; a failing hook does not stop the others and is raised at the end."""
    hooks = BlockingHooks()
    running = create_server(Registry(hooks=hooks), "127.0.0.1:0")
    with Client(f"127.0.0.1:{running.port}", timeout=60) as client:
        client.create_optimizer("default", {"class_name": "SGD", "config": {}})
        client.create_variables({"w": np.zeros_like(GRADIENT)})
    seen: list[str] = []

    def failing_hook() -> None:
        seen.append("failing")
        raise OSError("disk full")

    running.add_shutdown_hook(
        lambda: seen.append(f"iterations {running.registry.iterations('default')}")
    )
    running.add_shutdown_hook(failing_hook)
    running.add_shutdown_hook(lambda: seen.append("last"))
    held = HeldPushes(running.port, 2)
    registry = running.registry.metrics.registry
    deadline = time.monotonic() + 30
    while registry.get_sample_value("tfps_rpc_in_flight", {"method": "Push"}) != 2:
        assert time.monotonic() < deadline, "the pushes never arrived"
        time.sleep(0.01)
    draining = hooks.watch("shutdown.draining")
    stopping = in_background(lambda: running.stop(30))
    draining.wait_arrivals(1)
    assert seen == []  # the pushes are still held: no hook may run yet
    assert all(isinstance(o, pb.PushResponse) for o in held.results())
    assert str(stopping.failure()) == "disk full"
    assert seen == ["iterations 2", "failing", "last"]
    running.stop(0)  # a second stop does nothing


def test_json_formatter() -> None:
    """A record becomes one JSON line with its exception and extra fields."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tfps_test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.error("failed %s", "twice", exc_info=True, extra={"optimizer": "adam"})
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "tfps_test.json"
    assert entry["message"] == "failed twice"
    assert entry["optimizer"] == "adam"
    assert "ValueError: boom" in entry["exception"]


def test_secrets_are_redacted() -> None:
    """Settings named like a token, password, secret or key are logged redacted."""
    settings = {
        "auth_token": "t0ps3cret",
        "TLS_KEY": "/etc/tls/key.pem",
        "admin_password": "hunter2",
        "client_secret": None,
        "port": 50051,
        "optimizer": '{"class_name": "SGD"}',
    }
    assert redacted(settings) == {
        "auth_token": REDACTED,
        "TLS_KEY": REDACTED,
        "admin_password": REDACTED,
        "client_secret": None,
        "port": 50051,
        "optimizer": '{"class_name": "SGD"}',
    }


def test_sigterm_answers_a_waiting_sync_step_and_exits_within_the_grace(tmp_path: Path) -> None:
    """SIGTERM while a sync step waits for contributions that can no longer come: the waiting
    push is answered UNAVAILABLE (clients retry it against the restarted server), the process
    exits 0 within the grace period instead of after the step's timeout, and the final
    checkpoint holds nothing of the step, so the retry is applied exactly once."""
    port, metrics_port = free_port(), free_port()
    args = ["--port", str(port), "--grace-seconds", str(GRACE_SECONDS)]
    args += ["--checkpoint-dir", str(tmp_path), "--checkpoint-every-seconds", "0"]
    with ServerProcess(args, server_env(TFPS_METRICS_PORT=str(metrics_port))) as process:
        process.wait_for(LISTENING)
        client = Client(f"127.0.0.1:{port}", timeout=60, retry=RetryPolicy(max_attempts=1))
        sgd = {"class_name": "SGD", "config": {"learning_rate": 1.0}}
        client.create_optimizer("s", sgd, aggregation=Sync(2, timeout=3600))
        client.create_variables({"w": np.zeros_like(GRADIENT)}, optimizer="s")
        push = in_background(
            lambda: client.push({"w": GRADIENT}, worker="w0", step=0, request_id="r")
        )
        wait_until(metrics_port, lambda s: s.value("tfps_rpc_in_flight", method="Push") == 1)
        signalled = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        error = push.failure()
        assert isinstance(error, UnavailableError) and error.reason == "SHUTTING_DOWN", error
        assert process.wait_exit(GRACE_SECONDS * 2) == 0, process.output
        assert time.monotonic() - signalled < GRACE_SECONDS
        client.close()
    final = read_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
    assert [o.iterations for o in final.metadata.optimizers] == [0]
    assert not final.metadata.requests
