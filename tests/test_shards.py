"""Sharded servers behind one client: three tfps-server processes on localhost, compared
bitwise with one server given the same calls."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import tf_keras

import tfps_client.aio
from tfps_client import Client, IndexedSlices, Outcome, RetryPolicy, Sync, VariableInfo, ckpt_cli
from tfps_client.checkpoint_reader import open_checkpoint
from tfps_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from tfps_client.keras import RemoteOptimizer, load_into
from tfps_server import Registry, RunningServer, create_server

from helpers import LISTENING, ServerProcess, assert_all_bitwise_equal, free_port
from interleave import in_background

SHARDS = 3
MAX_SHARD_BYTES = 48
"""Splits the 80-byte embedding of :func:`initial` in two; the others stay whole."""

CLASSES = {
    "sgd": {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}},
    "adam": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
    "adamax": {"class_name": "Adamax", "config": {"learning_rate": 0.01}},
    "nadam": {"class_name": "Nadam", "config": {"learning_rate": 0.01}},
    "rmsprop": {"class_name": "RMSprop", "config": {"learning_rate": 0.01, "momentum": 0.5}},
    "adagrad": {"class_name": "Adagrad", "config": {"learning_rate": 0.1}},
    "adadelta": {"class_name": "Adadelta", "config": {"learning_rate": 1.0}},
    "ftrl": {"class_name": "Ftrl", "config": {"learning_rate": 0.1}},
}
CLIPPING = {
    "none": {},
    "clipnorm": {"clipnorm": 0.5},
    "clipvalue": {"clipvalue": 0.05},
    "global_clipnorm": {"global_clipnorm": 0.5},
}
SCHEDULE = {
    "class_name": "ExponentialDecay",
    "config": {"initial_learning_rate": 0.05, "decay_steps": 1, "decay_rate": 0.5},
}


class Cluster:
    """Three tfps-server processes, each checkpointing into its own directory."""

    def __init__(self, root: Path) -> None:
        self.ports = [free_port() for _ in range(SHARDS)]
        self.directories = [root / f"shard-{shard}" for shard in range(SHARDS)]
        self.processes = [self._start(shard) for shard in range(SHARDS)]
        for process in self.processes:
            process.wait_for(LISTENING)

    def _start(self, shard: int) -> ServerProcess:
        return ServerProcess(
            [
                "--port",
                str(self.ports[shard]),
                "--checkpoint-dir",
                str(self.directories[shard]),
                "--checkpoint-every-seconds",
                "0",
            ]
        )

    def restart(self, shard: int) -> ServerProcess:
        """Starts shard ``shard`` again, from its latest checkpoint; returns it listening."""
        self.processes[shard] = self._start(shard)
        self.processes[shard].wait_for(LISTENING)
        return self.processes[shard]

    def stop(self) -> None:
        for process in self.processes:
            process.__exit__()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster(tmp_path_factory.mktemp("shards"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def shard_ports(cluster: Cluster) -> list[int]:
    """The shards' ports, in shard order."""
    return cluster.ports


@pytest.fixture(scope="module")
def reference() -> Iterator[Client]:
    """One server, in this process: what the shards together must equal."""
    running: RunningServer = create_server(Registry(), "127.0.0.1:0")
    with Client(f"127.0.0.1:{running.port}", timeout=120) as client:
        yield client
    running.stop(None)


def addresses(ports: list[int]) -> list[str]:
    return [f"127.0.0.1:{port}" for port in ports]


@pytest.fixture(scope="module")
def sharded(shard_ports: list[int]) -> Iterator[Client]:
    with Client(addresses(shard_ports), timeout=120, max_shard_bytes=MAX_SHARD_BYTES) as client:
        yield client


def initial(prefix: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        f"{prefix}/kernel": rng.normal(size=(4, 3)).astype(np.float32),
        f"{prefix}/bias": rng.normal(size=3).astype(np.float32),
        f"{prefix}/emb": rng.normal(size=(10, 2)).astype(np.float32),
    }


