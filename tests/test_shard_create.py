"""A sharded client's writes are all or nothing, as one server's are.

One shard is given a tight limit (``--max-variables``, ``--state-quota-gib``,
``--max-name-bytes``, ``--max-optimizers``, ``--max-config-bytes``,
``--max-schedule-boundaries``) that the others lack, or holds what they lack (an
optimizer of another config, a float16 variable): a create or a hyperparameter change it
refuses must change no shard and raise the error one server in its place raises.
``validate_only`` on one server runs every check and changes nothing. A ``set_weights``
whose weight one shard would refuse sets none. A list one server refuses as another
shard's leaves no fresh server of it with a shard identity.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tfps_client import Client, TfpsError
from tfps_client.types import Placement, ShardIdentity
from tfps_client.wire import codec, convert
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_server import Registry, RunningServer, create_server
from tfps_server.limits import Limits

from helpers import assert_all_bitwise_equal, call_raw, raw_stub
from interleave import BlockingHooks

SHARDS = 3
MAX_SHARD_BYTES = 48
"""Splits a (10, 2) float32 table (80 bytes) in two parts: rows 0-7 and 8-9."""
SGD = {"class_name": "SGD", "config": {"learning_rate": 0.1}}
MOMENTUM = {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}}
FIRST = {name: np.arange(4, dtype=np.float32) for name in ("a", "b", "c")}
"""One variable per shard, in shard order; shard 1 holds "b" (16 bytes, SGD has no slot)."""
SECOND = {name: np.ones(4, np.float32) for name in ("d", "eeee", "f")}
"""Placed as FIRST is: "eeee" on shard 1."""


@dataclass
class World:
    """Shards, one of them with tight limits, and a single server with the same limits."""

    sharded: Client
    each_shard: list[Client]
    """An unsharded client of each shard, to read what each holds."""
    reference: Client
    """A client of the single server."""
    hooks: list[BlockingHooks]
    """The shards' hook points, then the single server's."""
    reference_port: int
    """The single server's port, for raw calls."""
    registries: list[Registry]
    """The shards' registries, then the single server's."""

    def held(self) -> list[tuple[list[Any], dict[str, np.ndarray]]]:
        """What each shard holds: its variables and their values."""
        return [(shard.list_variables(), shard.pull()) for shard in self.each_shard]

    def assert_holds(self, before: list[tuple[list[Any], dict[str, np.ndarray]]]) -> None:
        """Asserts that every shard holds what it held ``before``."""
        for (variables, values), (old_variables, old_values) in zip(
            self.held(), before, strict=True
        ):
            assert variables == old_variables
            assert_all_bitwise_equal(values, old_values)


@pytest.fixture
def make_world() -> Iterator[Callable[[Limits], World]]:
    """Builds worlds whose shard 1 and single server have the given limits."""
    with contextlib.ExitStack() as stack:

        def make(limits: Limits) -> World:
            hooks = [BlockingHooks() for _ in range(SHARDS + 1)]
            registries = [
                Registry(hooks=h, limits=limits if i in (1, SHARDS) else None)
                for i, h in enumerate(hooks)
            ]
            servers = [create_server(registry, "127.0.0.1:0") for registry in registries]
            for running in servers:
                stack.callback(running.stop, None)
            addresses = [_address(running) for running in servers]
            clients = [stack.enter_context(Client(a, timeout=30)) for a in addresses]
            sharded = Client(addresses[:SHARDS], timeout=30, max_shard_bytes=MAX_SHARD_BYTES)
            stack.enter_context(sharded)
            return World(
                sharded, clients[:SHARDS], clients[SHARDS], hooks, servers[SHARDS].port, registries
            )

        yield make


def _address(running: RunningServer) -> str:
    return f"127.0.0.1:{running.port}"


def _refusal(call: Callable[[], object]) -> TfpsError:
    with pytest.raises(TfpsError) as caught:
        call()
    return caught.value


def _compared(error: TfpsError) -> tuple[type[TfpsError], str, str, dict[str, str]]:
    """What a caller sees of an error: its class, reason, message and facts."""
    return type(error), error.reason, error.message, dict(error.metadata)


