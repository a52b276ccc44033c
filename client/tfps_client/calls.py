"""The client's calls without I/O: what a client method sends and how it reads the answers.

A client method is written once, as a generator (its *steps*) that yields a :class:`Call`
for every RPC it needs and receives the RPC's result, or has the RPC's
:class:`~tfps_client.TfpsError` thrown in, at the ``yield``. A transport, blocking
(:class:`tfps_client.transport.Transport`) or asyncio (:mod:`tfps_client.aio`), makes the
calls; :class:`Run` steps the generator between them. Tensor streams are written by
:func:`codec.encode_stream` and read by a :class:`Receiver` one message at a time, so the
same code reads what a blocking iterator or an asyncio one delivers.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Generic, NamedTuple, Protocol, TypeVar, cast

import numpy as np
from google.protobuf.message import Message

from tfps_client.errors import DataLossError, InternalError, TfpsError
from tfps_client.retries import Deadline
from tfps_client.wire import codec, framing, tensor_pb2
from tfps_client.wire import parameter_server_pb2 as pb

_T = TypeVar("_T")

SERVICE = pb.DESCRIPTOR.services_by_name["ParameterServer"]
"""The service every call goes to."""

SpecsOf = Callable[[Any], Sequence[tensor_pb2.TensorSpec]]
"""Returns the tensor specs a stream's first message announces."""


class Method(NamedTuple):
    """An RPC of :data:`SERVICE`, as the transports call it."""

    path: str
    """``/tfps.v1.ParameterServer/Name``."""
    request: type[Message]
    """The request message class."""
    response: type[Message]
    """The response message class."""
    kind: str
    """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``: the name
    of the channel's method that makes its multi-callable."""


def framed(message_class: type[Message]) -> bool:
    """Whether messages of ``message_class`` carry tensor chunks, and so travel as bytes
    written and read by :mod:`framing` rather than by protobuf."""
    return "chunks" in message_class.DESCRIPTOR.fields_by_name


def _arity(streaming: bool) -> str:
    return "stream" if streaming else "unary"


METHODS: dict[str, Method] = {
    method.name: Method(
        f"/{SERVICE.full_name}/{method.name}",
        getattr(pb, method.input_type.name),
        getattr(pb, method.output_type.name),
        f"{_arity(method.client_streaming)}_{_arity(method.server_streaming)}",
    )
    for method in SERVICE.methods
}
"""Every RPC of :data:`SERVICE`, by name."""


class Receiver(Protocol):
    """Reads the responses of one attempt of a server-streaming call."""

    def add(self, response: Any) -> bool:
        """Takes the next response; returns True when no more are needed.

        Raises:
            TfpsError: the response is malformed or does not fit the ones before.
        """

    def finish(self) -> Any:
        """Returns the call's result once the stream ended (or :meth:`add` returned True).

        Raises:
            TfpsError: the stream is incomplete.
        """

    def close(self) -> None:
        """Releases what the receiver holds, whether it finished or not."""


class Call(NamedTuple):
    """One RPC a client method makes; see :func:`unary`, :func:`upload`, :func:`download`,
    :func:`exchange` and :func:`download_files`."""

    method: str
    """The RPC's name in :data:`METHODS`."""
    requests: Callable[[int], Any]
    """Given the bytes of tensor data per message, returns what an attempt sends: the
    request message, or for a client-streaming RPC a fresh iterator of serialized
    messages. Called once per attempt."""
    receiver: Callable[[], Receiver] | None = None
    """For a server-streaming RPC, makes the reader of an attempt's responses; None when
    the RPC's one response is the result."""


def unary(method: str, request: Message) -> Call:
    """A call with one request and one response, which is its result."""
    return Call(method, lambda _: request)


def upload(method: str, header: Mapping[str, Any], arrays: Sequence[np.ndarray]) -> Call:
    """A client-streaming call: ``header``'s fields, then the arrays' chunks; its one
    response is its result."""
    return Call(method, functools.partial(_encoded, METHODS[method].request, header, arrays))


def download(method: str, request: Message, specs_of: SpecsOf) -> Call:
    """A server-streaming call whose result is its first response's header and the tensors
    that header announces."""
    return Call(method, lambda _: request, functools.partial(TensorReceiver, method, specs_of))


