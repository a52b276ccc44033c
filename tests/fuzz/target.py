"""The live server the cases go to: in-process, planted with the seed, read through the
real client, reset to the seed by restoring its checkpoint."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tfps_client import Client, RetryPolicy, TfpsError, VariableInfo
from tfps_client.transport import channel_options
from tfps_client.wire.reasons import decode_detail
from tfps_server import Registry, RunningServer, create_server
from tfps_server.checkpoints import Checkpointer

from fuzz import seed
from fuzz.cases import METHODS, SERVICE, Case

CALL_TIMEOUT = 30.0
"""Seconds a call may take before it counts as a hang."""

STOP_TIMEOUT = 30.0
"""Seconds a server being replaced gets to stop; one that hangs is left behind."""

KEEP = 5
"""Checkpoints the server keeps."""

UNREADABLE = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
"""Codes of reads that say the server is stuck or gone, rather than what it holds."""

Bits = tuple[str, tuple[int, ...], bytes]
"""An array's dtype, shape and bytes: equal exactly when the arrays are bitwise equal."""


def _bits(array: np.ndarray) -> Bits:
    return array.dtype.name, array.shape, array.tobytes()


@dataclass(frozen=True)
class Answer:
    """How a call ended: its status code, details and the reason its error detail carries."""

    code: grpc.StatusCode
    details: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Fingerprint:
    """Everything a client can observe of the state, comparable exactly.

    Attributes:
        variables: every variable's description, in creation order.
        values: every variable's value.
        optimizers: by name, sorted: the config, options and weights (iterations
            first) of one that exists, or how reading its config was refused.
        checkpoints: the ids of the retained checkpoints.
    """

    variables: tuple[VariableInfo, ...]
    values: tuple[tuple[str, Bits], ...]
    optimizers: tuple[tuple[str, tuple[Any, ...]], ...]
    checkpoints: tuple[int, ...]

    def model(self) -> Fingerprint:
        """The variables and optimizers, without the checkpoints."""
        return replace(self, checkpoints=())

    def differences(self, other: Fingerprint) -> list[str]:
        """What differs from ``other``: parts, and the names in them."""
        found = []
        for part in fields(self):
            mine, theirs = getattr(self, part.name), getattr(other, part.name)
            if mine == theirs:
                continue
            if part.name in ("values", "optimizers"):
                changed = sorted(set(mine) ^ set(theirs))
                found.append(f"{part.name} of {sorted({name for name, _ in changed})}")
            else:
                found.append(f"{part.name}: {theirs} -> {mine}")
        return found


class Target:
    """A tfps server in this process, planted with the seed and a checkpoint of it.

    Attributes:
        seed: the seed as the server describes it.
        optimizers: the optimizer names every fingerprint reads, the seed's (the oracle
            adds the name a CreateOptimizer case asks for).
        seed_fingerprint: the state right after planting.
        baseline: the state now, as the oracle last saw it.
    """

    def __init__(self) -> None:
        self.optimizers = frozenset(seed.OPTIMIZERS)
        self._start()

    def _start(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="tfps-fuzz-")
        registry = Registry()
        checkpointer = Checkpointer(registry, self._directory.name, keep=KEEP)
        self._server: RunningServer = create_server(
            registry, "127.0.0.1:0", checkpointer=checkpointer
        )
        address = f"127.0.0.1:{self._server.port}"
        self._channel = grpc.insecure_channel(address, options=channel_options())
        self._client = Client(address, timeout=CALL_TIMEOUT, retry=RetryPolicy(max_attempts=1))
        self.seed = seed.plant(self._client)
        self._client.save_checkpoint()
        self.seed_fingerprint = self.fingerprint(self.optimizers)
        self.baseline = self.seed_fingerprint

    def call(self, case: Case) -> Answer:
        """Sends a case's messages as they are and reads every response."""
        method = METHODS[case.method]
        streaming = (method.request_streaming, method.response_streaming)
        make = {
            (False, False): self._channel.unary_unary,
            (False, True): self._channel.unary_stream,
            (True, False): self._channel.stream_unary,
            (True, True): self._channel.stream_stream,
        }[streaming]
        request = iter(case.messages) if method.request_streaming else case.messages[0]
        try:
            answer = make(method.path)(request, timeout=CALL_TIMEOUT)
            if method.response_streaming:
                for _ in answer:
                    pass
        except grpc.RpcError as error:
            reason, _ = decode_detail(error.trailing_metadata())  # type: ignore[attr-defined]
            return Answer(error.code(), error.details() or "", reason)  # type: ignore[attr-defined]
        return Answer(grpc.StatusCode.OK)

    def health(self) -> str:
        """The service's health status name, or the code of a failed health check."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE.full_name)
        try:
            response = stub.Check(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            return f"health check failed: {error.code().name}"  # type: ignore[attr-defined]
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def fingerprint(self, optimizers: Iterable[str]) -> Fingerprint:
        """Reads the state, and the named optimizers' (present or not).

        Raises:
            TfpsError: a read failed; the server is stuck, gone or broken.
        """
        client = self._client
        return Fingerprint(
            variables=tuple(client.list_variables()),
            values=tuple((name, _bits(value)) for name, value in client.pull().items()),
            optimizers=tuple((name, self._optimizer(name)) for name in sorted(set(optimizers))),
            checkpoints=tuple(info.id for info in client.list_checkpoints()),
        )

    def _optimizer(self, name: str) -> tuple[Any, ...]:
        client = self._client
        try:
            config = client.get_config(name)
        except TfpsError as error:
            if error.code in UNREADABLE:
                raise
            return ("absent", error.code.name, error.reason)
        return (
            json.dumps(config, sort_keys=True),
            client.get_options(name),
            tuple(_bits(weight) for weight in client.get_weights(name)),  # iterations first
        )

    def reset(self) -> Fingerprint:
        """Restores the latest checkpoint, which holds the seed, and returns the state then.

        Every checkpoint holds the seed: cases start from it and make one call each, so a
        case that saves one saves the seed.
        """
        self._client.restore_checkpoint()
        self.baseline = self.fingerprint(self.optimizers)
        return self.baseline

    def recover(self, stuck: bool) -> None:
        """Brings the seed back after a failed case: by a reset, or by a new server if the
        server is ``stuck`` or a reset does not give the seed back."""
        if not stuck:
            try:
                if self.reset().model() == self.seed_fingerprint.model():
                    return
            except TfpsError:
                pass
        self.restart()

    def restart(self) -> None:
        """Replaces the server by a new one, planted afresh."""
        self.close()
        self._start()

    def close(self) -> None:
        """Stops the server, leaving it behind if it does not stop in time."""
        self._client.close()
        self._channel.close()
        stopping = threading.Thread(target=self._server.stop, args=(None,), daemon=True)
        stopping.start()
        stopping.join(STOP_TIMEOUT)
        if not stopping.is_alive():
            self._directory.cleanup()