def pushes(prefix: str) -> list[dict[str, Any]]:
    """Pushes touching all variables, some, one part of the embedding only, and a dense
    gradient of the embedding."""
    rng = np.random.default_rng(11)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    kernel, bias, emb = (f"{prefix}/{name}" for name in ("kernel", "bias", "emb"))
    return [
        {kernel: normal(4, 3), bias: normal(3), emb: IndexedSlices(normal(3, 2), [1, 7, 1])},
        {emb: IndexedSlices(normal(1, 2), [0])},
        {kernel: normal(4, 3)},
        {emb: normal(10, 2), bias: normal(3)},
        {emb: IndexedSlices(normal(2, 2), [9, 8])},
    ]


def trained(client: Client, prefix: str, config: Mapping[str, Any]) -> tuple[dict, dict]:
    """Creates, pushes and reads back everything a single server and the shards must agree
    on: values, rows, every slot (arrays), iterations and the pushes' results."""
    client.create_optimizer(prefix, config)
    client.create_variables(initial(prefix), optimizer=prefix)
    results = [client.push(gradients).iterations for gradients in pushes(prefix)]
    names = list(initial(prefix))
    arrays = {
        **client.pull(names),
        "rows": client.pull_rows(f"{prefix}/emb", [[9, 0], [4, 5]]),
        **{
            f"{name}:{slot}": client.get_slot(name, slot)
            for name in names
            for slot in client.slot_names(prefix)
        },
    }
    return arrays, {"iterations": client.iterations(prefix), "results": results}


def assert_trained_alike(sharded: Client, reference: Client, prefix: str, config: Any) -> None:
    arrays, counts = trained(sharded, prefix, config)
    expected_arrays, expected_counts = trained(reference, prefix, config)
    assert_all_bitwise_equal(arrays, expected_arrays)
    assert counts == expected_counts


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("optimizer", list(CLASSES))
def test_shards_train_bitwise_as_one_server(
    sharded: Client, reference: Client, optimizer: str, clipping: str
) -> None:
    prefix = f"{optimizer}-{clipping}"
    config = {
        "class_name": CLASSES[optimizer]["class_name"],
        "config": {**CLASSES[optimizer]["config"], **CLIPPING[clipping]},
    }
    assert_trained_alike(sharded, reference, prefix, config)
    emb = {info.name: info for info in sharded.list_variables()}[f"{prefix}/emb"]
    assert emb.shape == (10, 2)


def test_a_schedule_follows_the_same_iterations_on_every_shard(
    sharded: Client, reference: Client
) -> None:
    config = {"class_name": "Adam", "config": {"learning_rate": SCHEDULE}}
    assert_trained_alike(sharded, reference, "schedule", config)


