"""gRPC server interceptors for one service: metrics, admission, and request decoding.

:class:`MetricsInterceptor` counts, per method: RPCs finished by status code,
latency, RPCs in flight, the serialized bytes of requests and responses, and
refusals by tfps reason. The handler is wrapped rather than observed from
outside, so a status set by ``context.abort`` (which raises) is counted with
its code, and a streaming response is timed until its last message.

:class:`AdmissionInterceptor` decides whether a call may start: its token's
role (when tokens are configured), and room under the cap on concurrent calls.

:class:`DecodingInterceptor` parses request bytes itself, in a worker thread
when they are large (the event loop stays free), tensor streams split into header
and chunks without copying their bytes (:mod:`tfps_client.wire.framing`), and
answers bytes that do not parse as the method's request message with
INVALID_ARGUMENT (one log line), where gRPC would answer INTERNAL and log a
traceback per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from tfps_client.wire import framing
from tfps_client.wire.reasons import Reason, decode_detail
from tfps_server.errors import InvalidArgument, ServerError, Unavailable, abort
from tfps_server.limits import flag_of
from tfps_server.metrics import Metrics
from tfps_server.streams import in_thread

_log = logging.getLogger(__name__)

_Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
"""(request_streaming, response_streaming) -> the grpc function that builds such a handler."""

INLINE_DECODE_BYTES = 64 << 10
"""Requests up to this size are parsed on the event loop; larger ones in a worker thread."""

Authorize = Callable[[str, Sequence[tuple[str, Any]]], object]
"""Checks a call's metadata for its method (short name); raises a ServerError to refuse it."""


