"""The typed client of the tfps parameter server: one method per user intent."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np
import numpy.typing as npt

from tfps_client import checkpoint_files
from tfps_client.errors import AbortedError, UnavailableError
from tfps_client.transport import (
    MAX_MESSAGE_BYTES,
    Transport,
    bearer_metadata,
    open_channel,
    tensor_methods,
)
from tfps_client.types import (
    Aggregation,
    Async,
    CheckpointInfo,
    CreateVariablesResult,
    OptimizerOptions,
    PushResult,
    RetryPolicy,
    VariableInfo,
)
from tfps_client.wire import codec, convert
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc

LISTING_RESTARTS = 3
"""Times :meth:`Client.list_variables` starts again when the state is replaced between its
pages, before it raises."""

Gradient = Any
"""A numpy array (or array-like), an :class:`IndexedSlices`, or with TensorFlow
imported a ``tf.Tensor``, ``tf.Variable`` or ``tf.IndexedSlices``."""


class Client:
    """Talks to one tfps server.

    Every method raises a :class:`tfps_client.TfpsError` subclass matching the
    gRPC status when the call fails.

    Args:
        address: ``host:port`` of the server.
        timeout: seconds each call may take; ``None`` waits forever.
        chunk_bytes: tensor bytes per stream message.
        max_message_bytes: largest gRPC message sent or received.
        credentials: channel credentials for TLS, such as
            ``tfps_client.tls_credentials("ca.pem")``; ``None`` for plaintext.
        retry: how calls failing with UNAVAILABLE or DEADLINE_EXCEEDED are retried.
        token: sent as ``authorization: Bearer TOKEN`` with every call, for a server
            that requires tokens; ``None`` reads the ``TFPS_TOKEN`` environment
            variable; empty sends none.

    Raises:
        ValueError: the token is not printable ASCII without spaces.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = 60.0,
        *,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        retry: RetryPolicy | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address
        self._transport = Transport(
            timeout, retry or RetryPolicy(), chunk_bytes, bearer_metadata(token)
        )
        self._channel = open_channel(address, credentials, max_message_bytes)
        self._stub = pb_grpc.ParameterServerStub(self._channel)
        self._tensors = tensor_methods(self._channel)

    @property
    def timeout(self) -> float | None:
        """Seconds each call may take; ``None`` waits forever."""
        return self._transport.timeout

    @property
    def retry(self) -> RetryPolicy:
        """How calls failing with UNAVAILABLE or DEADLINE_EXCEEDED are retried."""
        return self._transport.retry

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
            UnavailableError: the server was not reachable within ``timeout`` seconds.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(
                f"the server at {self.address} was not reachable within {timeout} s"
            ) from None

    # Optimizers -------------------------------------------------------------------------------

    def create_optimizer(
        self,
        name: str,
        config: Mapping[str, Any] | str,
        aggregation: Aggregation | None = None,
        on_non_finite: Literal["reject", "skip"] = "reject",
        lazy_sparse: bool = False,
    ) -> bool:
        """Creates a named optimizer from a Keras config, like ``tf_keras.optimizers.deserialize``.

        Args:
            name: the name variables and calls refer to, for example ``"default"``.
            config: ``{"class_name": "Adam", "config": {"learning_rate": 1e-3}}`` or its JSON.
            aggregation: :class:`Async` (the default) or :class:`Sync`.
            on_non_finite: "reject" pushes with NaN/Inf gradients (INVALID_ARGUMENT),
                or "skip" their update.
            lazy_sparse: True updates, for a sparse gradient, only the slots and values of
                the rows it holds (TF Addons' LazyAdam semantics), so that a sparse push costs
                what its rows cost, not what the table costs. A different update from Keras's,
                never the default; only Adam, Nadam and RMSprop take it (INVALID_ARGUMENT,
                ``INVALID_OPTIONS``, for the other classes, whose Keras sparse updates already
                touch only the rows given). Dense gradients are applied as Keras applies them.

        Returns:
            True if created, False if an optimizer with an equal config and options existed.
        """
        config_json = config if isinstance(config, str) else json.dumps(config)
        request = codec.build_message(
            pb.CreateOptimizerRequest,
            name=name,
            config_json=config_json,
            options=convert.options_to_message(
                OptimizerOptions(aggregation or Async(), on_non_finite, lazy_sparse)
            ),
        )
        return self._transport.unary(self._stub.CreateOptimizer, request).created

    def get_options(self, optimizer: str) -> OptimizerOptions:
        """Returns the options the optimizer was created with: aggregation mode, non-finite
        policy and ``lazy_sparse``."""
        request = codec.build_message(pb.GetOptimizerConfigRequest, optimizer=optimizer)
        response = self._transport.unary(self._stub.GetOptimizerConfig, request)
        return convert.options_from_message(response.options)

    def get_config(self, optimizer: str) -> dict[str, Any]:
        """Returns ``{"class_name": ..., "config": optimizer.get_config()}``."""
        request = codec.build_message(pb.GetOptimizerConfigRequest, optimizer=optimizer)
        return json.loads(self._transport.unary(self._stub.GetOptimizerConfig, request).config_json)

    def iterations(self, optimizer: str) -> int:
        """Returns how many updates the optimizer has applied."""
        request = codec.build_message(pb.GetIterationsRequest, optimizer=optimizer)
        return self._transport.unary(self._stub.GetIterations, request).iterations

    def slot_names(self, optimizer: str) -> list[str]:
        """Returns the optimizer's slot names, as ``optimizer.get_slot_names()``."""
        request = codec.build_message(pb.GetSlotNamesRequest, optimizer=optimizer)
        return list(self._transport.unary(self._stub.GetSlotNames, request).slot_names)

    def get_slot(self, variable: str, slot: str) -> np.ndarray:
        """Returns one slot's value for one variable, as ``optimizer.get_slot(var, slot)``."""
        request = codec.build_message(pb.GetSlotRequest, variable=variable, slot=slot)
        _, (value,) = self._transport.download(
            self._tensors["GetSlot"], request, lambda first: [first.slot]
        )
        return value

    def get_weights(self, optimizer: str) -> list[np.ndarray]:
        """Returns the optimizer's weights in Keras order: iterations, then slots."""
        request = codec.build_message(pb.GetOptimizerWeightsRequest, optimizer=optimizer)
        _, weights = self._transport.download(
            self._tensors["GetOptimizerWeights"], request, lambda first: first.weights
        )
        return weights

    def set_weights(self, optimizer: str, weights: Sequence[npt.ArrayLike]) -> None:
        """Replaces the optimizer's weights, with Keras's length and shape checks."""
        arrays = [np.asarray(w) for w in weights]
        header = {"optimizer": optimizer, "weights": [codec.spec_of(a) for a in arrays]}
        self._transport.upload(self._tensors["SetOptimizerWeights"], header, arrays)

    def set_hyperparameter(
        self, optimizer: str, name: str, value: float | Mapping[str, Any]
    ) -> None:
        """Changes a hyperparameter at run time, as ``optimizer.learning_rate = 0.05`` does.

        Args:
            optimizer: name of the optimizer.
            name: the hyperparameter, for example ``"learning_rate"`` or ``"beta_1"``.
            value: a number, or for ``learning_rate`` a serialized Keras schedule.
        """
        request = codec.build_message(pb.SetHyperparameterRequest, optimizer=optimizer, name=name)
        if isinstance(value, Mapping):
            request.schedule_json = json.dumps(value)
        else:
            request.number = float(value)
        self._transport.unary(self._stub.SetHyperparameter, request)

    # Variables --------------------------------------------------------------------------------

    def create_variables(
        self, variables: Mapping[str, npt.ArrayLike], optimizer: str = "default"
    ) -> CreateVariablesResult:
        """Creates variables with initial values, bound to one optimizer, with their slots.

        Idempotent: the first creator's values win, and an identical declaration
        (name, shape, dtype, optimizer) succeeds without changing anything.
        """
        names = list(variables)
        arrays = [convert.to_numpy(variables[name]) for name in names]
        header = {
            "optimizer": optimizer,
            "variables": [
                pb.VariableDeclaration(name=name, spec=codec.spec_of(array))
                for name, array in zip(names, arrays, strict=True)
            ],
        }
        response = self._transport.upload(self._tensors["CreateVariables"], header, arrays)
        return CreateVariablesResult(tuple(response.created), tuple(response.existing))

    def list_variables(self) -> list[VariableInfo]:
        """Returns every variable the server holds, in creation order.

        ``VariableInfo.device`` is spelled ``/device:<TYPE>:<index>`` (``/device:CPU:0``,
        ``/device:GPU:1``), as the server's logs and checkpoint metadata spell it.

        The server answers a page at a time. A restore (or a restart of the server) between
        two pages makes the listing start again from the first page, at most
        :data:`LISTING_RESTARTS` times.

        Raises:
            AbortedError: the state was replaced during every attempt (``STATE_REPLACED``).
        """
        for _ in range(LISTING_RESTARTS):
            with contextlib.suppress(AbortedError):
                return self._list_pages()
        return self._list_pages()

    def _list_pages(self) -> list[VariableInfo]:
        """Lists every variable, page after page, until a page gives no token."""
        infos: list[VariableInfo] = []
        request = codec.build_message(pb.ListVariablesRequest)
        while True:
            response = self._transport.unary(self._stub.ListVariables, request)
            infos += [convert.variable_info_from_message(info) for info in response.variables]
            if not response.next_page_token:
                return infos
            request = codec.build_message(
                pb.ListVariablesRequest, page_token=response.next_page_token
            )

    def push(
        self,
        gradients: Mapping[str, Gradient],
        *,
        worker: str = "",
        step: int | None = None,
        request_id: str | None = None,
    ) -> PushResult:
        """Pushes gradients; each optimizer touched applies them as its aggregation mode says.

        The whole push is validated before anything changes. ``None`` gradients
        are left out. In sync mode the call returns once its step is applied,
        so the worker can pull right after. A stale drop is reported in the
        result, not raised.

        Args:
            gradients: variable name -> dense array or :class:`IndexedSlices`.
            worker: the pushing worker's id (required by :class:`Sync` optimizers).
            step: the optimizer ``iterations`` the gradients were computed from.
            request_id: a unique id; a retry with it is never applied twice.
                Default: a new random id, reused by the client's own retries.

        Returns:
            Outcome and ``iterations`` per optimizer touched.
        """
        request_id = request_id or uuid.uuid4().hex
        header, arrays = _push_header(gradients, worker, step, request_id)
        response = self._transport.upload(self._tensors["Push"], header, arrays)
        return convert.push_result(response, request_id)

    def push_pull(
        self,
        gradients: Mapping[str, Gradient],
        pull: Iterable[str],
        *,
        worker: str = "",
        step: int | None = None,
        request_id: str | None = None,
    ) -> tuple[PushResult, dict[str, np.ndarray]]:
        """Pushes, then returns the updated values of ``pull``, in one round trip.

        Arguments are those of :meth:`push`; ``pull`` names the variables to return.
        """
        request_id = request_id or uuid.uuid4().hex
        header, arrays = _push_header(gradients, worker, step, request_id)
        header["pull"] = list(pull)
        first, values = self._transport.exchange(
            self._tensors["PushPull"],
            header,
            arrays,
            lambda first: [t.spec for t in first.tensors],
        )
        pulled = {t.name: value for t, value in zip(first.tensors, values, strict=True)}
        return convert.push_result(first.push, request_id), pulled

    def pull(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Returns the current values of the named variables (all when ``names`` is None)."""
        wanted = None if names is None else [str(name) for name in names]
        if wanted == []:
            return {}
        request = codec.build_message(pb.PullRequest, names=wanted or ())
        first, values = self._transport.download(
            self._tensors["Pull"], request, lambda first: [t.spec for t in first.tensors]
        )
        return {t.name: value for t, value in zip(first.tensors, values, strict=True)}

    def pull_rows(self, name: str, ids: npt.ArrayLike) -> np.ndarray:
        """Returns ``variable[ids]``, as an embedding lookup, without sending the whole table.

        ``ids`` may have any shape; the result has shape ``ids.shape + variable.shape[1:]``.
        """
        shape = np.shape(ids)
        indices = np.asarray(ids).reshape(-1)
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"pull_rows: expected integer ids, received dtype {indices.dtype}")
        request = codec.build_message(
            pb.PullRowsRequest, variable=name, indices=indices.astype(np.int64).tolist()
        )
        _, (rows,) = self._transport.download(
            self._tensors["PullRows"], request, lambda first: [first.rows]
        )
        return rows.reshape(shape + rows.shape[1:])

    # Checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> CheckpointInfo:
        """Makes the server write a checkpoint of its whole state now."""
        response = self._transport.unary(
            self._stub.SaveCheckpoint, codec.build_message(pb.SaveCheckpointRequest)
        )
        return convert.checkpoint_info_from_message(response.checkpoint)

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Returns the checkpoints the server retains, oldest first."""
        response = self._transport.unary(
            self._stub.ListCheckpoints, codec.build_message(pb.ListCheckpointsRequest)
        )
        return [convert.checkpoint_info_from_message(c) for c in response.checkpoints]

    def restore_checkpoint(self, checkpoint_id: int | None = None) -> CheckpointInfo:
        """Replaces the server's whole state with a checkpoint's (the latest when None)."""
        request = codec.build_message(pb.RestoreCheckpointRequest, id=checkpoint_id)
        response = self._transport.unary(self._stub.RestoreCheckpoint, request)
        return convert.checkpoint_info_from_message(response.checkpoint)

    def download_checkpoint(self, checkpoint_id: int | None, dest_dir: str | Path) -> str:
        """Downloads a checkpoint's files into ``dest_dir``, verifying sizes and SHA-256.

        Files are written as ``*.partial`` and renamed only once verified, so an
        interrupted download never leaves a checkpoint that looks complete. The checkpoint
        then becomes the directory's latest (its ``checkpoint`` state file), so the directory
        itself can be given to ``load_into``, ``tfps-ckpt inspect`` or
        ``tf.train.latest_checkpoint``.

        Args:
            checkpoint_id: the checkpoint; None for the latest.
            dest_dir: the local directory (created if needed).

        Returns:
            The local path prefix, as ``tf.train.load_checkpoint`` takes it.

        Raises:
            DataLossError: a file's size or digest does not match the server's.
        """
        request = codec.build_message(pb.DownloadCheckpointRequest, id=checkpoint_id)
        manifest = self._transport.download_files(self._stub.DownloadCheckpoint, request, dest_dir)
        name = Path(manifest.checkpoint.path).name
        checkpoint_files.record_latest(dest_dir, name)
        return str(Path(dest_dir) / name)


def _push_header(
    gradients: Mapping[str, Gradient], worker: str, step: int | None, request_id: str
) -> tuple[dict[str, Any], list[np.ndarray]]:
    headers, arrays = convert.gradients_to_wire(gradients)
    header: dict[str, Any] = {"gradients": headers, "worker": worker, "request_id": request_id}
    if step is not None:
        header["step"] = step
    return header, arrays
