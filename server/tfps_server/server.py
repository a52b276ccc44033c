"""Assembles the gRPC server: the parameter-server service, health and reflection."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tfps_client import MAX_MESSAGE_BYTES, channel_options
from tfps_client._proto.tfps.v1 import parameter_server_pb2, parameter_server_pb2_grpc
from tfps_server.service import ParameterServerServicer
from tfps_server.store import Store

SERVICE_NAME = parameter_server_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name
"""Fully qualified name of the service, as the health service reports it."""


class RunningServer:
    """A started gRPC server and the pieces tests and the CLI need to reach.

    Attributes:
        server: the gRPC server.
        port: the port it listens on.
        store: the state it serves.
        health: the health servicer, to flip serving status.
    """

    def __init__(
        self, server: grpc.Server, port: int, store: Store, health_servicer: health.HealthServicer
    ) -> None:
        self.server = server
        self.port = port
        self.store = store
        self.health = health_servicer

    def set_serving(self, serving: bool) -> None:
        """Reports SERVING or NOT_SERVING for the overall server and the service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, then stops, letting in-flight RPCs finish within ``grace``."""
        self.set_serving(False)
        self.server.stop(grace).wait()


def create_server(
    store: Store,
    address: str = "127.0.0.1:0",
    max_workers: int = 64,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Creates and starts a server; port 0 in ``address`` picks a free port.

    Args:
        store: the variables and optimizers to serve.
        address: ``host:port`` to bind.
        max_workers: threads serving RPCs concurrently.
        max_message_bytes: largest gRPC message accepted or sent.

    Raises:
        RuntimeError: the address could not be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tfps-rpc"),
        options=channel_options(max_message_bytes),
    )
    parameter_server_pb2_grpc.add_ParameterServerServicer_to_server(
        ParameterServerServicer(store), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    server.start()
    running = RunningServer(server, port, store, health_servicer)
    running.set_serving(True)
    return running
