"""Server-side errors, each mapped to one gRPC status code by the servicer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

import grpc
from grpc_status import rpc_status

from tfps_client.wire.checks import ECHO_CHARACTERS as ECHO_CHARACTERS  # the server's too
from tfps_client.wire.checks import clipped as clipped
from tfps_client.wire.checks import fact
from tfps_client.wire.checks import shown as shown
from tfps_client.wire.reasons import Reason, error_status

STATUS_MESSAGE_CHARACTERS = 1024
"""Most characters of a status message (ASCII): with its details it stays far below gRPC's
8 KiB of metadata, whatever the client sent."""


class ServerError(Exception):
    """A request the server refuses; nothing was changed.

    Args:
        message: what was wrong, naming the variable or optimizer and the
            expected and received values.
        reason: the machine-readable reason sent to the client.
        metadata: facts that go with the reason; values are cut to
            :data:`ECHO_CHARACTERS` UTF-8 bytes (:func:`fact`).
    """

    code = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, reason: Reason, metadata: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = {key: fact(value) for key, value in (metadata or {}).items()}

    def again(self) -> ServerError:
        """Returns a fresh error with the same class, message, reason and metadata.

        Several threads answered with one error each raise their own copy.
        """
        error = type(self)(self.message, self.reason)
        error.metadata = dict(self.metadata)  # cut once: cutting a cut fact would change it
        return error


class InvalidArgument(ServerError):
    """A shape, dtype, byte length, index, config or value is wrong."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(ServerError):
    """A stream stalled past the server's idle timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ServerError):
    """An unknown variable, optimizer, slot or checkpoint was named."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServerError):
    """The name exists with a different declaration."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServerError):
    """The server's state does not allow the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServerError):
    """The state the request was validated against was replaced; nothing was applied."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(ServerError):
    """A counter would pass its largest value."""

    code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDenied(ServerError):
    """The caller's role may not make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServerError):
    """The call carried no token, or one the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServerError):
    """A size limit was passed, or the disk is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServerError):
    """The server is not serving now (starting or stopping); retrying is safe."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServerError):
    """Stored data (a checkpoint) is unreadable, truncated or corrupted."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(ServerError):
    """A fault of the server itself."""

    code = grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, error: ServerError) -> NoReturn:
    """Ends an RPC with the error's status, message and details; raises, as ``context.abort`` does.

    The details are a ``google.rpc.Status`` with the reason and its facts in an ``ErrorInfo``
    (:func:`~tfps_client.wire.reasons.error_status`). The message is cut to
    :data:`STATUS_MESSAGE_CHARACTERS`, so that no status overflows gRPC's metadata limit.
    """
    message = clipped(error.message, STATUS_MESSAGE_CHARACTERS)
    status = error_status(error.code, message, error.reason, error.metadata)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable: context.abort_with_status raises")
