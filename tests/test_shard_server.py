"""The server side of sharding: shard identity, placements, and pushes that only advance.

A sharded client places each variable on one server of its list (or splits a big one by rows
over several) and tells each server which shard it is. Here, against real servers and with
the generated stub (the typed client has no sharding yet): DeclareShard and placements
record, keep and refuse identities precisely, and survive checkpoints and a restart; a
push's ``advance`` counts a step of an optimizer without gradients, through the path a
gradient takes, and its ``non_finite`` skips an optimizer's update as a NaN gradient of its
own would, so that shards holding parts of one optimizer's variables compute exactly what
one server holding them all computes.

The parity tests play the shards on one server: optimizers ``<case>`` (the single server,
variables ``x`` and ``y``), ``<case>.0`` (shard 0, ``x``) and ``<case>.1`` (shard 1, ``y``),
of one config. Each optimizer is on its own, as it would be on its own server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfps_client import (
    AbortedError,
    AlreadyExistsError,
    Async,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Sync,
    TfpsError,
)
from tfps_client.types import Partition, Placement
from tfps_client.wire import checkpoint_layout as layout
from tfps_client.wire import codec, convert
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_server import Registry, RunningServer, create_server
from tfps_server.aggregation import Prepared, combine
from tfps_server.checkpoints import Checkpointer

from helpers import (
    LISTENING,
    assert_all_bitwise_equal,
    assert_bitwise_equal,
    assert_refused,
    call_raw,
    dense_header,
    raw_stub,
    start_with_checkpoints,
)
from interleave import BlockingHooks

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
NADAM = {"class_name": "Nadam", "config": {"learning_rate": 0.05}}
SCHEDULED = {
    "class_name": "Adam",
    "config": {
        "learning_rate": {
            "class_name": "ExponentialDecay",
            "config": {"initial_learning_rate": 0.1, "decay_steps": 1, "decay_rate": 0.5},
        }
    },
}
CONFIGS = {"adam": ADAM, "nadam": NADAM, "scheduled": SCHEDULED}
"""Optimizers whose updates depend on ``iterations`` (bias correction, a schedule) or on a
weight every step advances (Nadam's ``momentum_cache``)."""

X = np.arange(6, dtype=np.float32).reshape(3, 2) / 4
Y = np.linspace(-1.0, 1.0, 4, dtype=np.float32)
EMB = np.ones((4, 2), np.float32)
"""Rows 4..7 of a whole "emb" of shape [10, 2]."""
EMB_PART = Placement(0, 2, Partition("emb", 1, 3, 4, (10, 2)))


@dataclass
class Served:
    """An in-process server and a client of it."""

    server: RunningServer
    client: Client

    @property
    def port(self) -> int:
        return self.server.port

    def close(self) -> None:
        self.client.close()
        self.server.stop(None)


def _serve(registry: Registry, checkpointer: Checkpointer | None = None) -> Served:
    server = create_server(registry, "127.0.0.1:0", checkpointer=checkpointer)
    return Served(server, Client(f"127.0.0.1:{server.port}", timeout=120.0))


@pytest.fixture(scope="module")
def world() -> Iterator[Served]:
    """A server for the push tests (no shard identity: a push does not need one)."""
    served = _serve(Registry())
    yield served
    served.close()


@pytest.fixture
def fresh() -> Iterator[Served]:
    """A server without identity nor state."""
    served = _serve(Registry())
    served.client.create_optimizer("default", ADAM)
    yield served
    served.close()


# Raw calls --------------------------------------------------------------------------------


def declare_shard(port: int, shard: int, shards: int) -> pb.DeclareShardResponse:
    with raw_stub(port) as stub:
        return call_raw(stub.DeclareShard, pb.DeclareShardRequest(shard=shard, shards=shards))


def create_placed(
    port: int,
    variables: Mapping[str, tuple[np.ndarray, Placement | None]],
    optimizer: str = "default",
) -> pb.CreateVariablesResponse:
    """CreateVariables with a placement per declaration (None: none)."""
    declarations = [
        pb.VariableDeclaration(
            name=name,
            spec=codec.spec_of(value),
            placement=None if placement is None else convert.placement_to_message(placement),
        )
        for name, (value, placement) in variables.items()
    ]
    messages = codec.stream_messages(
        pb.CreateVariablesRequest,
        {"optimizer": optimizer, "variables": declarations},
        [value for value, _ in variables.values()],
    )
    with raw_stub(port) as stub:
        return call_raw(stub.CreateVariables, messages)


def push(
    port: int,
    gradients: Mapping[str, np.ndarray] | None = None,
    *,
    advance: Sequence[str] = (),
    method: str = "Push",
    **fields: Any,
) -> dict[str, tuple[int, int]]:
    """A raw Push (or PushPull) of dense gradients; returns {optimizer: (outcome, iterations)}."""
    gradients = gradients or {}
    header = {
        "gradients": [dense_header(name, value) for name, value in gradients.items()],
        "advance": list(advance),
        **fields,
    }
    message = pb.PushRequest if method == "Push" else pb.PushPullRequest
    messages = codec.stream_messages(message, header, list(gradients.values()))
    with raw_stub(port) as stub:
        answer = call_raw(getattr(stub, method), messages)
    response = answer if method == "Push" else answer[0].push
    return {name: (r.outcome, r.iterations) for name, r in response.results.items()}


APPLIED, AGGREGATED, STALE, SKIPPED = (
    pb.PUSH_OUTCOME_APPLIED,
    pb.PUSH_OUTCOME_AGGREGATED,
    pb.PUSH_OUTCOME_STALE,
    pb.PUSH_OUTCOME_SKIPPED,
)


def placements(client: Client) -> dict[str, Placement | None]:
    return {info.name: info.placement for info in client.list_variables()}


# DeclareShard -----------------------------------------------------------------------------


def test_declare_shard_records_once_and_refuses_another(fresh: Served) -> None:
    """No identity until told; the same again is OK; another names both, as expected and
    received."""
    declare_shard(fresh.port, 1, 3)
    declare_shard(fresh.port, 1, 3)
    for shard, shards in ((0, 3), (1, 4)):
        with pytest.raises(FailedPreconditionError) as refused:
            declare_shard(fresh.port, shard, shards)
        assert_refused(
            refused.value,
            FailedPreconditionError,
            "SHARD_MISMATCH",
            [
                f"this server is shard 1 of 3; the client declared it shard {shard} of "
                f"{shards} (a different or reordered shard list)"
            ],
            {"expected": "shard 1 of 3", "received": f"shard {shard} of {shards}"},
        )
    declare_shard(fresh.port, 1, 3)


@pytest.mark.parametrize(("shard", "shards"), [(0, 0), (3, 3), (5, 2), (2**32 - 1, 2**32 - 1)])
def test_declare_shard_out_of_range_is_invalid_shard(
    fresh: Served, shard: int, shards: int
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        declare_shard(fresh.port, shard, shards)
    assert_refused(
        refused.value,
        InvalidArgumentError,
        "INVALID_SHARD",
        ["DeclareShard: expected shards >= 1 and shard in [0, shards)", f"shard {shard} of"],
        {"received": f"{shard} of {shards}"},
    )
    declare_shard(fresh.port, 0, 1)  # nothing was recorded


# Placements -------------------------------------------------------------------------------


def test_a_placed_creation_records_the_identity_and_lists_the_placements(fresh: Served) -> None:
    result = create_placed(fresh.port, {"w": (X, Placement(0, 2)), "emb/part_1": (EMB, EMB_PART)})
    assert list(result.created) == ["w", "emb/part_1"]
    assert placements(fresh.client) == {"w": Placement(0, 2), "emb/part_1": EMB_PART}
    with pytest.raises(FailedPreconditionError) as refused:
        declare_shard(fresh.port, 1, 2)
    assert "this server is shard 0 of 2" in refused.value.message
    again = create_placed(fresh.port, {"w": (X, Placement(0, 2))})
    assert (list(again.created), list(again.existing)) == ([], ["w"])
    create_placed(fresh.port, {"plain": (Y, None)})  # unplaced variables may join
    assert placements(fresh.client)["plain"] is None


def test_a_placement_of_another_shard_changes_nothing(fresh: Served) -> None:
    declare_shard(fresh.port, 1, 2)
    with pytest.raises(FailedPreconditionError) as refused:
        create_placed(fresh.port, {"w": (X, Placement(0, 2))})
    assert_refused(
        refused.value,
        FailedPreconditionError,
        "SHARD_MISMATCH",
        ["this server is shard 1 of 2; the client declared it shard 0 of 2"],
    )
    assert fresh.client.list_variables() == []
    create_placed(fresh.port, {"w": (X, Placement(1, 2))})
    assert placements(fresh.client) == {"w": Placement(1, 2)}


@pytest.mark.parametrize(
    ("declared", "received"),
    [
        (Placement(0, 2, Partition("emb", 2, 3, 4, (10, 2))), "part 2 of 3 of 'emb'"),
        (None, "none"),
    ],
    ids=["other-partition", "none"],
)
def test_another_placement_of_an_existing_variable_is_refused_naming_placement(
    fresh: Served, declared: Placement | None, received: str
) -> None:
    create_placed(fresh.port, {"emb/part_1": (EMB, EMB_PART)})
    with pytest.raises(AlreadyExistsError) as refused:
        create_placed(fresh.port, {"emb/part_1": (EMB, declared)})
    assert_refused(
        refused.value,
        AlreadyExistsError,
        "VARIABLE_EXISTS",
        [
            "variable 'emb/part_1': placement: exists with shard 0 of 2, part 1 of 3 of 'emb' "
            "[10, 2] from row 4, received",
            received,
        ],
        {"field": "placement", "variable": "emb/part_1"},
    )
    assert placements(fresh.client) == {"emb/part_1": EMB_PART}


def _part(**changes: Any) -> Placement:
    fields = {"variable": "emb", "index": 1, "count": 3, "row_offset": 4, "shape": (10, 2)}
    return Placement(0, 2, Partition(**(fields | changes)))


@pytest.mark.parametrize(
    ("variables", "reason", "fragments", "facts"),
    [
        (
            {"a": (X, Placement(0, 2)), "b": (Y, Placement(1, 2))},
            "INVALID_PLACEMENT",
            ["variable 'b': expected the placement of every declaration", "'a': shard 0 of 2"],
            {"variable": "b", "expected": "shard 0 of 2", "received": "shard 1 of 2"},
        ),
        (
            {"a": (X, None), "b": (Y, Placement(0, 2))},
            "INVALID_PLACEMENT",
            ["variable 'b'", "('a': none), received shard 0 of 2"],
            {"expected": "none", "received": "shard 0 of 2"},
        ),
        (
            {"a": (X, Placement(2, 2))},
            "INVALID_SHARD",
            ["variable 'a': placement: expected shards >= 1", "received shard 2 of 2"],
            {"received": "2 of 2"},
        ),
        (
            {"e": (EMB, _part(count=0, index=0))},
            "INVALID_PLACEMENT",
            ["partition of 'emb': expected count >= 1 and index < count", "index 0 of count 0"],
            {"field": "index", "variable": "e"},
        ),
        (
            {"e": (EMB, _part(index=3))},
            "INVALID_PLACEMENT",
            ["expected count >= 1 and index < count, received index 3 of count 3"],
            {"field": "index"},
        ),
        (
            {"e": (EMB, _part(shape=()))},
            "INVALID_PLACEMENT",
            ["expected a whole shape of rank >= 1, received []"],
            {"field": "shape"},
        ),
        (
            {"e": (EMB, _part(shape=(10, 3)))},
            "INVALID_PLACEMENT",
            ["expected a part of the whole's shape [10, 3] but for its rows, received [4, 2]"],
            {"field": "shape", "received": "[4, 2]"},
        ),
        (
            {"e": (EMB, _part(shape=(10,)))},
            "INVALID_PLACEMENT",
            ["whole's shape [10] but for its rows, received [4, 2]"],
            {"field": "shape"},
        ),
        (
            {"e": (EMB, _part(row_offset=7))},
            "INVALID_PLACEMENT",
            ["expected row_offset >= 0 with the part's 4 rows within the whole's 10, received 7"],
            {"field": "row_offset", "received": "7"},
        ),
        (
            {"e": (EMB, _part(row_offset=-1))},
            "INVALID_PLACEMENT",
            ["received -1"],
            {"field": "row_offset"},
        ),
        (
            {"e": (EMB, _part(variable=""))},
            "INVALID_NAME",
            ["variable 'e': partition: whole variable name: expected a non-empty printable"],
            {"variable": "e"},
        ),
    ],
    ids=[
        "two-shards",
        "some-without",
        "shard-out-of-range",
        "no-parts",
        "index-past-count",
        "whole-scalar",
        "other-columns",
        "other-rank",
        "rows-past-the-whole",
        "negative-offset",
        "whole-unnamed",
    ],
)
def test_placements_that_do_not_fit_are_invalid_and_change_nothing(
    fresh: Served,
    variables: Mapping[str, tuple[np.ndarray, Placement | None]],
    reason: str,
    fragments: list[str],
    facts: dict[str, str],
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        create_placed(fresh.port, variables)
    assert_refused(refused.value, InvalidArgumentError, reason, fragments, facts)
    assert fresh.client.list_variables() == []
    declare_shard(fresh.port, 1, 2)  # no identity was recorded


# Checkpoints and restarts -----------------------------------------------------------------


def test_identity_and_placements_follow_checkpoints_and_a_restart(tmp_path: Path) -> None:
    """A restore takes the checkpoint's identity (none: none); a server restarted from its
    checkpoint directory keeps it, and every variable's placement."""
    registry = Registry()
    served = _serve(registry, Checkpointer(registry, tmp_path / "ckpts"))
    try:
        served.client.create_optimizer("default", ADAM)
        served.client.create_variables({"plain": Y})
        without = served.client.save_checkpoint().id
        create_placed(served.port, {"emb/part_1": (EMB, EMB_PART)})
        placed = served.client.save_checkpoint()
        assert [v.placement for v in placed.variables] == [None, EMB_PART]
        listed = served.client.list_checkpoints()
        assert [v.placement for v in listed[-1].variables] == [None, EMB_PART]

        served.client.restore_checkpoint(without)
        declare_shard(served.port, 2, 3)  # the identity went with the restore
        served.client.restore_checkpoint(placed.id)
        with pytest.raises(FailedPreconditionError, match="this server is shard 0 of 2"):
            declare_shard(served.port, 2, 3)
        assert placements(served.client) == {"plain": None, "emb/part_1": EMB_PART}
    finally:
        served.close()
    process, client = start_with_checkpoints(tmp_path / "ckpts")
    with process, client:
        assert placements(client) == {"plain": None, "emb/part_1": EMB_PART}
        with pytest.raises(FailedPreconditionError, match="this server is shard 0 of 2"):
            declare_shard(int(process.wait_for(LISTENING).group("port")), 1, 2)
        assert process.terminate() == 0


def test_metadata_without_identity_or_placements_reads_as_none_and_is_written_so() -> None:
    """Checkpoints written before sharding restore; an unsharded server's metadata has
    neither field, so that the versions before them still read it."""
    old = {
        "format": layout.FORMAT,
        "version": layout.VERSION,
        "saved_at": 1.5,
        "optimizers": [],
        "variables": [
            {"name": "w", "optimizer": "default", "shape": [2], "dtype": "float32", "batch": 1}
        ],
        "requests": [],
        "device": "/device:CPU:0",
    }
    metadata = layout.CheckpointMetadata.from_json(json.dumps(old))
    assert metadata.shard is None and metadata.variables[0].placement is None
    assert json.loads(metadata.to_json()) == old
    placed = layout.CheckpointMetadata(
        1.5,
        (),
        (layout.VariableEntry("emb/part_1", "default", (4, 2), "float32", 1, EMB_PART),),
        (),
        shard=EMB_PART.identity,
    )
    assert layout.CheckpointMetadata.from_json(placed.to_json()) == placed


# advance: async ---------------------------------------------------------------------------


def _shards(served: Served, case: str, aggregation: Async | Sync | None = None) -> None:
    """Creates the single server's optimizer ``case`` (x, y) and its shards' ``case.0`` (x)
    and ``case.1`` (y)."""
    config = CONFIGS[case.split("-")[0]]
    for name, variables in (
        (case, {"x": X, "y": Y}),
        (f"{case}.0", {"x": X}),
        (f"{case}.1", {"y": Y}),
    ):
        served.client.create_optimizer(name, config, aggregation)
        served.client.create_variables(
            {f"{name}/{v}": value for v, value in variables.items()}, optimizer=name
        )


def _assert_shards_equal_the_single_server(served: Served, case: str) -> None:
    client = served.client
    single, slots = client.pull(), client.slot_names(case)
    for variable, shard in (("x", f"{case}.0"), ("y", f"{case}.1")):
        assert client.iterations(shard) == client.iterations(case)
        assert_bitwise_equal(single[f"{shard}/{variable}"], single[f"{case}/{variable}"], variable)
        for slot in slots:
            assert_bitwise_equal(
                client.get_slot(f"{shard}/{variable}", slot),
                client.get_slot(f"{case}/{variable}", slot),
                f"{variable} {slot}",
            )
        non_slot = [w for w in client.get_weights(shard) if np.ndim(w) == 0]
        assert_all_bitwise_equal(non_slot, [w for w in client.get_weights(case) if np.ndim(w) == 0])


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_async_shards_advanced_by_ticks_equal_one_server_bitwise(world: Served, case: str) -> None:
    """Steps touching only x, then both, then only y: the shard each step leaves out is
    advanced, and both shards stay bitwise the single server (values, slots, iterations,
    Nadam's momentum_cache)."""
    _shards(world, case)
    steps = [
        {"x": np.full_like(X, 0.5)},
        {"x": np.full_like(X, -0.25), "y": np.full_like(Y, 0.75)},
        {"y": np.full_like(Y, 1.5)},
    ]
    for number, gradients in enumerate(steps, start=1):
        single = {f"{case}/{v}": g for v, g in gradients.items()}
        assert push(world.port, single) == {case: (APPLIED, number)}
        for variable, shard in (("x", f"{case}.0"), ("y", f"{case}.1")):
            if variable in gradients:
                result = push(world.port, {f"{shard}/{variable}": gradients[variable]})
            else:
                before = world.client.pull([f"{shard}/{variable}"])
                result = push(world.port, advance=[shard])
                assert_all_bitwise_equal(world.client.pull([f"{shard}/{variable}"]), before)
            assert result == {shard: (APPLIED, number)}
    _assert_shards_equal_the_single_server(world, case)


def test_a_tick_changes_iterations_only_and_is_counted(world: Served) -> None:
    world.client.create_optimizer("tick", ADAM)
    world.client.create_variables({"tick/w": X}, optimizer="tick")
    push(world.port, {"tick/w": np.ones_like(X)})
    weights, values = world.client.get_weights("tick"), world.client.pull(["tick/w"])
    pushes = world.server.registry.metrics.pushes.labels("tick", "applied")
    counted = pushes._value.get()
    assert push(world.port, advance=["tick"]) == {"tick": (APPLIED, 2)}
    assert_all_bitwise_equal(world.client.get_weights("tick")[1:], weights[1:])
    assert world.client.get_weights("tick")[0] == weights[0] + 1
    assert_all_bitwise_equal(world.client.pull(["tick/w"]), values)
    assert pushes._value.get() == counted + 1


def test_a_tick_is_applied_once_per_request_id(world: Served) -> None:
    world.client.create_optimizer("once", ADAM)
    first = push(world.port, advance=["once"], request_id="tick-1")
    assert (
        push(world.port, advance=["once"], request_id="tick-1") == first == {"once": (APPLIED, 1)}
    )
    assert world.client.iterations("once") == 1


def test_ticks_are_stale_or_ahead_exactly_as_gradients_are(world: Served) -> None:
    """max_staleness 0: a tick computed one step behind is dropped, as the gradient is; a
    step ahead of the optimizer is refused for both."""
    world.client.create_optimizer("bounded", ADAM, Async(max_staleness=0))
    world.client.create_variables({"bounded/w": X}, optimizer="bounded")
    assert push(world.port, advance=["bounded"], step=0) == {"bounded": (APPLIED, 1)}
    assert push(world.port, advance=["bounded"], step=0) == {"bounded": (STALE, 1)}
    assert push(world.port, {"bounded/w": X}, step=0) == {"bounded": (STALE, 1)}
    for gradients, advance in (({}, ["bounded"]), ({"bounded/w": X}, [])):
        with pytest.raises(FailedPreconditionError) as ahead:
            push(world.port, gradients, advance=advance, step=5)
        assert_refused(ahead.value, FailedPreconditionError, "STEP_AHEAD", ["at step 5"])
    assert world.client.iterations("bounded") == 1


def test_push_pull_passes_advance_through(world: Served) -> None:
    world.client.create_optimizer("pp", ADAM)
    world.client.create_variables({"pp/w": X}, optimizer="pp")
    assert push(world.port, advance=["pp"], method="PushPull", pull=["pp/w"]) == {
        "pp": (APPLIED, 1)
    }


@pytest.mark.parametrize(
    ("advance", "error", "reason", "fragments", "facts"),
    [
        (
            ["guard.b", "nope"],
            NotFoundError,
            "UNKNOWN_OPTIMIZER",
            ["optimizer 'nope' not found"],
            {"optimizer": "nope"},
        ),
        (
            ["guard.b", "guard.b"],
            InvalidArgumentError,
            "INVALID_ADVANCE",
            ["push advance: expected each optimizer once", "optimizer 'guard.b' named twice"],
            {"optimizer": "guard.b"},
        ),
        (
            ["guard.b", "guard.a"],
            InvalidArgumentError,
            "INVALID_ADVANCE",
            ["received optimizer 'guard.a' touched by a gradient too"],
            {"optimizer": "guard.a"},
        ),
    ],
    ids=["unknown", "twice", "with-a-gradient"],
)
def test_a_wrong_advance_refuses_the_whole_push(
    world: Served,
    advance: list[str],
    error: type[TfpsError],
    reason: str,
    fragments: list[str],
    facts: dict[str, str],
) -> None:
    """Each refusal is precise, and the push's valid parts (a gradient of guard.a, a tick of
    guard.b) change nothing either."""
    for name in ("guard.a", "guard.b"):
        world.client.create_optimizer(name, ADAM)
    world.client.create_variables({"guard.a/w": X}, optimizer="guard.a")
    values, weights = world.client.pull(), world.client.get_weights("guard.a")
    iterations = {n: world.client.iterations(n) for n in ("guard.a", "guard.b")}
    with pytest.raises(error) as refused:
        push(world.port, {"guard.a/w": X}, advance=advance)
    assert_refused(refused.value, error, reason, fragments, facts)
    assert {n: world.client.iterations(n) for n in iterations} == iterations
    assert_all_bitwise_equal(world.client.pull(), values)
    assert_all_bitwise_equal(world.client.get_weights("guard.a"), weights)


# advance: sync ----------------------------------------------------------------------------


def test_a_contribution_without_gradients_counts_for_no_variable() -> None:
    """Under "mean", a variable is divided by the contributions that held it: one without
    gradients (a tick) changes no divisor, as a worker that pushed other variables does not."""
    x, y = Prepared(0, "x", X, None, X.shape), Prepared(1, "y", Y, None, Y.shape)

    def mean(contributions: list[list[Prepared]]) -> dict[int, np.ndarray]:
        return {g.position: g.values for g in combine(contributions, "mean")}

    assert_bitwise_equal(mean([[x], []])[0], X, "x beside a tick")
    assert_all_bitwise_equal(mean([[x, y], [x], []]), {0: (X + X) / np.float32(2), 1: Y})
    assert combine([[], []], "mean") == []


@pytest.mark.parametrize("case", ["adam", "nadam"])
def test_sync_shards_with_ticks_equal_one_server_bitwise(world: Served, case: str) -> None:
    """Two workers, mean: on the single server A pushes x and y and B x only, then A x and B
    y, then both x only. Each shard gets, from a worker that pushed none of its variables,
    a tick: its contribution to the step, so the step closes with two contributions, and
    each variable is divided by the contributions that held it, as on the single server
    (there, a worker that leaves a variable out does not count for it). A step all of
    whose contributions are ticks advances the shard by one."""
    name = f"{case}-sync"
    _shards(world, name, Sync(2, reduction="mean", timeout=60.0))
    g = [np.full_like(X, v) for v in (0.5, -1.0, 0.25, 2.0)]
    h = [np.full_like(Y, v) for v in (0.75, -0.5)]
    steps = [
        ({"x": g[0], "y": h[0]}, {"x": g[1]}),
        ({"x": g[2]}, {"y": h[1]}),
        ({"x": g[3]}, {"x": g[0]}),
    ]
    shard_of = {"x": f"{name}.0", "y": f"{name}.1"}
    with ThreadPoolExecutor(6) as pool:
        for number, by_worker in enumerate(steps, start=1):
            calls = []
            for worker, gradients in zip("AB", by_worker, strict=True):
                single = {f"{name}/{v}": value for v, value in gradients.items()}
                calls.append(pool.submit(push, world.port, single, worker=worker))
                for variable, shard in shard_of.items():
                    if variable in gradients:
                        part = {f"{shard}/{variable}": gradients[variable]}
                        calls.append(pool.submit(push, world.port, part, worker=worker))
                    else:
                        calls.append(pool.submit(push, world.port, advance=[shard], worker=worker))
            results = [call.result(timeout=120) for call in calls]
            assert {r for result in results for r in result.values()} == {(AGGREGATED, number)}
    _assert_shards_equal_the_single_server(world, name)


def test_a_sync_step_of_ticks_only_advances_once(world: Served) -> None:
    """A tick needs a worker id, as any sync contribution; two ticks close a step."""
    world.client.create_optimizer("sync-ticks", ADAM, Sync(2, timeout=60.0))
    world.client.create_variables({"sync-ticks/w": X}, optimizer="sync-ticks")
    with pytest.raises(InvalidArgumentError) as refused:
        push(world.port, advance=["sync-ticks"])
    assert_refused(refused.value, InvalidArgumentError, "MISSING_WORKER")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(push, world.port, advance=["sync-ticks"], worker="A")
        second = push(world.port, advance=["sync-ticks"], worker="B")
        assert first.result(timeout=60) == second == {"sync-ticks": (AGGREGATED, 1)}
    assert_all_bitwise_equal(world.client.pull(["sync-ticks/w"]), {"sync-ticks/w": X})


# non_finite -------------------------------------------------------------------------------


def _skip_counts(served: Served, optimizer: str) -> tuple[float, float]:
    """The skipped pushes and non-finite skips ``optimizer`` has counted."""
    metrics = served.server.registry.metrics
    return (
        metrics.pushes.labels(optimizer, "skipped")._value.get(),
        metrics.non_finite_gradients.labels(optimizer, "skipped")._value.get(),
    )


@pytest.mark.parametrize("method", ["Push", "PushPull"])
@pytest.mark.parametrize("how", ["with a gradient", "advanced"])
def test_a_non_finite_optimizer_skips_its_update_once_per_request_id(
    world: Served, how: str, method: str
) -> None:
    """Named in ``non_finite``, a "skip" optimizer takes the path of a NaN gradient, whether
    its own gradients are finite or it is only advanced: SKIPPED, iterations + 1, and
    nothing else: no value, slot nor Nadam's momentum_cache (which a tick advances)
    changes. A retry with the request id is answered from memory; it is counted once."""
    name = f"nf-{how.split()[0]}-{method}"
    world.client.create_optimizer(name, NADAM, on_non_finite="skip")
    world.client.create_variables({f"{name}/w": X}, optimizer=name)
    push(world.port, {f"{name}/w": np.ones_like(X)})
    weights, values = world.client.get_weights(name), world.client.pull()
    counts = _skip_counts(world, name)
    gradients = {f"{name}/w": np.ones_like(X)} if how == "with a gradient" else {}
    fields = {
        "advance": [] if gradients else [name],
        "non_finite": [name],
        "request_id": f"{name}-1",
        "method": method,
    }
    if method == "PushPull":
        fields["pull"] = [f"{name}/w"]
    for _ in range(2):
        assert push(world.port, gradients, **fields) == {name: (SKIPPED, 2)}
    assert world.client.get_weights(name)[0] == weights[0] + 1
    assert_all_bitwise_equal(world.client.get_weights(name)[1:], weights[1:])
    assert_all_bitwise_equal(world.client.pull(), values)
    assert _skip_counts(world, name) == tuple(count + 1 for count in counts)


def test_a_non_finite_contribution_makes_its_sync_step_skip(world: Served) -> None:
    """Worker A's contribution is only advanced, but named non-finite; B's gradient is
    finite: the step closes SKIPPED for both, as a NaN in A's gradient would make it."""
    world.client.create_optimizer("nf-sync", ADAM, Sync(2, timeout=60.0), on_non_finite="skip")
    world.client.create_variables({"nf-sync/w": X}, optimizer="nf-sync")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            push, world.port, advance=["nf-sync"], non_finite=["nf-sync"], worker="A"
        )
        second = push(world.port, {"nf-sync/w": np.ones_like(X)}, worker="B")
        assert first.result(timeout=60) == second == {"nf-sync": (SKIPPED, 1)}
    assert_all_bitwise_equal(world.client.pull(["nf-sync/w"]), {"nf-sync/w": X})
    assert_all_bitwise_equal(world.client.get_weights("nf-sync")[1:], [np.zeros_like(X)] * 2)


@pytest.mark.parametrize(
    ("non_finite", "error", "reason", "fragments"),
    [
        (["nf.a", "nope"], NotFoundError, "UNKNOWN_OPTIMIZER", ["optimizer 'nope' not found"]),
        (
            ["nf.a", "nf.a"],
            InvalidArgumentError,
            "INVALID_ADVANCE",
            ["push non_finite: expected each optimizer once", "optimizer 'nf.a' named twice"],
        ),
        (
            ["nf.a", "nf.r"],
            InvalidArgumentError,
            "INVALID_ADVANCE",
            [
                "created with on_non_finite 'skip'",
                "optimizer 'nf.r' created with on_non_finite 'reject'",
            ],
        ),
        (
            ["nf.b"],
            InvalidArgumentError,
            "INVALID_ADVANCE",
            ["optimizer 'nf.b' neither touched by a gradient nor advanced"],
        ),
    ],
    ids=["unknown", "twice", "reject", "untouched"],
)
def test_a_wrong_non_finite_refuses_the_whole_push(
    world: Served,
    non_finite: list[str],
    error: type[TfpsError],
    reason: str,
    fragments: list[str],
) -> None:
    """Each refusal is precise, and changes nothing: nf.a (skip) and nf.r (reject) get a
    gradient, nf.b (skip) nothing."""
    for name, policy in (("nf.a", "skip"), ("nf.b", "skip"), ("nf.r", "reject")):
        world.client.create_optimizer(name, ADAM, on_non_finite=policy)
    world.client.create_variables({"nf.a/w": X}, optimizer="nf.a")
    world.client.create_variables({"nf.r/w": Y}, optimizer="nf.r")
    values = world.client.pull()
    weights = {n: world.client.get_weights(n) for n in ("nf.a", "nf.b", "nf.r")}
    with pytest.raises(error) as refused:
        push(world.port, {"nf.a/w": X, "nf.r/w": Y}, non_finite=non_finite)
    assert_refused(refused.value, error, reason, fragments, {"optimizer": non_finite[-1]})
    assert_all_bitwise_equal(world.client.pull(), values)
    for name, before in weights.items():
        assert_all_bitwise_equal(world.client.get_weights(name), before)


# follow: the sync steps the first shard closed ------------------------------------------------


def _closed(optimizer: str, step: int, *workers: str, outcome: int = AGGREGATED) -> pb.SyncStep:
    return pb.SyncStep(optimizer=optimizer, outcome=outcome, step=step, contributors=workers)


def test_followed_steps_close_in_step_order_with_the_named_workers() -> None:
    """The first shard closed step 0 with A and B, then step 1 with C and D (B's part of
    step 0 is late here): this shard holds C's and D's step-1 parts until step 0 closed with
    B's, and ends as a server that ran the two steps itself."""
    hooks = BlockingHooks()
    served = _serve(Registry(hooks=hooks))
    try:
        client = served.client
        for name in ("leader", "follower"):
            client.create_optimizer(name, ADAM, Sync(2, timeout=60.0))
            client.create_variables({f"{name}/x": X}, optimizer=name)
        g = {
            worker: np.full_like(X, v)
            for worker, v in zip("ABCD", (0.5, -1.0, 0.25, 2.0), strict=True)
        }
        with ThreadPoolExecutor(4) as pool:
            for step, workers in enumerate(("AB", "CD")):
                done = [
                    pool.submit(push, served.port, {"leader/x": g[w]}, worker=w) for w in workers
                ]
                assert [d.result(timeout=60) for d in done] == [
                    {"leader": (AGGREGATED, step + 1)}
                ] * 2
            waiting = hooks.watch("sync.waiting")
            early = [
                pool.submit(
                    push,
                    served.port,
                    {"follower/x": g[w]},
                    worker=w,
                    follow=[_closed("follower", step, *ws)],
                )
                for w, step, ws in (("A", 0, "AB"), ("C", 1, "CD"), ("D", 1, "CD"))
            ]
            waiting.wait_arrivals(3)
            late = push(
                served.port,
                {"follower/x": g["B"]},
                worker="B",
                follow=[_closed("follower", 0, "A", "B")],
            )
            answers = [late] + [e.result(timeout=60) for e in early]
        assert answers == [
            {"follower": (AGGREGATED, 1)},
            {"follower": (AGGREGATED, 1)},
            {"follower": (AGGREGATED, 2)},
            {"follower": (AGGREGATED, 2)},
        ]
        assert_bitwise_equal(
            client.pull(["follower/x"])["follower/x"], client.pull(["leader/x"])["leader/x"]
        )
        assert_all_bitwise_equal(client.get_weights("follower"), client.get_weights("leader"))
    finally:
        hooks.release_all()
        served.close()


def test_a_followed_stale_or_dropped_step_changes_nothing(world: Served) -> None:
    world.client.create_optimizer("follow-none", ADAM, Sync(2, timeout=60.0))
    world.client.create_variables({"follow-none/x": X}, optimizer="follow-none")
    stale = _closed("follow-none", 0, outcome=STALE)
    dropped = _closed("follow-none", 0, "A", outcome=pb.PUSH_OUTCOME_DROPPED)
    assert push(world.port, {"follow-none/x": X}, worker="A", follow=[stale]) == {
        "follow-none": (STALE, 0)
    }
    assert push(world.port, {"follow-none/x": X}, worker="A", follow=[dropped]) == {
        "follow-none": (pb.PUSH_OUTCOME_DROPPED, 0)
    }
    assert_bitwise_equal(world.client.pull(["follow-none/x"])["follow-none/x"], X)


def test_a_followed_step_closes_at_its_timeout_and_a_latecomer_is_stale(world: Served) -> None:
    """B's part never comes in time: the step closes with A's alone after the sync timeout;
    B's part, come later, joins nothing."""
    world.client.create_optimizer("follow-late", ADAM, Sync(2, timeout=0.2))
    world.client.create_variables({"follow-late/x": X}, optimizer="follow-late")
    world.client.create_optimizer("alone", ADAM)
    world.client.create_variables({"alone/x": X}, optimizer="alone")
    step = [_closed("follow-late", 0, "A", "B")]
    assert push(world.port, {"follow-late/x": Y[:1] + X}, worker="A", follow=step) == {
        "follow-late": (AGGREGATED, 1)
    }
    assert push(world.port, {"follow-late/x": X}, worker="B", follow=step) == {
        "follow-late": (STALE, 1)
    }
    push(world.port, {"alone/x": Y[:1] + X})
    pulled = world.client.pull(["follow-late/x", "alone/x"])
    assert_bitwise_equal(pulled["follow-late/x"], pulled["alone/x"])


def test_set_weights_aborts_a_followed_step_waiting_for_its_contributors() -> None:
    """A's part waits for B's in a followed step when set_weights replaces the weights: A's
    push is ABORTED (STATE_REPLACED), nothing of it applied, and a later step follows the
    weights set."""
    hooks = BlockingHooks()
    served = _serve(Registry(hooks=hooks))
    try:
        client = served.client
        client.create_optimizer("follow-set", ADAM, Sync(2, timeout=60.0))
        client.create_variables({"follow-set/x": X}, optimizer="follow-set")
        weights = client.get_weights("follow-set")
        waiting = hooks.watch("sync.waiting")
        with ThreadPoolExecutor(1) as pool:
            step = [_closed("follow-set", 0, "A", "B")]
            held = pool.submit(
                push, served.port, {"follow-set/x": Y[:1] + X}, worker="A", follow=step
            )
            waiting.wait_arrivals(1)
            client.set_weights("follow-set", weights)
            with pytest.raises(AbortedError) as aborted:
                held.result(timeout=60)
        assert_refused(aborted.value, AbortedError, "STATE_REPLACED")
        assert_bitwise_equal(client.pull(["follow-set/x"])["follow-set/x"], X)
        assert client.iterations("follow-set") == 0
    finally:
        hooks.release_all()
        served.close()


@pytest.mark.parametrize(
    ("follow", "error", "reason", "fragments"),
    [
        ([_closed("nope", 0, "A")], NotFoundError, "UNKNOWN_OPTIMIZER", ["'nope' not found"]),
        (
            [_closed("fsync.a", 0, "A"), _closed("fsync.a", 0, "A")],
            InvalidArgumentError,
            "INVALID_FOLLOW",
            ["optimizer 'fsync.a' named twice"],
        ),
        ([_closed("fasync", 0, "A")], InvalidArgumentError, "INVALID_FOLLOW", ["not in sync mode"]),
        (
            [_closed("fsync.b", 0, "A")],
            InvalidArgumentError,
            "INVALID_FOLLOW",
            ["'fsync.b' neither touched by a gradient nor advanced"],
        ),
        (
            [_closed("fsync.a", 0, "B", "C")],
            InvalidArgumentError,
            "INVALID_FOLLOW",
            ["closed by workers ['B', 'C'], not by the pushing worker 'A'"],
        ),
        (
            [_closed("fsync.a", 0, "A", outcome=APPLIED)],
            InvalidArgumentError,
            "INVALID_FOLLOW",
            ["outcome APPLIED"],
        ),
        (
            [_closed("fsync.a", 0, "A", outcome=0)],
            InvalidArgumentError,
            "INVALID_FOLLOW",
            ["push outcome: expected one of"],
        ),
        ([_closed("fsync.a", -1, "A")], InvalidArgumentError, "INVALID_ITERATIONS", ["-1"]),
    ],
    ids=[
        "unknown",
        "twice",
        "async",
        "untouched",
        "not-a-contributor",
        "applied",
        "unspecified",
        "negative",
    ],
)
def test_a_wrong_follow_refuses_the_whole_push(
    world: Served,
    follow: list[pb.SyncStep],
    error: type[TfpsError],
    reason: str,
    fragments: list[str],
) -> None:
    """Each refusal is precise, and nothing of the push changes anything."""
    client = world.client
    for name, aggregation in (
        ("fsync.a", Sync(2, timeout=60.0)),
        ("fsync.b", Sync(2)),
        ("fasync", None),
    ):
        client.create_optimizer(name, ADAM, aggregation)
    client.create_variables({"fsync.a/w": X}, optimizer="fsync.a")
    client.create_variables({"fasync/w": X}, optimizer="fasync")
    values = client.pull()
    with pytest.raises(error) as refused:
        push(world.port, {"fsync.a/w": X, "fasync/w": X}, worker="A", follow=follow)
    assert_refused(refused.value, error, reason, fragments)
    assert {n: client.iterations(n) for n in ("fsync.a", "fasync")} == {"fsync.a": 0, "fasync": 0}
    assert_all_bitwise_equal(client.pull(), values)
