"""gRPC server interceptors for one service: request decoding, and metrics.

:class:`DecodingInterceptor` answers bytes that do not parse as the method's
request message with INVALID_ARGUMENT (one log line), where gRPC would answer
INTERNAL and log a traceback per request.

:class:`MetricsInterceptor` counts, per method: RPCs finished by status code,
latency, RPCs in flight, and the serialized bytes of requests and responses.
The handler is wrapped rather than observed from outside, so a status set by
``context.abort`` (which raises) is counted with its code, and a
server-streaming RPC is timed until its last message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from tfps_client.wire.reasons import Reason
from tfps_server.errors import InvalidArgument, abort
from tfps_server.metrics import Metrics

_log = logging.getLogger(__name__)

_Behavior = Callable[[Any, grpc.ServicerContext], Any]
_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
"""(request_streaming, response_streaming) -> the grpc function that builds such a handler."""


class _ServiceInterceptor(grpc.ServerInterceptor):
    """Wraps the handlers of one service's methods; other services pass through untouched.

    Args:
        service: the service whose handlers :meth:`wrap` sees.
    """

    def __init__(self, service: ServiceDescriptor) -> None:
        self._prefix = f"/{service.full_name}/"

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Returns the service's handler as :meth:`wrap` makes it; others unchanged."""
        handler = continuation(handler_call_details)
        full_name = handler_call_details.method
        if handler is None or not full_name.startswith(self._prefix):
            return handler
        return self.wrap(handler, full_name[len(self._prefix) :])

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """Returns the handler of ``method`` (its short name) to serve instead of ``handler``."""
        raise NotImplementedError


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

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """Returns the handler wrapped in measurements."""
        return _measured(handler, _MethodMetrics(self._metrics, method))


class _MethodMetrics:
    """The metrics of one method, bound to its label."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.requests = metrics.rpc_requests
        self.method = method
        self.in_flight = metrics.rpc_in_flight.labels(method)
        self.duration = metrics.rpc_duration.labels(method)
        self.request_bytes = metrics.rpc_request_bytes.labels(method)
        self.response_bytes = metrics.rpc_response_bytes.labels(method)


class _Call:
    """One RPC: in flight from creation until :meth:`finish`, which counts it once.

    gRPC calls back when the RPC terminates; if the handler has not finished it by
    then (the client cancelled, or never read a response stream), it counts as CANCELLED.
    """

    def __init__(self, method: _MethodMetrics, context: grpc.ServicerContext) -> None:
        self._method = method
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._finished = False
        method.in_flight.inc()
        if not context.add_callback(self._terminated):
            self._terminated()

    def _terminated(self) -> None:
        self.finish(grpc.StatusCode.CANCELLED)

    def finish(self, code: grpc.StatusCode) -> None:
        """Counts the RPC finished with ``code``, unless it was already."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        method = self._method
        method.in_flight.dec()
        method.duration.observe(time.perf_counter() - self._start)
        method.requests.labels(method.method, code.name).inc()


def _rebuilt(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[_Behavior], _Behavior],
    wrap_deserializer: Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]],
    wrap_serializer: Callable[[Callable[[Any], bytes]], Callable[[Any], bytes]],
) -> grpc.RpcMethodHandler:
    """Returns a handler of the same kind with its behavior and (de)serializers wrapped."""
    streaming = (handler.request_streaming, handler.response_streaming)
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return _HANDLER_FACTORIES[streaming](
        wrap(behavior),
        request_deserializer=wrap_deserializer(handler.request_deserializer or _identity),
        response_serializer=wrap_serializer(handler.response_serializer or _identity),
    )


def _identity(value: Any) -> Any:
    return value


