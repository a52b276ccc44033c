"""Helpers shared by the tfps tests: exact comparisons, state snapshots, local Keras
references, raw protocol messages and ``python -m tfps_server`` subprocesses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np
import tensorflow as tf
import tf_keras

import tfps_client
from tfps_client import Client, IndexedSlices
from tfps_client.errors import from_rpc_error
from tfps_client.wire import codec, tensor_pb2
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
"""Root of the repository."""

STATUS_OF: dict[type[tfps_client.TfpsError], grpc.StatusCode] = {
    tfps_client.NotFoundError: grpc.StatusCode.NOT_FOUND,
    tfps_client.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    tfps_client.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    tfps_client.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    tfps_client.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    tfps_client.InternalError: grpc.StatusCode.INTERNAL,
    tfps_client.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    tfps_client.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    tfps_client.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    tfps_client.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    tfps_client.AbortedError: grpc.StatusCode.ABORTED,
}
"""The gRPC status each error class the tests expect must carry."""

_T = TypeVar("_T")


def free_port() -> int:
    """Returns a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Exact comparisons -----------------------------------------------------------------------------


def assert_bitwise_equal(actual: Any, expected: Any, what: str = "value") -> None:
    """Asserts same dtype, same shape and the same bytes."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.tobytes() != expected.tobytes():
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        raise AssertionError(
            f"{what}: {np.count_nonzero(diff)} of {diff.size} elements differ "
            f"(max abs difference {diff.max()})"
        )


def assert_all_bitwise_equal(
    actual: Mapping[str, Any] | Sequence[Any], expected: Mapping[str, Any] | Sequence[Any]
) -> None:
    """Asserts two dicts (same keys, same order) or lists of arrays are bitwise equal."""
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping)
        assert list(actual) == list(expected)
        for name in expected:
            assert_bitwise_equal(actual[name], expected[name], name)
    else:
        assert len(actual) == len(expected), f"{len(actual)} arrays, expected {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_bitwise_equal(a, e, f"array {index}")


# Server state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """Everything observable about a server's variables and some of its optimizers."""

    values: dict[str, np.ndarray]
    iterations: dict[str, int]
    weights: dict[str, list[np.ndarray]]
    configs: dict[str, dict[str, Any]]
    variables: list[tfps_client.VariableInfo]


def snapshot(client: Client, optimizers: Sequence[str] = ("default",)) -> State:
    """Reads every variable and the named optimizers' iterations, weights and configs."""
    return State(
        values=client.pull(),
        iterations={name: client.iterations(name) for name in optimizers},
        weights={name: client.get_weights(name) for name in optimizers},
        configs={name: client.get_config(name) for name in optimizers},
        variables=client.list_variables(),
    )


def assert_same_state(after: State, before: State) -> None:
    """Asserts that nothing observable changed between two snapshots."""
    assert_all_bitwise_equal(after.values, before.values)
    assert after.iterations == before.iterations
    assert list(after.weights) == list(before.weights)
    for name in before.weights:
        assert_all_bitwise_equal(after.weights[name], before.weights[name])
    assert after.configs == before.configs
    assert after.variables == before.variables


