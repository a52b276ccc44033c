"""The metrics endpoint: a registry's metrics at ``/metrics`` over HTTP or HTTPS, on its own port.

With TLS, every new connection is served the current certificate of a
:class:`~tfps_server.tls.WatchedCertificate`, so certificates rotate without a
restart, as on the gRPC port. The TLS handshake happens in the connection's own
thread, and a connection that sends nothing for :data:`IDLE_TIMEOUT_SECONDS` is
closed: a client that connects and stalls holds up no other scrape.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from tfps_server.tls import TlsFiles, WatchedCertificate

_log = logging.getLogger(__name__)

IDLE_TIMEOUT_SECONDS = 30.0
"""Seconds a metrics connection may stay silent (handshake included) before it is closed."""


class _QuietHandler(WSGIRequestHandler):
    """Serves one connection without logging each request; gives up on a silent client."""

    timeout = IDLE_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        """Logs nothing: scrapes are frequent and routine."""


class _Server(ThreadingWSGIServer):
    """A thread per connection, with the certificate current at accept time when TLS is on."""

    def __init__(
        self, address: tuple[str, int], family: int, certificate: WatchedCertificate | None
    ) -> None:
        self.address_family = family
        self.certificate = certificate
        super().__init__(address, _QuietHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, client = super().get_request()
        if self.certificate is None:
            return connection, client
        # The handshake happens at the first read, in the connection's own thread.
        context = self.certificate.current().context
        return context.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        ), client

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("metrics connection from %s failed", client_address, exc_info=True)


class MetricsHttp:
    """Serves a registry's metrics at ``/metrics`` from daemon threads.

    Args:
        registry: the metrics to serve.
        address: ``host:port`` to bind (``[::1]:9090`` for IPv6); port 0 picks a free one.
        tls: serve HTTPS with these files (with ``client_ca``, scrapers must present a
            certificate from it); None serves plain HTTP.

    Raises:
        RuntimeError: the address could not be bound.
        ValueError: the TLS files do not make a working certificate.
    """

    def __init__(
        self, registry: CollectorRegistry, address: str, tls: TlsFiles | None = None
    ) -> None:
        self._certificate = WatchedCertificate(tls) if tls is not None else None
        host, _, port = address.rpartition(":")
        try:
            family, _, _, _, bound = socket.getaddrinfo(
                host.strip("[]") or None,
                int(port),
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )[0]
            self._httpd = _Server((str(bound[0]), int(bound[1])), family, self._certificate)
        except (OSError, ValueError) as error:
            raise RuntimeError(f"could not serve metrics on {address}: {error}") from error
        self._httpd.set_app(make_wsgi_app(registry))
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="tfps-metrics", daemon=True
        )
        self._thread.start()

    def reload(self) -> bool:
        """Re-reads the TLS files now (on SIGHUP); new connections get what they hold.

        Returns:
            True if the files' certificate now serves, or without TLS; False if the
            certificate loaded before was kept (the error was logged).
        """
        return self._certificate.reload() if self._certificate is not None else True

    def close(self) -> None:
        """Stops serving and releases the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