class _ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of one service's methods; other services pass through untouched.

    Args:
        service: the service whose handlers :meth:`wrap` sees.
    """

    def __init__(self, service: ServiceDescriptor) -> None:
        self._prefix = f"/{service.full_name}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Returns the service's handler as :meth:`wrap` makes it; others unchanged."""
        handler = await continuation(handler_call_details)
        full_name = handler_call_details.method
        if handler is None or not full_name.startswith(self._prefix):
            return handler
        return self.wrap(handler, full_name[len(self._prefix) :], handler_call_details)

    def wrap(
        self, handler: grpc.RpcMethodHandler, method: str, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Returns the handler of ``method`` (its short name) to serve instead of ``handler``."""
        raise NotImplementedError


def _behavior(handler: grpc.RpcMethodHandler) -> _Behavior:
    return (  # type: ignore[no-any-return]
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def _rebuilt(
    handler: grpc.RpcMethodHandler,
    behavior: _Behavior,
    deserializer: Callable[[bytes], Any] | None,
    serializer: Callable[[Any], bytes] | None,
) -> grpc.RpcMethodHandler:
    """Returns a handler of the same kind with another behavior and (de)serializers."""
    streaming = (handler.request_streaming, handler.response_streaming)
    return _HANDLER_FACTORIES[streaming](
        behavior, request_deserializer=deserializer, response_serializer=serializer
    )


class MetricsInterceptor(_ServiceInterceptor):
    """Counts the RPCs of one service into :class:`Metrics`, labelled by method name.

    Other services (health, reflection) pass through unmeasured. Every method's
    series start at zero, so that ``rate()`` sees their first RPC.

    Args:
        metrics: where to count.
        service: the service to measure.
    """

    def __init__(self, metrics: Metrics, service: ServiceDescriptor) -> None:
        super().__init__(service)
        self._metrics = metrics
        for method in service.methods:
            metrics.rpc_requests.labels(method.name, grpc.StatusCode.OK.name)
            metrics.rpc_duration.labels(method.name)
            metrics.rpc_in_flight.labels(method.name)
            metrics.rpc_request_bytes.labels(method.name)
            metrics.rpc_response_bytes.labels(method.name)

    def wrap(
        self, handler: grpc.RpcMethodHandler, method: str, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Returns the handler wrapped in measurements."""
        measures = _MethodMetrics(self._metrics, method)
        behavior = _behavior(handler)

        async def measured(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(measures, context)
            try:
                response = await behavior(request, context)
            except asyncio.CancelledError:  # the client cancelled or went away
                call.finish(grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                call.finish(_failure_code(context))
                raise
            call.finish(_success_code(context))
            return response

        return _rebuilt(
            handler,
            measured,
            _counting(handler.request_deserializer, measures.request_bytes.inc),
            _counting_serializer(handler.response_serializer, measures.response_bytes.inc),
        )


class _MethodMetrics:
    """The metrics of one method, bound to its label."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.requests = metrics.rpc_requests
        self.rejections = metrics.rejections
        self.method = method
        self.in_flight = metrics.rpc_in_flight.labels(method)
        self.duration = metrics.rpc_duration.labels(method)
        self.request_bytes = metrics.rpc_request_bytes.labels(method)
        self.response_bytes = metrics.rpc_response_bytes.labels(method)


class _Call:
    """One RPC: in flight from creation until :meth:`finish`, which counts it once.

    gRPC calls back when the RPC terminates; if the handler has not finished it by
    then (the client cancelled), it counts as CANCELLED. Everything runs on the
    event loop: no locks.
    """

    def __init__(self, method: _MethodMetrics, context: grpc.aio.ServicerContext) -> None:
        self._method = method
        self._context = context
        self._start = time.perf_counter()
        self._finished = False
        method.in_flight.inc()
        context.add_done_callback(self._terminated)

    def _terminated(self, context: object) -> None:
        self.finish(grpc.StatusCode.CANCELLED)

    def finish(self, code: grpc.StatusCode) -> None:
        """Counts the RPC finished with ``code``, unless it was already; a refusal with a
        tfps reason is also counted by reason."""
        if self._finished:
            return
        self._finished = True
        method = self._method
        method.in_flight.dec()
        method.duration.observe(time.perf_counter() - self._start)
        method.requests.labels(method.method, code.name).inc()
        if code != grpc.StatusCode.OK:
            reason, _ = decode_detail(self._context.trailing_metadata())
            if reason:
                method.rejections.labels(reason).inc()


def _success_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status of a handler that returned: the code it set, else OK, CANCELLED if gone."""
    if context.cancelled():
        return grpc.StatusCode.CANCELLED
    return context.code() or grpc.StatusCode.OK


def _failure_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status of a handler that raised: the code ``context.abort`` set, else UNKNOWN."""
    if context.cancelled():
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if code is None or code == grpc.StatusCode.OK:
        return grpc.StatusCode.UNKNOWN
    return code  # type: ignore[no-any-return]


def _counting(
    deserialize: Callable[[bytes], Any] | None, count: Callable[[int], None]
) -> Callable[[bytes], Any]:
    def counted(data: bytes) -> Any:
        count(len(data))
        return deserialize(data) if deserialize is not None else data

    return counted


def _counting_serializer(
    serialize: Callable[[Any], bytes] | None, count: Callable[[int], None]
) -> Callable[[Any], bytes]:
    def counted(message: Any) -> bytes:
        data = serialize(message) if serialize is not None else message
        count(len(data))
        return data

    return counted


class AdmissionInterceptor(_ServiceInterceptor):
    """Lets a call of one service start only if its token allows it and there is room.

    Args:
        service: the service whose calls are admitted; others (health, reflection) pass.
        authorize: checks a call's metadata for its method; None: the server is open.
        max_concurrent_calls: calls of the service in progress at once; more are
            refused with UNAVAILABLE (OVERLOADED), which clients retry after a backoff.
    """

    def __init__(
        self,
        service: ServiceDescriptor,
        authorize: Authorize | None,
        max_concurrent_calls: int,
    ) -> None:
        super().__init__(service)
        self._authorize = authorize
        self._max_calls = max_concurrent_calls
        self._calls = 0

    def wrap(
        self, handler: grpc.RpcMethodHandler, method: str, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Returns the handler, or one that refuses the call with the reason why."""
        behavior = _behavior(handler)
        metadata = details.invocation_metadata or ()
        authorize = self._authorize
        try:
            if authorize is not None:
                authorize(method, metadata)
        except ServerError as error:
            return _rebuilt(handler, _refusing(error), None, handler.response_serializer)
        if authorize is not None and handler.request_streaming:
            behavior = _reauthorized(behavior, lambda: authorize(method, metadata))

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self._calls >= self._max_calls:
                await abort(
                    context,
                    Unavailable(
                        f"{method}: the server has {self._calls} calls in progress, at most "
                        f"{self._max_calls} ({flag_of('max_concurrent_calls')}); retry later",
                        Reason.OVERLOADED,
                        {
                            "limit": "max_concurrent_calls",
                            "expected": self._max_calls,
                            "received": self._calls + 1,
                        },
                    ),
                )
            self._calls += 1
            try:
                return await behavior(request, context)
            finally:
                self._calls -= 1

        return _rebuilt(
            handler, admitted, handler.request_deserializer, handler.response_serializer
        )


def _reauthorized(behavior: _Behavior, authorize: Callable[[], object]) -> _Behavior:
    """A request-streaming behavior whose token is checked again once its stream has ended,
    before the servicer acts on it: a token revoked (tokens file reloaded) while a client
    held a stream open does not get to apply it."""

    async def checked_at_end(stream: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async def messages() -> AsyncIterator[Any]:
            async for message in stream:
                yield message
            authorize()

        return await behavior(messages(), context)

    return checked_at_end


def _refusing(error: ServerError) -> _Behavior:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, error.again())

    return refuse


class DecodingInterceptor(_ServiceInterceptor):
    """Parses requests of one service off the event loop, refusing bytes that do not parse;
    responses the servicer serialized itself pass through as they are.

    Args:
        service: the service whose methods are guarded; others pass through.
        pool: threads that parse large requests.
    """

    def __init__(self, service: ServiceDescriptor, pool: Executor) -> None:
        super().__init__(service)
        self._pool = pool
        self._framed = {  # tensor streams: their request classes, by method name
            method.name: message_factory.GetMessageClass(method.input_type)
            for method in service.methods
            if "chunks" in method.input_type.fields_by_name
        }

    def wrap(
        self, handler: grpc.RpcMethodHandler, method: str, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Returns the handler taking raw bytes, which it parses itself."""
        deserialize = self._deserializer(handler, method)
        behavior = _behavior(handler)
        full_name = f"{self._prefix}{method}"

        async def parse(data: bytes) -> Any:
            try:
                if len(data) <= INLINE_DECODE_BYTES:
                    return deserialize(data)
                return await in_thread(self._pool, deserialize, data)
            except Exception as error:  # DecodeError, mostly; whatever it is, the bytes are bad
                _log.warning(
                    "malformed request to %s: %d bytes do not parse (%s)",
                    full_name,
                    len(data),
                    error,
                )
                raise InvalidArgument(
                    f"{full_name}: expected a serialized request message, received "
                    f"{len(data)} bytes that do not parse ({error})",
                    Reason.MALFORMED_REQUEST,
                    {"received": len(data)},
                ) from None

        async def parsed_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = await parse(data)
            except InvalidArgument as error:
                await abort(context, error)
            return await behavior(request, context)

        async def parsed_stream(
            stream: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> Any:
            return await behavior(_parsed_each(stream, parse), context)

        guarded = parsed_stream if handler.request_streaming else parsed_unary
        return _rebuilt(handler, guarded, None, _passing_bytes(handler.response_serializer))

    def _deserializer(self, handler: grpc.RpcMethodHandler, method: str) -> Callable[[bytes], Any]:
        """The method's request parser: tensor streams are split by :func:`framing.decode`
        into a header and chunks viewing the received bytes; other messages are parsed as
        the handler would."""
        request = self._framed.get(method)
        if request is not None:
            return functools.partial(framing.decode, message_class=request)
        return handler.request_deserializer or _identity


async def _parsed_each(
    stream: AsyncIterator[bytes], parse: Callable[[bytes], Awaitable[Any]]
) -> AsyncIterator[Any]:
    async for data in stream:
        yield await parse(data)


def _identity(value: Any) -> Any:
    return value


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """A serializer that leaves responses the servicer serialized itself (off the loop) as
    they are."""

    def serialized(message: Any) -> bytes:
        if isinstance(message, bytes) or serialize is None:
            return message  # type: ignore[no-any-return]
        return serialize(message)

    return serialized
