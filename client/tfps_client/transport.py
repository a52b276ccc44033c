"""How calls travel: the channel, TLS, tokens, retries, and tensor and file streams in both
directions."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from tfps_client.errors import DataLossError, from_rpc_error
from tfps_client.types import RetryPolicy
from tfps_client.wire import codec, framing, tensor_pb2
from tfps_client.wire import parameter_server_pb2 as pb

MAX_MESSAGE_BYTES = 256 << 20
"""Largest gRPC message either side accepts (the gRPC default is 4 MiB)."""

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Status codes the client retries by itself."""

TOKEN_ENVIRONMENT_VARIABLE = "TFPS_TOKEN"
"""Where a client finds its token when none is given."""

_T = TypeVar("_T")


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Returns the gRPC options both client and server use for message sizes."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """Opens a channel to ``address``: TLS with ``credentials``, else plaintext."""
    options = channel_options(max_message_bytes)
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options)
    return grpc.insecure_channel(address, options)


def tls_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """Returns channel credentials for a TLS server, as ``Client(..., credentials=...)`` takes.

    Args:
        ca_file: PEM certificates of the CA that signed the server's certificate;
            None trusts the system's root certificates.
        cert_file: this client's certificate chain (PEM), for a server that requires
            client certificates (mutual TLS); given with ``key_file``.
        key_file: the private key of ``cert_file`` (PEM, unencrypted).

    Raises:
        ValueError: only one of ``cert_file`` and ``key_file`` was given.
        OSError: a file cannot be read.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError(
            "tls_credentials: expected cert_file and key_file together or neither, "
            f"received cert_file={cert_file!r} and key_file={key_file!r}"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_file_bytes(ca_file),
        private_key=_file_bytes(key_file),
        certificate_chain=_file_bytes(cert_file),
    )


