"""The typed client of the tfps parameter server: one method per user intent."""

from __future__ import annotations

from typing import TypeVar

import grpc

from tfps_client.calls import Run, Steps
from tfps_client.errors import TfpsError, UnavailableError
from tfps_client.operations import LISTING_RESTARTS, Gradient, Operations
from tfps_client.transport import BlockingTransport, open_channel, rpc_methods

__all__ = ["LISTING_RESTARTS", "Client", "Gradient"]

_T = TypeVar("_T")


class Client(Operations):
    """Talks to one tfps server; every method blocks until its answer.

    :class:`tfps_client.aio.Client` has the same methods, arguments and errors, as
    coroutines.

    Each method call, all its RPCs and their retries together, takes at most ``timeout``
    seconds; each attempt gets the time left, no wait between attempts goes past it, and
    once it passes the call raises :class:`DeadlineExceededError`, naming the attempts made
    and the last one's error. Retries are logged at DEBUG on the ``tfps_client`` logger.

    Errors: a method whose call fails raises the :class:`tfps_client.TfpsError` subclass of
    the gRPC status (:class:`InternalError` for a response the client cannot decode). An
    argument it cannot send raises ``TypeError`` (a wrong type) or ``ValueError`` (a value
    the wire cannot carry) before any call is made, as each method's docstring says, and so
    does any method called after :meth:`close` (``ValueError``).

    A client can be pickled (for ``multiprocessing`` or Ray): the pickle holds its
    configuration, the token and the PEM bytes of :func:`tfps_client.tls_credentials`
    included (treat it as a secret where they are), and the unpickled client opens a channel
    of its own. A client given other ``grpc.ChannelCredentials`` refuses to be pickled
    (``TypeError``): gRPC's credentials cannot be rebuilt.

    Args:
        address: ``host:port`` of the server.
        timeout: seconds each method call may take, retries included; ``None`` (or
            ``math.inf``) waits forever.
        chunk_bytes: tensor bytes per stream message.
        max_message_bytes: largest gRPC message sent or received.
        credentials: channel credentials for TLS, such as
            ``tfps_client.tls_credentials("ca.pem")``; ``None`` for plaintext.
        retry: how calls failing with UNAVAILABLE or DEADLINE_EXCEEDED are retried.
        token: sent as ``authorization: Bearer TOKEN`` with every call, for a server
            that requires tokens; ``None`` reads the ``TFPS_TOKEN`` environment
            variable; empty sends none.

    Raises:
        TypeError: ``timeout`` is not a number or ``None``.
        ValueError: ``timeout`` is NaN, zero or negative, ``retry`` has a value out of its
            range, or the token is not printable ASCII without spaces.
    """

    def _connect(self) -> None:
        settings = self._settings
        self._channel = open_channel(
            settings.address, settings.credentials, settings.max_message_bytes
        )
        self._transport = BlockingTransport(
            rpc_methods(self._channel), settings.retry, settings.chunk_bytes, settings.metadata
        )

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

    def _run(self, steps: Steps[_T]) -> _T:
        run = Run(steps, self.timeout)
        while (call := run.next_call()) is not None:
            try:
                run.resolve(self._transport.perform(call, run.deadline))
            except TfpsError as error:
                run.fail(error)
        return run.result
