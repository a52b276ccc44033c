"""The references tfps is measured against, each in a process of its own like the server:
raw loopback TCP, a bare grpcio unary echo, and Keras's apply in-process."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import struct
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from bench.server import free_port

ECHO_METHOD = "/bench.Echo/Echo"
"""The echo server's one method: it answers the request's bytes unchanged."""
_LENGTH = struct.Struct("<Q")
_SPAWN = multiprocessing.get_context("spawn")


def _tcp_sink(listener: socket.socket) -> None:
    """Receives length-prefixed payloads into one buffer and acknowledges each with a byte."""
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    view = memoryview(buffer)
    while header := connection.recv(_LENGTH.size, socket.MSG_WAITALL):
        (length,) = _LENGTH.unpack(header)
        if len(buffer) < length:
            buffer = bytearray(length)
            view = memoryview(buffer)
        received = 0
        while received < length:
            received += connection.recv_into(view[received:length])
        connection.sendall(b"\x01")


class RawTcp:
    """A peer process that receives bytes over loopback TCP: the floor for moving a tensor."""

    def __init__(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self._process = _SPAWN.Process(target=_tcp_sink, args=(listener,), daemon=True)
        self._process.start()
        self._socket = socket.create_connection(listener.getsockname())
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.close()

    def send(self, payload: memoryview | bytes) -> None:
        """Sends ``payload`` once and waits for the peer to have received all of it."""
        payload = memoryview(payload).cast("B")
        self._socket.sendall(_LENGTH.pack(len(payload)))
        self._socket.sendall(payload)
        self._socket.recv(1, socket.MSG_WAITALL)

    def close(self) -> None:
        """Ends the peer process."""
        self._socket.close()
        self._process.join(10)


@contextlib.contextmanager
def raw_tcp() -> Iterator[RawTcp]:
    """A :class:`RawTcp` peer for the ``with`` block."""
    peer = RawTcp()
    try:
        yield peer
    finally:
        peer.close()


def _serve_echo(port: int, ready: Any, stop: Any) -> None:
    """A grpcio server whose one unary method answers the request's bytes unchanged."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    service, method = ECHO_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    stop.wait()
    server.stop(None)


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """A bare grpcio unary echo server (:data:`ECHO_METHOD`) in its own process; yields its
    ``host:port``."""
    port = free_port()
    ready, stop = _SPAWN.Event(), _SPAWN.Event()
    process = _SPAWN.Process(target=_serve_echo, args=(port, ready, stop), daemon=True)
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the grpcio echo server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()


@contextlib.contextmanager
def grpc_echo() -> Iterator[Callable[[bytes], bytes]]:
    """A bare grpcio unary echo server in its own process; yields the call that echoes bytes."""
    with echo_server() as address, grpc.insecure_channel(address) as channel:
        yield channel.unary_unary(ECHO_METHOD)


class InProcessApply:
    """A Keras legacy optimizer applying gradients to local variables, as a single-process
    training loop would: the work a push asks of the server, without moving anything.

    Args:
        config: the optimizer, as ``{"class_name": ..., "config": ...}``.
        shape: the variable's shape.
    """

    def __init__(self, config: dict[str, Any], shape: tuple[int, ...]) -> None:
        import tensorflow as tf
        import tf_keras

        self._tf = tf
        self.variable = tf.Variable(tf.zeros(shape, tf.float32))
        self.optimizer = getattr(tf_keras.optimizers.legacy, config["class_name"])(
            **config["config"]
        )

    def apply(self, gradient: np.ndarray) -> None:
        """Applies a dense gradient given as a numpy array."""
        self.optimizer.apply_gradients([(self._tf.constant(gradient), self.variable)])

    def apply_sparse(self, values: np.ndarray, indices: np.ndarray) -> None:
        """Applies rows ``values`` at ``indices``, as an embedding's gradient."""
        tf = self._tf
        slices = tf.IndexedSlices(
            tf.constant(values), tf.constant(indices), tf.constant(self.variable.shape)
        )
        self.optimizer.apply_gradients([(slices, self.variable)])
