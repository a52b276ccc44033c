"""Server-side errors, each mapped to one gRPC status code by the servicer."""

from __future__ import annotations

from collections.abc import Mapping

import grpc


class ServerError(Exception):
    """A request the server refuses; nothing was changed.

    Args:
        message: what was wrong, naming the variable or optimizer and the
            expected and received values.
        reason: upper snake case reason sent to the client, e.g. ``"SHAPE_MISMATCH"``.
        metadata: facts that go with the reason.
    """

    code = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, reason: str = "", metadata: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = {key: str(value) for key, value in (metadata or {}).items()}


class InvalidArgument(ServerError):
    """A shape, dtype, byte length, index, config or value is wrong."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServerError):
    """An unknown variable, optimizer or slot was named."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServerError):
    """The name exists with a different declaration."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServerError):
    """The server's state does not allow the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(ServerError):
    """Stored data (a checkpoint) is unreadable, truncated or corrupted."""

    code = grpc.StatusCode.DATA_LOSS
