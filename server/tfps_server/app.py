"""The composition root: registry, pusher, checkpointer and metrics behind one gRPC server.

The gRPC server is a ``grpc.aio`` server on an event loop of its own thread:
a stalled or slow client costs a suspended coroutine, never a thread, so health
checks and small calls stay answered whatever other clients do. Blocking work
runs in two thread pools, one for changes (pushes may wait there for their sync
step) and one for reads.

Besides the parameter-server service the server answers the standard health
service and server reflection, and serves metrics over HTTP on its own port.
Both ports are bound exclusively (no SO_REUSEPORT): a second server on a
taken port fails at start instead of sharing the port with the first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as server_reflection

from tfps_client.transport import MAX_MESSAGE_BYTES
from tfps_client.wire import parameter_server_pb2, parameter_server_pb2_grpc
from tfps_server.auth import TokenFile, authorize
from tfps_server.budget import ByteBudget
from tfps_server.checkpoints import Checkpointer
from tfps_server.interceptors import AdmissionInterceptor, DecodingInterceptor, MetricsInterceptor
from tfps_server.metrics_http import MetricsHttp
from tfps_server.push import Pusher
from tfps_server.registry import Registry
from tfps_server.service import ParameterServerServicer
from tfps_server.state_metrics import StateCollector
from tfps_server.streams import Streams
from tfps_server.tls import ServerTls, TlsFiles

_log = logging.getLogger(__name__)

SERVICE = parameter_server_pb2.DESCRIPTOR.services_by_name["ParameterServer"]
SERVICE_NAME = SERVICE.full_name
"""Fully qualified name of the service, as the health service reports it."""

MAX_RECEIVE_MESSAGE_BYTES = 16 << 20
"""Largest request message the server takes: gRPC holds a whole message before the
service sees it, so this bounds what one call can make it buffer. Clients send
tensors in chunks far smaller (1 MiB by default)."""

_T = TypeVar("_T")


class EventLoopThread:
    """An asyncio event loop running in a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tfps-grpc", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, _T]) -> futures.Future[_T]:
        """Schedules ``coroutine`` on the loop; returns its future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Runs ``coroutine`` on the loop and returns its result (from any other thread)."""
        return self.submit(coroutine).result()

    def close(self) -> None:
        """Stops the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class RunningServer:
    """A started gRPC server and the pieces tests and the CLI need to reach.

    Attributes:
        server: the gRPC server (``grpc.aio``), running on ``event_loop``.
        event_loop: the thread and loop the server runs on.
        port: the port it listens on.
        registry: the state it serves.
        pusher: applies pushes to the state.
        health: the health servicer, to flip serving status.
        servicer: the parameter-server servicer.
        checkpointer: saves and restores checkpoints; None without a checkpoint directory.
        metrics_port: the port serving ``/metrics`` over HTTP; None if not served.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        event_loop: EventLoopThread,
        pools: tuple[futures.ThreadPoolExecutor, ...],
        port: int,
        registry: Registry,
        pusher: Pusher,
        health_servicer: health.aio.HealthServicer,
        servicer: ParameterServerServicer,
        state_collector: StateCollector,
        metrics_http: MetricsHttp | None = None,
        tokens: TokenFile | None = None,
        tls: ServerTls | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.server = server
        self.event_loop = event_loop
        self._pools = pools
        self.port = port
        self.registry = registry
        self.pusher = pusher
        self.health = health_servicer
        self.servicer = servicer
        self.checkpointer = checkpointer
        self.metrics_port = metrics_http.port if metrics_http is not None else None
        self._state_collector = state_collector
        self._metrics_http = metrics_http
        self._tokens = tokens
        self._tls = tls
        self._shutdown_hooks: list[Callable[[], object]] = []
        self._stopped = False

    def set_serving(self, serving: bool) -> None:
        """Reports SERVING or NOT_SERVING; while not serving, RPCs get UNAVAILABLE."""
        if serving:
            self.servicer.ready.set()
        else:
            self.servicer.ready.clear()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self.event_loop.run(self.health.set(service, status))

    def reload(self) -> bool:
        """Re-reads the tokens file and the TLS certificates now (the CLI's SIGHUP).

        Whatever does not load (a broken file) is logged and the old one kept.

        Returns:
            True if everything reloaded.
        """
        reloaded = [
            part.reload()
            for part in (self._tokens, self._tls, self._metrics_http)
            if part is not None
        ]
        return all(reloaded)

    def add_shutdown_hook(self, hook: Callable[[], object]) -> None:
        """Registers work for :meth:`stop` once no RPC runs any more, such as a final checkpoint.

        Hooks run in registration order, after in-flight RPCs have finished and
        before the metrics endpoint closes.
        """
        self._shutdown_hooks.append(hook)

    def stop(self, grace: float | None = None) -> None:
        """Stops gracefully; a second call does nothing.

        In order: health reports NOT_SERVING for good; new RPCs are refused; sync
        steps still open are answered UNAVAILABLE (they cannot complete without
        new pushes, and clients retry UNAVAILABLE against the restarted server);
        other in-flight RPCs get ``grace`` seconds to finish (None: they are
        cancelled at once); the shutdown hooks run; the metrics endpoint closes.

        Raises:
            Exception: the first exception a shutdown hook raised, once everything stopped.
        """
        if self._stopped:
            return
        self._stopped = True
        self.event_loop.run(self.health.enter_graceful_shutdown())
        stopped = self.event_loop.run(_begin_stop(self.server, grace))
        self.registry.close()
        self.registry.hooks.reach("shutdown.draining")
        self.event_loop.run(_finished(stopped))
        for pool in self._pools:  # work handed to threads ends before the shutdown hooks run
            pool.shutdown(wait=True)
        _log.info("gRPC server stopped; running %d shutdown hooks", len(self._shutdown_hooks))
        failure: Exception | None = None
        for hook in self._shutdown_hooks:
            try:
                hook()
            except Exception as error:
                _log.exception("shutdown hook %r failed", hook)
                failure = failure or error
        if self._metrics_http is not None:
            self._metrics_http.close()
        self.registry.metrics.registry.unregister(self._state_collector)
        self.event_loop.close()
        if failure is not None:
            raise failure