def _measured(handler: grpc.RpcMethodHandler, method: _MethodMetrics) -> grpc.RpcMethodHandler:
    """Returns a handler of the same kind that measures ``handler``."""
    wrap = _stream_response if handler.response_streaming else _unary_response
    return _rebuilt(
        handler,
        lambda behavior: wrap(behavior, method),
        lambda deserialize: _counting_deserializer(deserialize, method),
        lambda serialize: _counting_serializer(serialize, method),
    )


def _unary_response(behavior: _Behavior, method: _MethodMetrics) -> _Behavior:
    def measured(request: Any, context: grpc.ServicerContext) -> Any:
        call = _Call(method, context)
        try:
            response = behavior(request, context)
        except BaseException:
            call.finish(_failure_code(context))
            raise
        call.finish(_success_code(context))
        return response

    return measured


def _stream_response(behavior: _Behavior, method: _MethodMetrics) -> _Behavior:
    def measured(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = _Call(method, context)
        try:
            responses = behavior(request, context)
        except BaseException:
            call.finish(_failure_code(context))
            raise
        return _measured_stream(responses, context, call)

    return measured


def _measured_stream(
    responses: Iterator[Any], context: grpc.ServicerContext, call: _Call
) -> Iterator[Any]:
    try:
        yield from responses
    except GeneratorExit:  # gRPC stopped reading: the client went away
        call.finish(grpc.StatusCode.CANCELLED)
        raise
    except BaseException:
        call.finish(_failure_code(context))
        raise
    call.finish(_success_code(context))


def _success_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status of a handler that returned: the code it set, else OK, CANCELLED if gone."""
    if not context.is_active():
        return grpc.StatusCode.CANCELLED
    return context.code() or grpc.StatusCode.OK


def _failure_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status of a handler that raised: the code ``context.abort`` set, else UNKNOWN."""
    code = context.code()
    return code if code is not None and code != grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN


def _counting_deserializer(
    deserialize: Callable[[bytes], Any], method: _MethodMetrics
) -> Callable[[bytes], Any]:
    def counted(data: bytes) -> Any:
        method.request_bytes.inc(len(data))
        return deserialize(data)

    return counted


def _counting_serializer(
    serialize: Callable[[Any], bytes], method: _MethodMetrics
) -> Callable[[Any], bytes]:
    def counted(message: Any) -> bytes:
        data = serialize(message)
        method.response_bytes.inc(len(data))
        return data

    return counted


class _Malformed:
    """Stands in for a request message whose bytes did not parse."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


class DecodingInterceptor(_ServiceInterceptor):
    """Refuses request bytes that are not the method's message with INVALID_ARGUMENT.

    Args:
        service: the service whose methods are guarded; others pass through.
    """

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """Returns the handler with a deserializer that never raises."""
        guarded = _guarded_stream if handler.request_streaming else _guarded_unary
        return _rebuilt(
            handler,
            guarded,
            lambda deserialize: _tolerant_deserializer(deserialize, f"{self._prefix}{method}"),
            lambda serialize: serialize,
        )


def _tolerant_deserializer(
    deserialize: Callable[[bytes], Any], method: str
) -> Callable[[bytes], Any]:
    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # DecodeError, mostly; whatever it is, the bytes are bad
            _log.warning(
                "malformed request to %s: %d bytes do not parse (%s)", method, len(data), error
            )
            return _Malformed(
                InvalidArgument(
                    f"{method}: expected a serialized request message, received {len(data)} "
                    f"bytes that do not parse ({error})",
                    Reason.MALFORMED_REQUEST,
                    {"received": len(data)},
                )
            )

    return tolerant


def _guarded_unary(behavior: _Behavior) -> _Behavior:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            abort(context, request.error)
        return behavior(request, context)

    return guarded


def _guarded_stream(behavior: _Behavior) -> _Behavior:
    def guarded(requests: Iterable[Any], context: grpc.ServicerContext) -> Any:
        return behavior(_refusing_malformed(requests), context)

    return guarded


def _refusing_malformed(requests: Iterable[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Malformed):
            raise request.error.again()
        yield request
