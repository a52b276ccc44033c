"""The gRPC servicer: decode, call the registry, pusher or checkpointer, encode.

Handlers are coroutines on the server's event loop; every blocking step (the
state, TensorFlow, the disk) runs in a worker thread, so that the loop, and with
it health checks and small calls, stays free whatever other calls do. Changes
run in the state pool; reads and response building in the read pool.

Every error is mapped to a status here, streamed responses included: a
request gets the precise status of what was wrong with it, and the process
never dies on a request. A fault of the server's own is INTERNAL, logged once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import Message

from tfps_client.types import CheckpointInfo, OptimizerOptions
from tfps_client.wire import codec, convert, framing
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
from tfps_server.limits import Limits
from tfps_server.listing import VariableListing
from tfps_server.push import Pusher
from tfps_server.registry import Registry
from tfps_server.streams import Streams, check_tensor_count, in_thread
from tfps_server.validation import check_config_size, check_step, parse_json

_log = logging.getLogger(__name__)

_Handler = TypeVar("_Handler", bound=Callable[..., Any])
_Result = TypeVar("_Result")

DOWNLOAD_WINDOW_BYTES = 64 << 20
"""Budget a checkpoint download holds: what gRPC may buffer for one stream, not the
checkpoint's size (files are read from disk a message at a time)."""


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
    async def wrapper(
        self: ParameterServerServicer, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        method = handler.__name__
        try:
            if not self.ready.is_set():
                raise Unavailable(
                    f"{method}: the server is restoring a checkpoint; retry shortly",
                    Reason.NOT_READY,
                )
            return await handler(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            if context.cancelled():  # the client went away (a write to it failed): no answer
                return None
            await abort(context, self._without_paths(as_server_error(error, method)))

    return wrapper  # type: ignore[return-value]


class ParameterServerServicer(pb_grpc.ParameterServerServicer):
    """Serves the ``tfps.v1.ParameterServer`` service on a ``grpc.aio`` server.

    Args:
        registry: the state; its ``limits`` bound every request.
        pusher: applies pushes to it.
        streams: receives and sends tensor streams within the bounds and budget.
        state_pool: threads for calls that change the state (pushes may wait there
            for their sync step).
        read_pool: threads for reads.
        chunk_bytes: tensor bytes per response message.
        checkpointer: serves the checkpoint RPCs; None when there is no checkpoint directory.
    """

    def __init__(
        self,
        registry: Registry,
        pusher: Pusher,
        streams: Streams,
        state_pool: Executor,
        read_pool: Executor,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._registry = registry
        self._limits = registry.limits
        self._pusher = pusher
        self._streams = streams
        self._state_pool = state_pool
        self._read_pool = read_pool
        self._checkpointer = checkpointer
        self.ready = threading.Event()
        """Set once the server may answer; RPCs before that get UNAVAILABLE."""
        self.ready.set()
        self._chunk_bytes = chunk_bytes
        self._listing = VariableListing(registry)

    def _without_paths(self, error: ServerError) -> ServerError:
        """The error with the checkpoint directory's path cut from its message and metadata
        (TensorFlow's messages name files by path): clients see names relative to it."""
        if self._checkpointer is None:
            return error
        directory = str(self._checkpointer.directory)

        def cut(text: str) -> str:
            return text.replace(directory + "/", "").replace(directory, "<checkpoint directory>")

        if directory not in error.message and not any(
            directory in value for value in error.metadata.values()
        ):
            return error
        metadata = {key: cut(value) for key, value in error.metadata.items()}
        return type(error)(cut(error.message), error.reason, metadata)

    async def _change(self, function: Callable[..., _Result], *args: Any) -> _Result:
        return await in_thread(self._state_pool, function, *args)

    async def _read(self, function: Callable[..., _Result], *args: Any) -> _Result:
        return await in_thread(self._read_pool, function, *args)

    def _messages(
        self, message: type[Message], header: dict[str, Any], arrays: Sequence[np.ndarray]
    ) -> Iterator[bytes]:
        return codec.encode_stream(message, header, arrays, self._chunk_bytes)

    @_rpc
    async def CreateOptimizer(
        self, request: pb.CreateOptimizerRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOptimizerResponse:
        options = _options_from_proto(request.name, request.options)
        created = await self._change(
            self._registry.create_optimizer,
            request.name,
            request.config_json,
            options,
            request.validate_only,
        )
        return pb.CreateOptimizerResponse(created=created)

    @_rpc
    async def CreateVariables(
        self,
        request_iterator: AsyncIterator[framing.Framed],
        context: grpc.aio.ServicerContext,
    ) -> pb.CreateVariablesResponse:
        async with self._streams.receive(
            request_iterator,
            "CreateVariables",
            lambda f: len(f.variables),
            lambda f: [v.spec for v in f.variables],
        ) as (first, values):
            declarations = [
                (v.name, value) for v, value in zip(first.variables, values, strict=True)
            ]
            placements = {
                v.name: placement
                for v in first.variables
                if (placement := convert.placement_of(v)) is not None
            }
            created, existing = await self._change(
                self._registry.create_variables,
                first.optimizer,
                declarations,
                placements,
                first.validate_only,
            )
        return pb.CreateVariablesResponse(created=created, existing=existing)

    @_rpc
    async def ListVariables(
        self, request: pb.ListVariablesRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        return await self._read(self._listing.page, request.page_size, request.page_token)

    def _receive_push(self, requests: AsyncIterator[framing.Framed], method: str) -> Any:
        return self._streams.receive(
            requests,
            method,
            lambda f: len(f.gradients),
            lambda f: convert.gradient_specs(f.gradients),
        )

    @_rpc
    async def Push(
        self, request_iterator: AsyncIterator[framing.Framed], context: grpc.aio.ServicerContext
    ) -> pb.PushResponse:
        async with self._receive_push(request_iterator, "Push") as (first, arrays):
            gradients = convert.gradients_from_wire(first.gradients, arrays)
            results = await self._change(
                functools.partial(self._pusher.push, gradients, **_push_context(first))
            )
        return convert.push_response(results)

    @_rpc
    async def PushPull(
        self, request_iterator: AsyncIterator[framing.Framed], context: grpc.aio.ServicerContext
    ) -> None:
        async with self._receive_push(request_iterator, "PushPull") as (first, arrays):
            gradients = convert.gradients_from_wire(first.gradients, arrays)
            names = self._pull_names("PushPull", first.pull)
            nbytes = self._registry.plan_pull(names).nbytes if names else 0
            async with self._streams.reserved("PushPull", nbytes):
                deadline = self._streams.deadline(nbytes)
                results, pulled = await self._change(
                    functools.partial(
                        self._pusher.push_pull, gradients, names, **_push_context(first)
                    )
                )
                header = {
                    "push": convert.push_response(results),
                    "tensors": convert.named_specs(pulled),
                }
                messages = self._messages(
                    pb.PushPullResponse, header, [value for _, value in pulled]
                )
                while (message := await self._read(next, messages, None)) is not None:
                    await self._streams.write(context, "PushPull", message, deadline)

    def _pull_names(self, method: str, names: Sequence[str]) -> list[str]:
        """The names in order, each once: an answer holds every variable at most once."""
        check_tensor_count(method, "variable names", len(names), self._limits)
        return list(dict.fromkeys(names))

    @_rpc
    async def Pull(self, request: pb.PullRequest, context: grpc.aio.ServicerContext) -> None:
        plan = self._registry.plan_pull(self._pull_names("Pull", request.names))

        def build() -> Iterator[bytes]:
            pulled = plan.read()
            header = {"tensors": convert.named_specs(pulled)}
            return self._messages(pb.PullResponse, header, [value for _, value in pulled])

        await self._streams.send(context, "Pull", plan.nbytes, build)

    @_rpc
    async def PullRows(
        self, request: pb.PullRowsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        indices = np.asarray(request.indices, dtype=np.int64)
        plan = await self._read(self._registry.plan_rows, request.variable, indices)

        def build() -> Iterator[bytes]:
            return _row_messages(plan.read(), indices, self._registry.device, self._chunk_bytes)

        await self._streams.send(context, "PullRows", plan.nbytes, build)

    @_rpc
    async def GetOptimizerWeights(
        self, request: pb.GetOptimizerWeightsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        plan = await self._read(self._registry.plan_weights, request.optimizer)

        def build() -> Iterator[bytes]:
            weights = plan.read()
            header = {"weights": [codec.spec_of(w) for w in weights]}
            return self._messages(pb.GetOptimizerWeightsResponse, header, weights)

        await self._streams.send(context, "GetOptimizerWeights", plan.nbytes, build)

    @_rpc
    async def SetOptimizerWeights(
        self,
        request_iterator: AsyncIterator[framing.Framed],
        context: grpc.aio.ServicerContext,
    ) -> pb.SetOptimizerWeightsResponse:
        async with self._streams.receive(
            request_iterator, "SetOptimizerWeights", lambda f: len(f.weights), lambda f: f.weights
        ) as (first, weights):
            await self._change(self._registry.set_weights, first.optimizer, weights)
        return pb.SetOptimizerWeightsResponse()

    @_rpc
    async def GetOptimizerConfig(
        self, request: pb.GetOptimizerConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOptimizerConfigResponse:
        config = await self._read(self._registry.get_config, request.optimizer)
        options = convert.options_to_message(self._registry.options(request.optimizer))
        return pb.GetOptimizerConfigResponse(config_json=json.dumps(config), options=options)

    @_rpc
    async def GetIterations(
        self, request: pb.GetIterationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetIterationsResponse:
        iterations = await self._read(self._registry.iterations, request.optimizer)
        return pb.GetIterationsResponse(iterations=iterations)

    @_rpc
    async def GetSlotNames(
        self, request: pb.GetSlotNamesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSlotNamesResponse:
        names = await self._read(self._registry.slot_names, request.optimizer)
        return pb.GetSlotNamesResponse(slot_names=names)

    @_rpc
    async def GetSlot(self, request: pb.GetSlotRequest, context: grpc.aio.ServicerContext) -> None:
        plan = await self._read(self._registry.plan_slot, request.variable, request.slot)

        def build() -> Iterator[bytes]:
            value = plan.read()
            return self._messages(pb.GetSlotResponse, {"slot": codec.spec_of(value)}, [value])

        await self._streams.send(context, "GetSlot", plan.nbytes, build)

    @_rpc
    async def SetHyperparameter(
        self, request: pb.SetHyperparameterRequest, context: grpc.aio.ServicerContext
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
            value = _schedule(where, request.optimizer, request.schedule_json, self._limits)
        await self._change(
            self._registry.set_hyperparameter,
            request.optimizer,
            request.name,
            value,
            request.validate_only,
        )
        return pb.SetHyperparameterResponse()

    @_rpc
    async def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        checkpointer = require(self._checkpointer)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + _answer_in_time(remaining)
        ended = threading.Event()
        try:
            info = await self._change(
                functools.partial(
                    checkpointer.save,
                    dict(request.at_iterations),
                    request.group,
                    deadline,
                    ended,
                )
            )
        finally:  # a call that ended (cancelled, past its deadline) holds no push any longer
            ended.set()
            self._registry.barrier.wake()
        return pb.SaveCheckpointResponse(checkpoint=_public(info))

    @_rpc
    async def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        infos = await self._read(require(self._checkpointer).retained)
        return pb.ListCheckpointsResponse(checkpoints=[_public(info) for info in infos])

    @_rpc
    async def RestoreCheckpoint(
        self, request: pb.RestoreCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.RestoreCheckpointResponse:
        info = await self._change(require(self._checkpointer).restore, _which(request))
        return pb.RestoreCheckpointResponse(checkpoint=_public(info))

    @_rpc
    async def DownloadCheckpoint(
        self, request: pb.DownloadCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> None:
        checkpointer = require(self._checkpointer)
        info, handles = await self._read(checkpointer.open_files, _which(request))
        try:
            await self._streams.send(
                context,
                "DownloadCheckpoint",
                info.size_bytes,
                lambda: _file_stream(handles, _public(info), self._chunk_bytes),
                window=min(info.size_bytes, DOWNLOAD_WINDOW_BYTES),
            )
        finally:
            for _, handle in handles:
                handle.close()

    @_rpc
    async def DeclareShard(
        self, request: pb.DeclareShardRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeclareShardResponse:
        await self._change(
            self._registry.declare_shard, request.shard, request.shards, request.validate_only
        )
        return pb.DeclareShardResponse()


SAVE_ANSWER_MARGIN_SECONDS = 0.1
"""How long before its call's deadline a save waiting for iterations gives up (at most a
tenth of the time it has), so that its answer, naming the optimizers it waited for,
reaches the client before the deadline does."""


def _answer_in_time(remaining: float) -> float:
    """Seconds a save waiting for iterations may wait, of the ``remaining`` its call has."""
    return max(remaining - min(SAVE_ANSWER_MARGIN_SECONDS, remaining / 10), 0.0)


def _public(info: CheckpointInfo) -> pb.CheckpointInfo:
    """The wire form of a checkpoint: its path relative to the checkpoint directory, so
    that no path of the server's filesystem reaches clients."""
    return convert.checkpoint_info_to_message(dataclasses.replace(info, path=Path(info.path).name))


def _row_messages(
    snapshot: tf.Tensor, indices: np.ndarray, device: str, chunk_bytes: int
) -> Iterator[bytes]:
    """Yields ``snapshot[indices]`` as a tensor stream, gathering only one message's rows at
    a time: the whole answer is never held at once."""
    shape = (len(indices), *snapshot.shape[1:])
    spec = codec.TensorSpec(dtype=codec.wire_dtype(snapshot.dtype.name), shape=shape)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * snapshot.dtype.size
    rows_per_message = max(1, chunk_bytes // max(row_bytes, 1))
    first = pb.PullRowsResponse(rows=spec).SerializeToString()
    field = framing.chunks_field(pb.PullRowsResponse)
    offset = 0
    for start in range(0, max(len(indices), 1), rows_per_message):
        with tf.device(device):
            block = tf.gather(snapshot, indices[start : start + rows_per_message]).numpy()
        data = codec.little_endian_bytes(block)
        pieces = [framing.Piece(0, offset, data)] if len(data) else []
        yield framing.encode(first if start == 0 else b"", field, pieces)
        offset += len(data)


def _schedule(where: str, optimizer: str, text: str, limits: Limits) -> dict[str, Any]:
    """Returns a serialized schedule given as JSON, which must be an object."""
    check_config_size(f"{where}: schedule JSON", text, limits.max_config_bytes)
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


def _which(request: pb.RestoreCheckpointRequest | pb.DownloadCheckpointRequest) -> int | str:
    """The checkpoint a request names: its id, or "latest" when the id is unset."""
    return request.id if request.HasField("id") else "latest"


def _push_context(first: pb.PushRequest | pb.PushPullRequest) -> dict[str, Any]:
    step = first.step if first.HasField("step") else None
    check_step(step)
    return {
        "request_id": first.request_id,
        "worker": first.worker,
        "step": step,
        "advance": list(first.advance),
        "non_finite": list(first.non_finite),
        "follow": [_sync_step(message) for message in first.follow],
    }


def _sync_step(message: pb.SyncStep) -> convert.SyncStep:
    """Returns a push's ``follow`` step, its outcome and step checked."""
    try:
        decided = convert.sync_step_from_message(message)
    except ValueError as error:
        raise InvalidArgument(
            f"push follow: optimizer {shown(message.optimizer)}: {error}",
            Reason.INVALID_FOLLOW,
            {"optimizer": message.optimizer},
        ) from None
    check_step(decided.step)
    return decided


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
    for name, handle in handles:
        digest, offset = hashlib.sha256(), 0
        while data := handle.read(chunk_bytes):
            digest.update(data)
            yield pb.DownloadCheckpointResponse(
                chunk=pb.FileChunk(file=name, offset=offset, data=data)
            )
            offset += len(data)
        digests.append(pb.FileDigest(file=name, size=offset, sha256=digest.hexdigest()))
    manifest = pb.CheckpointManifest(checkpoint=info, files=digests)
    yield pb.DownloadCheckpointResponse(manifest=manifest)
