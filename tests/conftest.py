"""Fixtures: real servers on free ports, real clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import pytest
import tensorflow as tf

from tfps_client import Client
from tfps_server import Registry, RunningServer, create_server
from tfps_server.checkpoints import Checkpointer

from interleave import BlockingHooks


@pytest.fixture
def hooks() -> BlockingHooks:
    """Hook points of :func:`server` where a test can hold or watch server threads."""
    return BlockingHooks()


@pytest.fixture
def server(hooks: BlockingHooks) -> Iterator[RunningServer]:
    """A real gRPC server on a free loopback port, with an empty state on the default device."""
    running = create_server(Registry(hooks=hooks), "127.0.0.1:0")
    yield running
    hooks.release_all()
    running.stop(None)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    """A client connected to :func:`server`."""
    with Client(f"127.0.0.1:{server.port}", timeout=120.0) as connected:
        yield connected


@pytest.fixture
def ckpt_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real server whose checkpoints go to tmp_path/ckpts, three kept."""
    registry = Registry()
    running = create_server(
        registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, tmp_path / "ckpts", keep=3)
    )
    yield running
    running.stop(None)


@pytest.fixture(scope="module")
def unreassociated_graphs() -> Iterator[None]:
    """Keeps Grappler from reassociating a local optimizer's arithmetic inside model.fit's
    tf.function, for the module, so that a local run can be compared bitwise with the
    server's Keras (eager-semantics) update."""
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    yield
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": True})
