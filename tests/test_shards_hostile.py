"""Hostile inputs to a sharded client: each must fail (or succeed) as one server does, with
the same error and no state change on any shard.

Three in-process servers are the shards and a fourth is the single-server reference; each
test uses names of its own, or shards of its own where placement matters.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest

from tfps_client import Client, IndexedSlices, Outcome, Sync, TfpsError
from tfps_server import Registry, RunningServer, create_server

from helpers import assert_all_bitwise_equal
from interleave import in_background

SHARDS = 3
MAX_SHARD_BYTES = 48
"""Splits a (10, 2) float32 table (80 bytes) in two parts: rows 0-7 and 8-9."""

SGD = {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}}
ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
NADAM = {"class_name": "Nadam", "config": {"learning_rate": 0.01}}
CONFIGS = {"adam": ADAM, "nadam": NADAM}


def _servers(count: int) -> list[RunningServer]:
    return [create_server(Registry(), "127.0.0.1:0") for _ in range(count)]


def _address(running: RunningServer) -> str:
    return f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def shard_servers() -> Iterator[list[RunningServer]]:
    servers = _servers(SHARDS)
    yield servers
    for running in servers:
        running.stop(None)


@pytest.fixture(scope="module")
def reference() -> Iterator[Client]:
    (running,) = _servers(1)
    with Client(_address(running), timeout=30) as client:
        yield client
    running.stop(None)


@pytest.fixture(scope="module")
def sharded(shard_servers: list[RunningServer]) -> Iterator[Client]:
    addresses = [_address(s) for s in shard_servers]
    with Client(addresses, timeout=30, max_shard_bytes=MAX_SHARD_BYTES) as client:
        yield client


@pytest.fixture(scope="module")
def each_shard(shard_servers: list[RunningServer]) -> Iterator[list[Client]]:
    """An unsharded client of each shard, to read what each one holds."""
    clients = [Client(_address(s), timeout=30) for s in shard_servers]
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def fresh_shards() -> Iterator[Client]:
    """A sharded client of three empty servers, for tests that depend on placement."""
    servers = _servers(SHARDS)
    with Client(
        [_address(s) for s in servers], timeout=30, max_shard_bytes=MAX_SHARD_BYTES
    ) as client:
        yield client
    for running in servers:
        running.stop(None)


def _model(prefix: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        f"{prefix}/k": rng.normal(size=(4, 3)).astype(np.float32),
        f"{prefix}/b": rng.normal(size=3).astype(np.float32),
        f"{prefix}/e": rng.normal(size=(10, 2)).astype(np.float32),
    }


def _setup(clients: list[Client], prefix: str, config: Any = SGD, **options: Any) -> None:
    for client in clients:
        client.create_optimizer(prefix, config, **options)
        client.create_variables(_model(prefix), optimizer=prefix)
        client.push(_good(prefix))  # slots and iterations that a bad push could change


def _good(prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}/k": np.full((4, 3), 0.5, np.float32),
        f"{prefix}/b": np.full(3, 0.25, np.float32),
        f"{prefix}/e": IndexedSlices(np.ones((2, 2), np.float32), [1, 9]),
    }


def _state(client: Client, prefix: str, each_shard: list[Client]) -> dict[str, Any]:
    names = list(_model(prefix))
    state: dict[str, Any] = dict(client.pull(names))
    for name in names:
        for slot in client.slot_names(prefix):
            state[f"{name}:{slot}"] = client.get_slot(name, slot)
    state["iterations"] = np.int64(client.iterations(prefix))
    for index, shard in enumerate(each_shard):
        state[f"shard {index} iterations"] = np.int64(shard.iterations(prefix))
    return state


def _refusal(call: Callable[[], object]) -> tuple[str, str, str]:
    with pytest.raises(TfpsError) as caught:
        call()
    return type(caught.value).__name__, caught.value.reason, caught.value.message


def _assert_refused_alike(
    reference: Client,
    sharded: Client,
    each_shard: list[Client],
    prefix: str,
    bad: Callable[[str], dict[str, Any]],
) -> None:
    """The push of ``bad(prefix)`` is refused by the shards as by one server, and changes
    nothing on any shard."""
    before = _state(sharded, prefix, each_shard)
    expected = _refusal(lambda: reference.push(bad(prefix)))
    assert _refusal(lambda: sharded.push(bad(prefix))) == expected
    after = _state(sharded, prefix, each_shard)
    assert_all_bitwise_equal(after, before)


def _wrong_shape_on_one_shard(p: str) -> dict[str, Any]:
    return {f"{p}/k": np.ones((4, 3), np.float32), f"{p}/b": np.ones(4, np.float32)}


BAD_PUSHES: dict[str, Callable[[str], dict[str, Any]]] = {
    "one variable fine, another of the wrong shape": _wrong_shape_on_one_shard,
    "one variable fine, another of the wrong dtype": lambda p: {
        f"{p}/k": np.ones((4, 3), np.float32),
        f"{p}/b": np.ones(3, np.float64),
    },
    "split dense, too many rows (the extra ones were cut off)": lambda p: {
        f"{p}/e": np.ones((12, 2), np.float32)
    },
    "split dense, too few rows (the first part applied)": lambda p: {
        f"{p}/e": np.ones((8, 2), np.float32)
    },
    "split dense, a scalar": lambda p: {f"{p}/e": np.float32(1)},
    "split sparse, wrong dense_shape (accepted)": lambda p: {
        f"{p}/e": IndexedSlices(np.ones((1, 2), np.float32), [1], (11, 2))
    },
    "split sparse, more values than indices (IndexError)": lambda p: {
        f"{p}/e": IndexedSlices(np.ones((2, 2), np.float32), [1])
    },
    "split sparse, values of the wrong width": lambda p: {
        f"{p}/e": IndexedSlices(np.ones((1, 3), np.float32), [1])
    },
    "split sparse, indices of rank 2 (accepted)": lambda p: {
        f"{p}/e": IndexedSlices(np.ones((2, 2), np.float32), [[1], [8]])
    },
    "split sparse, rows out of range both ways": lambda p: {
        f"{p}/k": np.ones((4, 3), np.float32),
        f"{p}/e": IndexedSlices(np.ones((2, 2), np.float32), [12, -1]),
    },
    "whole sparse row out of range beside a fine gradient": lambda p: {
        f"{p}/k": np.ones((4, 3), np.float32),
        f"{p}/b": IndexedSlices(np.ones(1, np.float32), [5]),
    },
    "unknown variable beside a fine gradient": lambda p: {
        f"{p}/k": np.ones((4, 3), np.float32),
        f"{p}/nope": np.ones(3, np.float32),
    },
}


@pytest.mark.parametrize("case", list(BAD_PUSHES))
def test_a_bad_push_is_refused_as_one_server_refuses_it_and_changes_no_shard(
    reference: Client, sharded: Client, each_shard: list[Client], case: str
) -> None:
    prefix = f"bad{list(BAD_PUSHES).index(case)}"
    _setup([reference, sharded], prefix)
    expected = _refusal(lambda: reference.push(BAD_PUSHES[case](prefix)))
    before = _state(sharded, prefix, each_shard)
    refused = _refusal(lambda: sharded.push(BAD_PUSHES[case](prefix)))
    assert_all_bitwise_equal(_state(sharded, prefix, each_shard), before)
    if case.startswith("unknown"):  # the client names the shards it looked on
        assert refused[:2] == expected[:2]
    else:
        assert refused == expected


def test_a_non_finite_gradient_on_one_shard_is_refused_by_every_shard(
    reference: Client, sharded: Client, each_shard: list[Client]
) -> None:
    prefix = "nan"
    _setup([reference, sharded], prefix)
    _assert_refused_alike(
        reference,
        sharded,
        each_shard,
        prefix,
        lambda p: {f"{p}/k": np.ones((4, 3), np.float32), f"{p}/b": np.full(3, np.nan, np.float32)},
    )


def _skipping_pushes(p: str) -> list[dict[str, Any]]:
    """Good pushes, and between them pushes one non-finite value of which reaches one shard
    only: k's (whole, dense, on shard 0), row 9 of e (sparse, its part on shard 1), row 3
    of e (dense, its part on shard 2). The other shards get finite gradients of the
    optimizer, or only its ``advance``."""
    k_nan = np.ones((4, 3), np.float32)
    k_nan[2, 1] = np.nan
    e_inf = np.full((10, 2), 0.5, np.float32)
    e_inf[3, 0] = -np.inf
    return [
        _good(p),
        {f"{p}/k": k_nan, f"{p}/b": np.ones(3, np.float32)},
        _good(p),
        {
            f"{p}/k": np.ones((4, 3), np.float32),
            f"{p}/e": IndexedSlices(np.array([[1, 1], [np.nan, 1]], np.float32), [2, 9]),
        },
        {f"{p}/e": e_inf},
        _good(p),
    ]


Answer = tuple[dict[str, Outcome], dict[str, int]]
"""A push's outcomes and iterations."""
Pulled = dict[str, np.ndarray]
"""The values a push_pull returned (none for a push)."""


