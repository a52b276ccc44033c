"""Every bound of ``Limits`` on the state and on cheap requests, against a real server.

At a bound a request is accepted; one past it is refused with RESOURCE_EXHAUSTED
(``LIMIT_EXCEEDED``, or ``STATE_QUOTA`` for the state quota), a message naming the
thing, the bound, the value received and the flag that sets the bound, metadata
``{"limit", "expected", "received"}``, and no change. A name longer than any can be
is refused wherever a request gives one. A checkpoint holding more than a server's
limits is refused by its restore, the state kept; one at the limits is restored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfps_client import (
    Client,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TfpsError,
)
from tfps_server import Registry, RunningServer, create_server
from tfps_server.checkpoints import Checkpointer
from tfps_server.limits import Limits, flag_of

from helpers import State, assert_refused, assert_same_state, snapshot

LIMITS = Limits(
    max_name_bytes=16,
    max_id_bytes=32,
    max_variables=4,
    max_optimizers=3,
    max_config_bytes=256,
    max_schedule_boundaries=3,
    state_quota_bytes=136,
)
"""The tight limits of the servers below (the client's own request ids have 32 bytes)."""
SGD = {"class_name": "SGD", "config": {"learning_rate": 0.5}}
ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
OPTIMIZERS = ("default", "adam")
HELD = 4 * 4 + 2 * 4 * 3
"""Bytes of the world's state: "w" (4 float32, SGD: no slot), "m" (2 float32, Adam: 2 slots)."""
ONE = np.ones(1, np.float32)
GRADIENT = {"w": np.full(4, 0.25, np.float32)}


@dataclass
class World:
    """A server with tight limits, two optimizers and a variable of each, after one push."""

    running: RunningServer
    client: Client

    @property
    def registry(self) -> Registry:
        """The server's state, in this process."""
        return self.running.registry

    def observed(self) -> tuple[State, list[str], int, int]:
        """What a refusal must leave unchanged: values, iterations, weights, configs and
        variables; which optimizers exist; the bytes of state; the request ids remembered."""
        registry = self.registry
        return (
            snapshot(self.client, OPTIMIZERS),
            registry.optimizer_names(),
            registry.state_bytes(),
            len(registry.current().requests),
        )

    def assert_unchanged(self, before: tuple[State, list[str], int, int]) -> None:
        """Asserts that nothing observed changed since ``before``."""
        after = self.observed()
        assert_same_state(after[0], before[0])
        assert after[1:] == before[1:]


def _world() -> Iterator[World]:
    running = create_server(Registry(limits=LIMITS), "127.0.0.1:0")
    with Client(f"127.0.0.1:{running.port}", timeout=120.0) as client:
        client.create_optimizer("default", SGD)
        client.create_optimizer("adam", ADAM)
        client.create_variables({"w": np.arange(4, dtype=np.float32)})
        client.create_variables({"m": np.ones(2, np.float32)}, optimizer="adam")
        client.push({**GRADIENT, "m": np.ones(2, np.float32)})
        yield World(running, client)
    running.stop(None)


@pytest.fixture
def world() -> Iterator[World]:
    """A fresh world, for requests that change it."""
    yield from _world()


@pytest.fixture(scope="module")
def shared() -> Iterator[World]:
    """One world for the module's requests that must change nothing."""
    yield from _world()


# At the bound, and one past it -----------------------------------------------------------------


def _config_of(size: int) -> str:
    """SGD's config as JSON of exactly ``size`` bytes (padded with whitespace)."""
    text = json.dumps(SGD)
    return text + " " * (size - len(text))


def _piecewise(boundaries: int, values: int | None = None) -> dict[str, Any]:
    return {
        "class_name": "PiecewiseConstantDecay",
        "config": {
            "boundaries": list(range(1, boundaries + 1)),
            "values": [0.1] * (boundaries + 1 if values is None else values),
        },
    }


def _with_schedule(schedule: dict[str, Any]) -> str:
    """SGD with a schedule, as compact JSON (within the config bound)."""
    config = {"class_name": "SGD", "config": {"learning_rate": schedule}}
    return json.dumps(config, separators=(",", ":"))


@dataclass(frozen=True)
class Bound:
    """A request at a bound (accepted), then one past it (refused, nothing changed)."""

    id: str
    at: Callable[[Client], object]
    past: Callable[[Client], object]
    limit: str
    """The field of Limits."""
    fragments: tuple[str, ...]
    reason: str = "LIMIT_EXCEEDED"
    metadata: tuple[tuple[str, str], ...] = ()


BOUNDS = [
    Bound(
        "variable-name",
        lambda c: c.create_variables({"v" * 16: ONE}),
        lambda c: c.create_variables({"v" * 17: ONE}),
        "max_name_bytes",
        (f"variable name {'v' * 17!r}", "expected at most 16 UTF-8 bytes", "received 17"),
        metadata=(("variable", "v" * 17),),
    ),
    Bound(
        "variable-name-in-utf-8-bytes",
        lambda c: c.create_variables({"é" * 8: ONE}),
        lambda c: c.create_variables({"é" * 9: ONE}),
        "max_name_bytes",
        ("variable name", "expected at most 16 UTF-8 bytes", "received 18"),
    ),
    Bound(
        "optimizer-name",
        lambda c: c.create_optimizer("o" * 16, SGD),
        lambda c: c.create_optimizer("o" * 17, SGD),
        "max_name_bytes",
        (f"optimizer name {'o' * 17!r}", "expected at most 16 UTF-8 bytes", "received 17"),
    ),
    Bound(
        "request-id",
        lambda c: c.push(GRADIENT, request_id="r" * 32),
        lambda c: c.push(GRADIENT, request_id="r" * 33),
        "max_id_bytes",
        ("push request_id", "expected at most 32 UTF-8 bytes", "received 33"),
    ),
    Bound(
        "worker-id",
        lambda c: c.push(GRADIENT, worker="k" * 32),
        lambda c: c.push(GRADIENT, worker="k" * 33),
        "max_id_bytes",
        ("push worker", "expected at most 32 UTF-8 bytes", "received 33"),
    ),
    Bound(
        "variables-a-request-crossing-the-bound-is-refused-whole",
        lambda c: c.create_variables({"a": ONE, "b": ONE}),
        lambda c: c.create_variables({"w": np.zeros(4, np.float32), "c": ONE}),
        "max_variables",
        ("optimizer 'default'", "expected at most 4 variables", "received 5 (4 held, 1 new)"),
        metadata=(("expected", "4"), ("received", "5"), ("held", "4")),
    ),
    Bound(
        "optimizers",
        lambda c: c.create_optimizer("third", SGD),
        lambda c: c.create_optimizer("fourth", SGD),
        "max_optimizers",
        ("optimizer 'fourth'", "expected at most 3 optimizers", "received 4 (3 held, 1 new)"),
    ),
    Bound(
        "config-bytes",
        lambda c: c.create_optimizer("new", _config_of(256)),
        lambda c: c.create_optimizer("new", _config_of(257)),
        "max_config_bytes",
        ("optimizer 'new': config JSON", "expected at most 256 UTF-8 bytes", "received 257"),
    ),
    Bound(
        "schedule-boundaries",
        lambda c: c.create_optimizer("new", _with_schedule(_piecewise(3))),
        lambda c: c.create_optimizer("new", _with_schedule(_piecewise(4))),
        "max_schedule_boundaries",
        ("optimizer 'new'", "expected at most 3 numbers for 'boundaries'", "received 4"),
        metadata=(("optimizer", "new"),),
    ),
    Bound(
        "schedule-values",
        lambda c: c.create_optimizer("new", _with_schedule(_piecewise(3))),
        lambda c: c.create_optimizer("new", _with_schedule(_piecewise(3, values=5))),
        "max_schedule_boundaries",
        ("optimizer 'new'", "expected at most 4 numbers for 'values'", "received 5"),
        metadata=(("expected", "4"), ("received", "5")),
    ),
    Bound(
        "schedule-boundaries-set-as-a-hyperparameter",
        lambda c: c.set_hyperparameter("default", "learning_rate", _piecewise(3)),
        lambda c: c.set_hyperparameter("default", "learning_rate", _piecewise(4)),
        "max_schedule_boundaries",
        ("optimizer 'default'", "expected at most 3 numbers for 'boundaries'", "received 4"),
    ),
    Bound(
        "state-quota-float32-with-slots",
        lambda c: c.create_variables({"big": np.ones(8, np.float32)}, optimizer="adam"),
        lambda c: c.create_variables({"x": np.float32(1)}),
        "state_quota_bytes",
        (
            "optimizer 'default'",
            "of at most 136 bytes",
            "received a request for 4 bytes with 136 bytes held",
        ),
        "STATE_QUOTA",
        (("held", "136"), ("asked", "4"), ("expected", "136"), ("received", "140")),
    ),
    Bound(
        "state-quota-float16-with-slots",
        lambda c: c.create_variables({"big": np.ones(16, np.float16)}, optimizer="adam"),
        lambda c: c.create_variables({"x": np.float16(1)}, optimizer="adam"),
        "state_quota_bytes",
        ("optimizer 'adam'", "received a request for 6 bytes with 136 bytes held"),
        "STATE_QUOTA",
        (("held", "136"), ("asked", "6")),
    ),
    Bound(
        "state-quota-float64-without-slots",
        lambda c: c.create_variables({"big": np.ones(12, np.float64)}),
        lambda c: c.create_variables({"x": np.float16(1)}),
        "state_quota_bytes",
        ("received a request for 2 bytes with 136 bytes held",),
        "STATE_QUOTA",
    ),
]


@pytest.mark.parametrize("case", BOUNDS, ids=lambda case: case.id)
def test_at_the_bound_is_accepted_and_one_past_it_refused(world: World, case: Bound) -> None:
    """The request at the bound succeeds; the next one is refused and changes nothing."""
    case.at(world.client)
    before = world.observed()
    with pytest.raises(TfpsError) as caught:
        case.past(world.client)
    bound = getattr(LIMITS, case.limit)
    assert_refused(
        caught.value,
        ResourceExhaustedError,
        case.reason,
        (*case.fragments, f"({flag_of(case.limit)})"),
        {"limit": case.limit, "expected": str(bound), **dict(case.metadata)},
    )
    world.assert_unchanged(before)


SLOTTED = {
    "adam-amsgrad": {"class_name": "Adam", "config": {"amsgrad": True}},
    "rmsprop-centered-momentum": {
        "class_name": "RMSprop",
        "config": {"momentum": 0.5, "centered": True},
    },
    "sgd-momentum": {"class_name": "SGD", "config": {"momentum": 0.9}},
    "sgd": SGD,
    "ftrl": {"class_name": "Ftrl", "config": {}},
    "nadam": {"class_name": "Nadam", "config": {}},
}
"""Optimizers with 3, 3, 1, 0, 2 and 2 slots per variable."""


def test_the_state_quota_counts_what_keras_allocates(server: RunningServer) -> None:
    """The quota's arithmetic (a variable, and a slot of its shape and dtype per slot
    name) is what the variables and their slots hold, for each optimizer and dtype."""
    registry = server.registry
    with Client(f"127.0.0.1:{server.port}", timeout=120.0) as client:
        for name, config in SLOTTED.items():
            client.create_optimizer(name, config)
            client.create_variables(
                {
                    f"{name}/16": np.ones((2, 3), np.float16),
                    f"{name}/64": np.ones(5, np.float64),
                },
                optimizer=name,
            )
            client.create_variables({f"{name}/32": np.ones((3, 1), np.float32)}, optimizer=name)
        slots = {name: len(client.slot_names(name)) for name in SLOTTED}
    assert list(slots.values()) == [3, 3, 1, 0, 2, 2]
    held = registry.variable_bytes()
    assert registry.state_bytes() == sum(v.value_bytes + v.slot_bytes for v in held)
    assert registry.state_bytes() == sum((12 + 40 + 12) * (1 + n) for n in slots.values())


def test_recreating_what_exists_at_the_bounds_is_no_growth(world: World) -> None:
    """With as many optimizers, variables and bytes as allowed, declaring them again succeeds."""
    client = world.client
    client.create_optimizer("third", SGD)
    client.create_variables({"a": np.ones(12, np.float32)})
    client.create_variables({"b": np.ones(4, np.float32)}, optimizer="adam")
    assert world.registry.state_bytes() == LIMITS.state_quota_bytes
    assert len(client.list_variables()) == LIMITS.max_variables
    before = world.observed()
    assert client.create_optimizer("third", SGD) is False
    assert client.create_optimizer("default", SGD) is False
    result = client.create_variables({"w": np.zeros(4, np.float32), "a": np.ones(12, np.float32)})
    assert (result.created, result.existing) == ((), ("w", "a"))
    world.assert_unchanged(before)


# Names a request looks up --------------------------------------------------------------------


@dataclass(frozen=True)
class Lookup:
    """A request naming something that does not exist."""

    id: str
    call: Callable[[Client, str], object]
    kind: str
    """What the name names, as the refusal says: variable, optimizer, hyperparameter."""
    unknown: type[TfpsError] = NotFoundError
    """The refusal of an unknown name within the bound."""


LOOKUPS = [
    Lookup("pull", lambda c, n: c.pull([n]), "variable"),
    Lookup("pull-rows", lambda c, n: c.pull_rows(n, [0]), "variable"),
    Lookup("push", lambda c, n: c.push({n: ONE}), "variable"),
    Lookup("push-pull", lambda c, n: c.push_pull({}, pull=[n]), "variable"),
    Lookup("get-slot", lambda c, n: c.get_slot(n, "m"), "variable"),
    Lookup("iterations", lambda c, n: c.iterations(n), "optimizer"),
    Lookup("get-config", lambda c, n: c.get_config(n), "optimizer"),
    Lookup("slot-names", lambda c, n: c.slot_names(n), "optimizer"),
    Lookup("get-weights", lambda c, n: c.get_weights(n), "optimizer"),
    Lookup("set-weights", lambda c, n: c.set_weights(n, [np.int64(0)]), "optimizer"),
    Lookup("set-hyperparameter", lambda c, n: c.set_hyperparameter(n, "beta_1", 0.5), "optimizer"),
    Lookup(
        "create-variables", lambda c, n: c.create_variables({"x": ONE}, optimizer=n), "optimizer"
    ),
    Lookup(
        "hyperparameter",
        lambda c, n: c.set_hyperparameter("adam", n, 0.5),
        "hyperparameter",
        InvalidArgumentError,
    ),
]


@pytest.mark.parametrize("case", LOOKUPS, ids=lambda case: case.id)
def test_a_name_longer_than_any_can_be_is_refused_wherever_it_is_looked_up(
    shared: World, case: Lookup
) -> None:
    """An unknown name within the bound is not found; one past it is LIMIT_EXCEEDED, the
    name shown cut, and nothing changes."""
    before = shared.observed()
    with pytest.raises(case.unknown):
        case.call(shared.client, "u" * 16)
    with pytest.raises(TfpsError) as caught:
        case.call(shared.client, "u" * 1_000_000)
    assert_refused(
        caught.value,
        ResourceExhaustedError,
        "LIMIT_EXCEEDED",
        (
            f"{case.kind} name 'uuu",
            "(1000002 characters)",
            "received 1000000",
            "(--max-name-bytes)",
        ),
        {"limit": "max_name_bytes", "expected": "16", "received": "1000000"},
    )
    assert len(caught.value.message) < 600
    shared.assert_unchanged(before)


# Restores ------------------------------------------------------------------------------------

SAVED_NAME = "sixteen_byte_var"
SAVED_BYTES = 4 * 4 + 2 * 4 * 3
"""The checkpoint's state: "w" (4 float32, SGD), SAVED_NAME (2 float32, Adam: 2 slots)."""
SAVED_BOUNDS = {
    "max_optimizers": 2,
    "max_variables": 2,
    "max_name_bytes": len(SAVED_NAME),
    "max_schedule_boundaries": 2,
    "state_quota_bytes": SAVED_BYTES,
}
"""What the checkpoint holds, in the units of each limit: at these limits it is restored."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, State]]:
    """A checkpoint directory, saved by a server with the default limits, and its state."""
    directory = tmp_path_factory.mktemp("bounds") / "ckpts"
    registry = Registry()
    running = create_server(registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, directory))
    with Client(f"127.0.0.1:{running.port}", timeout=120.0) as client:
        schedule = _piecewise(SAVED_BOUNDS["max_schedule_boundaries"])
        client.create_optimizer(
            "default", {"class_name": "SGD", "config": {"learning_rate": schedule}}
        )
        client.create_optimizer("adam", ADAM)
        client.create_variables({"w": np.arange(4, dtype=np.float32)})
        client.create_variables({SAVED_NAME: np.ones(2, np.float32)}, optimizer="adam")
        client.push({**GRADIENT, SAVED_NAME: np.ones(2, np.float32)})
        assert registry.state_bytes() == SAVED_BYTES
        client.save_checkpoint()
        state = snapshot(client, OPTIMIZERS)
    running.stop(None)
    yield directory, state


@pytest.mark.parametrize("field", list(SAVED_BOUNDS))
@pytest.mark.parametrize("past", [False, True], ids=["at-the-limit", "one-past"])
def test_a_checkpoint_past_a_limit_is_refused_and_one_at_it_restored(
    saved: tuple[Path, State], field: str, past: bool
) -> None:
    """A server whose limit is one below what the checkpoint holds refuses to restore it
    and keeps its state; at the limit, the checkpoint is restored whole."""
    directory, state = saved
    bound = SAVED_BOUNDS[field] - past
    registry = Registry(limits=Limits(**{field: bound}))
    running = create_server(registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, directory))
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=120.0) as client:
            client.create_optimizer("own", SGD)
            client.create_variables({"v": np.float32(3)}, optimizer="own")
            before = snapshot(client, ("own",))
            if not past:
                client.restore_checkpoint()
                assert_same_state(snapshot(client, OPTIMIZERS), state)
                return
            with pytest.raises(TfpsError) as caught:
                client.restore_checkpoint()
            reason = "STATE_QUOTA" if field == "state_quota_bytes" else "LIMIT_EXCEEDED"
            assert_refused(
                caught.value,
                ResourceExhaustedError,
                reason,
                ("checkpoint ckpt-1: ", f"({flag_of(field)})"),
                {"limit": field, "expected": str(bound), "checkpoint": "ckpt-1"},
            )
            assert_same_state(snapshot(client, ("own",)), before)
            assert registry.optimizer_names() == ["own"]
    finally:
        running.stop(None)
