"""The server-wide budget of tensor bytes in flight, received or sent.

Every call that carries tensors reserves its bytes before anything is
allocated for them, and gives them back when it ends. A call that asks for
more than the whole budget is refused at once (RESOURCE_EXHAUSTED); one that
would fit once other calls finish waits, in arrival order, for at most a
bounded time and is then refused with UNAVAILABLE (OVERLOADED), which
clients retry. The budget lives on the server's event loop: no locks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Gauge

from tfps_client.wire.reasons import Reason
from tfps_server.errors import ResourceExhausted, Unavailable


class ByteBudget:
    """Bytes that calls may hold at once.

    Args:
        capacity: the most bytes all reservations together may hold.
        in_use: gauge set to the bytes reserved now.
    """

    def __init__(self, capacity: int, in_use: Gauge) -> None:
        self.capacity = capacity
        self.reserved = 0
        self._in_use = in_use
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, what: str, wait_seconds: float) -> AsyncIterator[None]:
        """Holds ``nbytes`` of the budget while the block runs.

        Args:
            nbytes: the bytes to hold.
            what: the call and what it carries, for messages.
            wait_seconds: the longest to wait for other calls to give bytes back.

        Raises:
            ResourceExhausted: ``nbytes`` is more than the whole budget.
            Unavailable: the bytes did not come free within ``wait_seconds``.
        """
        if nbytes > self.capacity:
            raise ResourceExhausted(
                f"{what}: expected at most {self.capacity} bytes in flight "
                f"(--max-in-flight-gib), received a call for {nbytes}",
                Reason.TOO_LARGE,
                {"limit": "max_in_flight_bytes", "expected": self.capacity, "received": nbytes},
            )
        await self._acquire(nbytes, what, wait_seconds)
        try:
            yield
        finally:
            self._release(nbytes)

    async def _acquire(self, nbytes: int, what: str, wait_seconds: float) -> None:
        if not self._waiting and self.reserved + nbytes <= self.capacity:
            self._take(nbytes)
            return
        turn = asyncio.get_running_loop().create_future()
        entry = (nbytes, turn)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(turn), wait_seconds)
        except (asyncio.TimeoutError, asyncio.CancelledError) as error:
            if turn.done() and not turn.cancelled():  # granted as the wait ended: give it back
                self._release(nbytes)
            else:
                self._waiting.remove(entry)
                turn.cancel()
                self._grant()  # a large call leaving the queue may unblock smaller ones
            if isinstance(error, asyncio.CancelledError):
                raise
            raise Unavailable(
                f"{what}: the server holds {self.reserved} of its {self.capacity} bytes in "
                f"flight for other calls; {nbytes} did not come free within "
                f"{wait_seconds:g} s; retry later",
                Reason.OVERLOADED,
                {"expected": self.capacity - self.reserved, "received": nbytes},
            ) from None

    def _take(self, nbytes: int) -> None:
        self.reserved += nbytes
        self._in_use.set(self.reserved)

    def _release(self, nbytes: int) -> None:
        self.reserved -= nbytes
        self._in_use.set(self.reserved)
        self._grant()

    def _grant(self) -> None:
        """Hands bytes to waiting calls, first come first served."""
        while self._waiting and self.reserved + self._waiting[0][0] <= self.capacity:
            nbytes, turn = self._waiting.popleft()
            self._take(nbytes)
            turn.set_result(None)