def exchange(
    method: str, header: Mapping[str, Any], arrays: Sequence[np.ndarray], specs_of: SpecsOf
) -> Call:
    """A bidirectional call: tensors up as :func:`upload` sends them, tensors down as
    :func:`download` reads them."""
    return Call(
        method,
        functools.partial(_encoded, METHODS[method].request, header, arrays),
        functools.partial(TensorReceiver, method, specs_of),
    )


def download_files(method: str, request: Message, directory: Path) -> Call:
    """A server-streaming call of file chunks and a manifest, written into ``directory``
    (see :class:`FileReceiver`); its result is the manifest."""
    return Call(method, lambda _: request, functools.partial(FileReceiver, directory))


def receive(receiver: Receiver, responses: Iterable[Any]) -> Any:
    """Hands ``responses`` to ``receiver`` until it needs no more; returns its result."""
    for response in responses:
        if receiver.add(response):
            break
    return receiver.finish()


def _encoded(
    message_class: type[Message],
    header: Mapping[str, Any],
    arrays: Sequence[np.ndarray],
    chunk_bytes: int,
) -> Iterator[bytes]:
    return codec.encode_stream(message_class, header, arrays, chunk_bytes)


def undecodable(method: str, error: Exception) -> InternalError:
    """The error raised for a response the client cannot decode: INTERNAL, as gRPC's own for
    a response it cannot parse."""
    return InternalError(f"{method}: the response could not be decoded: {error}")


class TensorReceiver:
    """Reads a tensor stream: the first message's header, and the tensors it announces.

    Args:
        method: the RPC's name in :data:`METHODS`.
        specs_of: returns the specs the first message's header announces.
    """

    def __init__(self, method: str, specs_of: SpecsOf) -> None:
        self._method = method
        self._response = METHODS[method].response
        self._specs_of = specs_of
        self._first: Any = None
        self._assembler: codec.TensorAssembler | None = None

    def add(self, response: bytes) -> bool:
        """Takes the next serialized message; see :class:`Receiver`."""
        try:
            framed = framing.decode(response, self._response)
            if self._assembler is None:
                self._first = framed.message
                self._assembler = codec.TensorAssembler(self._specs_of(framed.message))
            self._assembler.add(framed.chunks)
        except ValueError as error:
            raise undecodable(self._method, error) from error
        return False

    def finish(self) -> tuple[Any, list[np.ndarray]]:
        """Returns the first message's header and the tensors; see :class:`Receiver`."""
        if self._assembler is None:
            raise undecodable(self._method, ValueError("the stream ended without a message"))
        try:
            return self._first, self._assembler.finish()
        except ValueError as error:
            raise undecodable(self._method, error) from error

    def close(self) -> None:
        """Holds nothing to release."""