def _file_bytes(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Returns the metadata that carries ``token`` with every call.

    Args:
        token: the token; None reads :data:`TOKEN_ENVIRONMENT_VARIABLE`, and an empty
            one (given or read) sends none. Surrounding whitespace is ignored.

    Raises:
        ValueError: the token is not printable ASCII without spaces (it is not shown).
    """
    if token is None:
        token = os.environ.get(TOKEN_ENVIRONMENT_VARIABLE, "")
    token = token.strip()
    if not token:
        return ()
    if not all("!" <= character <= "~" for character in token):
        raise ValueError(
            "token: expected printable ASCII characters without spaces, received a token "
            f"of {len(token)} characters with others (the token is not shown)"
        )
    return (("authorization", f"Bearer {token}"),)


class TensorMethod(NamedTuple):
    """A method whose requests or responses carry tensors, called with bytes where they do."""

    call: Any
    """The multi-callable: takes serialized requests when they carry chunks, and returns
    serialized responses when they do (see :mod:`framing`)."""
    request: type[Message]
    """The request message class."""
    response: type[Message]
    """The response message class."""


def tensor_methods(channel: grpc.Channel) -> dict[str, TensorMethod]:
    """The methods of ``tfps.v1.ParameterServer`` whose requests or responses carry
    tensor chunks, by name, on ``channel``."""
    service = pb.DESCRIPTOR.services_by_name["ParameterServer"]
    methods = {}
    for method in service.methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        framed = ["chunks" in m.DESCRIPTOR.fields_by_name for m in (request, response)]
        if not any(framed):
            continue
        kind = "_".join(
            "stream" if s else "unary" for s in (method.client_streaming, method.server_streaming)
        )
        make = getattr(channel, kind)
        call = make(
            f"/{service.full_name}/{method.name}",
            request_serializer=None if framed[0] else request.SerializeToString,
            response_deserializer=None if framed[1] else response.FromString,
        )
        methods[method.name] = TensorMethod(call, request, response)
    return methods


class Transport:
    """Makes calls with a deadline, retries and the caller's token, and moves tensors and
    files as streams.

    Every failure is raised as the :class:`tfps_client.TfpsError` subclass of its status.

    Args:
        timeout: seconds each attempt may take; ``None`` waits forever.
        retry: how UNAVAILABLE and DEADLINE_EXCEEDED are retried.
        chunk_bytes: tensor bytes per stream message.
        metadata: sent with every call, such as :func:`bearer_metadata`'s.
    """

    def __init__(
        self,
        timeout: float | None,
        retry: RetryPolicy,
        chunk_bytes: int,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.timeout = timeout
        self.retry = retry
        self.chunk_bytes = chunk_bytes
        self._metadata = tuple(metadata)

    def _call(self, method: Callable[..., _T], request: Any) -> _T:
        """Makes one attempt of a call, with the deadline and the metadata."""
        return method(request, timeout=self.timeout, metadata=self._metadata)

    def with_retries(self, attempt: Callable[[], _T]) -> _T:
        """Runs ``attempt``, retrying UNAVAILABLE and DEADLINE_EXCEEDED with backoff."""
        policy = self.retry
        backoff = policy.initial_backoff
        for number in range(1, policy.max_attempts + 1):
            try:
                return attempt()
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code not in RETRYABLE or number == policy.max_attempts:
                    raise from_rpc_error(error) from None
            time.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * policy.multiplier, policy.max_backoff)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def unary(self, method: Callable[..., _T], request: Any) -> _T:
        """Calls a unary method."""
        return self.with_retries(lambda: self._call(method, request))

    def upload(
        self, method: TensorMethod, header: Mapping[str, Any], arrays: Sequence[np.ndarray]
    ) -> Any:
        """Calls a client-streaming method with ``header`` and the arrays' chunks."""
        return self.with_retries(
            lambda: self._call(method.call, self._stream(method, header, arrays))
        )

    def download(
        self,
        method: TensorMethod,
        request: Any,
        specs_of: Callable[[Any], Sequence[tensor_pb2.TensorSpec]],
    ) -> tuple[Any, list[np.ndarray]]:
        """Calls a server-streaming method; returns its first message's header and its
        tensors."""
        return self.with_retries(
            lambda: codec.read_stream(_decoded(self._call(method.call, request), method), specs_of)
        )

    def exchange(
        self,
        method: TensorMethod,
        header: Mapping[str, Any],
        arrays: Sequence[np.ndarray],
        specs_of: Callable[[Any], Sequence[tensor_pb2.TensorSpec]],
    ) -> tuple[Any, list[np.ndarray]]:
        """Calls a bidirectional method: tensors up, tensors down."""
        return self.with_retries(
            lambda: codec.read_stream(
                _decoded(self._call(method.call, self._stream(method, header, arrays)), method),
                specs_of,
            )
        )

    def download_files(
        self,
        method: Callable[..., Iterator[pb.DownloadCheckpointResponse]],
        request: pb.DownloadCheckpointRequest,
        dest_dir: str | Path,
    ) -> pb.CheckpointManifest:
        """Streams a checkpoint's files into ``dest_dir``, verifying sizes and SHA-256.

        Files are written as ``*.partial`` and renamed only once verified.

        Raises:
            DataLossError: a file's size or digest does not match the manifest.
        """
        return self.with_retries(
            lambda: _receive_files(self._call(method, request), Path(dest_dir))
        )

    def _stream(
        self, method: TensorMethod, header: Mapping[str, Any], arrays: Sequence[np.ndarray]
    ) -> Iterator[bytes]:
        return codec.encode_stream(method.request, header, arrays, self.chunk_bytes)


def _decoded(responses: Iterator[bytes], method: TensorMethod) -> Iterator[framing.Framed]:
    for data in responses:
        yield framing.decode(data, method.response)


def _receive_files(
    responses: Iterator[pb.DownloadCheckpointResponse], directory: Path
) -> pb.CheckpointManifest:
    directory.mkdir(parents=True, exist_ok=True)
    digests: dict[str, Any] = {}
    handles: dict[str, BinaryIO] = {}
    manifest = None
    try:
        for message in responses:
            if message.HasField("manifest"):
                manifest = message.manifest
                break
            chunk = message.chunk
            name = Path(chunk.file).name
            if name not in handles:
                handles[name] = (directory / f"{name}.partial").open("wb")
                digests[name] = hashlib.sha256()
            if handles[name].tell() != chunk.offset:
                raise DataLossError(
                    f"{name}: expected offset {handles[name].tell()}, received {chunk.offset}"
                )
            handles[name].write(chunk.data)
            digests[name].update(chunk.data)
    finally:
        for handle in handles.values():
            handle.close()
    if manifest is None:
        raise DataLossError("checkpoint download ended without its manifest")
    names = [Path(expected.file).name for expected in manifest.files]
    for name, expected in zip(names, manifest.files, strict=True):
        partial = directory / f"{name}.partial"
        size = partial.stat().st_size if partial.exists() else -1
        digest = digests[name].hexdigest() if name in digests else ""
        if size != expected.size or digest != expected.sha256:
            raise DataLossError(
                f"{name}: expected {expected.size} bytes with sha256 {expected.sha256}, "
                f"received {size} bytes with sha256 {digest or 'none'}"
            )
    for name in names:
        (directory / f"{name}.partial").replace(directory / name)
    return manifest
