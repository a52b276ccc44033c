"""The gRPC servicer: decode, call the registry, pusher or checkpointer, encode.

Every error is mapped to a status here, streamed responses included: a
request gets the precise status of what was wrong with it, and the process
never dies on a request. A fault of the server's own is INTERNAL, logged once.
"""

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
import tensorflow as tf

from tfps_client.types import OptimizerOptions
from tfps_client.wire import codec, convert, tensor_pb2
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_client.wire.reasons import Reason
from tfps_server.aggregation import checked
from tfps_server.checkpoints import Checkpointer, require
from tfps_server.errors import (
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServerError,
    Unavailable,
    abort,
    clipped,
    shown,
)
from tfps_server.push import Pusher
from tfps_server.registry import Registry
from tfps_server.validation import check_step, parse_json

_log = logging.getLogger(__name__)

_Handler = TypeVar("_Handler", bound=Callable[..., Any])

DEFAULT_MAX_REQUEST_BYTES = 8 << 30
"""Most tensor bytes one request may announce (8 GiB); larger is RESOURCE_EXHAUSTED."""


def as_server_error(error: Exception, method: str) -> ServerError:
    """Returns the refusal an exception stands for; a fault of ours is logged and INTERNAL.

    Running out of memory is RESOURCE_EXHAUSTED (logged in one line): the request asked
    for more than the server could hold.
    """
    if isinstance(error, ServerError):
        return error
    if isinstance(error, (MemoryError, tf.errors.ResourceExhaustedError)):
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        _log.warning("%s: out of memory: %s", method, clipped(text, 500))
        return ResourceExhausted(
            f"{method}: the server ran out of memory for this request ({type(error).__name__})",
            Reason.TOO_LARGE,
        )
    if isinstance(error, codec.TooLargeError):
        return ResourceExhausted(str(error), Reason.TOO_LARGE)
    if isinstance(error, codec.CodecError):
        return InvalidArgument(str(error), Reason.MALFORMED_TENSOR)
    if isinstance(error, convert.MissingGradientError):
        return InvalidArgument(
            f"variable {shown(error.variable)}: {error}",
            Reason.MISSING_GRADIENT,
            {"variable": error.variable},
        )
    _log.error("%s failed", method, exc_info=error)
    return Internal(f"{method}: internal error: {type(error).__name__}", Reason.INTERNAL)


def _rpc(handler: _Handler) -> _Handler:
    """Turns exceptions into statuses, those raised while streaming a response too."""

    @functools.wraps(handler)
    def wrapper(self: ParameterServerServicer, request: Any, context: grpc.ServicerContext) -> Any:
        method = handler.__name__
        if not self.ready.is_set():
            abort(
                context,
                Unavailable(
                    f"{method}: the server is restoring a checkpoint; retry shortly",
                    Reason.NOT_READY,
                ),
            )
        try:
            response = handler(self, request, context)
        except grpc.RpcError:
            raise
        except Exception as error:
            abort(context, as_server_error(error, method))
        if isinstance(response, Iterator):
            return _mapped(response, context, method)
        return response

    return wrapper  # type: ignore[return-value]


def _mapped(responses: Iterator[Any], context: grpc.ServicerContext, method: str) -> Iterator[Any]:
    try:
        yield from responses
    except grpc.RpcError:
        raise
    except Exception as error:
        abort(context, as_server_error(error, method))


