"""Valid requests of the unary-request methods against the seed, now and then with one
field redrawn from the biased values of :mod:`fuzz.messages`.

Generic messages seldom get every field right at once; these do, so that the paths
behind the name lookups and checks (creating an optimizer, changing a hyperparameter,
reading rows and slots, restoring) run too, and a single wrong field stands out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from hypothesis import strategies as st

from tfps_client import Async, OptimizerOptions, Sync
from tfps_client.wire import convert
from tfps_client.wire import parameter_server_pb2 as pb

from fuzz import messages, seed, values
from fuzz.cases import Case
from fuzz.seed import SeedState

Draw = Callable[..., Any]

OPTIONS = (
    OptimizerOptions(),
    OptimizerOptions(Async(max_staleness=1), on_non_finite="skip"),
    OptimizerOptions(Sync(replicas_to_aggregate=2, timeout=seed.SYNC_TIMEOUT)),
)
"""Options creation accepts."""

SCHEDULE = {
    "class_name": "ExponentialDecay",
    "config": {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5},
}
"""A learning-rate schedule every class but Nadam accepts."""

HYPERPARAMETERS = ("learning_rate", "lr", "decay", "momentum", "beta_1", "rho")
"""Hyperparameters that most of the seed's optimizers have."""

NUMBERS = (0.0, 0.001, 0.5, 0.9, 1.0)
"""Hyperparameter values, most of them valid for most hyperparameters."""

CHECKPOINT_IDS = (None, 1)
"""The latest checkpoint (the id unset), and the seed's."""


def requests(method: str, state: SeedState) -> st.SearchStrategy[Case]:
    """Cases of a unary-request method: a valid request, maybe with one field redrawn."""
    return _requests(method, state)


@st.composite
def _requests(draw: Draw, method: str, state: SeedState) -> Case:
    message = _VALID[method](draw, state)
    if draw(st.booleans()):
        messages.redraw_field(draw, message)
    return Case.of(method, [message])


def _optimizer(draw: Draw, state: SeedState) -> str:
    return str(draw(st.sampled_from(sorted(state.weights))))


def _create_optimizer(draw: Draw, state: SeedState) -> Message:
    name = draw(st.sampled_from([*sorted(state.weights), "fresh"]))
    if name in seed.OPTIMIZERS and draw(st.booleans()):
        config, options = seed.OPTIMIZERS[name]
    else:
        config, options = (
            draw(st.sampled_from(values.VALID_CONFIGS)),
            draw(st.sampled_from(OPTIONS)),
        )
    return pb.CreateOptimizerRequest(
        name=name, config_json=json.dumps(config), options=convert.options_to_message(options)
    )


def _set_hyperparameter(draw: Draw, state: SeedState) -> Message:
    request = pb.SetHyperparameterRequest(
        optimizer=_optimizer(draw, state), name=draw(st.sampled_from(HYPERPARAMETERS))
    )
    if request.name == "learning_rate" and draw(st.booleans()):
        request.schedule_json = json.dumps(SCHEDULE)
    else:
        request.number = draw(st.sampled_from(NUMBERS))
    return request


def _pull(draw: Draw, state: SeedState) -> Message:
    names = [v.name for v in state.variables]
    return pb.PullRequest(names=draw(st.lists(st.sampled_from(names), max_size=3)))


def _pull_rows(draw: Draw, state: SeedState) -> Message:
    variable = draw(st.sampled_from([v for v in state.variables if v.shape]))
    rows = variable.shape[0]
    indices = draw(st.lists(st.integers(0, max(rows - 1, 0)), max_size=4 if rows else 0))
    return pb.PullRowsRequest(variable=variable.name, indices=indices)


def _get_slot(draw: Draw, state: SeedState) -> Message:
    variable = draw(st.sampled_from([v for v in state.variables if state.slots[v.optimizer]]))
    slot = draw(st.sampled_from(state.slots[variable.optimizer]))
    return pb.GetSlotRequest(variable=variable.name, slot=slot)


def _declare_shard(draw: Draw, state: SeedState) -> Message:
    shards = draw(st.integers(1, 4))
    return pb.DeclareShardRequest(shard=draw(st.integers(0, shards - 1)), shards=shards)


def _of_optimizer(message: type[Message]) -> Callable[[Draw, SeedState], Message]:
    return lambda draw, state: message(optimizer=_optimizer(draw, state))


def _of_checkpoint(message: type[Message]) -> Callable[[Draw, SeedState], Message]:
    return lambda draw, state: message(id=draw(st.sampled_from(CHECKPOINT_IDS)))


def _empty(message: type[Message]) -> Callable[[Draw, SeedState], Message]:
    return lambda draw, state: message()


_VALID: dict[str, Callable[[Draw, SeedState], Message]] = {
    "CreateOptimizer": _create_optimizer,
    "ListVariables": _empty(pb.ListVariablesRequest),
    "Pull": _pull,
    "PullRows": _pull_rows,
    "GetOptimizerWeights": _of_optimizer(pb.GetOptimizerWeightsRequest),
    "GetOptimizerConfig": _of_optimizer(pb.GetOptimizerConfigRequest),
    "GetIterations": _of_optimizer(pb.GetIterationsRequest),
    "GetSlotNames": _of_optimizer(pb.GetSlotNamesRequest),
    "GetSlot": _get_slot,
    "SetHyperparameter": _set_hyperparameter,
    "SaveCheckpoint": _empty(pb.SaveCheckpointRequest),
    "ListCheckpoints": _empty(pb.ListCheckpointsRequest),
    "RestoreCheckpoint": _of_checkpoint(pb.RestoreCheckpointRequest),
    "DownloadCheckpoint": _of_checkpoint(pb.DownloadCheckpointRequest),
    "DeclareShard": _declare_shard,
}
"""A valid request of every unary-request method, by method name."""
