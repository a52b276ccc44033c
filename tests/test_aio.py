"""The asyncio client does what the blocking one does: the same scenarios against real
servers give the same results and the same typed errors, checked for both clients."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tfps_client import (
    AlreadyExistsError,
    Client,
    IndexedSlices,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    Reason,
    RetryPolicy,
    Sync,
    aio,
)
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_server import Registry, RunningServer, create_server

from clients import KINDS
from helpers import assert_all_bitwise_equal

MakeClient = Callable[..., Any]
each_client = pytest.mark.parametrize("make", KINDS.values(), ids=KINDS.keys())
ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.01}}


def train(client: Any) -> dict[str, Any]:
    """Creates, pushes (dense and sparse), reads back everything; returns what it read."""
    rng = np.random.default_rng(7)
    seen: dict[str, Any] = {}
    seen["created"] = client.create_optimizer("adam", ADAM)
    seen["again"] = client.create_optimizer("adam", ADAM)
    seen["variables"] = client.create_variables(
        {"dense": np.ones((3, 2), np.float32), "emb": np.zeros((5, 2), np.float32)}, "adam"
    )
    seen["push"] = client.push(
        {
            "dense": rng.standard_normal((3, 2)).astype(np.float32),
            "emb": IndexedSlices(np.ones((2, 2), np.float32), np.array([1, 3])),
        },
        request_id="push-1",
    )
    seen["push_pull"] = client.push_pull(
        {"emb": IndexedSlices(np.ones((1, 2), np.float32), np.array([4]))},
        ["emb"],
        request_id="push-2",
    )
    seen["pull"] = client.pull()
    seen["rows"] = client.pull_rows("emb", [[1, 4], [0, 0]])
    seen["weights"] = client.get_weights("adam")
    seen["slot_names"] = client.slot_names("adam")
    seen["slot"] = client.get_slot("dense", "m")
    seen["iterations"] = client.iterations("adam")
    seen["config"] = client.get_config("adam")["config"]["learning_rate"]
    seen["options"] = client.get_options("adam")
    client.set_hyperparameter("adam", "learning_rate", 0.5)
    client.set_weights("adam", seen["weights"])
    seen["variables_listed"] = client.list_variables()
    return seen


def test_both_clients_train_alike(tmp_path: Path) -> None:
    seen = {}
    for kind, make in KINDS.items():
        running = create_server(Registry(), "127.0.0.1:0")
        try:
            with make(f"127.0.0.1:{running.port}", timeout=60.0) as client:
                seen[kind] = train(client)
        finally:
            running.stop(None)
    blocking, awaited = seen["blocking"], seen["asyncio"]
    assert blocking["created"] and not blocking["again"]
    assert blocking["variables"].created == ("dense", "emb")
    assert blocking["push"].outcomes == {"adam": Outcome.APPLIED}
    assert blocking["push_pull"][0].iterations == {"adam": 2}
    assert blocking["slot_names"] == ["m", "v"] and blocking["iterations"] == 2
    assert blocking["rows"].shape == (2, 2, 2)
    assert [v.name for v in blocking["variables_listed"]] == ["dense", "emb"]
    assert_all_bitwise_equal(tensors(awaited), tensors(blocking))
    assert without_tensors(awaited) == without_tensors(blocking)


def tensors(seen: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays :func:`train` read, by a name each."""
    pulled = {f"pull/{name}": value for name, value in seen["pull"].items()}
    pulled |= {f"push_pull/{name}": value for name, value in seen["push_pull"][1].items()}
    weights = {f"weights/{i}": value for i, value in enumerate(seen["weights"])}
    return pulled | weights | {"rows": seen["rows"], "slot": seen["slot"]}


def without_tensors(seen: dict[str, Any]) -> dict[str, Any]:
    """What :func:`train` read besides arrays."""
    others = {k: v for k, v in seen.items() if k not in ("pull", "rows", "weights", "slot")}
    return others | {"push_pull": seen["push_pull"][0]}


