"""Server-side errors, each mapped to one gRPC status code by the servicer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

import grpc
from grpc_status import rpc_status

from tfps_client.wire.reasons import Reason, error_status

ECHO_CHARACTERS = 200
"""Most characters of client input that a message repeats."""

STATUS_MESSAGE_CHARACTERS = 1024
"""Most characters of a status message (ASCII): with its details it stays far below gRPC's
8 KiB of metadata, whatever the client sent."""


def shown(value: object, limit: int = ECHO_CHARACTERS) -> str:
    """Returns ``repr(value)`` cut to ``limit`` characters, for messages that echo client input.

    A status message must fit gRPC's metadata limit, and a name of megabytes must
    not make one; ``repr`` also escapes what cannot be encoded, such as a lone surrogate.
    """
    return clipped(repr(value), limit)


def clipped(text: str, limit: int = ECHO_CHARACTERS) -> str:
    """Returns ``text`` in ASCII (other characters escaped), cut to ``limit`` characters."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def fact(value: object, limit: int = ECHO_CHARACTERS) -> str:
    """Returns ``str(value)`` as the value of an ``ErrorInfo`` fact: as it is (a name that is
    not ASCII too, so that a program can compare it with the one it sent) up to ``limit``
    UTF-8 bytes, else cut there; what UTF-8 cannot encode (a lone surrogate) escaped."""
    text = str(value)
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    return f"{data[:limit].decode('utf-8', 'ignore')}... ({len(text)} characters)"


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