def _up_to_counts(error: TfpsError) -> tuple[str, str, str]:
    """An error's class, reason and message, its numbers left out: a shard counts what it
    holds and is asked for, not what all of them do."""
    return type(error).__name__, error.reason, re.sub(r"\d+", "#", error.message)


# create_variables ------------------------------------------------------------------------------

FULL_SHARD = {
    "max_variables": Limits(max_variables=1),
    "state_quota": Limits(state_quota_bytes=16),
    "max_name_bytes": Limits(max_name_bytes=3),
}
"""Limits that the one variable shard 1 holds fills, or that "eeee" passes."""


@pytest.mark.parametrize("limits", FULL_SHARD.values(), ids=FULL_SHARD)
def test_a_create_one_shard_refuses_changes_no_shard(
    make_world: Callable[[Limits], World], limits: Limits
) -> None:
    """The shards that would accept their part create nothing, and the error is the one
    server's with the same limit (and what shard 1 holds)."""
    world = make_world(limits)
    world.sharded.create_optimizer("o", SGD)
    world.sharded.create_variables(FIRST, optimizer="o")
    assert [list(values) for _, values in world.held()] == [["a"], ["b"], ["c"]]
    world.reference.create_optimizer("o", SGD)
    world.reference.create_variables({"b": FIRST["b"]}, optimizer="o")
    before = world.held()

    refused = _refusal(lambda: world.sharded.create_variables(SECOND, optimizer="o"))

    world.assert_holds(before)
    expected = _refusal(lambda: world.reference.create_variables(SECOND, optimizer="o"))
    assert _up_to_counts(refused) == _up_to_counts(expected)
    assert [info.name for info in world.sharded.list_variables()] == list(FIRST)
    assert world.reference.list_variables()[0].name == "b"


def test_an_optimizer_one_shard_lacks_creates_on_no_shard(
    make_world: Callable[[Limits], World],
) -> None:
    """Shard 2 lacks the optimizer: NOT_FOUND, exactly one server's, and nothing created."""
    world = make_world(Limits())
    for shard in world.each_shard[:2]:
        shard.create_optimizer("o", SGD)
    before = world.held()

    refused = _refusal(lambda: world.sharded.create_variables(FIRST, optimizer="o"))

    world.assert_holds(before)
    expected = _refusal(lambda: world.reference.create_variables(FIRST, optimizer="o"))
    assert (type(refused), refused.reason, refused.message) == (
        type(expected),
        expected.reason,
        expected.message,
    )


def test_a_part_one_shard_refuses_is_named_by_its_variable(
    make_world: Callable[[Limits], World],
) -> None:
    """A split variable's part refused by its shard (a name past that shard's
    ``--max-name-bytes``) is refused naming the variable declared, and creates no part."""
    world = make_world(Limits(max_name_bytes=9))
    world.sharded.create_optimizer("o", SGD)
    before = world.held()

    table = np.ones((10, 2), np.float32)
    refused = _refusal(lambda: world.sharded.create_variables({"emb": table}, optimizer="o"))

    world.assert_holds(before)
    assert refused.reason == "LIMIT_EXCEEDED"
    assert refused.message.startswith("variable 'emb': variable name 'emb/part_1': expected")
    assert refused.metadata["variable"] == "emb"


def test_a_sharded_create_validates_first_and_once_when_everything_exists(
    make_world: Callable[[Limits], World],
) -> None:
    """Each shard validates, then creates; a create of what exists only validates. One
    server creates in one call, with no validation."""
    world = make_world(Limits())
    world.sharded.create_optimizer("o", SGD)
    world.reference.create_optimizer("o", SGD)
    gates = [hooks.watch("create_variables.locked") for hooks in world.hooks]

    assert world.sharded.create_variables(FIRST, optimizer="o").created == tuple(FIRST)
    assert [gate.arrivals for gate in gates[:SHARDS]] == [2, 2, 2]
    assert world.sharded.create_variables(FIRST, optimizer="o").existing == tuple(FIRST)
    assert [gate.arrivals for gate in gates[:SHARDS]] == [3, 3, 3]
    world.reference.create_variables(FIRST, optimizer="o")
    assert gates[SHARDS].arrivals == 1


# validate_only on one server -------------------------------------------------------------------


