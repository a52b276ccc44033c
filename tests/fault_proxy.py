"""A fault-injecting gRPC proxy: the test double between a client and a real server.

It forwards every ParameterServer RPC as raw bytes. For Push it can, per call,
deliver the request twice (a duplicated request) or deliver it and then fail
the call with UNAVAILABLE (a lost response), following a fault schedule. It records the
time each other call had left when it arrived, which shows the deadline the client gave it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from tfps_client import channel_options
from tfps_client.wire import parameter_server_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["ParameterServer"]

PASS, DUPLICATE, DROP_RESPONSE = "pass", "duplicate", "drop-response"


class FaultProxy:
    """Listens on a free loopback port and forwards to ``upstream``.

    Args:
        upstream: ``host:port`` of the real server.
        push_faults: returns the fault for the n-th Push call (0-based).
    """

    def __init__(self, upstream: str, push_faults: Callable[[int], str]) -> None:
        self._channel = grpc.insecure_channel(upstream, channel_options())
        self._push_faults = push_faults
        self._lock = threading.Lock()
        self.push_calls = 0
        self.upstream_pushes = 0
        self.time_remaining: list[tuple[str, float | None]] = []
        """(method, seconds left of its deadline) of every call but Push, as they arrived."""
        self._server = grpc.server(futures.ThreadPoolExecutor(32), options=channel_options())
        self._server.add_generic_rpc_handlers((self._handlers(),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stops the proxy."""
        self._server.stop(None)
        self._channel.close()

    def _handlers(self) -> grpc.GenericRpcHandler:
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in SERVICE.methods:
            path = f"/{SERVICE.full_name}/{method.name}"
            if method.name == "Push":
                handlers[method.name] = grpc.stream_unary_rpc_method_handler(self._push(path))
            elif method.client_streaming and method.server_streaming:
                call = self._channel.stream_stream(path)
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    self._forward(method.name, call)
                )
            elif method.client_streaming:
                call = self._channel.stream_unary(path)
                handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                    self._forward(method.name, call)
                )
            elif method.server_streaming:
                call = self._channel.unary_stream(path)
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                    self._forward(method.name, call)
                )
            else:
                call = self._channel.unary_unary(path)
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._forward(method.name, call)
                )
        return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)

    def _push(self, path: str) -> Callable[[Iterator[bytes], grpc.ServicerContext], bytes]:
        upstream = self._channel.stream_unary(path)

        def handle(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            messages = list(requests)
            with self._lock:
                fault = self._push_faults(self.push_calls)
                self.push_calls += 1
            copies = 2 if fault == DUPLICATE else 1
            response = b""
            for _ in range(copies):
                response = upstream(iter(messages))
                with self._lock:
                    self.upstream_pushes += 1
            if fault == DROP_RESPONSE:
                context.abort(grpc.StatusCode.UNAVAILABLE, "fault proxy: response dropped")
            return response

        return handle

    def _forward(self, name: str, call: Any) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.time_remaining.append((name, context.time_remaining()))
            try:
                return call(request, timeout=context.time_remaining())
            except grpc.RpcError as error:
                context.abort(error.code(), error.details())

        return handle
