"""Tensor streams on the asyncio server: bounded, budgeted, and never left stalled.

A request stream is read message by message, each within the idle timeout;
its tensors are counted and sized from the first message and their bytes
reserved in the server's budget before any buffer is allocated. A response
is sized by arithmetic first, refused past the per-call payload limit,
reserved, then built and written one message at a time, each write within
the idle timeout: a client that stops reading holds no thread, and at most
its reservation of memory, for at most that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc._cython import cygrpc  # the error a write to a call that ended raises

from tfps_client.wire import codec, framing, tensor_pb2
from tfps_client.wire.reasons import Reason
from tfps_server.budget import ByteBudget
from tfps_server.errors import DeadlineExceeded, ResourceExhausted
from tfps_server.limits import Limits
from tfps_server.validation import past_limit

_Message = TypeVar("_Message")
_Result = TypeVar("_Result")


async def in_thread(pool: Executor, function: Callable[..., _Result], *args: Any) -> _Result:
    """Runs blocking ``function(*args)`` in ``pool``, keeping the event loop free."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(function, *args))


def check_tensor_count(method: str, what: str, count: int, limits: Limits) -> None:
    """Refuses a request declaring more than ``--max-tensors-per-request`` tensors or names.

    Raises:
        ResourceExhausted: LIMIT_EXCEEDED.
    """
    bound = limits.max_tensors_per_request
    if count > bound:
        raise past_limit(method, f"{what} per request", "max_tensors_per_request", bound, count)


class Streams:
    """Receives and sends the tensor streams of one server.

    Args:
        limits: the payload, tensor-count and idle bounds.
        budget: the server-wide budget of bytes in flight.
        pool: threads that build response messages (reads of the state).
    """

    def __init__(self, limits: Limits, budget: ByteBudget, pool: Executor) -> None:
        self._limits = limits
        self._budget = budget
        self._pool = pool
        self._idle = limits.stream_idle_seconds

    def deadline(self, nbytes: int) -> float:
        """When a stream of ``nbytes`` tensor bytes starting now must have ended, in loop time:
        the idle timeout plus its bytes at ``--min-stream-mib-per-second``."""
        rate = self._limits.min_stream_bytes_per_second
        return asyncio.get_running_loop().time() + self._idle + nbytes / rate

    def _timeout(self, deadline: float) -> float:
        return max(0.0, min(self._idle, deadline - asyncio.get_running_loop().time()))

    def _stalled(self, method: str, what: str, deadline: float) -> DeadlineExceeded:
        if asyncio.get_running_loop().time() < deadline - 0.001:
            problem = f"{what} for {self._idle:g} s (--stream-idle-seconds)"
        else:
            problem = (
                f"moved slower than {self._limits.min_stream_bytes_per_second} bytes per second "
                "on average (--min-stream-mib-per-second)"
            )
        return DeadlineExceeded(
            f"{method}: the client {problem}; the stream was ended",
            Reason.STREAM_IDLE,
            {"limit": "stream_idle_seconds", "expected": self._idle},
        )

    async def _next(
        self, messages: AsyncIterator[_Message], method: str, deadline: float
    ) -> _Message | None:
        try:
            return await asyncio.wait_for(messages.__anext__(), self._timeout(deadline))
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise self._stalled(method, "sent no message of the request stream", deadline) from None

    @contextlib.asynccontextmanager
    async def receive(
        self,
        messages: AsyncIterator[framing.Framed],
        method: str,
        count_of: Callable[[Any], int],
        specs_of: Callable[[Any], Sequence[tensor_pb2.TensorSpec]],
    ) -> AsyncIterator[tuple[Any, list[np.ndarray]]]:
        """Reads a tensor stream; its bytes stay reserved while the block runs.

        Args:
            messages: the request stream, split by :func:`framing.decode`; its first
                message carries the header, which the block receives with the tensors.
            method: the RPC, for messages.
            count_of: the number of tensors the first message declares (cheap: checked
                against ``--max-tensors-per-request`` before the specs are looked at).
            specs_of: the tensor specs the first message declares.

        Raises:
            ResourceExhausted: too many tensors, or more bytes than the payload limit
                or the whole budget.
            Unavailable: the budget did not come free in time (OVERLOADED).
            DeadlineExceeded: the client stalled (STREAM_IDLE).
            codec.CodecError: the stream is empty or its chunks do not add up.
        """
        first = await self._next(messages, method, self.deadline(0))
        if first is None:
            raise codec.CodecError("expected at least one message in the stream, received none")
        header = first.message
        check_tensor_count(method, "tensors", count_of(header), self._limits)
        assembler = codec.TensorAssembler(specs_of(header), self._limits.max_payload_bytes)
        deadline = self.deadline(assembler.nbytes)
        async with self._budget.reserve(assembler.nbytes, method, self._idle):
            assembler.add(first.chunks)
            while (message := await self._next(messages, method, deadline)) is not None:
                assembler.add(message.chunks)
            yield header, assembler.finish()

    @contextlib.asynccontextmanager
    async def reserved(self, method: str, nbytes: int) -> AsyncIterator[None]:
        """Holds ``nbytes`` of response in the budget, refused past the per-call payload limit.

        Raises:
            ResourceExhausted: ``nbytes`` is over ``--max-payload-gib`` or the whole budget.
            Unavailable: the budget did not come free in time (OVERLOADED).
        """
        bound = self._limits.max_payload_bytes
        if nbytes > bound:
            raise ResourceExhausted(
                f"{method}: expected a response of at most {bound} bytes of tensors "
                f"(--max-payload-gib), the request asks for {nbytes}",
                Reason.TOO_LARGE,
                {"limit": "max_payload_bytes", "expected": bound, "received": nbytes},
            )
        async with self._budget.reserve(nbytes, method, self._idle):
            yield

    async def send(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        nbytes: int,
        build: Callable[[], Iterator[Any]],
        *,
        window: int | None = None,
    ) -> None:
        """Writes a response stream of ``nbytes`` bytes, one message at a time.

        Args:
            context: the call.
            method: the RPC, for messages.
            nbytes: the bytes the messages will carry, known before building them.
            build: returns the messages, lazily; it and each step of it run in a
                worker thread.
            window: hold only this many bytes of the budget (at most all of it), without
                the payload limit: for files streamed from disk, of which only what gRPC
                buffers is in memory. None: hold ``nbytes``, within the payload limit.

        Raises:
            ResourceExhausted, Unavailable: as :meth:`reserved`.
            DeadlineExceeded: the client read nothing for the idle timeout, or slower than
                the minimum rate (STREAM_IDLE).
        """
        held = (
            self.reserved(method, nbytes)
            if window is None
            else self._budget.reserve(min(window, self._budget.capacity), method, self._idle)
        )
        async with held:
            deadline = self.deadline(nbytes)
            messages = await in_thread(self._pool, build)
            while (message := await in_thread(self._pool, next, messages, None)) is not None:
                await self.write(context, method, message, deadline)

    async def write(
        self, context: grpc.aio.ServicerContext, method: str, message: Any, deadline: float
    ) -> None:
        """Writes one response message within the idle timeout and the stream's ``deadline``.

        Raises:
            DeadlineExceeded: the client read nothing for that long (STREAM_IDLE).
            asyncio.CancelledError: the call ended under the write (the client left).
        """
        try:
            await asyncio.wait_for(context.write(message), self._timeout(deadline))
        except asyncio.TimeoutError:
            raise self._stalled(
                method, "read no message of the response stream", deadline
            ) from None
        except cygrpc.ExecuteBatchError:  # the call ended under the write: the client left
            raise asyncio.CancelledError(f"{method}: the client went away") from None
