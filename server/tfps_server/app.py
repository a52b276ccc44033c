"""The composition root: registry, pusher, checkpointer and metrics behind one gRPC server.

Besides the parameter-server service the server answers the standard health
service and server reflection, and serves metrics over HTTP on its own port.
Both ports are bound exclusively (no SO_REUSEPORT): a second server on a
taken port fails at start instead of sharing the port with the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from tfps_client.transport import MAX_MESSAGE_BYTES, channel_options
from tfps_client.wire import parameter_server_pb2, parameter_server_pb2_grpc
from tfps_server.checkpoints import Checkpointer
from tfps_server.interceptors import DecodingInterceptor, MetricsInterceptor
from tfps_server.push import Pusher
from tfps_server.registry import Registry
from tfps_server.service import DEFAULT_MAX_REQUEST_BYTES, ParameterServerServicer
from tfps_server.state_metrics import StateCollector

_log = logging.getLogger(__name__)

SERVICE_NAME = parameter_server_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name
"""Fully qualified name of the service, as the health service reports it."""


class RunningServer:
    """A started gRPC server and the pieces tests and the CLI need to reach.

    Attributes:
        server: the gRPC server.
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
        server: grpc.Server,
        port: int,
        registry: Registry,
        pusher: Pusher,
        health_servicer: health.HealthServicer,
        servicer: ParameterServerServicer,
        state_collector: StateCollector,
        metrics_http: _MetricsHttp | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.registry = registry
        self.pusher = pusher
        self.health = health_servicer
        self.servicer = servicer
        self.checkpointer = checkpointer
        self.metrics_port = metrics_http.port if metrics_http is not None else None
        self._state_collector = state_collector
        self._metrics_http = metrics_http
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
            self.health.set(service, status)

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
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        self.registry.close()
        self.registry.hooks.reach("shutdown.draining")
        stopped.wait()
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
        if failure is not None:
            raise failure


class _MetricsHttp:
    """Serves a registry's metrics at ``/metrics`` over HTTP from a daemon thread.

    Raises:
        RuntimeError: the address could not be bound.
    """

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, _, port = address.rpartition(":")
        try:
            self._httpd, self._thread = start_http_server(
                int(port), host.strip("[]"), registry=registry
            )
        except (OSError, ValueError) as error:
            raise RuntimeError(f"could not serve metrics on {address}: {error}") from error
        self.port: int = self._httpd.server_address[1]

    def close(self) -> None:
        """Stops serving and releases the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def create_server(
    registry: Registry,
    address: str = "127.0.0.1:0",
    max_workers: int = 64,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    *,
    metrics_address: str | None = None,
    metrics_variable_labels: bool = False,
    checkpointer: Checkpointer | None = None,
    max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
    serving: bool = True,
) -> RunningServer:
    """Creates and starts a server; port 0 in ``address`` picks a free port.

    RPCs are measured, and the state is reported at scrape time, in
    ``registry.metrics``, whether or not they are served over HTTP.

    Args:
        registry: the variables and optimizers to serve.
        address: ``host:port`` to bind.
        max_workers: threads serving RPCs concurrently.
        max_message_bytes: largest gRPC message accepted or sent.
        metrics_address: ``host:port`` to serve ``/metrics`` on over HTTP (port 0 picks
            a free one); None serves none.
        metrics_variable_labels: label per-variable byte gauges by variable name.
        checkpointer: serves the checkpoint RPCs; None refuses them (no directory).
        max_request_bytes: the most tensor bytes one request may announce.
        serving: start SERVING; False starts NOT_SERVING (e.g. to restore first),
            answering UNAVAILABLE until ``set_serving(True)``.

    Raises:
        RuntimeError: an address could not be bound.
    """
    metrics = registry.metrics
    service = parameter_server_pb2.DESCRIPTOR.services_by_name["ParameterServer"]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tfps-rpc"),
        interceptors=[MetricsInterceptor(metrics, service), DecodingInterceptor(service)],
        options=[*channel_options(max_message_bytes), ("grpc.so_reuseport", 0)],
    )
    pusher = Pusher(registry)
    servicer = ParameterServerServicer(
        registry, pusher, max_request_bytes=max_request_bytes, checkpointer=checkpointer
    )
    parameter_server_pb2_grpc.add_ParameterServerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(
            f"could not bind {address}: {error} (is another server on it?)"
        ) from None
    if port == 0:
        raise RuntimeError(f"could not bind {address} (is another server on it?)")
    metrics_http = (
        _MetricsHttp(metrics.registry, metrics_address) if metrics_address is not None else None
    )
    state_collector = StateCollector(registry, metrics_variable_labels)
    metrics.registry.register(state_collector)
    server.start()
    running = RunningServer(
        server,
        port,
        registry,
        pusher,
        health_servicer,
        servicer,
        state_collector,
        metrics_http,
        checkpointer,
    )
    running.set_serving(serving)
    return running