class Trained(NamedTuple):
    """What :func:`_trained` saw."""

    results: list[list[Answer]]
    """Per push, what each worker was answered."""
    pulled: list[Pulled]
    """Per push, the values a push_pull returned (none for a push)."""
    state: dict[str, Any]
    """The values and the optimizer's weights (one server's list) after the pushes."""


def _trained(client: Client, prefix: str, mode: str, method: str, optimizer: str) -> Trained:
    """Creates the "skip" optimizer ``prefix`` of class ``optimizer`` and pushes
    :func:`_skipping_pushes` as worker w0 with ``method``, each twice with one request id; in
    sync mode, worker w1 pushes b beside each, with a client of its own (two threads sharing
    one sharded client for sync pushes can starve its fan-out pool)."""
    names = list(_model(prefix))
    aggregation = Sync(2, timeout=60.0) if mode == "sync" else None
    client.create_optimizer(prefix, CONFIGS[optimizer], aggregation, on_non_finite="skip")
    client.create_variables(_model(prefix), optimizer=prefix)

    def push(pusher: Client, gradients: dict[str, Any], **context: Any) -> tuple[Answer, Pulled]:
        if method == "push":
            result, pulled = pusher.push(gradients, **context), {}
        else:
            result, pulled = pusher.push_pull(gradients, names, **context)
        return (result.outcomes, result.iterations), pulled

    trained = Trained([], [], {})
    with Client(client.addresses, timeout=30, max_shard_bytes=MAX_SHARD_BYTES) as other:
        for number, gradients in enumerate(_skipping_pushes(prefix)):
            b = {f"{prefix}/b": np.ones(3, np.float32)}
            beside = (
                in_background(lambda b=b: push(other, b, worker="w1")) if mode == "sync" else None
            )
            context = {"worker": "w0", "request_id": f"{prefix}-{number}"}
            answer, pulled = push(client, gradients, **context)
            assert push(client, gradients, **context)[0] == answer  # from memory, not applied
            trained.results.append([answer] + ([beside.result()[0]] if beside else []))
            trained.pulled.append(pulled)
    weights = {f"weight {i}": w for i, w in enumerate(client.get_weights(prefix))}
    trained.state.update({**client.pull(names), **weights})
    return trained


