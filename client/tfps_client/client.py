"""The typed client of the tfps parameter server."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from tfps_client import tensors
from tfps_client._proto.tfps.v1 import parameter_server_pb2 as pb
from tfps_client._proto.tfps.v1 import parameter_server_pb2_grpc as pb_grpc
from tfps_client._proto.tfps.v1 import tensor_pb2
from tfps_client.errors import from_rpc_error
from tfps_client.types import CreateVariablesResult, IndexedSlices, VariableInfo

MAX_MESSAGE_BYTES = 256 << 20
"""Largest gRPC message either side accepts (the gRPC default is 4 MiB)."""

Gradient = Any
"""A numpy array (or array-like), an :class:`IndexedSlices`, or with TensorFlow
imported a ``tf.Tensor``, ``tf.Variable`` or ``tf.IndexedSlices``."""

_T = TypeVar("_T")


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Returns the gRPC options both client and server use for message sizes."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class Client:
    """Talks to one tfps server.

    Every method raises a :class:`tfps_client.TfpsError` subclass matching the
    gRPC status when the call fails.

    Args:
        address: ``host:port`` of the server.
        timeout: seconds each call may take; ``None`` waits forever.
        chunk_bytes: tensor bytes per stream message.
        max_message_bytes: largest gRPC message sent or received.
        credentials: channel credentials for TLS; ``None`` for plaintext.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = 60.0,
        *,
        chunk_bytes: int = tensors.DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        options = channel_options(max_message_bytes)
        self.address = address
        self.timeout = timeout
        self._chunk_bytes = chunk_bytes
        self._channel = (
            grpc.secure_channel(address, credentials, options)
            if credentials is not None
            else grpc.insecure_channel(address, options)
        )
        self._stub = pb_grpc.ParameterServerStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_for_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the server accepts connections.

        Raises:
            grpc.FutureTimeoutError: the server was not reachable within ``timeout``.
        """
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    # Optimizers -------------------------------------------------------------------------------

    def create_optimizer(self, name: str, config: Mapping[str, Any] | str) -> bool:
        """Creates a named optimizer from a Keras config, like ``tf_keras.optimizers.deserialize``.

        Args:
            name: the name variables and calls refer to, for example ``"default"``.
            config: ``{"class_name": "Adam", "config": {"learning_rate": 1e-3}}`` or its JSON.

        Returns:
            True if created, False if an optimizer with an equal config existed.
        """
        config_json = config if isinstance(config, str) else json.dumps(config)
        request = pb.CreateOptimizerRequest(name=name, config_json=config_json)
        return self._unary(self._stub.CreateOptimizer, request).created

    def get_config(self, optimizer: str) -> dict[str, Any]:
        """Returns ``{"class_name": ..., "config": optimizer.get_config()}``."""
        request = pb.GetOptimizerConfigRequest(optimizer=optimizer)
        return json.loads(self._unary(self._stub.GetOptimizerConfig, request).config_json)

    def iterations(self, optimizer: str) -> int:
        """Returns how many updates the optimizer has applied."""
        request = pb.GetIterationsRequest(optimizer=optimizer)
        return self._unary(self._stub.GetIterations, request).iterations

    def slot_names(self, optimizer: str) -> list[str]:
        """Returns the optimizer's slot names, as ``optimizer.get_slot_names()``."""
        request = pb.GetSlotNamesRequest(optimizer=optimizer)
        return list(self._unary(self._stub.GetSlotNames, request).slot_names)

    def get_slot(self, variable: str, slot: str) -> np.ndarray:
        """Returns one slot's value for one variable, as ``optimizer.get_slot(var, slot)``."""
        request = pb.GetSlotRequest(variable=variable, slot=slot)
        _, (value,) = self._download(self._stub.GetSlot, request, lambda first: [first.slot])
        return value

    def get_weights(self, optimizer: str) -> list[np.ndarray]:
        """Returns the optimizer's weights in Keras order: iterations, then slots."""
        request = pb.GetOptimizerWeightsRequest(optimizer=optimizer)
        _, weights = self._download(
            self._stub.GetOptimizerWeights, request, lambda first: first.weights
        )
        return weights

    def set_weights(self, optimizer: str, weights: Sequence[npt.ArrayLike]) -> None:
        """Replaces the optimizer's weights, with Keras's length and shape checks."""
        arrays = [np.asarray(w) for w in weights]
        header = {"optimizer": optimizer, "weights": [tensors.spec_of(a) for a in arrays]}
        self._upload(self._stub.SetOptimizerWeights, pb.SetOptimizerWeightsRequest, header, arrays)

    def set_hyperparameter(
        self, optimizer: str, name: str, value: float | Mapping[str, Any]
    ) -> None:
        """Changes a hyperparameter at run time, as ``optimizer.learning_rate = 0.05`` does.

        Args:
            optimizer: name of the optimizer.
            name: the hyperparameter, for example ``"learning_rate"`` or ``"beta_1"``.
            value: a number, or for ``learning_rate`` a serialized Keras schedule.
        """
        request = pb.SetHyperparameterRequest(optimizer=optimizer, name=name)
        if isinstance(value, Mapping):
            request.schedule_json = json.dumps(value)
        else:
            request.number = float(value)
        self._unary(self._stub.SetHyperparameter, request)

    # Variables --------------------------------------------------------------------------------

    def create_variables(
        self, variables: Mapping[str, npt.ArrayLike], optimizer: str = "default"
    ) -> CreateVariablesResult:
        """Creates variables with initial values, bound to one optimizer, with their slots.

        Idempotent: the first creator's values win, and an identical declaration
        (name, shape, dtype, optimizer) succeeds without changing anything.
        """
        names = list(variables)
        arrays = [_to_numpy(variables[name]) for name in names]
        header = {
            "optimizer": optimizer,
            "variables": [
                pb.VariableDeclaration(name=name, spec=tensors.spec_of(array))
                for name, array in zip(names, arrays, strict=True)
            ],
        }
        response = self._upload(
            self._stub.CreateVariables, pb.CreateVariablesRequest, header, arrays
        )
        return CreateVariablesResult(tuple(response.created), tuple(response.existing))

    def list_variables(self) -> list[VariableInfo]:
        """Returns every variable the server holds, in creation order."""
        response = self._unary(self._stub.ListVariables, pb.ListVariablesRequest())
        return [
            VariableInfo(
                name=info.name,
                shape=tensors.spec_shape(info.spec),
                dtype=tensors.numpy_dtype(info.spec.dtype),
                optimizer=info.optimizer,
                device=info.device,
            )
            for info in response.variables
        ]

    def push(self, gradients: Mapping[str, Gradient]) -> dict[str, int]:
        """Applies gradients: one ``apply_gradients`` per optimizer the push touches.

        The whole push is validated before anything changes: it is applied
        completely or not at all. ``None`` gradients are left out.

        Args:
            gradients: variable name -> dense array or :class:`IndexedSlices`.

        Returns:
            The ``iterations`` of every optimizer touched, after the update.
        """
        headers, arrays = _encode_gradients(gradients)
        response = self._upload(self._stub.Push, pb.PushRequest, {"gradients": headers}, arrays)
        return dict(response.iterations)

    def pull(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Returns the current values of the named variables (all when ``names`` is None)."""
        request = pb.PullRequest(names=list(names or ()))
        first, values = self._download(
            self._stub.Pull, request, lambda first: [t.spec for t in first.tensors]
        )
        return {t.name: value for t, value in zip(first.tensors, values, strict=True)}

    def pull_rows(self, name: str, ids: npt.ArrayLike) -> np.ndarray:
        """Returns ``variable[ids]``, as an embedding lookup, without sending the whole table."""
        indices = np.asarray(ids).reshape(-1)
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"pull_rows: expected integer ids, received dtype {indices.dtype}")
        request = pb.PullRowsRequest(variable=name, indices=indices.astype(np.int64).tolist())
        _, (rows,) = self._download(self._stub.PullRows, request, lambda first: [first.rows])
        return rows

    # Plumbing ---------------------------------------------------------------------------------

    def _unary(self, method: Callable[..., _T], request: Any) -> _T:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _upload(
        self,
        method: Callable[..., _T],
        message: Callable[..., Any],
        header: Mapping[str, Any],
        arrays: Sequence[np.ndarray],
    ) -> _T:
        stream = tensors.stream_messages(message, header, arrays, self._chunk_bytes)
        return self._unary(method, stream)

    def _download(
        self,
        method: Callable[..., Iterator[Any]],
        request: Any,
        specs_of: Callable[[Any], Sequence[tensor_pb2.TensorSpec]],
    ) -> tuple[Any, list[np.ndarray]]:
        try:
            return tensors.read_stream(method(request, timeout=self.timeout), specs_of)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


def _to_numpy(value: Any) -> np.ndarray:
    """Converts an array-like, or a TensorFlow tensor or variable, to numpy."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    return np.asarray(value)


def _as_indexed_slices(value: Any) -> IndexedSlices | None:
    """Returns ``value`` as :class:`IndexedSlices` if it is one (ours or TensorFlow's)."""
    if isinstance(value, IndexedSlices):
        return value
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(value, tf.IndexedSlices):
        dense_shape = value.dense_shape
        return IndexedSlices(
            values=value.values.numpy(),
            indices=value.indices.numpy(),
            dense_shape=None if dense_shape is None else tuple(dense_shape.numpy().tolist()),
        )
    return None


def _encode_gradients(
    gradients: Mapping[str, Gradient],
) -> tuple[list[pb.GradientHeader], list[np.ndarray]]:
    headers: list[pb.GradientHeader] = []
    arrays: list[np.ndarray] = []
    for name, value in gradients.items():
        if value is None:
            continue
        slices = _as_indexed_slices(value)
        if slices is None:
            dense = _to_numpy(value)
            headers.append(
                pb.GradientHeader(
                    variable=name, dense=tensor_pb2.DenseSpec(tensor=tensors.spec_of(dense))
                )
            )
            arrays.append(dense)
            continue
        values, indices = np.asarray(slices.values), np.asarray(slices.indices)
        headers.append(
            pb.GradientHeader(
                variable=name,
                sparse=tensor_pb2.IndexedSlicesSpec(
                    values=tensors.spec_of(values),
                    indices=tensors.spec_of(indices),
                    dense_shape=slices.dense_shape or (),
                ),
            )
        )
        arrays.extend([values, indices])
    return headers, arrays
