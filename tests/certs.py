"""Certificates for TLS tests: certificate authorities and the server and client certificates
they sign, written as PEM files (ECDSA P-256 keys, fast to make)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)
"""Subject alternative names of server certificates: the loopback host by name and address."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


class Authority:
    """A self-signed certificate authority that issues certificates.

    Args:
        name: the authority's common name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._certificate = (
            self._builder(_name(name), self._key.public_key())
            .issuer_name(_name(name))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @staticmethod
    def _builder(
        subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def write(self, path: Path) -> Path:
        """Writes the authority's certificate (what peers trust) to ``path``; returns it."""
        path.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, directory: Path, name: str, *, server: bool) -> KeyPair:
        """Issues a certificate for a server (loopback names) or a client named ``name``.

        Writes ``name.pem`` and ``name.key`` into ``directory``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(_name(name), key.public_key())
            .issuer_name(self._certificate.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(list(SERVER_NAMES)), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
        pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(_key_pem(key))
        return pair


@dataclass(frozen=True)
class Certificates:
    """A PKI for one test: a CA with a server and a client certificate, and an unrelated
    CA with a client certificate of its own."""

    ca: Path
    """The certificate of the CA that signed ``server`` and ``client``."""
    server: KeyPair
    """The server's certificate, for ``localhost``, 127.0.0.1 and ::1."""
    client: KeyPair
    """A client certificate from ``ca``."""
    other_ca: Path
    """The certificate of a CA that signed nothing else here."""
    other_client: KeyPair
    """A client certificate from ``other_ca``."""


def generate(directory: Path) -> Certificates:
    """Writes a fresh :class:`Certificates` into ``directory`` (which must exist)."""
    authority, other = Authority("tfps test CA"), Authority("unrelated test CA")
    return Certificates(
        ca=authority.write(directory / "ca.pem"),
        server=authority.issue(directory, "server", server=True),
        client=authority.issue(directory, "client", server=False),
        other_ca=other.write(directory / "other-ca.pem"),
        other_client=other.issue(directory, "other-client", server=False),
    )
