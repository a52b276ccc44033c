"""The gRPC servicer: decode, validate, call the store, encode, map errors to statuses."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, TypeVar

import grpc
import numpy as np

from tfps_client import messages, tensors
from tfps_client._proto.tfps.v1 import errors_pb2, tensor_pb2
from tfps_client._proto.tfps.v1 import parameter_server_pb2 as pb
from tfps_client._proto.tfps.v1 import parameter_server_pb2_grpc as pb_grpc
from tfps_client.errors import ERROR_DETAIL_KEY
from tfps_client.types import OptimizerOptions
from tfps_server.aggregation import PushResult, checked
from tfps_server.checkpoints import Checkpointer, CheckpointInfo, checkpoint_files, require
from tfps_server.errors import InvalidArgument, ServerError
from tfps_server.store import Store
from tfps_server.validation import DenseGradient, Gradient, SparseGradient

_log = logging.getLogger(__name__)

_Handler = TypeVar("_Handler", bound=Callable[..., Any])

DEFAULT_MAX_REQUEST_BYTES = 8 << 30
"""Most tensor bytes one request may announce (8 GiB); larger is RESOURCE_EXHAUSTED."""


def _abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
) -> None:
    detail = errors_pb2.ErrorDetail(reason=reason, metadata=metadata)
    context.set_trailing_metadata(((ERROR_DETAIL_KEY, detail.SerializeToString()),))
    context.abort(code, message)


def _rpc(handler: _Handler) -> _Handler:
    """Turns the server's exceptions into gRPC statuses; the process never dies on a request."""

    @functools.wraps(handler)
    def wrapper(self: ParameterServerServicer, request: Any, context: grpc.ServicerContext) -> Any:
        if not self.ready.is_set():
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"{handler.__name__}: the server is restoring a checkpoint; retry shortly",
                "NOT_READY",
                {},
            )
        try:
            return handler(self, request, context)
        except ServerError as error:
            _abort(context, error.code, error.message, error.reason, error.metadata)
        except tensors.TooLargeError as error:
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), "TOO_LARGE", {})
        except tensors.CodecError as error:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), "MALFORMED_TENSOR", {})
        except Exception as error:
            if isinstance(error, grpc.RpcError):
                raise
            _log.exception("%s failed", handler.__name__)
            _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"{handler.__name__}: internal error: {type(error).__name__}: {error}",
                "INTERNAL",
                {},
            )

    return wrapper  # type: ignore[return-value]


