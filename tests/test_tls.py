"""TLS on the gRPC and metrics ports: certificates generated here, real handshakes.

Covers TLS and mutual TLS (plaintext and foreign certificates refused), certificate
rotation without a restart (files replaced, explicit reload, a broken pair kept
out), the fetcher under ``grpc.aio``, HTTPS metrics, and ``tfps-ckpt`` over TLS
with a token.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import shutil
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

import tfps_client
from tfps_client import Client, RetryPolicy, UnavailableError
from tfps_client.ckpt_cli import main as tfps_ckpt
from tfps_server import Registry, RunningServer, create_server
from tfps_server.auth import TokenFile
from tfps_server.checkpoints import Checkpointer
from tfps_server.metrics_http import MetricsHttp
from tfps_server.tls import ServerTls, TlsFiles

from certs import Authority, Certificates, KeyPair, generate

ONCE = RetryPolicy(max_attempts=1)
"""Refused handshakes are UNAVAILABLE, which the client would retry."""


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return generate(tmp_path)


def served_files(certs: Certificates, directory: Path, client_ca: bool = False) -> TlsFiles:
    """Copies the server's pair (and the client CA) into ``directory``, as a deployment
    mounts them, so that tests can replace them."""
    directory.mkdir()
    cert, key = directory / "tls.crt", directory / "tls.key"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    ca = None
    if client_ca:
        ca = directory / "client-ca.crt"
        shutil.copy(certs.ca, ca)
    return TlsFiles(str(cert), str(key), None if ca is None else str(ca))


def install(pair: KeyPair, files: TlsFiles) -> None:
    """Replaces the served pair, each file by a rename, as a rotation tool does."""
    for source, target in ((pair.key, files.key), (pair.cert, files.cert)):
        staged = f"{target}.new"
        shutil.copy(source, staged)
        os.replace(staged, target)


@pytest.fixture
def tls_server(certs: Certificates, tmp_path: Path) -> Iterator[tuple[RunningServer, ServerTls]]:
    tls = ServerTls(served_files(certs, tmp_path / "served"))
    server = create_server(Registry(), tls=tls)
    yield server, tls
    server.stop(None)


def connect(port: int, ca: Path | None, pair: KeyPair | None = None) -> Client:
    credentials = (
        None
        if ca is None
        else tfps_client.tls_credentials(
            ca, pair.cert if pair else None, pair.key if pair else None
        )
    )
    return Client(f"127.0.0.1:{port}", timeout=30.0, retry=ONCE, credentials=credentials)


def works(client: Client) -> bool:
    """Whether a call goes through, or the connection is refused (UNAVAILABLE)."""
    try:
        client.list_variables()
    except UnavailableError:
        return False
    return True


def test_tls_serves_and_refuses_plaintext_and_untrusted_servers(
    tls_server: tuple[RunningServer, ServerTls], certs: Certificates
) -> None:
    server, _ = tls_server
    with connect(server.port, certs.ca) as client:
        client.create_optimizer("default", {"class_name": "SGD", "config": {}})
        client.create_variables({"w": np.ones(3, np.float32)})
        np.testing.assert_array_equal(client.pull(["w"])["w"], np.ones(3, np.float32))
    with connect(server.port, None) as plaintext:
        assert not works(plaintext)
    with connect(server.port, certs.other_ca) as untrusting:
        assert not works(untrusting)


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(
    certs: Certificates, tmp_path: Path
) -> None:
    tls = ServerTls(served_files(certs, tmp_path / "served", client_ca=True))
    server = create_server(Registry(), tls=tls)
    try:
        with connect(server.port, certs.ca, certs.client) as client:
            assert works(client)
        with connect(server.port, certs.ca) as anonymous:
            assert not works(anonymous)
        with connect(server.port, certs.ca, certs.other_client) as foreign:
            assert not works(foreign)
        with connect(server.port, certs.ca, certs.server) as server_certificate:
            assert not works(server_certificate)
    finally:
        server.stop(None)


def test_new_connections_get_a_replaced_certificate_without_a_restart(
    tls_server: tuple[RunningServer, ServerTls], certs: Certificates, tmp_path: Path
) -> None:
    server, tls = tls_server
    rotated = Authority("rotated CA")
    rotated_ca = rotated.write(tmp_path / "rotated-ca.pem")
    with connect(server.port, certs.ca) as before:
        assert works(before)
        install(rotated.issue(tmp_path, "rotated-server", server=True), tls.files)
        with connect(server.port, rotated_ca) as after:
            assert works(after)
        with connect(server.port, certs.ca) as stale:
            assert not works(stale)
        assert works(before), "an open connection keeps the certificate it was made with"


def test_reload_rereads_the_files_and_keeps_a_broken_pair_out(
    tls_server: tuple[RunningServer, ServerTls],
    certs: Certificates,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, tls = tls_server
    assert tls.reload()
    with connect(server.port, certs.ca) as client:
        assert works(client)

    rotated = Authority("rotated CA")
    pair = rotated.issue(tmp_path, "rotated-server", server=True)
    shutil.copy(pair.cert, tls.files.cert)  # the certificate is new, its key not yet
    with caplog.at_level(logging.ERROR, logger="tfps_server.tls"):
        assert not tls.reload()
        with connect(server.port, certs.ca) as client:
            assert works(client)
    assert f"TLS certificate {tls.files.cert} with key {tls.files.key}" in caplog.text
    assert "keeping the certificate loaded before" in caplog.text

    shutil.copy(pair.key, tls.files.key)
    assert tls.reload()
    with connect(server.port, rotated.write(tmp_path / "rotated-ca.pem")) as client:
        assert works(client)


def test_a_replaced_certificate_reaches_a_grpc_aio_server(
    certs: Certificates, tmp_path: Path
) -> None:
    tls = ServerTls(served_files(certs, tmp_path / "served"))
    rotated = Authority("rotated CA")
    rotated_ca = rotated.write(tmp_path / "rotated-ca.pem")

    async def check(port: int, ca: Path) -> bool:
        credentials = tfps_client.tls_credentials(ca)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=30
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                return False
            return True

    async def scenario() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", tls.credentials())
        await server.start()
        try:
            assert await check(port, certs.ca)
            install(rotated.issue(tmp_path, "rotated-server", server=True), tls.files)
            assert await check(port, rotated_ca)
            assert not await check(port, certs.ca)
        finally:
            await server.stop(None)

    asyncio.run(scenario())


# Files -----------------------------------------------------------------------------------------


def test_tls_files_must_be_readable(certs: Certificates, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TLS key file .*missing.key: cannot read it"):
        TlsFiles(str(certs.server.cert), str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match=r"TLS client CA file .*: cannot read it"):
        TlsFiles(str(certs.server.cert), str(certs.server.key), str(tmp_path))


@pytest.mark.parametrize("problem", ["mismatched", "not-pem", "encrypted", "bad-client-ca"])
def test_a_server_refuses_certificates_it_cannot_serve(
    certs: Certificates, tmp_path: Path, problem: str
) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key, client_ca = certs.server.cert, certs.server.key, None
    if problem == "mismatched":
        key = certs.client.key
    elif problem == "not-pem":
        cert = tmp_path / "garbage.pem"
        cert.write_text("not a certificate\n")
    elif problem == "encrypted":
        key = tmp_path / "encrypted.key"
        private = serialization.load_pem_private_key(certs.server.key.read_bytes(), None)
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    else:
        client_ca = certs.server.key
    files = TlsFiles(str(cert), str(key), None if client_ca is None else str(client_ca))
    with pytest.raises(ValueError, match=f"TLS certificate {cert} with key {key}"):
        ServerTls(files)
    with pytest.raises(ValueError, match="encrypted" if problem == "encrypted" else "PEM"):
        MetricsHttp(CollectorRegistry(), "127.0.0.1:0", files)


def test_tls_credentials_take_a_client_certificate_with_its_key_only(certs: Certificates) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file together or neither"):
        tfps_client.tls_credentials(certs.ca, cert_file=certs.client.cert)
    assert isinstance(tfps_client.tls_credentials(), grpc.ChannelCredentials)


# Metrics ---------------------------------------------------------------------------------------


def scrape(port: int, ca: Path, pair: KeyPair | None = None) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    url = f"https://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        return str(response.read().decode())


SCRAPE_FAILURES = (OSError, http.client.HTTPException)
"""What a refused handshake raises in urllib, depending on when the server hangs up."""


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("tfps_test_scrapes", "A metric to find in a scrape.", registry=registry).inc()
    return registry


def test_metrics_serve_https_and_rotate_their_certificate(
    registry: CollectorRegistry, certs: Certificates, tmp_path: Path
) -> None:
    files = served_files(certs, tmp_path / "served")
    metrics = MetricsHttp(registry, "127.0.0.1:0", files)
    try:
        assert "tfps_test_scrapes_total 1.0" in scrape(metrics.port, certs.ca)
        with pytest.raises(SCRAPE_FAILURES):
            urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=30)

        rotated = Authority("rotated CA")
        rotated_ca = rotated.write(tmp_path / "rotated-ca.pem")
        install(rotated.issue(tmp_path, "rotated-server", server=True), files)
        assert "tfps_test_scrapes_total" in scrape(metrics.port, rotated_ca)
        with pytest.raises(SCRAPE_FAILURES):
            scrape(metrics.port, certs.ca)

        shutil.copy(certs.server.cert, files.cert)  # the old certificate, the new key
        assert not metrics.reload()
        assert "tfps_test_scrapes_total" in scrape(metrics.port, rotated_ca)
        shutil.copy(certs.server.key, files.key)
        assert metrics.reload()
        assert "tfps_test_scrapes_total" in scrape(metrics.port, certs.ca)
    finally:
        metrics.close()


def test_metrics_with_mutual_tls_require_a_client_certificate_of_the_ca(
    registry: CollectorRegistry, certs: Certificates, tmp_path: Path
) -> None:
    metrics = MetricsHttp(
        registry, "127.0.0.1:0", served_files(certs, tmp_path / "served", client_ca=True)
    )
    try:
        assert "tfps_test_scrapes_total" in scrape(metrics.port, certs.ca, certs.client)
        with pytest.raises(SCRAPE_FAILURES):
            scrape(metrics.port, certs.ca)
        with pytest.raises(SCRAPE_FAILURES):
            scrape(metrics.port, certs.ca, certs.other_client)
    finally:
        metrics.close()


def test_a_stalled_connection_holds_up_no_scrape(
    registry: CollectorRegistry, certs: Certificates, tmp_path: Path
) -> None:
    metrics = MetricsHttp(registry, "127.0.0.1:0", served_files(certs, tmp_path / "served"))
    try:
        with socket.create_connection(("127.0.0.1", metrics.port)):
            assert "tfps_test_scrapes_total" in scrape(metrics.port, certs.ca)
    finally:
        metrics.close()


def test_plain_metrics_have_no_certificate_to_reload(registry: CollectorRegistry) -> None:
    metrics = MetricsHttp(registry, "127.0.0.1:0")
    try:
        assert metrics.reload()
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert b"tfps_test_scrapes_total" in response.read()
    finally:
        metrics.close()


def test_the_server_serves_metrics_over_https(certs: Certificates, tmp_path: Path) -> None:
    server = create_server(
        Registry(),
        metrics_address="127.0.0.1:0",
        metrics_tls=served_files(certs, tmp_path / "served"),
    )
    try:
        assert server.metrics_port is not None
        assert "tfps_rpc_requests_total" in scrape(server.metrics_port, certs.ca)
    finally:
        server.stop(None)


# The secure setup end to end -------------------------------------------------------------------

ADMIN = "admin-token-0123456789abcdef"


def test_tfps_ckpt_over_mutual_tls_with_a_token(
    certs: Certificates, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tokens").write_text(f"admin {ADMIN}\n")
    registry = Registry()
    server = create_server(
        registry,
        checkpointer=Checkpointer(registry, tmp_path / "checkpoints"),
        tokens=TokenFile(tmp_path / "tokens"),
        tls=ServerTls(served_files(certs, tmp_path / "served", client_ca=True)),
    )
    tls = [
        "--tls-ca",
        str(certs.ca),
        "--tls-cert",
        str(certs.client.cert),
        "--tls-key",
        str(certs.client.key),
    ]
    address = ["--server", f"127.0.0.1:{server.port}", "--timeout", "30"]
    try:
        assert tfps_ckpt(["save", *address, *tls, "--token", ADMIN]) == 0
        assert tfps_ckpt(["ls", *address, *tls, "--token", ADMIN]) == 0
        assert capsys.readouterr().out.split("\n")[1].split()[0] == "1"

        assert tfps_ckpt(["ls", *address, *tls, "--token", ""]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert tfps_ckpt(["ls", *address, *tls[:4], "--token", ADMIN]) == 1
        assert "cert_file and key_file together" in capsys.readouterr().err
    finally:
        server.stop(None)
