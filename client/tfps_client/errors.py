"""Typed errors: one base class, one subclass per gRPC status code."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from tfps_client.wire.reasons import decode_detail


class TfpsError(Exception):
    """An RPC to the tfps server failed.

    Attributes:
        code: the gRPC status code.
        message: the server's message, naming the variable and what was
            expected and received where that applies.
        reason: a machine-readable reason such as ``"SHAPE_MISMATCH"`` (a
            :class:`tfps_client.wire.reasons.Reason` name), when the server sent one.
        metadata: details that go with the reason (``variable``, ``expected``,
            ``received``, ...).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, reason: str = "", metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class CancelledError(TfpsError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class UnknownError(TfpsError):
    """The server failed in a way it could not classify."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(TfpsError):
    """A shape, dtype, byte length, index, config or value was wrong."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(TfpsError):
    """The call did not finish before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(TfpsError):
    """An unknown variable, optimizer or slot was named."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(TfpsError):
    """Something with that name exists with a different declaration."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(TfpsError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(TfpsError):
    """A size or resource limit was exceeded."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(TfpsError):
    """The server's state does not allow the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(TfpsError):
    """The operation was aborted, typically by a concurrency conflict."""

    code = grpc.StatusCode.ABORTED


class OutOfRangeError(TfpsError):
    """A value was past the valid range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(TfpsError):
    """The server does not implement the operation."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(TfpsError):
    """The server hit an internal error."""

    code = grpc.StatusCode.INTERNAL


class UnavailableError(TfpsError):
    """The server could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLossError(TfpsError):
    """Data was lost or corrupted."""

    code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(TfpsError):
    """The caller is not authenticated."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[TfpsError]] = {
    cls.code: cls
    for cls in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def error_class(code: grpc.StatusCode) -> type[TfpsError]:
    """Returns the exception class raised for a gRPC status code."""
    return _BY_CODE.get(code, UnknownError)


def from_rpc_error(error: grpc.RpcError) -> TfpsError:
    """Converts a failed call (of ``grpc`` or ``grpc.aio``) into the matching
    :class:`TfpsError` subclass."""
    if not isinstance(error, (grpc.Call, grpc.aio.AioRpcError)):
        return UnknownError(str(error))
    reason, metadata = decode_detail(error.trailing_metadata())
    return error_class(error.code())(error.details() or "", reason, metadata)