def test_each_new_variable_goes_to_the_least_loaded_shard(
    sharded: Client, shard_ports: list[int]
) -> None:
    def loads() -> list[int]:
        held = []
        for port in shard_ports:
            with Client(f"127.0.0.1:{port}") as one:
                infos = one.list_variables()
            held.append(sum(int(np.prod(i.shape)) * i.dtype.itemsize for i in infos))
        return held

    before = loads()
    sharded.create_optimizer("balance", {"class_name": "SGD"})
    sizes = [48, 8, 8, 32, 40, 4]  # none split (MAX_SHARD_BYTES)
    sharded.create_variables(
        {f"balance/v{i}": np.zeros(size // 4, np.float32) for i, size in enumerate(sizes)},
        optimizer="balance",
    )
    expected = list(before)
    for size in sizes:
        expected[expected.index(min(expected))] += size
    assert loads() == expected
    with Client(f"127.0.0.1:{shard_ports[0]}") as one:
        placements = [i.placement for i in one.list_variables()]
    assert all(p is not None and p.shard == 0 and p.shards == SHARDS for p in placements)


def test_a_reordered_or_different_shard_list_is_refused(
    sharded: Client, shard_ports: list[int]
) -> None:
    sharded.list_variables()  # the shards know their places once a sharded client used them
    reordered = addresses([shard_ports[1], shard_ports[0], shard_ports[2]])
    with Client(reordered, timeout=30) as wrong, pytest.raises(FailedPreconditionError) as error:
        wrong.pull()
    assert error.value.reason == "SHARD_MISMATCH"
    assert "shard 0 of 3" in error.value.message
    with (
        Client(addresses(shard_ports[:2]), timeout=30) as fewer,
        pytest.raises(FailedPreconditionError, match="of 2"),
    ):
        fewer.pull()


@pytest.fixture(scope="module")
def table(sharded: Client) -> str:
    """A split embedding of the sharded client's, for the tests that read it."""
    sharded.create_optimizer("table", {"class_name": "SGD"})
    sharded.create_variables({"table/emb": np.arange(20, dtype=np.float32).reshape(10, 2)}, "table")
    return "table/emb"


def test_tf_config_with_several_ps_tasks(shard_ports: list[int], table: str) -> None:
    tf_config = json.dumps(
        {
            "cluster": {"ps": addresses(shard_ports), "worker": ["w:1"]},
            "task": {"type": "worker", "index": 0},
        }
    )
    with Client.from_tf_config(tf_config, timeout=30) as client:
        assert client.addresses == tuple(addresses(shard_ports))
        assert_all_bitwise_equal(
            client.pull([table]), {table: np.arange(20, dtype=np.float32).reshape(10, 2)}
        )


def test_the_asyncio_client_shards_the_same_way(
    shard_ports: list[int], sharded: Client, table: str
) -> None:
    async def used() -> tuple[dict[str, np.ndarray], np.ndarray]:
        async with tfps_client.aio.Client(addresses(shard_ports), timeout=30) as client:
            await client.push({table: IndexedSlices(np.ones((2, 2), np.float32), [9, 0])})
            return await client.pull([table]), await client.pull_rows(table, [9, 0, 3])

    pulled, rows = asyncio.run(used())
    assert_all_bitwise_equal(pulled, sharded.pull([table]))
    assert_all_bitwise_equal(rows, sharded.pull_rows(table, [9, 0, 3]))


def test_a_shard_killed_and_restarted_from_its_checkpoint_rejoins(
    cluster: Cluster, sharded: Client
) -> None:
    """kill -9 of one shard: calls that need it retry until it is back from its checkpoint,
    the others go on meanwhile; then training goes on."""
    patient = Client(
        addresses(cluster.ports),
        timeout=120,
        max_shard_bytes=MAX_SHARD_BYTES,
        retry=RetryPolicy(max_attempts=1000, max_backoff=0.5),
    )
    patient.create_optimizer("revive", {"class_name": "Adam", "config": {"learning_rate": 0.1}})
    patient.create_variables(initial("revive"), optimizer="revive")
    for gradients in pushes("revive")[:2]:
        patient.push(gradients)
    for port in cluster.ports:
        with Client(f"127.0.0.1:{port}") as one:
            one.save_checkpoint()
    saved = patient.pull(list(initial("revive")))
    placed = {info.name: info for info in _shard_infos(cluster.ports[1])}
    victim = next(iter(placed))  # a variable (or part) shard 1 holds
    others = [
        n
        for n in initial("revive")
        if all(p not in placed for p in (n, f"{n}/part_0", f"{n}/part_1"))
    ]

    cluster.processes[1].process.kill()
    cluster.processes[1].wait_exit()
    assert patient.pull(others).keys() == set(others)  # the other shards are unaffected
    pushing = in_background(lambda: patient.push(pushes("revive")[2]))
    cluster.restart(1)
    result = pushing.result()
    assert "restored checkpoint" in cluster.processes[1].output
    assert result.applied
    after = patient.pull(list(initial("revive")))
    assert any(not np.array_equal(after[n], saved[n]) for n in after)
    with Client(f"127.0.0.1:{cluster.ports[1]}") as one:
        assert {info.name for info in one.list_variables()} >= {victim}
    patient.push(pushes("revive")[3])  # and training goes on
    reordered = addresses([cluster.ports[1], cluster.ports[0], cluster.ports[2]])
    with Client(reordered, timeout=30) as wrong, pytest.raises(FailedPreconditionError):
        wrong.pull()  # the restarted shard kept its index
    patient.close()


def _shard_infos(port: int) -> list[VariableInfo]:
    with Client(f"127.0.0.1:{port}") as one:
        return [info for info in one.list_variables() if info.name.startswith("revive/")]


def test_sync_with_backup_workers_closes_each_step_with_the_same_workers_everywhere(
    sharded: Client, reference: Client
) -> None:
    """Three workers, two per step: each step's late worker is stale on every shard, and
    every shard applies the two contributions the first shard's step took."""
    prefix = "backups"
    config = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
    sync = Sync(replicas_to_aggregate=2, total_num_replicas=3)

    def steps(client: Client) -> tuple[dict[str, np.ndarray], list[dict[str, Outcome]]]:
        client.create_optimizer(prefix, config, sync)
        client.create_variables(initial(prefix), optimizer=prefix)
        given, outcomes = pushes(prefix), []
        for step, (first, second, late) in enumerate((("w0", "w1", "w2"), ("w2", "w0", "w1"))):
            waiting = in_background(lambda w=first, g=given[step]: client.push(g, worker=w))
            outcomes.append(client.push(given[step + 2], worker=second).outcomes)
            outcomes.append(waiting.result().outcomes)
            outcomes.append(client.push(given[4], worker=late, step=step).outcomes)
        return client.pull(list(initial(prefix))), outcomes

    (values, outcomes), (expected, expected_outcomes) = steps(sharded), steps(reference)
    assert_all_bitwise_equal(values, expected)
    assert outcomes == expected_outcomes
    assert [o[prefix] for o in outcomes[2::3]] == [Outcome.STALE, Outcome.STALE]
    assert sharded.iterations(prefix) == reference.iterations(prefix) == 2


def test_workers_sharing_one_sharded_client_close_their_sync_steps(
    sharded: Client, reference: Client
) -> None:
    """Four threads push through one client; each shard's call waits for the others' parts,
    so none may wait for a thread of the client's fan-out."""
    prefix = "sharing"
    config = {"class_name": "SGD", "config": {"learning_rate": 0.1}}
    workers = [f"w{i}" for i in range(4)]

    def step(client: Client) -> dict[str, np.ndarray]:
        client.create_optimizer(prefix, config, Sync(replicas_to_aggregate=4))
        client.create_variables(initial(prefix), optimizer=prefix)
        given = pushes(prefix)
        running = [
            in_background(lambda w=w, g=g: client.push(g, worker=w))
            for w, g in zip(workers, given, strict=False)
        ]
        assert {r.result().outcomes[prefix] for r in running} == {Outcome.AGGREGATED}
        return client.pull(list(initial(prefix)))

    assert_all_bitwise_equal(step(sharded), step(reference))


@pytest.mark.usefixtures("unreassociated_graphs")
def test_remote_optimizer_trains_through_shards_as_through_one_server(
    sharded: Client, reference: Client
) -> None:
    """tf_keras's model.fit with a RemoteOptimizer: its embedding (sparse gradients) split
    over the shards, the same weights and optimizer weights, bitwise, as through one server."""
    rng = np.random.default_rng(0)
    ids, labels = rng.integers(0, 40, (64, 6)).astype(np.int32), rng.integers(0, 3, 64)

    def fit(client: Client) -> tuple[list[np.ndarray], list[np.ndarray]]:
        tf_keras.utils.set_random_seed(1)
        model = tf_keras.Sequential(
            [
                tf_keras.Input((6,), dtype="int32"),
                tf_keras.layers.Embedding(40, 4, name="remote_embedding"),
                tf_keras.layers.Flatten(name="remote_flatten"),
                tf_keras.layers.Dense(3, activation="softmax", name="remote_out"),
            ]
        )
        optimizer = RemoteOptimizer(client, "remote", config={"class_name": "Adam"})
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        model.fit(ids, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model.get_weights(), client.get_weights("remote")

    (weights, slots), (expected_weights, expected_slots) = fit(sharded), fit(reference)
    assert_all_bitwise_equal(weights, expected_weights)
    assert_all_bitwise_equal(slots, expected_slots)
    assert sharded.iterations("remote") == reference.iterations("remote") == 8
    assert sharded._layout is not None
    assert len(sharded._layout.get("remote_embedding/embeddings").parts) > 1


@pytest.mark.parametrize("on_timeout", ["apply", "drop"])
def test_a_sync_step_closed_by_its_timeout_closes_alike_everywhere(
    sharded: Client, reference: Client, on_timeout: Literal["apply", "drop"]
) -> None:
    """One of two workers pushes: the step times out on the first shard, and every shard
    applies (or drops) what it took."""
    prefix = f"timeout-{on_timeout}"
    config = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
    sync = Sync(replicas_to_aggregate=2, timeout=0.3, on_timeout=on_timeout)

    def step(client: Client) -> tuple[dict[str, np.ndarray], dict[str, Outcome]]:
        client.create_optimizer(prefix, config, sync)
        client.create_variables(initial(prefix), optimizer=prefix)
        result = client.push(pushes(prefix)[0], worker="w0")
        return client.pull(list(initial(prefix))), result.outcomes

    (values, outcomes), (expected, expected_outcomes) = step(sharded), step(reference)
    assert_all_bitwise_equal(values, expected)
    assert outcomes == expected_outcomes
    iterations = 1 if on_timeout == "apply" else 0
    assert sharded.iterations(prefix) == reference.iterations(prefix) == iterations


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sync_steps_close_on_every_shard_as_on_one_server(
    sharded: Client, reference: Client, reduction: str
) -> None:
    """Two workers, each step from both; one worker leaves variables out of a step."""
    prefix = f"sync-{reduction}"
    config = {"class_name": "Adam", "config": {"learning_rate": 0.01}}
    sync = Sync(replicas_to_aggregate=2, reduction=reduction)

    def steps(client: Client) -> dict[str, np.ndarray]:
        client.create_optimizer(prefix, config, sync)
        client.create_variables(initial(prefix), optimizer=prefix)
        given = pushes(prefix)
        for first, second in ((given[0], given[1]), (given[2], given[3])):
            other = in_background(lambda g=second: client.push(g, worker="w1"))
            client.push(first, worker="w0")
            other.result()
        return client.pull(list(initial(prefix)))

    assert_all_bitwise_equal(steps(sharded), steps(reference))
    assert sharded.iterations(prefix) == reference.iterations(prefix) == 2


def test_one_logical_checkpoint_saved_and_restored_across_shards(
    cluster: Cluster, sharded: Client, tmp_path: Path
) -> None:
    prefix = "logical"
    sharded.create_optimizer(prefix, {"class_name": "Adam", "config": {"learning_rate": 0.1}})
    sharded.create_variables(initial(prefix), optimizer=prefix)
    names = list(initial(prefix))
    given = pushes(prefix)
    for gradients in given[:2]:
        sharded.push(gradients)
    info = sharded.save_checkpoint()
    assert info.group and info.iterations[prefix] == 2
    assert {v.name: v.shape for v in info.variables}[f"{prefix}/emb"] == (10, 2)
    saved = {**sharded.pull(names), **{f"{n}:m": sharded.get_slot(n, "m") for n in names}}
    for gradients in given[2:]:
        sharded.push(gradients)
    assert info.id in [listed.id for listed in sharded.list_checkpoints()]

    restored = sharded.restore_checkpoint(info.id)
    assert (restored.id, restored.group) == (info.id, info.group)
    assert_all_bitwise_equal(
        {**sharded.pull(names), **{f"{n}:m": sharded.get_slot(n, "m") for n in names}}, saved
    )
    for port in cluster.ports:  # every shard is back at the same step
        with Client(f"127.0.0.1:{port}") as one:
            assert one.iterations(prefix) == 2

    assert sharded.download_checkpoint(info.id, tmp_path) == str(tmp_path)
    for shard in range(SHARDS):
        assert (tmp_path / f"shard-{shard}-of-{SHARDS}" / "checkpoint").is_file()
    opened = open_checkpoint(tmp_path)  # what load_into and tfps-ckpt inspect read
    assert_all_bitwise_equal(
        {**{n: opened.value(n) for n in names}, **{f"{n}:m": opened.slot(n, "m") for n in names}},
        saved,
    )
    entries = {entry.name: entry for entry in opened.metadata.variables}
    assert entries[f"{prefix}/emb"].shape == (10, 2)
    (optimizer,) = [o for o in opened.metadata.optimizers if o.name == prefix]
    assert optimizer.iterations == 2
    assert opened.optimizer_weight(prefix, "iter") == 2
    embedding = tf_keras.Sequential([tf_keras.layers.Embedding(10, 2, name=prefix)])
    embedding.build((None, 1))
    report = load_into(
        embedding, tmp_path, name_map={f"{prefix}/embeddings": f"{prefix}/emb"}, strict=False
    )
    assert report.loaded == (f"{prefix}/emb",)
    assert_all_bitwise_equal(embedding.layers[0].embeddings.numpy(), saved[f"{prefix}/emb"])

    listed = ckpt_cli_json(["ls", "--json", "--server", ",".join(addresses(cluster.ports))])
    assert info.group in [entry["group"] for entry in listed]
    text = ckpt_cli_text(["ls", "--server", ",".join(addresses(cluster.ports))])
    assert f"group: {info.group}" in text

    with Client(f"127.0.0.1:{cluster.ports[0]}") as first:
        own = first.save_checkpoint()  # a shard's own save is no logical checkpoint
    with pytest.raises(NotFoundError, match="saved on all 3 shards together"):
        sharded.restore_checkpoint(own.id)


@pytest.mark.parametrize("optimizer", list(CLASSES))
def test_optimizer_weights_in_one_servers_order(
    sharded: Client, reference: Client, optimizer: str
) -> None:
    """Two create calls (two batches of slots), a split embedding; get_weights is one
    server's list bitwise, and set_weights of it, changed, reads back the same."""
    prefix = f"weights-{optimizer}"
    config = CLASSES[optimizer]

    def weights(client: Client) -> list[np.ndarray]:
        client.create_optimizer(prefix, config)
        first = initial(prefix)
        client.create_variables({n: first[n] for n in list(first)[:2]}, optimizer=prefix)
        client.create_variables({f"{prefix}/emb": first[f"{prefix}/emb"]}, optimizer=prefix)
        for gradients in pushes(prefix)[:3]:
            client.push(gradients)
        return client.get_weights(prefix)

    got = weights(sharded)
    assert_all_bitwise_equal(got, weights(reference))
    changed = [got[0] + 1, *(np.asarray(w) * 2 for w in got[1:])]
    sharded.set_weights(prefix, changed)
    reference.set_weights(prefix, changed)
    assert_all_bitwise_equal(sharded.get_weights(prefix), changed)
    assert sharded.iterations(prefix) == int(got[0]) + 1
    sharded.push(pushes(prefix)[3])
    reference.push(pushes(prefix)[3])
    assert_all_bitwise_equal(
        sharded.pull(list(initial(prefix))), reference.pull(list(initial(prefix)))
    )
    with pytest.raises(InvalidArgumentError, match="set_weights: expected"):
        sharded.set_weights(prefix, changed[:-1])


def ckpt_cli_text(argv: list[str]) -> str:
    """What ``tfps-ckpt ARGV`` prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert ckpt_cli.main(argv) == 0
    return printed.getvalue()


def ckpt_cli_json(argv: list[str]) -> Any:
    """What ``tfps-ckpt ARGV`` prints, parsed as JSON."""
    return json.loads(ckpt_cli_text(argv))