@pytest.mark.parametrize(
    ("mode", "method", "optimizer"),
    [  # every pair of two choices, in four runs
        ("async", "push", "adam"),
        ("async", "push_pull", "nadam"),
        ("sync", "push", "nadam"),
        ("sync", "push_pull", "adam"),
    ],
)
def test_a_non_finite_gradient_on_one_shard_skips_the_update_on_every_shard(
    reference: Client,
    sharded: Client,
    each_shard: list[Client],
    mode: str,
    method: str,
    optimizer: str,
) -> None:
    """Every push, and every sync step, that one server skips is skipped by every shard:
    outcomes, iterations, values, slots and Nadam's momentum_cache stay one server's,
    bitwise, on each shard; a retry with the push's request id changes nothing."""
    prefix = f"skip-{mode}-{method}-{optimizer}"
    expected = _trained(reference, prefix, mode, method, optimizer)
    trained = _trained(sharded, prefix, mode, method, optimizer)
    skipped = [r for r in expected.results if r[0][0] == {prefix: Outcome.SKIPPED}]
    assert len(skipped) == 3
    assert trained.results == expected.results
    for pulled, wanted in zip(trained.pulled, expected.pulled, strict=True):
        assert_all_bitwise_equal(pulled, wanted)
    assert_all_bitwise_equal(trained.state, expected.state)
    single = [w for w in reference.get_weights(prefix) if np.ndim(w) == 0]
    for shard in each_shard:  # iterations, and Nadam's momentum_cache, on every shard
        assert_all_bitwise_equal([w for w in shard.get_weights(prefix) if np.ndim(w) == 0], single)