class FileReceiver:
    """Writes streamed checkpoint files into a directory, verifying sizes and SHA-256.

    Files are written as ``*.partial`` and renamed only once the manifest has arrived and
    every file matches it, so an interrupted download never leaves files that look complete.

    Args:
        directory: where the files go (created if needed).

    Raises:
        OSError: the directory cannot be created.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._handles: dict[str, BinaryIO] = {}
        self._digests: dict[str, Any] = {}
        self._manifest: pb.CheckpointManifest | None = None

    def add(self, response: pb.DownloadCheckpointResponse) -> bool:
        """Writes a chunk, or takes the manifest (True: the stream is complete).

        Raises:
            DataLossError: a chunk is not at the offset its file has reached.
            OSError: a file cannot be written.
        """
        if response.HasField("manifest"):
            self._manifest = response.manifest
            return True
        chunk = response.chunk
        name = Path(chunk.file).name
        if name not in self._handles:
            self._handles[name] = (self._directory / f"{name}.partial").open("wb")
            self._digests[name] = hashlib.sha256()
        if self._handles[name].tell() != chunk.offset:
            raise DataLossError(
                f"{name}: expected offset {self._handles[name].tell()}, received {chunk.offset}"
            )
        self._handles[name].write(chunk.data)
        self._digests[name].update(chunk.data)
        return False

    def finish(self) -> pb.CheckpointManifest:
        """Verifies the files against the manifest and renames them into place.

        Raises:
            DataLossError: the manifest is missing, or a file's size or digest does not match.
        """
        self.close()
        manifest = self._manifest
        if manifest is None:
            raise DataLossError("checkpoint download ended without its manifest")
        names = [Path(expected.file).name for expected in manifest.files]
        for name, expected in zip(names, manifest.files, strict=True):
            partial = self._directory / f"{name}.partial"
            size = partial.stat().st_size if partial.exists() else -1
            digest = self._digests[name].hexdigest() if name in self._digests else ""
            if size != expected.size or digest != expected.sha256:
                raise DataLossError(
                    f"{name}: expected {expected.size} bytes with sha256 {expected.sha256}, "
                    f"received {size} bytes with sha256 {digest or 'none'}"
                )
        for name in names:
            (self._directory / f"{name}.partial").replace(self._directory / name)
        return manifest

    def close(self) -> None:
        """Closes the files being written."""
        for handle in self._handles.values():
            handle.close()


class Fanout(NamedTuple):
    """Steps run on several shards at once, each on its own shard's channel: one round
    trip for all of them. Its result is each one's, by shard index; when any raised, the
    first error (in shard order) is thrown in once all of them ended."""

    steps: Mapping[int, Steps[Any]]
    """The steps each shard runs, by its index in the client's address list; their
    calls are :class:`Call` s (a fan-out does not nest)."""


def one(call: Call) -> Steps[Any]:
    """Steps that make ``call`` and return its result, for a :class:`Fanout`."""
    return (yield call)


Steps = Generator["Call | Fanout", Any, _T]
"""A client method's body: yields its calls (or fan-outs of other steps over the shards),
receives their results, returns its own."""


class Run(Generic[_T]):
    """Steps one client method's :data:`Steps` through its calls.

    The driver asks :meth:`next_call` for a call, makes it, and hands its result to
    :meth:`resolve` or its error to :meth:`fail`, until :meth:`next_call` returns None and
    :attr:`result` holds the method's result. A ``ValueError`` the steps raise once a call
    was made is a response they could not decode, raised as INTERNAL; before, it is the
    caller's, raised as it is.

    Args:
        steps: the method's body, not started.
        deadline: the deadline all the method's calls share (a fan-out's steps share
            the method's).
    """

    def __init__(self, steps: Steps[_T], deadline: Deadline) -> None:
        self._steps = steps
        self.deadline = deadline
        """The deadline all the method's calls share."""
        self._call: Call | Fanout | None = None
        self._outcome: Any = None
        self._error: TfpsError | None = None
        self.result: _T
        """The method's result, once :meth:`next_call` returned None."""

    def next_call(self) -> Call | Fanout | None:
        """Runs the steps up to their next call and returns it; None once they returned.

        Raises:
            TfpsError: the steps raised one (the error of their call, or their own).
            TypeError, ValueError: the steps refused their arguments, before any call.
        """
        made, self._call = self._call, None
        try:
            if made is None:
                self._call = next(self._steps)
            elif self._error is not None:
                error, self._error = self._error, None
                self._call = self._steps.throw(error)
            else:
                self._call = self._steps.send(self._outcome)
        except StopIteration as stop:
            self.result = stop.value
        except ValueError as error:
            if made is None:
                raise
            raise undecodable(_method_of(made), error) from error
        finally:
            self._outcome = None
        return self._call

    def resolve(self, outcome: Any) -> None:
        """Takes the result of the call :meth:`next_call` returned."""
        self._outcome = outcome

    def fail(self, error: TfpsError) -> None:
        """Takes the error of the call :meth:`next_call` returned."""
        self._error = error


def _method_of(made: Call | Fanout) -> str:
    """The RPC a response that could not be decoded came from."""
    return made.method if isinstance(made, Call) else "fan-out"


def first_error(outcomes: Mapping[int, object]) -> TfpsError | None:
    """The error of a :class:`Fanout`'s lowest shard that failed, if any; the outcomes are
    its steps' results or errors, by shard."""
    for shard in sorted(outcomes):
        if isinstance(outcomes[shard], TfpsError):
            return cast(TfpsError, outcomes[shard])
    return None