def _create(
    port: int,
    variables: dict[str, np.ndarray],
    *,
    validate_only: bool,
    placement: Placement | None = None,
) -> tuple[list[str], list[str]]:
    """A raw CreateVariables of ``variables`` for optimizer "o"; returns (created, existing)."""
    declarations = [
        pb.VariableDeclaration(
            name=name,
            spec=codec.spec_of(value),
            placement=None if placement is None else convert.placement_to_message(placement),
        )
        for name, value in variables.items()
    ]
    header = {"optimizer": "o", "variables": declarations, "validate_only": validate_only}
    messages = codec.stream_messages(pb.CreateVariablesRequest, header, list(variables.values()))
    with raw_stub(port) as stub:
        response = call_raw(stub.CreateVariables, messages)
    return list(response.created), list(response.existing)


def test_validate_only_answers_what_would_be_created_and_changes_nothing(
    server: RunningServer, client: Client
) -> None:
    """No variable, slot, shard identity nor dtype proven is left by a validation; the
    create that follows creates what it said."""
    registry = server.registry
    client.create_optimizer("o", MOMENTUM)
    client.create_variables({"a": np.ones(3, np.float32)}, optimizer="o")
    placement = Placement(shard=0, shards=2, order=0, batch=0)
    fresh = {"a": np.ones(3, np.float32), "wide": np.ones(2, np.float64)}
    before = (client.list_variables(), registry.state_bytes(), client.get_weights("o"))
    dtypes = set(registry.current().optimizers["o"].checked_dtypes)

    answer = _create(server.port, fresh, validate_only=True)
    assert answer == (["wide"], ["a"])
    placed = {"p": np.ones(2, np.float32)}
    assert _create(server.port, placed, validate_only=True, placement=placement) == (["p"], [])

    assert (client.list_variables(), registry.state_bytes()) == before[:2]
    assert_all_bitwise_equal(client.get_weights("o"), before[2])
    assert registry.current().shard is None
    assert registry.current().optimizers["o"].checked_dtypes == dtypes
    assert _create(server.port, fresh, validate_only=False) == answer
    assert registry.current().optimizers["o"].checked_dtypes == dtypes | {"float64"}


@pytest.mark.parametrize("limits", FULL_SHARD.values(), ids=FULL_SHARD)
def test_validate_only_refuses_as_the_create_would(
    make_world: Callable[[Limits], World], limits: Limits
) -> None:
    """Past a limit, the validation's refusal is the create's, and neither changes anything."""
    world = make_world(limits)
    port = world.reference_port
    world.reference.create_optimizer("o", SGD)
    world.reference.create_variables({"b": FIRST["b"]}, optimizer="o")
    before = (world.reference.list_variables(), world.reference.pull())

    validated = _refusal(lambda: _create(port, SECOND, validate_only=True))
    created = _refusal(lambda: _create(port, SECOND, validate_only=False))

    assert (type(validated), validated.reason, validated.message) == (
        type(created),
        created.reason,
        created.message,
    )
    assert world.reference.list_variables() == before[0]
    assert_all_bitwise_equal(world.reference.pull(), before[1])


# set_weights -----------------------------------------------------------------------------------

MODEL = {
    "k": np.ones((4, 3), np.float32),
    "b": np.ones(3, np.float32),
    "e": np.ones((10, 2), np.float32),
}
"""Placed as "k" on shard 0, "b" on shard 1, and "e" split: rows 0-7 on shard 2, 8-9 on 1."""


def _with_nan_in_row_9(value: np.ndarray) -> np.ndarray:
    poisoned = value.copy()
    poisoned[9, 0] = np.nan
    return poisoned


POISONS = {
    "non_finite": _with_nan_in_row_9,
    "dtype": lambda value: value.astype(np.float64),
}
"""A slot value of "e" that shard 1 refuses (and shard 2 too for the dtype)."""


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS)
def test_a_weight_one_shard_would_refuse_sets_none(
    make_world: Callable[[Limits], World], poison: Callable[[np.ndarray], np.ndarray]
) -> None:
    """Shards whose own weights are fine set nothing either, and the error is one server's."""
    world = make_world(Limits())
    for client in (world.sharded, world.reference):
        client.create_optimizer("m", MOMENTUM)
        client.create_variables(MODEL, optimizer="m")
    current = world.reference.get_weights("m")
    weights = [np.int64(5), *(value + 1 for value in current[1:])]
    weights[-1] = poison(weights[-1])  # the momentum of "e", the last variable
    before = [shard.get_weights("m") for shard in world.each_shard]

    refused = _refusal(lambda: world.sharded.set_weights("m", weights))

    for shard, held in zip(world.each_shard, before, strict=True):
        assert_all_bitwise_equal(shard.get_weights("m"), held)
    expected = _refusal(lambda: world.reference.set_weights("m", weights))
    assert (type(refused), refused.reason, refused.message, refused.metadata) == (
        type(expected),
        expected.reason,
        expected.message,
        expected.metadata,
    )