@pytest.mark.xfail(
    strict=True,
    reason="a documented limit: finite sync contributions whose sum overflows to Inf are "
    "skipped by one server whole, but on a sharded client only by the shard whose sum "
    "overflows; no worker's client sees the sum",
)
def test_a_sync_sum_that_overflows_on_one_shard_is_skipped_there_only(
    reference: Client, sharded: Client
) -> None:
    prefix = "overflow"
    huge = {f"{prefix}/k": np.full((4, 3), 2e38, np.float32)}  # twice is past float32's range
    finite = {f"{prefix}/b": np.ones(3, np.float32)}
    results = []
    for client in (reference, sharded):
        client.create_optimizer(prefix, ADAM, Sync(2, timeout=60.0), on_non_finite="skip")
        client.create_variables(_model(prefix), optimizer=prefix)
        with Client(client.addresses, timeout=30, max_shard_bytes=MAX_SHARD_BYTES) as other:
            beside = in_background(lambda: other.push({**huge, **finite}, worker="w1"))
            results.append(client.push(huge, worker="w0").outcomes)
            beside.result()
    assert results[1] == results[0] == {prefix: Outcome.SKIPPED}
    names = list(_model(prefix))
    assert_all_bitwise_equal(sharded.pull(names), reference.pull(names))


def test_a_variable_created_after_pushes_on_a_new_shard_follows_the_iterations(
    reference: Client, fresh_shards: Client
) -> None:
    for client in (reference, fresh_shards):
        client.create_optimizer("late", ADAM)
        client.create_variables({"late/k": np.ones((4, 3), np.float32)}, optimizer="late")
        for _ in range(3):
            client.push({"late/k": np.ones((4, 3), np.float32)})
        client.create_variables({"late/b": np.ones(3, np.float32)}, optimizer="late")
        client.push({"late/k": np.ones((4, 3), np.float32), "late/b": np.ones(3, np.float32)})
    assert fresh_shards._layout is not None
    assert fresh_shards._layout.get("late/b").shards != fresh_shards._layout.get("late/k").shards
    names = ["late/k", "late/b"]
    assert_all_bitwise_equal(fresh_shards.pull(names), reference.pull(names))


@pytest.mark.parametrize("name", ["k", "e"])
def test_redeclaring_a_variable_with_another_shape_creates_nothing(
    reference: Client, sharded: Client, each_shard: list[Client], name: str
) -> None:
    prefix = f"redeclare_{name}"
    _setup([reference, sharded], prefix)
    other = {
        f"{prefix}/new": np.ones(3, np.float32),
        f"{prefix}/{name}": np.ones((12, 2) if name == "e" else (5, 3), np.float32),
    }
    expected = _refusal(lambda: reference.create_variables(other, optimizer=prefix))
    assert _refusal(lambda: sharded.create_variables(other, optimizer=prefix)) == expected
    listed = {v.name for shard in each_shard for v in shard.list_variables()}
    assert f"{prefix}/new" not in listed


