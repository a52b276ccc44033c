"""Container health check: exits 0 when the tfps server reports SERVING, else 1.

Usage: ``python healthcheck.py [HOST:PORT]``; the address defaults to
``127.0.0.1:$TFPS_PORT`` (port 50051 when unset). It asks the standard gRPC
health service about ``tfps.v1.ParameterServer``, which reports NOT_SERVING
while the server restores or shuts down. It imports only grpcio and
grpcio-health-checking, not TensorFlow, so it is cheap to run every few seconds.
Health needs no token.

It reads the server's own environment, so that it keeps working when TLS is on:
with ``TFPS_TLS_CERT`` set, it connects over TLS and

- trusts the CA in ``TFPS_HEALTHCHECK_CA``, else the server's client CA
  ``TFPS_TLS_CLIENT_CA`` (one CA signing the server and its clients, as
  ``deploy/make-secrets.sh`` makes them), else the system's root certificates;
- expects the server's certificate to name ``TFPS_HEALTHCHECK_NAME`` (default
  ``localhost``), whatever address it connects to;
- under mutual TLS (``TFPS_TLS_CLIENT_CA`` set), presents the server's own
  certificate and key (``TFPS_TLS_CERT``, ``TFPS_TLS_KEY``), which must then
  allow client authentication, as those of ``deploy/make-secrets.sh`` do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "tfps.v1.ParameterServer"
TIMEOUT_SECONDS = 3.0
DEFAULT_PORT = 50051
CA_VARIABLE = "TFPS_HEALTHCHECK_CA"
"""The CA that signed the server's certificate, when not the server's client CA."""
NAME_VARIABLE = "TFPS_HEALTHCHECK_NAME"
"""The name the server's certificate must hold."""
DEFAULT_NAME = "localhost"
ENVIRONMENT = (
    "TFPS_PORT",
    "TFPS_TLS_CERT",
    "TFPS_TLS_KEY",
    "TFPS_TLS_CLIENT_CA",
    CA_VARIABLE,
    NAME_VARIABLE,
)
"""Every environment variable the check reads: the server's own, and two of its own."""


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as file:
        return file.read()


def open_channel(address: str, environ: Mapping[str, str]) -> grpc.Channel:
    """Returns a channel to ``address``: TLS when ``environ`` turns it on for the server.

    Raises:
        OSError: a TLS file cannot be read.
    """
    cert = environ.get("TFPS_TLS_CERT")
    if not cert:
        return grpc.insecure_channel(address)
    client_ca = environ.get("TFPS_TLS_CLIENT_CA")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(environ.get(CA_VARIABLE) or client_ca),
        private_key=_read(environ.get("TFPS_TLS_KEY")) if client_ca else None,
        certificate_chain=_read(cert) if client_ca else None,
    )
    name = environ.get(NAME_VARIABLE) or DEFAULT_NAME
    return grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", name)]
    )


def status(channel: grpc.Channel, timeout: float = TIMEOUT_SECONDS) -> str:
    """Returns the service's health status name, or the gRPC error code's name."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout)
    except grpc.RpcError as error:
        return error.code().name if isinstance(error, grpc.Call) else "UNAVAILABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    """Prints the status of the server at ``argv[0]`` (or the default); returns the exit code."""
    address = argv[0] if argv else f"127.0.0.1:{environ.get('TFPS_PORT') or DEFAULT_PORT}"
    try:
        with open_channel(address, environ) as channel:
            result = status(channel)
    except OSError as error:
        result = f"cannot read a TLS file ({error})"
    print(f"{address} {SERVICE}: {result}")
    return 0 if result == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
