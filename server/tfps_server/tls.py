"""TLS for the server's ports: certificate files, loaded, checked and rotated without a restart.

A :class:`WatchedCertificate` holds the certificate, key and client CA read from
:class:`TlsFiles`. It re-reads them when they change (a cheap ``stat`` of each file,
made for every new connection) or when :meth:`WatchedCertificate.reload` is called
(on SIGHUP). A new pair that cannot be used (unreadable, not PEM, a key that does
not match the certificate, a pair caught half-written) is logged and the one
loaded before keeps serving. Connections already open keep the certificate they
were made with.

:class:`ServerTls` turns it into gRPC server credentials; :mod:`tfps_server.metrics_http`
serves the metrics endpoint with the same files.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass

import grpc

from tfps_server.watched import Stamp, stamp

_log = logging.getLogger(__name__)

_Stamp = tuple[Stamp, ...]
"""The :func:`~tfps_server.watched.stamp` of each file."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a TLS endpoint.

    Raises:
        ValueError: a file cannot be read.
    """

    cert: str
    """The certificate chain: the server's certificate first, then any intermediates."""
    key: str
    """The certificate's private key, unencrypted."""
    client_ca: str | None = None
    """CA certificates that client certificates must chain to; set, clients must present
    one (mutual TLS). None: clients are not asked for a certificate."""

    def __post_init__(self) -> None:
        for what, path in self.named():
            try:
                with open(path, "rb"):
                    pass
            except OSError as error:
                raise ValueError(
                    f"TLS {what} file {path}: cannot read it ({error.strerror or error})"
                ) from None

    def named(self) -> tuple[tuple[str, str], ...]:
        """Returns (what, path) of each file, such as ``("certificate", "/tls/tls.crt")``."""
        named = (("certificate", self.cert), ("key", self.key))
        return named if self.client_ca is None else (*named, ("client CA", self.client_ca))


@dataclass(frozen=True)
class TlsMaterial:
    """What one reading of :class:`TlsFiles` found, checked to work together."""

    cert: bytes
    """The certificate chain (PEM)."""
    key: bytes
    """The private key (PEM)."""
    client_ca: bytes | None
    """The client CA certificates (PEM); None without mutual TLS."""
    context: ssl.SSLContext
    """A server-side context serving the certificate, requiring client certificates
    from ``client_ca`` when set."""


def _stamp(files: TlsFiles) -> _Stamp:
    return tuple(stamp(path) for _, path in files.named())


def _refuse_encrypted_key() -> bytes:
    raise ValueError("the key is encrypted; expected an unencrypted PEM key")


def load(files: TlsFiles) -> TlsMaterial:
    """Reads the files and checks that they make a working server context.

    Raises:
        ValueError: a file cannot be read, is not what it should be, the key does
            not match the certificate, or the files changed while being read.
    """
    before = _stamp(files)
    try:
        cert, key = _read(files.cert), _read(files.key)
        client_ca = None if files.client_ca is None else _read(files.client_ca)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.cert, files.key, password=_refuse_encrypted_key)
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ValueError) as error:
        raise ValueError(
            f"TLS certificate {files.cert} with key {files.key}"
            + (f" and client CA {files.client_ca}" if files.client_ca else "")
            + f": expected readable PEM files and a key that matches the certificate, "
            f"received an error ({error})"
        ) from None
    if _stamp(files) != before:
        raise ValueError(f"TLS files {files.cert}, {files.key} changed while being read")
    return TlsMaterial(cert, key, client_ca, context)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


class WatchedCertificate:
    """The material of :class:`TlsFiles`, re-read when the files change or on :meth:`reload`.

    Safe to use from any thread.

    Args:
        files: the files to read.

    Raises:
        ValueError: the files do not make a working certificate now (see :func:`load`).
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._tried = _stamp(files)
        self._current = load(files)

    def current(self) -> TlsMaterial:
        """Returns the material to serve, re-reading the files first if they changed.

        Files that changed into something unusable are tried once per change: the
        error is logged and the material loaded before is returned.
        """
        stamp = _stamp(self.files)
        with self._lock:
            if stamp != self._tried:
                self._load(stamp)
            return self._current

    def reload(self) -> bool:
        """Re-reads the files now, changed or not.

        Returns:
            True if the files' material now serves, False if the material loaded
            before was kept (the error was logged).
        """
        stamp = _stamp(self.files)
        with self._lock:
            return self._load(stamp)

    def _load(self, stamp: _Stamp) -> bool:
        self._tried = stamp
        try:
            self._current = load(self.files)
        except ValueError as error:
            _log.error("%s; keeping the certificate loaded before", error)
            return False
        _log.info("loaded TLS certificate %s", self.files.cert)
        return True


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.client_ca
    )


class ServerTls:
    """TLS for the gRPC port, with certificates rotated without a restart.

    Args:
        files: the certificate, key and (for mutual TLS) client CA files.

    Raises:
        ValueError: the files do not make a working certificate (see :func:`load`).
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._certificate = WatchedCertificate(files)

    def credentials(self) -> grpc.ServerCredentials:
        """Returns credentials for ``add_secure_port`` (``grpc.server`` or ``grpc.aio.server``).

        Every new connection serves the current certificate: gRPC asks for it at
        each handshake, and gets a new configuration when the files changed or
        :meth:`reload` read them since the last one.
        """
        served = self._certificate.current()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            current = self._certificate.current()
            if current is served:
                return None
            served = current
            return _configuration(current)

        return grpc.dynamic_ssl_server_credentials(
            _configuration(served),
            fetch,
            require_client_authentication=self.files.client_ca is not None,
        )

    def reload(self) -> bool:
        """Re-reads the files now (on SIGHUP); see :meth:`WatchedCertificate.reload`."""
        return self._certificate.reload()