def test_a_create_refused_on_one_shard_creates_nothing_on_the_others(
    reference: Client, sharded: Client, each_shard: list[Client]
) -> None:
    declared = {f"nanit/{i}": np.ones(4, np.float32) for i in range(3)}
    declared["nanit/bad"] = np.full(4, np.nan, np.float32)
    for client in (reference, sharded):
        client.create_optimizer("nanit", SGD)
    expected = _refusal(lambda: reference.create_variables(declared, optimizer="nanit"))
    assert _refusal(lambda: sharded.create_variables(declared, optimizer="nanit")) == expected
    assert not [v.name for shard in each_shard for v in shard.list_variables() if "nanit" in v.name]


def _part_name_clash(client: Client) -> None:
    """``x`` split in two, then a variable named as its second part: one server holds both."""
    client.create_optimizer("default", SGD)
    client.create_variables({"pad": np.zeros(8, np.float32)})  # 32 bytes on shard 0
    client.create_variables({"x": np.arange(20, dtype=np.float32).reshape(10, 2)})
    client.create_variables({"x/part_1": np.full((2, 2), -1, np.float32)})


def test_a_variable_named_as_a_part_of_another_is_created_as_on_one_server(
    fresh_shards: Client,
) -> None:
    _part_name_clash(fresh_shards)  # the least loaded shard holds x/part_1 (x's): avoided
    assert fresh_shards.list_variables()[-1].shape == (2, 2)


def test_pulling_a_variable_named_as_a_part_of_another(
    reference: Client, fresh_shards: Client
) -> None:
    (running,) = _servers(1)
    with Client(_address(running)) as alone:
        _part_name_clash(alone)
        _part_name_clash(fresh_shards)
        names = ["x", "x/part_1"]
        assert_all_bitwise_equal(fresh_shards.pull(names), alone.pull(names))
    running.stop(None)


def test_pull_rows_of_no_ids_of_a_split_variable(reference: Client, sharded: Client) -> None:
    _setup([reference, sharded], "rows")
    for ids in (np.zeros(0, np.int64), np.zeros((2, 0), np.int32)):
        assert_all_bitwise_equal(
            [sharded.pull_rows("rows/e", ids)], [reference.pull_rows("rows/e", ids)]
        )


@pytest.mark.parametrize("call", ["push({})", "push(None gradient)", "pull() of none"])
def test_calls_that_need_no_shard(fresh_shards: Client, call: str) -> None:
    fresh_shards.create_optimizer("default", SGD)
    if call == "pull() of none":
        assert fresh_shards.pull() == {}
        return
    gradients = {} if call == "push({})" else {"absent": None}
    assert fresh_shards.push(gradients, request_id="r").outcomes == {}


def test_an_unknown_slot_of_a_split_variable(reference: Client, sharded: Client) -> None:
    _setup([reference, sharded], "slot")
    expected = _refusal(lambda: reference.get_slot("slot/e", "nope"))
    assert _refusal(lambda: sharded.get_slot("slot/e", "nope")) == expected


def test_a_pickled_sharded_client_keeps_its_shards(sharded: Client) -> None:
    with pickle.loads(pickle.dumps(sharded)) as copy:
        assert copy.addresses == sharded.addresses
        assert copy.max_shard_bytes == MAX_SHARD_BYTES
        copy.create_optimizer("pickled", SGD)
        copy.create_variables({"pickled/e": np.ones((10, 2), np.float32)}, optimizer="pickled")
        assert copy._layout is not None and copy._layout.get("pickled/e").partitioned