def assert_refused(
    error: tfps_client.TfpsError,
    expected: type[tfps_client.TfpsError],
    reason: str,
    fragments: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Asserts an error's exact class, status code, reason, message fragments and metadata."""
    assert type(error) is expected, f"{type(error).__name__} raised, expected {expected.__name__}"
    assert error.code == STATUS_OF[expected]
    assert error.reason == reason, f"reason {error.reason!r}: {error.message}"
    for fragment in fragments:
        assert fragment in error.message, f"{fragment!r} not in {error.message!r}"
    for key, value in (metadata or {}).items():
        assert error.metadata.get(key) == value, f"metadata {error.metadata} lacks {key}={value!r}"


# Local Keras references ------------------------------------------------------------------------


class OptimizerCase(NamedTuple):
    """One row of the optimizer table: an id and a Keras config."""

    id: str
    class_name: str
    config: dict[str, Any]

    @property
    def serialized(self) -> dict[str, Any]:
        """``{"class_name": ..., "config": ...}``, as Keras serializes an optimizer."""
        return {"class_name": self.class_name, "config": self.config}


def keras_optimizer(config: Mapping[str, Any]) -> tf_keras.optimizers.legacy.Optimizer:
    """Builds a local legacy optimizer from ``{"class_name": ..., "config": {...}}``.

    The way a user would, straight from tf_keras; a serialized schedule is
    deserialized first (Adagrad's own ``from_config`` would not do it).
    """
    kwargs = dict(config.get("config", {}))
    if isinstance(kwargs.get("learning_rate"), Mapping):
        kwargs["learning_rate"] = tf_keras.optimizers.schedules.deserialize(kwargs["learning_rate"])
    classes = {name.lower(): name for name in dir(tf_keras.optimizers.legacy)}
    return getattr(tf_keras.optimizers.legacy, classes[config["class_name"].lower()])(**kwargs)


def tf_gradient(gradient: Any, variable: tf.Variable) -> tf.Tensor | tf.IndexedSlices:
    """A client-side gradient as TensorFlow sees it, cast up to the variable's dtype."""
    if isinstance(gradient, IndexedSlices):
        return tf.IndexedSlices(
            tf.cast(tf.constant(gradient.values), variable.dtype),
            tf.constant(gradient.indices),
            tf.constant(variable.shape.as_list()),
        )
    return tf.cast(tf.constant(gradient), variable.dtype)


class LocalReference:
    """The same variables and optimizer in plain tf_keras, updated by ``apply_gradients``.

    Slots are created for all variables at once, in declaration order, as the
    server does when one ``create_variables`` call declares them.
    """

    def __init__(self, config: Mapping[str, Any], initial: Mapping[str, Any]) -> None:
        self.optimizer = keras_optimizer(config)
        self.variables = {name: tf.Variable(np.asarray(value)) for name, value in initial.items()}
        self.optimizer._create_all_weights(list(self.variables.values()))

    def apply(self, gradients: Mapping[str, Any]) -> None:
        """Applies one push's gradients, as the server does."""
        self.optimizer.apply_gradients(
            [
                (tf_gradient(gradients[name], variable), variable)
                for name, variable in self.variables.items()
                if name in gradients
            ]
        )

    def values(self) -> dict[str, np.ndarray]:
        """The variables' values."""
        return {name: variable.numpy() for name, variable in self.variables.items()}

    def weights(self) -> list[np.ndarray]:
        """The optimizer's weights in Keras order."""
        return list(self.optimizer.get_weights())


# Raw protocol ----------------------------------------------------------------------------------


@contextmanager
def raw_stub(port: int) -> Iterator[pb_grpc.ParameterServerStub]:
    """The generated stub on its own channel, for requests the typed client never sends."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ParameterServerStub(channel)
    finally:
        channel.close()


def call_raw(method: Callable[..., _T], request: Any) -> _T:
    """Calls a stub method, raising the typed client error on failure."""
    try:
        result = method(request, timeout=60)
        return list(result) if isinstance(result, Iterator) else result  # type: ignore[return-value]
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def spec(dtype: int, *shape: int) -> tensor_pb2.TensorSpec:
    """A wire tensor spec."""
    return tensor_pb2.TensorSpec(dtype=dtype, shape=shape)


def chunk(index: int, offset: int, data: bytes) -> tensor_pb2.TensorChunk:
    """A wire tensor chunk."""
    return tensor_pb2.TensorChunk(tensor_index=index, offset=offset, data=data)


def dense_header(name: str, array: np.ndarray) -> pb.GradientHeader:
    """The header of a dense gradient."""
    return pb.GradientHeader(variable=name, dense=tensor_pb2.DenseSpec(tensor=codec.spec_of(array)))


def push_request(
    headers: Sequence[pb.GradientHeader],
    arrays: Sequence[np.ndarray],
    chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
) -> Any:
    """The message stream of a push with the given headers and tensors."""
    return codec.stream_messages(pb.PushRequest, {"gradients": list(headers)}, arrays, chunk_bytes)


# Server subprocesses ---------------------------------------------------------------------------

LISTENING = re.compile(
    r"tfps-server listening on (?P<host>\S+):(?P<port>\d+), device (?P<device>\S+),"
)
"""The startup log line of ``tfps-server``."""


def server_env(**overrides: str) -> dict[str, str]:
    """The environment for a server subprocess: no inherited TFPS_* variables, quiet TensorFlow,
    and no metrics port, so that several servers can run at once."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TFPS_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["TFPS_METRICS_PORT"] = "0"
    env.update(overrides)
    return env


class ServerProcess:
    """``python -m tfps_server ARGS`` (or ``command ARGS``) in a subprocess; its output is
    collected line by line."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = (sys.executable, "-m", "tfps_server"),
    ) -> None:
        self.process = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env if env is not None else server_env()),
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        """Everything the process wrote so far."""
        return "".join(self._lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 180.0) -> re.Match[str]:
        """Waits until a line matches; fails if the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self._lines):
                match = pattern.search(line)
                if match:
                    return match
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"no line matched {pattern.pattern!r} in {timeout} s:\n{self.output}")

    def wait_exit(self, timeout: float = 180.0) -> int:
        """Waits for the process to exit and for its output to be read; returns the exit code.

        A process that does not exit in time is asked for its thread stacks (SIGUSR1),
        which the failure then shows with the rest of its output.
        """
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(2)
            raise AssertionError(f"no exit in {timeout} s:\n{self.output}") from None
        self._reader.join(10)
        return code

    def terminate(self, timeout: float = 120.0) -> int:
        """Sends SIGTERM and returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def start_with_checkpoints(directory: Path | str, *extra: str) -> tuple[ServerProcess, Client]:
    """``tfps-server --checkpoint-dir directory`` without periodic saves (default
    ``--restore latest``), once it listens, and a client of it."""
    port = free_port()
    process = ServerProcess(
        [
            "--port",
            str(port),
            "--checkpoint-dir",
            str(directory),
            "--checkpoint-every-seconds",
            "0",
            *extra,
        ]
    )
    process.wait_for(LISTENING)
    return process, Client(f"127.0.0.1:{port}", timeout=120)