@each_client
def test_checkpoints_save_list_download_restore(
    make: MakeClient, ckpt_server: RunningServer, tmp_path: Path
) -> None:
    with make(f"127.0.0.1:{ckpt_server.port}", timeout=60.0) as client:
        client.create_optimizer("sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
        client.create_variables({"w": np.zeros(3, np.float32)}, "sgd")
        saved = client.save_checkpoint()
        client.push({"w": np.ones(3, np.float32)})
        assert client.list_checkpoints() == [saved]
        prefix = client.download_checkpoint(None, tmp_path / "local")
        assert prefix == str(tmp_path / "local" / saved.path)
        assert Path(f"{prefix}.index").is_file()
        assert client.restore_checkpoint(saved.id) == saved
        np.testing.assert_array_equal(client.pull(["w"])["w"], np.zeros(3, np.float32))


@each_client
def test_errors_are_typed_alike(make: MakeClient, server: RunningServer) -> None:
    with make(f"127.0.0.1:{server.port}", timeout=60.0) as client:
        client.create_optimizer("sgd", {"class_name": "SGD", "config": {}})
        client.create_variables({"w": np.zeros(3, np.float32)}, "sgd")
        with pytest.raises(NotFoundError) as missing:
            client.pull(["nope"])
        assert missing.value.reason == Reason.UNKNOWN_VARIABLE
        with pytest.raises(InvalidArgumentError) as mismatch:
            client.push({"w": np.zeros(4, np.float32)})
        assert mismatch.value.reason == Reason.SHAPE_MISMATCH
        with pytest.raises(AlreadyExistsError):
            client.create_variables({"w": np.zeros(4, np.float32)}, "sgd")


@each_client
def test_arguments_are_refused_before_any_call(make: MakeClient, server: RunningServer) -> None:
    with make(f"127.0.0.1:{server.port}", timeout=60.0) as client:
        client.create_optimizer("sgd", {"class_name": "SGD", "config": {}})
        client.create_variables({"w": np.zeros(3, np.float32)}, "sgd")
        refusals: list[tuple[type[Exception], Callable[[], Any]]] = [
            (TypeError, lambda: client.push({"w": np.ones(3, np.float32)}, worker=3)),
            (TypeError, lambda: client.push([np.ones(3, np.float32)])),
            (ValueError, lambda: client.push({"w": np.ones(3, np.complex64)})),
            (TypeError, lambda: client.push_pull({}, [3])),
            (TypeError, lambda: client.push_pull({"w": np.ones(3, np.float32)}, "w")),
            (TypeError, lambda: client.pull("w")),
            (TypeError, lambda: client.pull([1])),
            (TypeError, lambda: client.create_optimizer("x", {}, aggregation="sync")),
            (ValueError, lambda: client.create_optimizer("x", {}, on_non_finite="ignore")),
            (TypeError, lambda: client.create_optimizer("x", {"config": {1, 2}})),
            (TypeError, lambda: client.create_variables([np.zeros(2, np.float32)])),
            (ValueError, lambda: client.set_weights("sgd", [np.array(["a"])])),
            (ValueError, lambda: client.set_hyperparameter("sgd", "learning_rate", "fast")),
            (TypeError, lambda: client.pull_rows("w", [0.5])),
            (TypeError, lambda: client.restore_checkpoint("latest")),
        ]
        for expected, call in refusals:
            with pytest.raises(expected):
                call()
        assert client.iterations("sgd") == 0
        assert [v.name for v in client.list_variables()] == ["w"]
        client.close()
        with pytest.raises(ValueError, match="closed"):
            client.iterations("sgd")


@pytest.fixture
def garbling_server() -> Iterator[str]:
    """A server, at a true boundary, that answers Pull with bytes that are no message and
    GetOptimizerConfig with a config that is no JSON."""
    handlers = {
        "Pull": grpc.unary_stream_rpc_method_handler(lambda request, context: iter([b"\xff"])),
        "GetOptimizerConfig": grpc.unary_unary_rpc_method_handler(
            lambda request, context: pb.GetOptimizerConfigResponse(
                config_json="{"
            ).SerializeToString()
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("tfps.v1.ParameterServer", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@each_client
def test_an_undecodable_response_is_internal(make: MakeClient, garbling_server: str) -> None:
    with make(garbling_server, timeout=60.0, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(
            InternalError, match=r"^INTERNAL: Pull: the response could not be decoded"
        ):
            client.pull(["w"])
        with pytest.raises(
            InternalError, match=r"^INTERNAL: GetOptimizerConfig: the response could not"
        ):
            client.get_config("sgd")


def test_the_asyncio_client_runs_calls_concurrently(server: RunningServer) -> None:
    address = f"127.0.0.1:{server.port}"

    async def scenario() -> list[int]:
        async with aio.Client(address, timeout=60.0) as client:
            assert inspect.iscoroutinefunction(client.push)
            await client.wait_for_ready(30.0)
            await client.create_optimizer("sync", {"class_name": "SGD", "config": {}}, Sync(3))
            await client.create_variables({"w": np.zeros(2, np.float32)}, "sync")
            # A sync step closes only once all three pushes are in: they must be in flight
            # together on the one channel.
            results = await asyncio.gather(
                *(client.push({"w": np.ones(2, np.float32)}, worker=f"w{i}") for i in range(3))
            )
            return [r.iterations["sync"] for r in results]

    assert asyncio.run(scenario()) == [1, 1, 1]
    with Client(address) as blocking:
        np.testing.assert_allclose(blocking.pull(["w"])["w"], np.full(2, -0.03), rtol=1e-6)


def test_one_client_serves_one_asyncio_run_after_another(server: RunningServer) -> None:
    # A grpc.aio channel belongs to the loop it opened in: a client reused by a later
    # asyncio.run (notebooks, tests) opens a new one instead of failing on the closed loop.
    client = aio.Client(f"127.0.0.1:{server.port}", timeout=60.0)

    async def create() -> None:
        await client.create_optimizer("sgd", {"class_name": "SGD", "config": {}})

    async def iterations() -> int:
        return await client.iterations("sgd")

    asyncio.run(create())
    assert asyncio.run(iterations()) == 0
    assert asyncio.run(iterations()) == 0
    asyncio.run(client.close())
    with pytest.raises(ValueError, match="is closed"):
        asyncio.run(iterations())
