"""The asyncio client, on ``grpc.aio``: :class:`Client`.

Example::

    async with tfps_client.aio.Client("127.0.0.1:50051") as client:
        result = await client.push({"w": gradient})
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from tfps_client.calls import Run, Steps
from tfps_client.errors import TfpsError, UnavailableError
from tfps_client.operations import Operations
from tfps_client.transport import AsyncTransport, open_channel, rpc_methods

__all__ = ["Client"]

_T = TypeVar("_T")


class Client(Operations):
    """Talks to one tfps server from asyncio: :class:`tfps_client.Client`'s arguments,
    methods (coroutines here), results, errors, deadline, retries and pickling.

    The channel opens on the first call, in the event loop running it, and again on a
    call from another event loop (a ``grpc.aio`` channel belongs to one), so that a client
    serves one ``asyncio.run`` after another; calls from several loops at once are not
    supported. ``async with`` closes it, as :meth:`close` does.
    """

    def _connect(self) -> None:
        self._channel: Any = None
        self._transport: AsyncTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _opened(self) -> AsyncTransport:
        """The transport, with the channel opened on first use in the running event loop.

        Raises:
            ValueError: the client was closed.
        """
        if self._closed:
            raise ValueError(f"the client of {self.address} is closed")
        loop = asyncio.get_running_loop()
        if self._transport is None or self._loop is not loop:
            self._loop = loop
            settings = self._settings
            self._channel = open_channel(
                settings.address, settings.credentials, settings.max_message_bytes, aio=True
            )
            self._transport = AsyncTransport(
                rpc_methods(self._channel), settings.retry, settings.chunk_bytes, settings.metadata
            )
        return self._transport

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_for_ready(self, timeout: float = 30.0) -> None:
        """Waits until the server accepts connections.

        Raises:
            UnavailableError: the server was not reachable within ``timeout`` seconds.
        """
        self._opened()
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise UnavailableError(
                f"the server at {self.address} was not reachable within {timeout} s"
            ) from None

    async def _run(self, steps: Steps[_T]) -> _T:
        run = Run(steps, self.timeout)
        while (call := run.next_call()) is not None:
            try:
                run.resolve(await self._opened().perform(call, run.deadline))
            except TfpsError as error:
                run.fail(error)
        return run.result
