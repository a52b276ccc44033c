"""Pickled clients (for multiprocessing and Ray) keep their configuration and open channels
of their own: spawned worker processes train against a real server with one."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
from pathlib import Path

import grpc
import numpy as np
import pytest

from tfps_client import Client, RetryPolicy, aio, tls_credentials
from tfps_server import Registry, RunningServer, create_server
from tfps_server.tls import ServerTls, TlsFiles

from certs import generate
from clients import push_and_pull, push_and_pull_async


def sgd_with_w(client: Client) -> None:
    client.create_optimizer("sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
    client.create_variables({"w": np.zeros(3, np.float32)}, "sgd")


def test_a_pickled_client_keeps_its_configuration(server: RunningServer) -> None:
    address = f"127.0.0.1:{server.port}"
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.5)
    with Client(address, 12.5, chunk_bytes=1024, retry=retry, token="t0ken") as client:
        sgd_with_w(client)
        data = pickle.dumps(client)
        settings = client._settings
    with pickle.loads(data) as copy:  # the original is closed: the copy has its own channel
        assert (copy.address, copy.timeout, copy.retry) == (address, 12.5, retry)
        assert copy._settings == settings  # chunk sizes and the token's metadata too
        assert "t0ken" not in repr(copy._settings)  # the pickle holds it; a repr does not
        assert copy.push({"w": np.ones(3, np.float32)}).iterations == {"sgd": 1}


def test_spawned_workers_train_with_a_pickled_client(server: RunningServer) -> None:
    with Client(f"127.0.0.1:{server.port}", timeout=120.0) as client:
        sgd_with_w(client)
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            results = pool.starmap(push_and_pull, [(client, 0), (client, 1)])
        assert sorted(iterations for iterations, _ in results) == [1, 2]
        np.testing.assert_array_equal(client.pull(["w"])["w"], np.full(3, -2.0, np.float32))


def test_a_pickled_asyncio_client_opens_its_channel_in_its_loop(server: RunningServer) -> None:
    address = f"127.0.0.1:{server.port}"
    with Client(address) as client:
        sgd_with_w(client)
    copy = pickle.loads(pickle.dumps(aio.Client(address, timeout=60.0)))
    iterations, pulled = asyncio.run(push_and_pull_async(copy))
    assert iterations == 1
    np.testing.assert_array_equal(pulled, -np.ones(3, np.float32))


def test_a_client_with_tls_credentials_pickles_their_pem_bytes(tmp_path: Path) -> None:
    certs = generate(tmp_path)
    tls = ServerTls(TlsFiles(str(certs.server.cert), str(certs.server.key), None))
    running = create_server(Registry(), tls=tls)
    try:
        credentials = tls_credentials(certs.ca)
        with Client(f"127.0.0.1:{running.port}", credentials=credentials) as client:
            data = pickle.dumps(client)
        with pickle.loads(data) as copy:
            assert copy.list_variables() == []
    finally:
        running.stop(None)


def test_opaque_credentials_refuse_pickling(server: RunningServer) -> None:
    credentials = grpc.ssl_channel_credentials()
    with (
        Client(f"127.0.0.1:{server.port}", credentials=credentials) as client,
        pytest.raises(TypeError, match=r"ChannelCredentials.*tls_credentials"),
    ):
        pickle.dumps(client)