async def _begin_stop(server: grpc.aio.Server, grace: float | None) -> asyncio.Task[None]:
    """Starts stopping ``server``; once this returns, it takes no new calls."""
    stopping = asyncio.ensure_future(server.stop(grace))
    await asyncio.sleep(0)
    return stopping


async def _finished(task: asyncio.Task[None]) -> None:
    await task


def create_server(
    registry: Registry,
    address: str = "127.0.0.1:0",
    max_workers: int = 64,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    *,
    metrics_address: str | None = None,
    metrics_variable_labels: bool = False,
    checkpointer: Checkpointer | None = None,
    serving: bool = True,
    tokens: TokenFile | None = None,
    tls: ServerTls | None = None,
    reflection: bool = True,
    metrics_tls: TlsFiles | None = None,
) -> RunningServer:
    """Creates and starts a server; port 0 in ``address`` picks a free port.

    RPCs are measured, and the state is reported at scrape time, in
    ``registry.metrics``, whether or not they are served over HTTP. Every request
    is bounded by ``registry.limits``.

    Args:
        registry: the variables and optimizers to serve.
        address: ``host:port`` to bind.
        max_workers: threads for calls that change the state (a push waiting for its
            sync step holds one); reads have a pool of their own.
        max_message_bytes: largest gRPC message sent (requests: at most
            :data:`MAX_RECEIVE_MESSAGE_BYTES`).
        metrics_address: ``host:port`` to serve ``/metrics`` on over HTTP (port 0 picks
            a free one); None serves none.
        metrics_variable_labels: label per-variable byte gauges by variable name.
        checkpointer: serves the checkpoint RPCs; None refuses them (no directory).
        serving: start SERVING; False starts NOT_SERVING (e.g. to restore first),
            answering UNAVAILABLE until ``set_serving(True)``.
        tokens: the tokens and roles the parameter-server service requires; None
            serves everyone. Health and reflection need no token.
        tls: serve TLS (mutual TLS with a client CA); None serves plaintext.
        reflection: answer the server reflection service.
        metrics_tls: serve ``/metrics`` over HTTPS with these files; None: plain HTTP.

    Raises:
        RuntimeError: an address could not be bound.
        ValueError: the metrics TLS files do not make a working certificate.
    """
    metrics = registry.metrics
    limits = registry.limits
    state_pool = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="tfps-state")
    read_pool = futures.ThreadPoolExecutor(
        min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="tfps-read"
    )
    event_loop = EventLoopThread()
    metrics.in_flight_capacity.set(limits.max_in_flight_bytes)
    pusher = Pusher(registry)
    streams = Streams(
        limits, ByteBudget(limits.max_in_flight_bytes, metrics.in_flight_bytes), read_pool
    )
    servicer = ParameterServerServicer(
        registry, pusher, streams, state_pool, read_pool, checkpointer=checkpointer
    )
    health_servicer = health.aio.HealthServicer()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            interceptors=[
                MetricsInterceptor(metrics, SERVICE),
                AdmissionInterceptor(
                    SERVICE,
                    functools.partial(authorize, tokens) if tokens is not None else None,
                    limits.max_concurrent_calls,
                ),
                DecodingInterceptor(SERVICE, read_pool),
            ],
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        parameter_server_pb2_grpc.add_ParameterServerServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if reflection:
            server_reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, server_reflection.SERVICE_NAME), server
            )
        try:
            port = (
                server.add_secure_port(address, tls.credentials())
                if tls is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError as error:
            raise RuntimeError(
                f"could not bind {address}: {error} (is another server on it?)"
            ) from None
        if port == 0:
            raise RuntimeError(f"could not bind {address} (is another server on it?)")
        await server.start()
        return server, port

    server: grpc.aio.Server | None = None
    try:
        server, port = event_loop.run(start())
        metrics_http = (
            MetricsHttp(metrics.registry, metrics_address, metrics_tls)
            if metrics_address is not None
            else None
        )
    except BaseException:
        if server is not None:
            event_loop.run(server.stop(None))
        event_loop.close()
        state_pool.shutdown()
        read_pool.shutdown()
        raise
    state_collector = StateCollector(registry, metrics_variable_labels)
    metrics.registry.register(state_collector)
    running = RunningServer(
        server,
        event_loop,
        (state_pool, read_pool),
        port,
        registry,
        pusher,
        health_servicer,
        servicer,
        state_collector,
        metrics_http,
        tokens,
        tls,
        checkpointer,
    )
    running.set_serving(serving)
    return running
