"""Container health check: exits 0 when the tfps server reports SERVING, else 1.

Usage: ``python healthcheck.py [HOST:PORT]``; the address defaults to
``127.0.0.1:$TFPS_PORT`` (port 50051 when unset). It asks the standard gRPC
health service about ``tfps.v1.ParameterServer``, which reports NOT_SERVING
while the server restores or shuts down. It imports only grpcio and
grpcio-health-checking, not TensorFlow, so it is cheap to run every few seconds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "tfps.v1.ParameterServer"
TIMEOUT_SECONDS = 3.0


def status(address: str, timeout: float = TIMEOUT_SECONDS) -> str:
    """Returns the service's health status name, or the gRPC error code's name."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout)
        except grpc.RpcError as error:
            return error.code().name if isinstance(error, grpc.Call) else "UNAVAILABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: Sequence[str]) -> int:
    """Prints the status of the server at ``argv[0]`` (or the default); returns the exit code."""
    address = argv[0] if argv else f"127.0.0.1:{os.environ.get('TFPS_PORT') or 50051}"
    result = status(address)
    print(f"{address} {SERVICE}: {result}")
    return 0 if result == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
