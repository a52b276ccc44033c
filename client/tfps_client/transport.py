"""How calls travel: the channel, TLS, tokens, retries, and tensor and file streams in both
directions."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from tfps_client.calls import METHODS, Call, Receiver, framed, receive
from tfps_client.retries import Attempts, Deadline
from tfps_client.types import RetryPolicy

MAX_MESSAGE_BYTES = 256 << 20
"""Largest gRPC message either side accepts (the gRPC default is 4 MiB)."""

TOKEN_ENVIRONMENT_VARIABLE = "TFPS_TOKEN"
"""Where a client finds its token when none is given."""


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
    *,
    aio: bool = False,
) -> Any:
    """Opens a channel to ``address``: TLS with ``credentials``, else plaintext; a
    ``grpc.aio`` channel (to open in the event loop that uses it) when ``aio``, else a
    ``grpc`` one."""
    options = channel_options(max_message_bytes)
    channels: Any = grpc.aio if aio else grpc
    if credentials is not None:
        return channels.secure_channel(address, credentials, options)
    return channels.insecure_channel(address, options)


def tls_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> TlsCredentials:
    """Returns channel credentials for a TLS server, as ``Client(..., credentials=...)`` takes;
    a client given them can be pickled (the pickle holds the files' bytes, the key included).

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
    return TlsCredentials(_file_bytes(ca_file), _file_bytes(key_file), _file_bytes(cert_file))


class TlsCredentials(grpc.ChannelCredentials):
    """TLS channel credentials that keep the PEM bytes they were made of, so that they, and a
    client given them, can be pickled (``grpc.ChannelCredentials`` cannot be).

    Args:
        root_certificates: PEM certificates of the CAs to trust; None trusts the system's.
        private_key: this client's private key (PEM), for mutual TLS.
        certificate_chain: this client's certificate chain (PEM), for mutual TLS.
    """

    def __init__(
        self,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        opaque = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        super().__init__(opaque._credentials)
        self.pem = (root_certificates, private_key, certificate_chain)
        """The PEM bytes: root certificates, private key, certificate chain."""

    def __reduce__(self) -> tuple[type[TlsCredentials], tuple[bytes | None, ...]]:
        return TlsCredentials, self.pem


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


def rpc_methods(channel: Any) -> dict[str, Any]:
    """The multi-callables of every RPC of ``tfps.v1.ParameterServer`` on ``channel`` (a
    ``grpc`` or ``grpc.aio`` one), by name: messages that carry tensor chunks travel as bytes
    (see :mod:`tfps_client.wire.framing`), the others through protobuf."""
    return {
        name: getattr(channel, method.kind)(
            method.path,
            request_serializer=None if framed(method.request) else method.request.SerializeToString,
            response_deserializer=None if framed(method.response) else method.response.FromString,
        )
        for name, method in METHODS.items()
    }


class Transport:
    """What the blocking and the asyncio transports share: the RPCs of a channel, the retry
    policy, the tensor bytes per stream message and the metadata sent with every call.

    The transports make the calls of :mod:`tfps_client.calls`, each attempt with the time
    left of its deadline, and raise every failure as the :class:`tfps_client.TfpsError`
    subclass of its status (see :class:`tfps_client.retries.Attempts`).

    Args:
        methods: the multi-callables of :func:`rpc_methods`.
        retry: how UNAVAILABLE and DEADLINE_EXCEEDED are retried.
        chunk_bytes: tensor bytes per stream message.
        metadata: sent with every call, such as :func:`bearer_metadata`'s.
    """

    def __init__(
        self,
        methods: dict[str, Any],
        retry: RetryPolicy,
        chunk_bytes: int,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.retry = retry
        self.chunk_bytes = chunk_bytes
        self._methods = methods
        self._metadata = tuple(metadata)

    def _send(self, call: Call, timeout: float | None) -> Any:
        """Starts an attempt of ``call``; returns what the multi-callable returns (a
        response, its awaitable, or the stream of responses)."""
        return self._methods[call.method](
            call.requests(self.chunk_bytes), timeout=timeout, metadata=self._metadata
        )


class BlockingTransport(Transport):
    """Makes calls on a ``grpc`` channel, blocking."""

    def perform(self, call: Call, deadline: Deadline) -> Any:
        """Makes ``call``, retried as :attr:`retry` says within ``deadline``; returns its result.

        Raises:
            TfpsError: the call failed (see :meth:`Attempts.failed`).
        """
        attempts = Attempts(call.method, self.retry, deadline)
        while True:
            try:
                return self._attempt(call, attempts.start())
            except grpc.RpcError as error:
                time.sleep(attempts.failed(error))

    def _attempt(self, call: Call, timeout: float | None) -> Any:
        if call.receiver is None:
            return self._send(call, timeout)
        receiver, responses = call.receiver(), self._send(call, timeout)
        try:
            return receive(receiver, responses)
        finally:
            _stop(receiver, responses)


class AsyncTransport(Transport):
    """Makes calls on a ``grpc.aio`` channel, awaited."""

    async def perform(self, call: Call, deadline: Deadline) -> Any:
        """Makes ``call``, retried as :attr:`retry` says within ``deadline``; returns its result.

        Raises:
            TfpsError: the call failed (see :meth:`Attempts.failed`).
        """
        attempts = Attempts(call.method, self.retry, deadline)
        while True:
            try:
                return await self._attempt(call, attempts.start())
            except grpc.RpcError as error:
                await asyncio.sleep(attempts.failed(error))

    async def _attempt(self, call: Call, timeout: float | None) -> Any:
        if call.receiver is None:
            return await self._send(call, timeout)
        receiver, responses = call.receiver(), self._send(call, timeout)
        try:
            async for response in responses:
                if receiver.add(response):
                    break
            return receiver.finish()
        finally:
            _stop(receiver, responses)


def _stop(receiver: Receiver, responses: Any) -> None:
    """Ends an attempt's stream, finished or not: the receiver lets go of what it holds, and
    the call is cancelled (nothing, if it is over)."""
    receiver.close()
    responses.cancel()