class ParameterServerServicer(pb_grpc.ParameterServerServicer):
    """Serves the ``tfps.v1.ParameterServer`` service.

    Args:
        registry: the state.
        pusher: applies pushes to it.
        chunk_bytes: tensor bytes per response message.
        max_request_bytes: the most tensor bytes one request may announce; None: no limit.
        checkpointer: serves the checkpoint RPCs; None when there is no checkpoint directory.
    """

    def __init__(
        self,
        registry: Registry,
        pusher: Pusher,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._registry = registry
        self._pusher = pusher
        self._checkpointer = checkpointer
        self.ready = threading.Event()
        """Set once the server may answer; RPCs before that get UNAVAILABLE."""
        self.ready.set()
        self._chunk_bytes = chunk_bytes
        self._max_request_bytes = max_request_bytes

    def _read(
        self, stream: Iterable[Any], specs_of: Callable[[Any], Sequence[tensor_pb2.TensorSpec]]
    ) -> tuple[Any, list[np.ndarray]]:
        return codec.read_stream(stream, specs_of, self._max_request_bytes, writable=False)

    def _send(
        self, message: Callable[..., Any], header: dict[str, Any], arrays: Sequence[np.ndarray]
    ) -> Iterator[Any]:
        return codec.stream_messages(message, header, arrays, self._chunk_bytes)

    @_rpc
    def CreateOptimizer(
        self, request: pb.CreateOptimizerRequest, context: grpc.ServicerContext
    ) -> pb.CreateOptimizerResponse:
        options = _options_from_proto(request.name, request.options)
        created = self._registry.create_optimizer(request.name, request.config_json, options)
        return pb.CreateOptimizerResponse(created=created)

    @_rpc
    def CreateVariables(
        self, request_iterator: Iterator[pb.CreateVariablesRequest], context: grpc.ServicerContext
    ) -> pb.CreateVariablesResponse:
        first, values = self._read(request_iterator, lambda f: [v.spec for v in f.variables])
        declarations = [(v.name, value) for v, value in zip(first.variables, values, strict=True)]
        created, existing = self._registry.create_variables(first.optimizer, declarations)
        return pb.CreateVariablesResponse(created=created, existing=existing)

    @_rpc
    def ListVariables(
        self, request: pb.ListVariablesRequest, context: grpc.ServicerContext
    ) -> pb.ListVariablesResponse:
        infos = self._registry.variable_infos()
        return pb.ListVariablesResponse(
            variables=[convert.variable_info_to_message(info) for info in infos]
        )

    @_rpc
    def Push(
        self, request_iterator: Iterator[pb.PushRequest], context: grpc.ServicerContext
    ) -> pb.PushResponse:
        first, arrays = self._read(request_iterator, lambda f: convert.gradient_specs(f.gradients))
        gradients = convert.gradients_from_wire(first.gradients, arrays)
        return convert.push_response(self._pusher.push(gradients, **_push_context(first)))

    @_rpc
    def PushPull(
        self, request_iterator: Iterator[pb.PushRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PushPullResponse]:
        first, arrays = self._read(request_iterator, lambda f: convert.gradient_specs(f.gradients))
        gradients = convert.gradients_from_wire(first.gradients, arrays)
        results, pulled = self._pusher.push_pull(
            gradients, _distinct(first.pull), **_push_context(first)
        )
        header = {"push": convert.push_response(results), "tensors": convert.named_specs(pulled)}
        return self._send(pb.PushPullResponse, header, [value for _, value in pulled])

    @_rpc
    def Pull(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullResponse]:
        pulled = self._registry.pull(_distinct(request.names))
        header = {"tensors": convert.named_specs(pulled)}
        return self._send(pb.PullResponse, header, [value for _, value in pulled])

    @_rpc
    def PullRows(
        self, request: pb.PullRowsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullRowsResponse]:
        indices = np.asarray(request.indices, dtype=np.int64)
        rows = self._registry.pull_rows(request.variable, indices, self._max_request_bytes)
        return self._send(pb.PullRowsResponse, {"rows": codec.spec_of(rows)}, [rows])

    @_rpc
    def GetOptimizerWeights(
        self, request: pb.GetOptimizerWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetOptimizerWeightsResponse]:
        weights = self._registry.get_weights(request.optimizer)
        specs = [codec.spec_of(w) for w in weights]
        return self._send(pb.GetOptimizerWeightsResponse, {"weights": specs}, weights)

    @_rpc
    def SetOptimizerWeights(
        self,
        request_iterator: Iterator[pb.SetOptimizerWeightsRequest],
        context: grpc.ServicerContext,
    ) -> pb.SetOptimizerWeightsResponse:
        first, weights = self._read(request_iterator, lambda f: f.weights)
        self._registry.set_weights(first.optimizer, weights)
        return pb.SetOptimizerWeightsResponse()

    @_rpc
    def GetOptimizerConfig(
        self, request: pb.GetOptimizerConfigRequest, context: grpc.ServicerContext
    ) -> pb.GetOptimizerConfigResponse:
        config = self._registry.get_config(request.optimizer)
        options = convert.options_to_message(self._registry.options(request.optimizer))
        return pb.GetOptimizerConfigResponse(config_json=json.dumps(config), options=options)

    @_rpc
    def GetIterations(
        self, request: pb.GetIterationsRequest, context: grpc.ServicerContext
    ) -> pb.GetIterationsResponse:
        return pb.GetIterationsResponse(iterations=self._registry.iterations(request.optimizer))

    @_rpc
    def GetSlotNames(
        self, request: pb.GetSlotNamesRequest, context: grpc.ServicerContext
    ) -> pb.GetSlotNamesResponse:
        return pb.GetSlotNamesResponse(slot_names=self._registry.slot_names(request.optimizer))

    @_rpc
    def GetSlot(
        self, request: pb.GetSlotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetSlotResponse]:
        value = self._registry.get_slot(request.variable, request.slot)
        return self._send(pb.GetSlotResponse, {"slot": codec.spec_of(value)}, [value])

    @_rpc
    def SetHyperparameter(
        self, request: pb.SetHyperparameterRequest, context: grpc.ServicerContext
    ) -> pb.SetHyperparameterResponse:
        where = f"optimizer {shown(request.optimizer)}"
        kind = request.WhichOneof("value")
        if kind is None:
            raise InvalidArgument(
                f"{where}: expected a number or schedule_json for {shown(request.name)}, "
                "received neither",
                Reason.MISSING_VALUE,
                {"optimizer": request.optimizer},
            )
        value: Any = request.number
        if kind == "schedule_json":
            value = _schedule(where, request.optimizer, request.schedule_json)
        self._registry.set_hyperparameter(request.optimizer, request.name, value)
        return pb.SetHyperparameterResponse()

    @_rpc
    def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        info = require(self._checkpointer).save()
        return pb.SaveCheckpointResponse(checkpoint=convert.checkpoint_info_to_message(info))

    @_rpc
    def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        infos = require(self._checkpointer).retained()
        return pb.ListCheckpointsResponse(
            checkpoints=[convert.checkpoint_info_to_message(i) for i in infos]
        )

    @_rpc
    def RestoreCheckpoint(
        self, request: pb.RestoreCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.RestoreCheckpointResponse:
        info = require(self._checkpointer).restore(request.id or "latest")
        return pb.RestoreCheckpointResponse(checkpoint=convert.checkpoint_info_to_message(info))

    @_rpc
    def DownloadCheckpoint(
        self, request: pb.DownloadCheckpointRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadCheckpointResponse]:
        info, handles = require(self._checkpointer).open_files(request.id or "latest")
        return _file_stream(handles, convert.checkpoint_info_to_message(info), self._chunk_bytes)


def _schedule(where: str, optimizer: str, text: str) -> dict[str, Any]:
    """Returns a serialized schedule given as JSON, which must be an object."""
    try:
        value = parse_json(text, f"{where}: schedule JSON")
    except InvalidArgument as error:
        raise InvalidArgument(error.message, error.reason, {"optimizer": optimizer}) from None
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"{where}: expected schedule JSON to be an object with 'class_name' and 'config', "
            f"received {shown(text)}",
            Reason.INVALID_CONFIG,
            {"optimizer": optimizer},
        )
    return value


def _push_context(first: pb.PushRequest) -> dict[str, Any]:
    step = first.step if first.HasField("step") else None
    check_step(step)
    return {"request_id": first.request_id, "worker": first.worker, "step": step}


def _distinct(names: Iterable[str]) -> list[str]:
    """The names in order, each once: an answer holds every variable at most once."""
    return list(dict.fromkeys(names))


def _options_from_proto(optimizer: str, message: pb.OptimizerOptions) -> OptimizerOptions:
    """Returns checked options; a refusal names the optimizer."""
    try:
        return checked(convert.options_from_message(message))
    except ValueError as error:  # an enum value this version does not know
        text = f"optimizer options: {error}"
    except InvalidArgument as error:
        text = error.message
    raise InvalidArgument(
        f"optimizer {shown(optimizer)}: {text}", Reason.INVALID_OPTIONS, {"optimizer": optimizer}
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