# create_optimizer ------------------------------------------------------------------------------


def _piecewise(boundaries: int) -> dict[str, Any]:
    """A learning-rate schedule of ``boundaries`` boundaries."""
    return {
        "class_name": "PiecewiseConstantDecay",
        "config": {
            "boundaries": list(range(1, boundaries + 1)),
            "values": [0.1] * (boundaries + 1),
        },
    }


NEW_OPTIMIZERS = {
    "max_optimizers": (Limits(max_optimizers=1), "p", SGD),
    "max_config_bytes": (Limits(max_config_bytes=len(json.dumps(SGD))), "p", MOMENTUM),
    "max_name_bytes": (Limits(max_name_bytes=1), "pp", SGD),
    "max_schedule_boundaries": (
        Limits(max_schedule_boundaries=1),
        "p",
        {"class_name": "SGD", "config": {"learning_rate": _piecewise(2)}},
    ),
}
"""Limits that optimizer "o" (SGD) passes and a second optimizer does not."""


@pytest.mark.parametrize(("limits", "name", "config"), NEW_OPTIMIZERS.values(), ids=NEW_OPTIMIZERS)
def test_an_optimizer_one_shard_refuses_is_created_on_no_shard(
    make_world: Callable[[Limits], World], limits: Limits, name: str, config: dict[str, Any]
) -> None:
    """The shards under no limit create nothing either, and the error is one server's."""
    world = make_world(limits)
    for client in (world.sharded, world.reference):
        client.create_optimizer("o", SGD)

    refused = _refusal(lambda: world.sharded.create_optimizer(name, config))

    assert [registry.optimizer_names() for registry in world.registries] == [["o"]] * 4
    expected = _refusal(lambda: world.reference.create_optimizer(name, config))
    assert _compared(refused) == _compared(expected)


def test_an_optimizer_one_shard_holds_otherwise_is_created_on_no_shard(
    make_world: Callable[[Limits], World],
) -> None:
    """Shard 1 holds "o" with momentum: ALREADY_EXISTS, one server's, and no "o" elsewhere.
    An optimizer every shard holds alike is validated only."""
    world = make_world(Limits())
    for client in (world.each_shard[1], world.reference):
        client.create_optimizer("o", MOMENTUM)

    refused = _refusal(lambda: world.sharded.create_optimizer("o", SGD))

    assert [registry.optimizer_names() for registry in world.registries] == [[], ["o"], [], ["o"]]
    expected = _refusal(lambda: world.reference.create_optimizer("o", SGD))
    assert _compared(refused) == _compared(expected)
    assert world.sharded.create_optimizer("p", SGD) is True
    assert world.sharded.create_optimizer("p", SGD) is False


# set_hyperparameter ----------------------------------------------------------------------------

REFUSED_VALUES = {
    "dtype": (Limits(), np.float16, 1e6),
    "max_schedule_boundaries": (Limits(max_schedule_boundaries=1), np.float32, _piecewise(2)),
}
"""A learning rate shard 1 refuses: one that cannot update the float16 variable only it
holds, or a schedule past its limit."""