class ParameterServerServicer(pb_grpc.ParameterServerServicer):
    """Serves the ``tfps.v1.ParameterServer`` service from a :class:`Store`.

    Args:
        store: the state.
        chunk_bytes: tensor bytes per response message.
        max_request_bytes: the most tensor bytes one request may announce; None: no limit.
        checkpointer: serves the checkpoint RPCs; None when there is no checkpoint directory.
    """

    def __init__(
        self,
        store: Store,
        chunk_bytes: int = tensors.DEFAULT_CHUNK_BYTES,
        max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._store = store
        self._checkpointer = checkpointer
        self.ready = threading.Event()
        """Set once the server may answer; RPCs before that get UNAVAILABLE."""
        self.ready.set()
        self._chunk_bytes = chunk_bytes
        self._max_request_bytes = max_request_bytes

    def _read(
        self, stream: Iterable[Any], specs_of: Callable[[Any], Sequence[tensor_pb2.TensorSpec]]
    ) -> tuple[Any, list[np.ndarray]]:
        return tensors.read_stream(stream, specs_of, self._max_request_bytes, writable=False)

    def _send(
        self, message: Callable[..., Any], header: dict[str, Any], arrays: Sequence[np.ndarray]
    ) -> Iterator[Any]:
        return tensors.stream_messages(message, header, arrays, self._chunk_bytes)

    @_rpc
    def CreateOptimizer(
        self, request: pb.CreateOptimizerRequest, context: grpc.ServicerContext
    ) -> pb.CreateOptimizerResponse:
        options = _options_from_proto(request.options)
        created = self._store.create_optimizer(request.name, request.config_json, options)
        return pb.CreateOptimizerResponse(created=created)

    @_rpc
    def CreateVariables(
        self, request_iterator: Iterator[pb.CreateVariablesRequest], context: grpc.ServicerContext
    ) -> pb.CreateVariablesResponse:
        first, values = self._read(request_iterator, lambda f: [v.spec for v in f.variables])
        declarations = [(v.name, value) for v, value in zip(first.variables, values, strict=True)]
        created, existing = self._store.create_variables(first.optimizer, declarations)
        return pb.CreateVariablesResponse(created=created, existing=existing)

    @_rpc
    def ListVariables(
        self, request: pb.ListVariablesRequest, context: grpc.ServicerContext
    ) -> pb.ListVariablesResponse:
        return pb.ListVariablesResponse(
            variables=[
                pb.VariableInfo(
                    name=v.name,
                    spec=tensor_pb2.TensorSpec(dtype=tensors.wire_dtype(v.dtype), shape=v.shape),
                    optimizer=v.optimizer.name,
                    device=v.variable.device,
                )
                for v in self._store.variables()
            ]
        )

    @_rpc
    def Push(
        self, request_iterator: Iterator[pb.PushRequest], context: grpc.ServicerContext
    ) -> pb.PushResponse:
        first, arrays = self._read(request_iterator, _gradient_specs)
        results = self._store.push(_gradients(first.gradients, arrays), **_push_context(first))
        return _push_response(results)

    @_rpc
    def PushPull(
        self, request_iterator: Iterator[pb.PushRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PushPullResponse]:
        first, arrays = self._read(request_iterator, _gradient_specs)
        results, pulled = self._store.push_pull(
            _gradients(first.gradients, arrays), list(first.pull), **_push_context(first)
        )
        header = {"push": _push_response(results), "tensors": _named_specs(pulled)}
        return self._send(pb.PushPullResponse, header, [value for _, value in pulled])

    @_rpc
    def Pull(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullResponse]:
        pulled = self._store.pull(list(request.names))
        header = {"tensors": _named_specs(pulled)}
        return self._send(pb.PullResponse, header, [value for _, value in pulled])

    @_rpc
    def PullRows(
        self, request: pb.PullRowsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullRowsResponse]:
        rows = self._store.pull_rows(request.variable, np.asarray(request.indices, dtype=np.int64))
        return self._send(pb.PullRowsResponse, {"rows": tensors.spec_of(rows)}, [rows])

    @_rpc
    def GetOptimizerWeights(
        self, request: pb.GetOptimizerWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetOptimizerWeightsResponse]:
        weights = self._store.get_weights(request.optimizer)
        specs = [tensors.spec_of(w) for w in weights]
        return self._send(pb.GetOptimizerWeightsResponse, {"weights": specs}, weights)

    @_rpc
    def SetOptimizerWeights(
        self,
        request_iterator: Iterator[pb.SetOptimizerWeightsRequest],
        context: grpc.ServicerContext,
    ) -> pb.SetOptimizerWeightsResponse:
        first, weights = self._read(request_iterator, lambda f: f.weights)
        self._store.set_weights(first.optimizer, weights)
        return pb.SetOptimizerWeightsResponse()

    @_rpc
    def GetOptimizerConfig(
        self, request: pb.GetOptimizerConfigRequest, context: grpc.ServicerContext
    ) -> pb.GetOptimizerConfigResponse:
        config = self._store.get_config(request.optimizer)
        options = messages.options_to_message(self._store.optimizer(request.optimizer).options)
        return pb.GetOptimizerConfigResponse(config_json=json.dumps(config), options=options)

    @_rpc
    def GetIterations(
        self, request: pb.GetIterationsRequest, context: grpc.ServicerContext
    ) -> pb.GetIterationsResponse:
        return pb.GetIterationsResponse(iterations=self._store.iterations(request.optimizer))

    @_rpc
    def GetSlotNames(
        self, request: pb.GetSlotNamesRequest, context: grpc.ServicerContext
    ) -> pb.GetSlotNamesResponse:
        return pb.GetSlotNamesResponse(slot_names=self._store.slot_names(request.optimizer))

    @_rpc
    def GetSlot(
        self, request: pb.GetSlotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetSlotResponse]:
        value = self._store.get_slot(request.variable, request.slot)
        return self._send(pb.GetSlotResponse, {"slot": tensors.spec_of(value)}, [value])

    @_rpc
    def SetHyperparameter(
        self, request: pb.SetHyperparameterRequest, context: grpc.ServicerContext
    ) -> pb.SetHyperparameterResponse:
        kind = request.WhichOneof("value")
        if kind is None:
            raise InvalidArgument(
                f"optimizer {request.optimizer!r}: expected a number or schedule_json for "
                f"{request.name!r}, received neither",
                "MISSING_VALUE",
                {"optimizer": request.optimizer},
            )
        if kind == "number":
            value: Any = request.number
        else:
            try:
                value = json.loads(request.schedule_json)
            except ValueError as error:
                raise InvalidArgument(
                    f"optimizer {request.optimizer!r}: expected schedule JSON, received "
                    f"{request.schedule_json!r} ({error})",
                    "INVALID_CONFIG",
                    {"optimizer": request.optimizer},
                ) from None
        self._store.set_hyperparameter(request.optimizer, request.name, value)
        return pb.SetHyperparameterResponse()

    @_rpc
    def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        info = require(self._checkpointer).save()
        return pb.SaveCheckpointResponse(checkpoint=_checkpoint_info(info))

    @_rpc
    def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        infos = require(self._checkpointer).list()
        return pb.ListCheckpointsResponse(checkpoints=[_checkpoint_info(i) for i in infos])

    @_rpc
    def RestoreCheckpoint(
        self, request: pb.RestoreCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.RestoreCheckpointResponse:
        info = require(self._checkpointer).restore(request.id or "latest")
        return pb.RestoreCheckpointResponse(checkpoint=_checkpoint_info(info))

    @_rpc
    def DownloadCheckpoint(
        self, request: pb.DownloadCheckpointRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadCheckpointResponse]:
        checkpointer = require(self._checkpointer)
        prefix = checkpointer.find(request.id or "latest")
        info = checkpointer.describe(prefix)
        # Open every file now: retention may delete them while the stream is read.
        handles = [(path.name, path.open("rb")) for path in checkpoint_files(prefix)]
        return _file_stream(handles, _checkpoint_info(info), self._chunk_bytes)


def _gradient_specs(first: pb.PushRequest) -> list[tensor_pb2.TensorSpec]:
    specs: list[tensor_pb2.TensorSpec] = []
    for header in first.gradients:
        kind = header.WhichOneof("kind")
        if kind == "dense":
            specs.append(header.dense.tensor)
        elif kind == "sparse":
            specs.extend([header.sparse.values, header.sparse.indices])
        else:
            raise InvalidArgument(
                f"variable {header.variable!r}: expected a dense or sparse gradient, "
                "received neither",
                "MISSING_GRADIENT",
                {"variable": header.variable},
            )
    return specs


def _gradients(headers: Iterable[pb.GradientHeader], arrays: list[np.ndarray]) -> list[Gradient]:
    tensors_left = iter(arrays)
    gradients: list[Gradient] = []
    for header in headers:
        if header.WhichOneof("kind") == "dense":
            gradients.append(DenseGradient(header.variable, next(tensors_left)))
        else:
            values, indices = next(tensors_left), next(tensors_left)
            gradients.append(
                SparseGradient(header.variable, values, indices, tuple(header.sparse.dense_shape))
            )
    return gradients


def _named_specs(pulled: Sequence[tuple[str, np.ndarray]]) -> list[pb.NamedTensorSpec]:
    return [pb.NamedTensorSpec(name=name, spec=tensors.spec_of(value)) for name, value in pulled]


def _push_context(first: pb.PushRequest) -> dict[str, Any]:
    return {
        "request_id": first.request_id,
        "worker": first.worker,
        "step": first.step if first.HasField("step") else None,
    }


def _push_response(results: dict[str, PushResult]) -> pb.PushResponse:
    return pb.PushResponse(
        results={
            name: pb.OptimizerPushResult(
                outcome=messages.outcome_to_wire(r.outcome), iterations=r.iterations
            )
            for name, r in results.items()
        }
    )


def _options_from_proto(message: pb.OptimizerOptions) -> OptimizerOptions:
    try:
        options = messages.options_from_message(message)
    except ValueError as error:
        raise InvalidArgument(f"optimizer options: {error}", "INVALID_OPTIONS") from None
    return checked(options)


def _checkpoint_info(info: CheckpointInfo) -> pb.CheckpointInfo:
    metadata = info.metadata
    return pb.CheckpointInfo(
        id=info.id,
        path=info.prefix,
        saved_at=metadata.saved_at,
        size_bytes=info.size_bytes,
        iterations={o.name: o.iterations for o in metadata.optimizers},
        variables=[
            pb.VariableInfo(
                name=v.name,
                spec=tensor_pb2.TensorSpec(dtype=tensors.wire_dtype(v.dtype), shape=v.shape),
                optimizer=v.optimizer,
            )
            for v in metadata.variables
        ],
    )


def _file_stream(
    handles: Sequence[tuple[str, BinaryIO]], info: pb.CheckpointInfo, chunk_bytes: int
) -> Iterator[pb.DownloadCheckpointResponse]:
    """Yields every file's pieces, then the manifest with sizes and SHA-256 digests."""
    digests = []
    try:
        for name, handle in handles:
            digest, offset = hashlib.sha256(), 0
            while data := handle.read(chunk_bytes):
                digest.update(data)
                yield pb.DownloadCheckpointResponse(
                    chunk=pb.FileChunk(file=name, offset=offset, data=data)
                )
                offset += len(data)
            digests.append(pb.FileDigest(file=name, size=offset, sha256=digest.hexdigest()))
    finally:
        for _, handle in handles:
            handle.close()
    manifest = pb.CheckpointManifest(checkpoint=info, files=digests)
    yield pb.DownloadCheckpointResponse(manifest=manifest)
