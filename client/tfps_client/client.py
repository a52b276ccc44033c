"""The typed client of the tfps parameter server: one method per user intent."""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from tfps_client.calls import Fanout, Run, Steps, first_error
from tfps_client.errors import TfpsError, UnavailableError
from tfps_client.operations import LISTING_RESTARTS, Gradient, Operations
from tfps_client.retries import Deadline
from tfps_client.transport import BlockingTransport, open_channel, rpc_methods

__all__ = ["LISTING_RESTARTS", "Client", "Gradient"]

_T = TypeVar("_T")


class Client(Operations):
    """Talks to one tfps server, or to several as shards of one; every method blocks until
    its answer.

    Given several addresses, the client behaves as one server whose variables are spread
    over them (see :mod:`tfps_client.sharding`): each variable lives on one shard, chosen
    at creation by greedy balancing of bytes and recorded on the servers; one of more than
    ``max_shard_bytes`` is split by rows over several. A call goes to the shards that hold
    what it names, at once, so that it costs about one round trip; ``pull`` and
    ``pull_rows`` return whole variables and rows in the order asked. Every shard holding
    an optimizer's variables counts each push, so its ``iterations`` (and with them Adam's
    bias correction and learning-rate schedules) agree with one server's. Each server
    learns its index in the list on first use and refuses a client that gives it another
    (``FailedPreconditionError``, reason ``SHARD_MISMATCH``): keep the list in one order.
    Checkpoints are logical: one on every shard at the same step (see
    :meth:`save_checkpoint`); ``get_weights`` is one server's list.

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
        address: ``host:port`` of the server, or a sequence of them: the shards, in an
            order that never changes (for example the ``ps`` tasks of ``TF_CONFIG``, as
            :meth:`from_tf_config` reads them).
        timeout: seconds each method call may take, retries included; ``None`` (or
            ``math.inf``) waits forever.
        max_shard_bytes: a variable created with more bytes than this is split by rows
            into parts on distinct shards (at most one per shard and per row); ``None``
            never splits. Only a sharded client splits.
        chunk_bytes: tensor bytes per stream message.
        max_message_bytes: largest gRPC message sent or received.
        credentials: channel credentials for TLS, such as
            ``tfps_client.tls_credentials("ca.pem")``; ``None`` for plaintext.
        retry: how calls failing with UNAVAILABLE or DEADLINE_EXCEEDED are retried.
        token: sent as ``authorization: Bearer TOKEN`` with every call, for a server
            that requires tokens; ``None`` reads the ``TFPS_TOKEN`` environment
            variable; empty sends none.

    Raises:
        TypeError: ``timeout`` is not a number or ``None``, an address is not a string, or
            ``max_shard_bytes`` is not an integer.
        ValueError: ``timeout`` is NaN, zero or negative, ``retry`` has a value out of its
            range, the token is not printable ASCII without spaces, no address or one
            twice is given, or ``max_shard_bytes`` is not positive.
    """

    def _connect(self) -> None:
        settings = self._settings
        self._channels = [
            open_channel(address, settings.credentials, settings.max_message_bytes)
            for address in settings.addresses
        ]
        self._transports = [
            BlockingTransport(
                rpc_methods(channel), settings.retry, settings.chunk_bytes, settings.metadata
            )
            for channel in self._channels
        ]
        # A shard's call may wait for other callers' calls (a sync step closes once every
        # worker's part has arrived), so no call waits for a thread: the pool grows with the
        # calls in flight, its idle threads reused.
        self._pool = ThreadPoolExecutor(sys.maxsize, "tfps-fan-out")

    def close(self) -> None:
        """Closes the channels."""
        for channel in self._channels:
            channel.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_for_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the server accepts connections.

        Raises:
            UnavailableError: the server was not reachable within ``timeout`` seconds.
        """
        deadline = Deadline(timeout)
        for address, channel in zip(self._settings.addresses, self._channels, strict=True):
            try:
                grpc.channel_ready_future(channel).result(timeout=max(deadline.remaining() or 0, 0))
            except grpc.FutureTimeoutError:
                raise UnavailableError(
                    f"the server at {address} was not reachable within {timeout} s"
                ) from None

    def _run(self, steps: Steps[_T]) -> _T:
        return self._run_on(0, steps, Deadline(self.timeout))

    def _run_on(self, shard: int, steps: Steps[_T], deadline: Deadline) -> _T:
        """Runs ``steps`` to their result, their calls on ``shard``'s channel."""
        run = Run(steps, deadline)
        while (call := run.next_call()) is not None:
            try:
                if isinstance(call, Fanout):
                    run.resolve(self._fan_out(call, deadline))
                else:
                    run.resolve(self._transports[shard].perform(call, deadline))
            except TfpsError as error:
                run.fail(error)
        return run.result

    def _fan_out(self, fanout: Fanout, deadline: Deadline) -> dict[int, Any]:
        """Runs each shard's steps at once (the first in this thread); returns their results
        once all ended, or raises the first shard's error."""
        if not fanout.steps:
            return {}
        (first, first_steps), *others = fanout.steps.items()
        futures: dict[int, Future[Any]] = {
            shard: self._pool.submit(self._outcome, shard, steps, deadline)
            for shard, steps in others
        }
        outcomes = {first: self._outcome(first, first_steps, deadline)}
        outcomes |= {shard: future.result() for shard, future in futures.items()}
        error = first_error(outcomes)
        if error is not None:
            raise error
        return outcomes

    def _outcome(self, shard: int, steps: Steps[Any], deadline: Deadline) -> Any:
        """The result of ``steps`` on ``shard``, or their error."""
        try:
            return self._run_on(shard, steps, deadline)
        except TfpsError as error:
            return error