@pytest.mark.parametrize(("limits", "dtype", "value"), REFUSED_VALUES.values(), ids=REFUSED_VALUES)
def test_a_hyperparameter_one_shard_refuses_is_set_on_no_shard(
    make_world: Callable[[Limits], World], limits: Limits, dtype: type, value: Any
) -> None:
    """The shards that would take the value keep their config, and the error is one
    server's holding what shard 1 holds."""
    world = make_world(limits)
    variables = {"a": FIRST["a"], "b": FIRST["b"].astype(dtype), "c": FIRST["c"]}
    world.sharded.create_optimizer("o", SGD)
    world.sharded.create_variables(variables, optimizer="o")
    assert [list(values) for _, values in world.held()] == [["a"], ["b"], ["c"]]
    world.reference.create_optimizer("o", SGD)
    world.reference.create_variables({"b": variables["b"]}, optimizer="o")

    before = [shard.get_config("o") for shard in world.each_shard]

    refused = _refusal(lambda: world.sharded.set_hyperparameter("o", "learning_rate", value))

    assert [shard.get_config("o") for shard in world.each_shard] == before
    expected = _refusal(lambda: world.reference.set_hyperparameter("o", "learning_rate", value))
    assert _compared(refused) == _compared(expected)


def test_a_sharded_hyperparameter_change_validates_first(
    make_world: Callable[[Limits], World],
) -> None:
    """Each shard validates, then sets; one server sets in one call."""
    world = make_world(Limits())
    gates = [hooks.watch("set_hyperparameter.found") for hooks in world.hooks]
    for client in (world.sharded, world.reference):
        client.create_optimizer("o", SGD)
        client.set_hyperparameter("o", "learning_rate", 0.5)

    assert [gate.arrivals for gate in gates] == [2, 2, 2, 1]
    assert [shard.get_config("o")["config"]["learning_rate"] for shard in world.each_shard] == [
        0.5
    ] * SHARDS


# DeclareShard ----------------------------------------------------------------------------------


def test_a_list_one_server_refuses_leaves_the_others_without_an_identity(
    make_world: Callable[[Limits], World],
) -> None:
    """Shard 1 was declared shard 0 of another list: the sharded client's first call is
    refused SHARD_MISMATCH, and the fresh servers of its list stay fresh."""
    world = make_world(Limits())
    world.registries[1].declare_shard(0, SHARDS)

    refused = _refusal(world.sharded.list_variables)

    assert refused.reason == "SHARD_MISMATCH"
    assert [registry.current().shard for registry in world.registries] == [
        None,
        ShardIdentity(0, SHARDS),
        None,
        None,
    ]


# validate_only on one server (optimizers, hyperparameters, shards) -----------------------------


def test_validate_only_creates_no_optimizer_and_sets_no_hyperparameter(
    server: RunningServer, client: Client
) -> None:
    """A validated optimizer, hyperparameter or shard identity is not there afterwards, and
    a refusal is the change's."""
    registry = server.registry
    client.create_optimizer("o", SGD)
    client.create_variables({"h": np.ones(2, np.float16)}, optimizer="o")
    before = (["o"], registry.get_config("o"))
    with raw_stub(server.port) as stub:

        def create(name: str, config: dict[str, Any], validate_only: bool) -> bool:
            request = pb.CreateOptimizerRequest(
                name=name, config_json=json.dumps(config), validate_only=validate_only
            )
            return call_raw(stub.CreateOptimizer, request).created

        def set_rate(rate: float, validate_only: bool) -> None:
            request = pb.SetHyperparameterRequest(
                optimizer="o", name="learning_rate", number=rate, validate_only=validate_only
            )
            call_raw(stub.SetHyperparameter, request)

        def declare(shard: int, validate_only: bool) -> None:
            request = pb.DeclareShardRequest(shard=shard, shards=2, validate_only=validate_only)
            call_raw(stub.DeclareShard, request)

        assert (create("p", SGD, True), create("o", SGD, True)) == (True, False)
        set_rate(0.5, True)
        declare(1, True)
        assert (registry.optimizer_names(), registry.get_config("o")) == before
        assert registry.current().shard is None

        declare(0, False)
        for change in (
            lambda validate_only: create("o", MOMENTUM, validate_only),
            lambda validate_only: set_rate(1e6, validate_only),
            lambda validate_only: declare(1, validate_only),
        ):
            _assert_validation_refuses_as_the_change(change)
        assert (registry.optimizer_names(), registry.get_config("o")) == before
        assert registry.current().shard == ShardIdentity(0, 2)


def _assert_validation_refuses_as_the_change(change: Callable[[bool], object]) -> None:
    """``change(validate_only)`` is refused alike with and without ``validate_only``."""
    validated = _refusal(lambda: change(True))
    assert _compared(validated) == _compared(_refusal(lambda: change(False)))
