"""The asyncio client, on ``grpc.aio``: :class:`Client`.

Example::

    async with tfps_client.aio.Client("127.0.0.1:50051") as client:
        result = await client.push({"w": gradient})
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from tfps_client.calls import Fanout, Run, Steps, first_error
from tfps_client.errors import TfpsError, UnavailableError
from tfps_client.operations import Operations
from tfps_client.retries import Deadline
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
        self._channels: list[Any] = []
        self._transports: list[AsyncTransport] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _opened(self) -> list[AsyncTransport]:
        """The transports, by shard, with the channels opened on first use in the running
        event loop.

        Raises:
            ValueError: the client was closed.
        """
        if self._closed:
            raise ValueError(f"the client of {self.address} is closed")
        loop = asyncio.get_running_loop()
        if not self._transports or self._loop is not loop:
            self._loop = loop
            settings = self._settings
            self._channels = [
                open_channel(address, settings.credentials, settings.max_message_bytes, aio=True)
                for address in settings.addresses
            ]
            self._transports = [
                AsyncTransport(
                    rpc_methods(channel), settings.retry, settings.chunk_bytes, settings.metadata
                )
                for channel in self._channels
            ]
        return self._transports

    async def close(self) -> None:
        """Closes the channels; calls in flight are cancelled."""
        self._closed = True
        for channel in self._channels:
            await channel.close()

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
            await asyncio.wait_for(
                asyncio.gather(*(channel.channel_ready() for channel in self._channels)), timeout
            )
        except asyncio.TimeoutError:
            raise UnavailableError(
                f"the server at {self.address} was not reachable within {timeout} s"
            ) from None

    async def _run(self, steps: Steps[_T]) -> _T:
        return await self._run_on(0, steps, Deadline(self.timeout))

    async def _run_on(self, shard: int, steps: Steps[_T], deadline: Deadline) -> _T:
        """Runs ``steps`` to their result, their calls on ``shard``'s channel."""
        run = Run(steps, deadline)
        while (call := run.next_call()) is not None:
            try:
                if isinstance(call, Fanout):
                    run.resolve(await self._fan_out(call, deadline))
                else:
                    run.resolve(await self._opened()[shard].perform(call, deadline))
            except TfpsError as error:
                run.fail(error)
        return run.result

    async def _fan_out(self, fanout: Fanout, deadline: Deadline) -> dict[int, Any]:
        """Runs each shard's steps at once; returns their results once all ended, or raises
        the first shard's error."""
        shards = list(fanout.steps)
        results = await asyncio.gather(
            *(self._outcome(shard, fanout.steps[shard], deadline) for shard in shards)
        )
        outcomes = dict(zip(shards, results, strict=True))
        error = first_error(outcomes)
        if error is not None:
            raise error
        return outcomes

    async def _outcome(self, shard: int, steps: Steps[Any], deadline: Deadline) -> Any:
        """The result of ``steps`` on ``shard``, or their error."""
        try:
            return await self._run_on(shard, steps, deadline)
        except TfpsError as error:
            return error
