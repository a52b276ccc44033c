"""A randomized model-based test of the server's state (docs/state-model.md).

Hypothesis drives random sequences of create_optimizer, create_variables, push (dense and
sparse), retried push, set_weights, set_hyperparameter, save_checkpoint and
restore_checkpoint against a real in-process server through the real client, some of them
issued from several threads at once. After every step the server must equal a sequential
model whose truth is tf_keras itself: a local legacy optimizer with local ``tf.Variable``s,
created per creation request exactly as the server creates them. Every checkpoint the run
writes must hold the model's state at its save, and must restore, on a second server, to it.

Each operation is modelled as its steps, split where docs/state-model.md lets another
operation come between (a push: validation, then one optimizer at a time; a restore:
reading the checkpoint, then the swap; set_weights and set_hyperparameter: the lookup,
then the change under the lock). Operations run at once are accepted when an interleaving
of their steps gives exactly the answers and the state the server has.

A failing run is reported as generated, not shrunk (each replay starts servers): set
``TFPS_STATE_MODEL_SHRINK=1`` to shrink it, which takes minutes, and
``TFPS_STATE_MODEL_EXAMPLES`` above 30 for a longer search.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from tfps_client import (
    AbortedError,
    AlreadyExistsError,
    Client,
    IndexedSlices,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    PushResult,
    TfpsError,
    VariableInfo,
)
from tfps_client.wire import checkpoint_layout as layout
from tfps_server import Registry, RunningServer, create_server
from tfps_server.checkpoints import Checkpointer

from helpers import (
    LocalReference,
    State,
    assert_all_bitwise_equal,
    assert_bitwise_equal,
    keras_optimizer,
    tf_gradient,
)

KEEP = 3
"""Checkpoints the server keeps."""

TIMEOUT = 120.0
"""Seconds a concurrent call may take before the test fails instead of hanging."""

EXAMPLES = int(os.environ.get("TFPS_STATE_MODEL_EXAMPLES", "20"))
"""Runs of random steps, each on fresh servers (raise it for a longer search)."""

SHRINK = os.environ.get("TFPS_STATE_MODEL_SHRINK") == "1"
"""Shrink a failing run to a minimal one (minutes: past the suite's per-test timeout)."""

CONFIGS: dict[str, tuple[dict[str, Any], ...]] = {
    "adam": (
        {"class_name": "Adam", "config": {"learning_rate": 0.01}},
        {"class_name": "Adam", "config": {"learning_rate": 0.1, "beta_1": 0.8, "amsgrad": True}},
    ),
    "momentum": (
        {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}},
        {"class_name": "SGD", "config": {"learning_rate": 0.05, "momentum": 0.5, "nesterov": True}},
    ),
    "nadam": ({"class_name": "Nadam", "config": {"learning_rate": 0.01}},),
    "sgd": (
        {"class_name": "SGD", "config": {"learning_rate": 0.5}},
        {"class_name": "SGD", "config": {"learning_rate": 0.25}},
    ),
}
"""The optimizers a run may create, by name, with the configs each may be created with."""

EXACT = "sgd"
"""Plain SGD with a learning rate in {1/4, 1/2, 1}: with gradients in halves and values in
quarters every update is exact in float32, so pushes applied in any order give the same bits."""

SHAPES: dict[str, tuple[int, ...]] = {
    "dense/kernel": (3, 2),
    "emb": (4, 2),
    "bias": (2,),
    "x.y": (3,),
    "scale": (),
    "a/b.c": (2, 2),
}
"""The variables a run may create (names with characters checkpoint keys escape)."""

SCHEDULE = {
    "class_name": "ExponentialDecay",
    "config": {"initial_learning_rate": 0.05, "decay_steps": 3, "decay_rate": 0.5},
}

HYPERPARAMETERS: dict[str, tuple[tuple[str, Any], ...]] = {
    "adam": (
        ("learning_rate", 0.05),
        ("lr", 0.002),
        ("learning_rate", SCHEDULE),
        ("beta_1", 0.95),
        ("beta_2", 0.99),
        ("beta_1", 1.0),
    ),
    "momentum": (("learning_rate", 0.2), ("momentum", 0.8), ("momentum", 0.5)),
    "nadam": (("learning_rate", 0.005), ("beta_1", 0.8), ("learning_rate", SCHEDULE)),
    "sgd": (("learning_rate", 1.0), ("lr", 0.25), ("learning_rate", 0.5)),
}
"""Hyperparameter changes a run may ask for, per optimizer, some refused. SGD's momentum
is not changed across 0: see test_sgd_momentum_set_across_zero_survives_a_checkpoint."""

REFUSED_HYPERPARAMETERS: tuple[tuple[str, Any], ...] = (
    ("learning_rate", math.nan),
    ("decay", -0.5),
    ("bogus", 0.5),
)
"""Changes most optimizers refuse (legacy Nadam ignores ``decay``)."""

KINDS = (
    "create_optimizer",
    "create_variables",
    "save",
    "restore",
    "set_weights",
    "set_hyperparameter",
)
"""Operations other than pushes, as :meth:`StateModel.draw` names them."""

CHANGES_VARIABLES = frozenset({"restore", "create_variables"})
"""Operations that can change what a push's validation finds."""

CUTS_BETWEEN = frozenset({"save", "restore"})
"""Operations whose outcome depends on falling between two optimizers of one push."""

CHANGES_OPTIMIZERS = frozenset({"restore", "create_optimizer"})
"""Operations that can change what an optimizer lookup finds."""

WRITES_FILES = frozenset({"save"})
"""Operations that can change which checkpoint a restore reads."""


# The model ---------------------------------------------------------------------------------------


class Refused(Exception):
    """What the model says the server must refuse with: the error class and the reason."""

    def __init__(self, error: type[TfpsError], reason: str) -> None:
        super().__init__(f"{error.__name__}({reason})")
        self.error = error
        self.reason = reason


def serialized(optimizer: tf_keras.optimizers.legacy.Optimizer) -> dict[str, Any]:
    """``{"class_name", "config"}`` of a Keras optimizer, as JSON carries it."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"cannot serialize {type(value).__name__}")

    config = json.loads(json.dumps(optimizer.get_config(), default=plain))
    return {"class_name": type(optimizer).__name__, "config": config}


def _finite(value: Any) -> bool:
    return bool(np.isfinite(np.asarray(value, np.float64)).all())


def creation_refuses(config: Mapping[str, Any]) -> bool:
    """Whether creation refuses a config (README, "Optimizer configs"): a non-finite number,
    an argument Keras refuses, or a first dense and sparse update that is not finite."""
    if not all(math.isfinite(v) for v in config["config"].values() if isinstance(v, float)):
        return True
    try:
        probe = keras_optimizer(config)
        variable = tf.Variable(tf.ones([2, 2]))
        probe.apply_gradients([(tf.fill([2, 2], 0.5), variable)])
        rows = tf.IndexedSlices(tf.fill([1, 2], 0.5), tf.constant([1]), tf.constant([2, 2]))
        probe.apply_gradients([(rows, variable)])
    except (TypeError, ValueError):
        return True
    return not _finite(variable.numpy())


@dataclass(frozen=True)
class WindowEntry:
    """A push in the exactly-once window: iterations per optimizer that applied it."""

    results: Mapping[str, int]
    complete: bool


@dataclass(frozen=True)
class FrozenOptimizer:
    """An optimizer as plain values: its configs and its weights, also by name."""

    config: dict[str, Any]
    creation_config: dict[str, Any]
    weights: tuple[np.ndarray, ...]
    """In Keras order."""
    slots: dict[str, dict[str, np.ndarray]]
    """Variable name -> slot name -> value."""
    others: dict[str, np.ndarray]
    """Non-slot weights by checkpoint name (``iter``, ``momentum_cache``)."""
    plain_hypers: dict[str, Any]
    """Hyperparameters Keras holds as they were set, not in a variable (a schedule, or a
    number set over one): a copy keeps them so, a restore rebuilds them from the config."""


@dataclass(frozen=True)
class FrozenVariable:
    """A variable as plain values."""

    name: str
    optimizer: str
    batch: int
    value: np.ndarray


@dataclass(frozen=True)
class Frozen:
    """The whole model state as plain values: what a checkpoint must hold."""

    optimizers: dict[str, FrozenOptimizer]
    variables: tuple[FrozenVariable, ...]
    """In creation order."""
    window: dict[str, WindowEntry]

    def iterations(self) -> dict[str, int]:
        """Each optimizer's ``iterations``."""
        return {name: int(o.weights[0]) for name, o in self.optimizers.items()}

    def thaw(self, copy: bool = False) -> Model:
        """Rebuilds live Keras objects as a restore rebuilds them: optimizers from their
        configs, variables and slots per creation batch, then every weight set; a ``copy``
        also keeps the hyperparameters Keras held as plain values."""
        model = Model()
        for name, frozen in self.optimizers.items():
            model.optimizers[name] = ModelOptimizer(frozen.config, frozen.creation_config)
            if copy:
                model.optimizers[name].keras._hyper.update(frozen.plain_hypers)
        for batch, group in itertools.groupby(self.variables, key=lambda v: v.batch):
            declared = list(group)
            model.add_batch(declared[0].optimizer, {v.name: v.value for v in declared}, batch)
        for name, frozen in self.optimizers.items():
            model.optimizers[name].keras.set_weights(list(frozen.weights))
        model.window = dict(self.window)
        return model


class ModelOptimizer:
    """A local Keras optimizer, built as the server builds one (``iterations`` and the
    hyperparameter variables created at once).

    Args:
        config: ``{"class_name", "config"}`` to build it from.
        creation_config: the serialized config it was created with; its own when None.
    """

    def __init__(self, config: Mapping[str, Any], creation_config: dict[str, Any] | None = None):
        self.keras = keras_optimizer(config)
        _ = self.keras.iterations
        self.keras._create_hypers()
        self.creation_config = creation_config or serialized(self.keras)

    def iterations(self) -> int:
        """The optimizer's ``iterations``."""
        return int(self.keras.iterations.numpy())


@dataclass
class ModelVariable:
    """A local variable, the optimizer it is bound to, and its creation batch."""

    optimizer: str
    variable: tf.Variable
    batch: int


class Model:
    """The server's state, applied sequentially by tf_keras on local variables."""

    def __init__(self) -> None:
        self.optimizers: dict[str, ModelOptimizer] = {}
        self.variables: dict[str, ModelVariable] = {}
        """In creation order."""
        self.window: dict[str, WindowEntry] = {}
        self.generation = 0
        """Counts restores: a step validated before one is refused after it."""

    def add_batch(self, optimizer: str, values: Mapping[str, np.ndarray], batch: int) -> None:
        """Creates one creation request's variables and, in one Keras call, their slots."""
        variables = {name: tf.Variable(value) for name, value in values.items()}
        self.optimizers[optimizer].keras._create_all_weights(list(variables.values()))
        for name, variable in variables.items():
            self.variables[name] = ModelVariable(optimizer, variable, batch)

    def batches(self) -> int:
        """Creation requests so far."""
        return max((v.batch for v in self.variables.values()), default=0)

    def optimizer(self, name: str) -> ModelOptimizer:
        """The named optimizer, or the server's refusal."""
        if name not in self.optimizers:
            raise Refused(NotFoundError, "UNKNOWN_OPTIMIZER")
        return self.optimizers[name]

    def check_push(self, gradients: Mapping[str, Any]) -> list[str]:
        """Checks a push's gradients in request order, as the server does; returns the
        optimizers it touches, in name order."""
        for name, gradient in gradients.items():
            if name not in self.variables:
                raise Refused(NotFoundError, "UNKNOWN_VARIABLE")
            shape = tuple(self.variables[name].variable.shape.as_list())
            if isinstance(gradient, IndexedSlices):
                values, indices = np.asarray(gradient.values), np.asarray(gradient.indices)
                if not shape:
                    raise Refused(InvalidArgumentError, "SPARSE_SCALAR")
                if values.shape != (len(indices), *shape[1:]):
                    raise Refused(InvalidArgumentError, "SHAPE_MISMATCH")
                if ((indices < 0) | (indices >= shape[0])).any():
                    raise Refused(InvalidArgumentError, "INDEX_OUT_OF_RANGE")
            else:
                values = np.asarray(gradient)
                if values.shape != shape:
                    raise Refused(InvalidArgumentError, "SHAPE_MISMATCH")
            if not _finite(values):
                raise Refused(InvalidArgumentError, "NON_FINITE_GRADIENT")
        return sorted({self.variables[name].optimizer for name in gradients})

    def apply(self, optimizer: str, gradients: Mapping[str, Any]) -> int:
        """One ``apply_gradients`` of an optimizer's part of a push, in variable-creation
        order; returns its ``iterations`` after."""
        pairs = [
            (tf_gradient(gradients[name], managed.variable), managed.variable)
            for name, managed in self.variables.items()
            if managed.optimizer == optimizer and name in gradients
        ]
        self.optimizers[optimizer].keras.apply_gradients(pairs)
        return self.optimizers[optimizer].iterations()

    def check_weights(self, optimizer: str, weights: Sequence[np.ndarray]) -> None:
        """Checks a ``set_weights`` as the server does."""
        targets = self.optimizers[optimizer].keras.weights
        if len(weights) != len(targets):
            raise Refused(InvalidArgumentError, "WEIGHTS_MISMATCH")
        iterations = np.asarray(weights[0])
        if iterations.shape != () or iterations.dtype.kind not in "iu":
            raise Refused(InvalidArgumentError, "INVALID_ITERATIONS")
        if not 0 <= int(iterations) <= 2**62:
            raise Refused(InvalidArgumentError, "INVALID_ITERATIONS")
        for target, weight in zip(targets[1:], weights[1:], strict=True):
            value = np.asarray(weight)
            if value.dtype.name not in ("float16", "float32"):
                raise Refused(InvalidArgumentError, "WEIGHTS_MISMATCH")
            if value.shape != tuple(target.shape.as_list()):
                raise Refused(InvalidArgumentError, "WEIGHTS_MISMATCH")
            if not _finite(value):
                raise Refused(InvalidArgumentError, "NON_FINITE_VALUE")

    def check_hyperparameter(self, optimizer: str, key: str, value: Any) -> None:
        """Refuses a value as creation would refuse the config holding it."""
        changed = serialized(self.optimizers[optimizer].keras)
        changed["config"]["learning_rate" if key == "lr" else key] = value
        if creation_refuses(changed):
            raise Refused(InvalidArgumentError, "INVALID_CONFIG")

    def freeze(self) -> Frozen:
        """The state as plain values."""
        optimizers = {}
        for name, managed in self.optimizers.items():
            keras = managed.keras
            slots: dict[str, dict[str, np.ndarray]] = {}
            slot_ids = set()
            for variable_name, variable in self.variables.items():
                if variable.optimizer != name:
                    continue
                for slot_name in keras.get_slot_names():
                    slot = keras.get_slot(variable.variable, slot_name)
                    slots.setdefault(variable_name, {})[slot_name] = slot.numpy()
                    slot_ids.add(id(slot))
            others = {
                layout.weight_name(w.name): w.numpy()
                for w in keras.weights
                if id(w) not in slot_ids
            }
            optimizers[name] = FrozenOptimizer(
                serialized(keras),
                managed.creation_config,
                tuple(keras.get_weights()),
                slots,
                others,
                {k: v for k, v in keras._hyper.items() if not isinstance(v, tf.Variable)},
            )
        variables = tuple(
            FrozenVariable(name, v.optimizer, v.batch, v.variable.numpy())
            for name, v in self.variables.items()
        )
        return Frozen(optimizers, variables, dict(self.window))

    def load(self, frozen: Frozen) -> None:
        """Replaces the whole state with a frozen one (a restore)."""
        thawed = frozen.thaw()
        self.optimizers, self.variables = thawed.optimizers, thawed.variables
        self.window = thawed.window
        self.generation += 1

    def observe(self) -> State:
        """What a client reads from a server holding this state."""
        names = sorted(self.optimizers)
        return State(
            values={name: v.variable.numpy() for name, v in self.variables.items()},
            iterations={name: self.optimizers[name].iterations() for name in names},
            weights={name: list(self.optimizers[name].keras.get_weights()) for name in names},
            configs={name: serialized(self.optimizers[name].keras) for name in names},
            variables=[
                VariableInfo(
                    name,
                    tuple(v.variable.shape.as_list()),
                    np.dtype(v.variable.dtype.as_numpy_dtype),
                    v.optimizer,
                    "",
                )
                for name, v in self.variables.items()
            ],
        )


@dataclass
class Files:
    """The checkpoints saved so far (the server keeps the newest :data:`KEEP`)."""

    saved: dict[int, Frozen] = field(default_factory=dict)

    def retained(self) -> list[int]:
        """Ids the server still has, oldest first."""
        return sorted(self.saved)[-KEEP:]

    def add(self, frozen: Frozen) -> int:
        """Records a save; returns its id."""
        checkpoint_id = max(self.saved, default=0) + 1
        self.saved[checkpoint_id] = frozen
        return checkpoint_id

    def resolve(self, which: int | None) -> int:
        """The id a restore of ``which`` (None: the latest) reads, or the server's refusal."""
        retained = self.retained()
        if which is None:
            if not retained:
                raise Refused(NotFoundError, "NO_CHECKPOINT")
            return retained[-1]
        if which not in retained:
            raise Refused(NotFoundError, "UNKNOWN_CHECKPOINT")
        return which


@dataclass
class World:
    """The model state and the checkpoint files: what operations change."""

    model: Model
    files: Files


# Operations, step by step ------------------------------------------------------------------------

Steps = Generator[None, None, Any]
"""An operation's model: it yields where an operation of another thread may come between
two of its steps, and returns the operation's answer or raises :class:`Refused`."""


def _one_step(model: Model, apart: frozenset[str]) -> int:
    return 1


@dataclass(frozen=True)
class Op:
    """One client call and its model."""

    kind: str
    description: str
    call: Callable[[Client], Any]
    """Makes the call; returns the answer in the form ``steps`` returns it."""
    steps: Callable[[World, frozenset[str]], Steps]
    """The model, given the kinds of the operations other threads run meanwhile: steps no
    such operation can tell apart from one are one step."""
    count: Callable[[Model, frozenset[str]], int] = _one_step
    """How many steps ``steps`` takes from a state, given the same kinds."""
    request_id: str = ""
    """A push's request id."""


def push_steps(
    world: World, apart: frozenset[str], request_id: str, gradients: Mapping[str, Any]
) -> Steps:
    """A push: answered from the window if it was complete there, else validated, then
    applied one optimizer at a time in name order (those the window lacks), each recorded
    as it applies; a restore after the validation refuses the rest."""
    model = world.model
    entry = model.window.get(request_id)
    if entry is not None and entry.complete:
        return dict(entry.results)
    targets = model.check_push(gradients)
    generation = model.generation
    results = dict(entry.results) if entry is not None else {}
    for index, optimizer in enumerate(targets):
        if apart & (CUTS_BETWEEN if index else CHANGES_VARIABLES):
            yield
        if model.generation != generation:
            raise Refused(AbortedError, "STATE_REPLACED")
        if optimizer not in results:
            results[optimizer] = model.apply(optimizer, gradients)
            model.window[request_id] = WindowEntry(dict(results), False)
    model.window[request_id] = WindowEntry(dict(results), True)
    return results


def push_count(
    request_id: str, gradients: Mapping[str, Any], model: Model, apart: frozenset[str]
) -> int:
    """The steps of :func:`push_steps` from a state."""
    entry = model.window.get(request_id)
    if entry is not None and entry.complete:
        return 1
    try:
        targets = model.check_push(gradients)
    except Refused:
        return 1
    return 1 + bool(apart & CHANGES_VARIABLES) + (len(targets) - 1) * bool(apart & CUTS_BETWEEN)


def save_steps(world: World, apart: frozenset[str]) -> Steps:
    """A save: one consistent cut."""
    yield from ()
    frozen = world.model.freeze()
    return world.files.add(frozen), frozen.iterations()


def restore_steps(world: World, apart: frozenset[str], which: int | None) -> Steps:
    """A restore: the checkpoint read, then the swap."""
    checkpoint_id = world.files.resolve(which)
    frozen = world.files.saved[checkpoint_id]
    if apart & WRITES_FILES:
        yield
    world.model.load(frozen)
    return checkpoint_id, frozen.iterations()


def lookup_count(model: Model, apart: frozenset[str]) -> int:
    """The steps of an operation that looks an optimizer up, then changes it."""
    return 1 + bool(apart & CHANGES_OPTIMIZERS)


def set_weights_steps(
    world: World, apart: frozenset[str], optimizer: str, weights: Sequence[np.ndarray]
) -> Steps:
    """set_weights: the optimizer looked up, then every weight checked and set under its lock."""
    model = world.model
    model.optimizer(optimizer)
    generation = model.generation
    if apart & CHANGES_OPTIMIZERS:
        yield
    if model.generation != generation:
        raise Refused(AbortedError, "STATE_REPLACED")
    model.check_weights(optimizer, weights)
    model.optimizers[optimizer].keras.set_weights([np.asarray(w) for w in weights])


def set_hyperparameter_steps(
    world: World, apart: frozenset[str], optimizer: str, key: str, value: Any
) -> Steps:
    """set_hyperparameter: the optimizer and the name looked up, then the value checked as
    creation checks it and set under the lock, as ``optimizer.<key> = value``."""
    model = world.model
    keras = model.optimizer(optimizer).keras
    if ("learning_rate" if key == "lr" else key) not in keras._hyper:
        raise Refused(InvalidArgumentError, "UNKNOWN_HYPERPARAMETER")
    generation = model.generation
    if apart & CHANGES_OPTIMIZERS:
        yield
    if model.generation != generation:
        raise Refused(AbortedError, "STATE_REPLACED")
    model.check_hyperparameter(optimizer, key, value)
    if isinstance(value, Mapping):
        value = tf_keras.optimizers.schedules.deserialize(dict(value))
    setattr(model.optimizers[optimizer].keras, key, value)


def create_optimizer_steps(
    world: World, apart: frozenset[str], name: str, config: Mapping[str, Any]
) -> Steps:
    """create_optimizer: built aside, then inserted unless the name exists."""
    yield from ()
    candidate = ModelOptimizer(config)
    existing = world.model.optimizers.get(name)
    if existing is None:
        world.model.optimizers[name] = candidate
        return True
    if existing.creation_config != candidate.creation_config:
        raise Refused(AlreadyExistsError, "OPTIMIZER_EXISTS")
    return False


def create_variables_steps(
    world: World, apart: frozenset[str], optimizer: str, declarations: Mapping[str, np.ndarray]
) -> Steps:
    """create_variables: the values checked, then the optimizer looked up, every existing
    name compared, and the new ones created in one batch."""
    yield from ()
    model = world.model
    for value in declarations.values():
        if not _finite(value):
            raise Refused(InvalidArgumentError, "NON_FINITE_VALUE")
    model.optimizer(optimizer)
    for name, value in declarations.items():
        existing = model.variables.get(name)
        if existing is not None and (
            tuple(existing.variable.shape.as_list()) != value.shape
            or existing.optimizer != optimizer
        ):
            raise Refused(AlreadyExistsError, "VARIABLE_EXISTS")
    fresh = {name: v for name, v in declarations.items() if name not in model.variables}
    if fresh:
        model.add_batch(optimizer, fresh, model.batches() + 1)
    return tuple(fresh), tuple(name for name in declarations if name not in fresh)


# Interleavings -----------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One interleaving of the threads' steps, and what it gives."""

    schedule: tuple[int, ...]
    """The thread of each step."""
    world: World
    answers: list[Any]
    """Per operation (threads in order): its answer, or the :class:`Refused` it raised."""


def apart_of(threads: Sequence[Sequence[Op]]) -> list[frozenset[str]]:
    """Per thread, the kinds of the operations the other threads run."""
    return [
        frozenset(op.kind for other, ops in enumerate(threads) if other != index for op in ops)
        for index in range(len(threads))
    ]


def thread_steps(
    world: World, ops: Sequence[Op], apart: frozenset[str], answers: list[Any], first: int
) -> Steps:
    """One thread's operations, one after the other (another thread may come between)."""
    for offset, op in enumerate(ops):
        if offset:
            yield
        try:
            answers[first + offset] = yield from op.steps(world, apart)
        except Refused as refusal:
            answers[first + offset] = refusal


def run_schedule(
    world: World, threads: Sequence[Sequence[Op]], schedule: Sequence[int]
) -> Candidate:
    """Runs the threads' steps in the order ``schedule`` gives.

    A thread already finished skips its turns; one not finished when the schedule ends
    runs to its end. (A step count differs from the counted one only after a restore or
    a creation of the other thread, so no interleaving is lost that way.)
    """
    answers: list[Any] = [None] * sum(len(ops) for ops in threads)
    starts = itertools.accumulate((len(ops) for ops in threads), initial=0)
    runs = [
        thread_steps(world, ops, apart, answers, start)
        for ops, apart, start in zip(threads, apart_of(threads), starts, strict=False)
    ]
    finished = [False] * len(threads)
    taken = []

    def step(thread: int) -> None:
        taken.append(thread)
        try:
            next(runs[thread])
        except StopIteration:
            finished[thread] = True

    for thread in schedule:
        if not finished[thread]:
            step(thread)
    for thread in range(len(threads)):
        while not finished[thread]:
            step(thread)
    return Candidate(tuple(taken), world, answers)


def interleavings(counts: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every order of ``counts[i]`` steps of each thread ``i``."""
    if not any(counts):
        yield ()
        return
    for thread, left in enumerate(counts):
        if left:
            rest = [c - (i == thread) for i, c in enumerate(counts)]
            for tail in interleavings(rest):
                yield (thread, *tail)


# Comparing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """What a call returned, or the server error it raised."""

    value: Any = None
    error: TfpsError | None = None

    def __str__(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__}({self.error.reason}: {self.error.message})"
        return f"returned {self.value!r}"


def attempt(call: Callable[[], Any]) -> Done:
    """Makes a call, keeping a server error as its outcome."""
    try:
        return Done(value=call())
    except TfpsError as error:
        return Done(error=error)


def call_all(ops: Sequence[Op], client: Client) -> list[Done]:
    """Makes the operations' calls one after the other."""
    return [attempt(partial(op.call, client)) for op in ops]


def run_concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Starts every call on its own thread at once, waits for them all, returns their values."""
    barrier = threading.Barrier(len(calls))
    values: list[Any] = [None] * len(calls)
    crashes: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            values[index] = calls[index]()
        except BaseException as error:
            crashes.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), f"a call ran past {TIMEOUT} s"
    if crashes:
        raise crashes[0]
    return values


def outcome_difference(op: Op, actual: Done, expected: Any) -> str | None:
    """Says how an answer differs from the model's, or None."""
    if isinstance(expected, Refused):
        if actual.error is not None and (type(actual.error), actual.error.reason) == (
            expected.error,
            expected.reason,
        ):
            return None
        return f"{op.description}: {actual}, expected {expected}"
    if actual.error is not None or actual.value != expected:
        return f"{op.description}: {actual}, expected to return {expected!r}"
    return None


def _failure(check: Callable[[], None], what: str) -> list[str]:
    try:
        check()
    except AssertionError as error:
        return [f"{what}: {error}"]
    return []


def state_differences(actual: State, expected: State) -> list[str]:
    """Says how a server's state differs from the model's (bitwise); empty if it does not."""
    differences = []
    if list(actual.values) != list(expected.values):
        differences.append(f"variables {list(actual.values)}, expected {list(expected.values)}")
    else:
        differences += _failure(
            partial(assert_all_bitwise_equal, actual.values, expected.values), "values"
        )
    described = [(v.name, v.shape, np.dtype(v.dtype), v.optimizer) for v in actual.variables]
    wanted = [(v.name, v.shape, np.dtype(v.dtype), v.optimizer) for v in expected.variables]
    if described != wanted:
        differences.append(f"list_variables {described}, expected {wanted}")
    if actual.iterations != expected.iterations:
        differences.append(f"iterations {actual.iterations}, expected {expected.iterations}")
    for name in sorted(set(actual.weights) & set(expected.weights)):
        differences += _failure(
            partial(assert_all_bitwise_equal, actual.weights[name], expected.weights[name]),
            f"get_weights({name!r})",
        )
        if actual.configs[name] != expected.configs[name]:
            differences.append(
                f"get_config({name!r}) {actual.configs[name]}, expected {expected.configs[name]}"
            )
    return differences


def observe(client: Client) -> State:
    """Reads everything a client can see of the state (optimizers named in :data:`CONFIGS`)."""
    iterations = {}
    for name in sorted(CONFIGS):
        try:
            iterations[name] = client.iterations(name)
        except NotFoundError:
            continue
    return State(
        values=client.pull(),
        iterations=iterations,
        weights={name: client.get_weights(name) for name in iterations},
        configs={name: client.get_config(name) for name in iterations},
        variables=client.list_variables(),
    )


@dataclass(frozen=True)
class CheckpointContents:
    """What a checkpoint's files hold."""

    metadata: layout.CheckpointMetadata
    tensors: dict[str, np.ndarray]


def read_checkpoint(prefix: str) -> CheckpointContents:
    """Reads every tensor of a checkpoint."""
    reader = tf.train.load_checkpoint(prefix)
    metadata = layout.CheckpointMetadata.from_json(reader.get_tensor(layout.METADATA_KEY))
    keys = reader.get_variable_to_shape_map()
    return CheckpointContents(metadata, {key: reader.get_tensor(key) for key in keys})


def checkpoint_differences(contents: CheckpointContents, expected: Frozen) -> list[str]:
    """Says how a checkpoint differs, through the documented key layout, from the model
    state at its save; empty if it does not."""
    metadata, tensors = contents.metadata, contents.tensors
    variables = [
        (v.name, v.optimizer, tuple(v.shape), v.dtype, v.batch) for v in metadata.variables
    ]
    wanted = [
        (v.name, v.optimizer, v.value.shape, v.value.dtype.name, v.batch)
        for v in expected.variables
    ]
    if variables != wanted:
        return [f"variables {variables}, expected {wanted}"]
    optimizers = {o.name: (o.config, o.creation_config, o.iterations) for o in metadata.optimizers}
    wanted_optimizers = {
        name: (o.config, o.creation_config, int(o.weights[0]))
        for name, o in expected.optimizers.items()
    }
    if optimizers != wanted_optimizers:
        return [f"optimizers {optimizers}, expected {wanted_optimizers}"]
    differences = []

    def compare(key: str, value: np.ndarray, what: str) -> None:
        if key not in tensors:
            differences.append(f"{what}: key {key!r} is missing")
        else:
            differences.extend(
                _failure(partial(assert_bitwise_equal, tensors[key], value, what), "checkpoint")
            )

    for variable in expected.variables:
        compare(layout.variable_key(variable.name), variable.value, f"variable {variable.name!r}")
    for name, optimizer in expected.optimizers.items():
        for variable_name, slots in optimizer.slots.items():
            for slot, value in slots.items():
                compare(layout.slot_key(variable_name, slot), value, f"{variable_name!r}/{slot}")
        for weight, value in optimizer.others.items():
            compare(layout.optimizer_weight_key(name, weight), value, f"{name!r}/{weight}")
    window = {
        request_id: ({o: tuple(r) for o, r in results.items()}, complete)
        for request_id, results, complete in metadata.requests
    }
    wanted_window = {
        request_id: (
            {o: (Outcome.APPLIED.value, i) for o, i in entry.results.items()},
            entry.complete,
        )
        for request_id, entry in expected.window.items()
    }
    if window != wanted_window:
        differences.append(f"exactly-once window {window}, expected {wanted_window}")
    return differences


# The machine -------------------------------------------------------------------------------------


def _integers(data: st.DataObject, shape: tuple[int, ...], bound: int) -> np.ndarray:
    """Integers in [-bound, bound] from one drawn seed (few bytes of Hypothesis's buffer)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    return rng.integers(-bound, bound + 1, size=shape).astype(np.float64)


def _quarters(data: st.DataObject, shape: tuple[int, ...]) -> np.ndarray:
    """Initial values in quarters in [-2, 2]."""
    return (_integers(data, shape, 8) / 4).astype(np.float32)


def _gradient(data: st.DataObject, shape: tuple[int, ...]) -> Any:
    """A gradient in halves in [-2, 2]: dense (float32 or float16) or sparse."""
    if shape and data.draw(st.booleans()):
        rows = data.draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=3))
        values = (_integers(data, (len(rows), *shape[1:]), 4) / 2).astype(np.float32)
        index_dtype = data.draw(st.sampled_from([np.int32, np.int64]))
        dense_shape = data.draw(st.sampled_from([None, shape]))
        return IndexedSlices(values, np.array(rows, index_dtype), dense_shape)
    dtype = data.draw(st.sampled_from([np.float32, np.float32, np.float16]))
    return (_integers(data, shape, 4) / 2).astype(dtype)


def _flaw(data: st.DataObject, *kinds: str) -> str | None:
    """One time in five, a kind of flaw that makes the server refuse a request."""
    return data.draw(st.sampled_from(kinds)) if data.draw(st.integers(0, 4)) == 0 else None


def _summary(result: PushResult) -> dict[str, int]:
    """A push's answer as the model gives it: iterations per optimizer, each applied."""
    assert set(result.outcomes) == set(result.iterations), result
    assert all(o is Outcome.APPLIED for o in result.outcomes.values()), result
    return dict(result.iterations)


def _started(data: st.DataObject, threads: list[list[Op]]) -> list[list[Op]]:
    """Two threads, in the order they are started (a head start decides many races)."""
    return threads[::-1] if data.draw(st.booleans()) else threads


def _describe(gradients: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{name}{np.asarray(g.indices).tolist()}" if isinstance(g, IndexedSlices) else name
        for name, g in gradients.items()
    )


class StateModel(RuleBasedStateMachine):
    """A real server, a second one that restores each checkpoint, and the model."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="tfps-state-model-"))
        registry, reader_registry = Registry(), Registry()
        self.server: RunningServer = create_server(
            registry,
            "127.0.0.1:0",
            checkpointer=Checkpointer(registry, self.directory / "server", keep=KEEP),
        )
        self.reader: RunningServer = create_server(
            reader_registry,
            "127.0.0.1:0",
            checkpointer=Checkpointer(reader_registry, self.directory / "reader", keep=KEEP),
        )
        address = f"127.0.0.1:{self.server.port}"
        self.clients = [Client(address, timeout=TIMEOUT) for _ in range(4)]
        self.client = self.clients[0]
        self.reader_client = Client(f"127.0.0.1:{self.reader.port}", timeout=TIMEOUT)
        self.world = World(Model(), Files())
        self.pushed: dict[str, dict[str, Any]] = {}
        """Every push sent, by request id, for retries."""

    def teardown(self) -> None:
        """Stops both servers and removes their files."""
        for client in [*self.clients, self.reader_client]:
            client.close()
        self.server.stop(None)
        self.reader.stop(None)
        shutil.rmtree(self.directory, ignore_errors=True)

    # Running operations -----------------------------------------------------------------------

    def execute(self, threads: Sequence[Sequence[Op]]) -> None:
        """Runs threads of operations at once (each thread's one after the other) and
        settles on the interleaving of their steps that explains the answers and the
        server's state."""
        known = set(self.world.files.saved)
        if len(threads) == 1:
            outcomes = call_all(threads[0], self.client)
            self.settle(threads, outcomes, [run_schedule(self.world, threads, ())], known)
            return
        before, saved = self.world.model.freeze(), self.world.files.saved
        counts = [
            sum(op.count(self.world.model, apart) for op in ops)
            for ops, apart in zip(threads, apart_of(threads), strict=True)
        ]
        calls = [partial(call_all, ops, c) for ops, c in zip(threads, self.clients, strict=False)]
        outcomes = [outcome for done in run_concurrently(calls) for outcome in done]
        candidates: dict[tuple[int, ...], Candidate] = {}
        for schedule in interleavings(counts):
            world = World(before.thaw(copy=True), Files(dict(saved)))
            candidate = run_schedule(world, threads, schedule)
            candidates.setdefault(candidate.schedule, candidate)
        self.settle(threads, outcomes, list(candidates.values()), known)

    def at_once(self, ops: Sequence[Op]) -> list[Done]:
        """Makes the operations' calls at once, each from its own thread and client."""
        clients = self.clients[: len(ops)]
        return run_concurrently(
            [partial(attempt, partial(op.call, c)) for op, c in zip(ops, clients, strict=True)]
        )

    def run(self, op: Op) -> None:
        """Runs one operation."""
        self.execute([[op]])

    def settle(
        self,
        threads: Sequence[Sequence[Op]],
        outcomes: Sequence[Done],
        candidates: list[Candidate],
        known: set[int],
    ) -> None:
        """Adopts the first candidate whose answers, state and new checkpoints (those not in
        ``known``) are the server's; fails naming what each got wrong when none is."""
        ops = [op for thread in threads for op in thread]
        actual = observe(self.client)
        contents: dict[int, CheckpointContents] = {}
        problems = []
        for candidate in candidates:
            differences = [
                difference
                for op, outcome, answer in zip(ops, outcomes, candidate.answers, strict=True)
                if (difference := outcome_difference(op, outcome, answer)) is not None
            ]
            if not differences:
                differences = state_differences(actual, candidate.world.model.observe())
            new = sorted(set(candidate.world.files.saved) - known)
            for checkpoint_id in new if not differences else []:
                if checkpoint_id not in contents:
                    contents[checkpoint_id] = read_checkpoint(self.prefix(checkpoint_id))
                differences += checkpoint_differences(
                    contents[checkpoint_id], candidate.world.files.saved[checkpoint_id]
                )
            if not differences:
                self.world = candidate.world
                for checkpoint_id in new:
                    self.check_restorable(checkpoint_id)
                event(
                    " & ".join(
                        f"{op.kind} {a.reason if isinstance(a, Refused) else 'ok'}"
                        for op, a in zip(ops, candidate.answers, strict=True)
                    )
                )
                return
            problems.append(f"steps {candidate.schedule}: " + "; ".join(differences[:3]))
        raise AssertionError(
            "no interleaving explains what the server did:\n"
            + "".join(
                f"  thread {i}: " + " | ".join(op.description for op in ops) + "\n"
                for i, ops in enumerate(threads)
            )
            + "  answers: "
            + " | ".join(str(outcome) for outcome in outcomes)
            + "\n  "
            + "\n  ".join(problems)
        )

    def prefix(self, checkpoint_id: int) -> str:
        """Path prefix of a checkpoint of the server."""
        return str(self.directory / "server" / f"ckpt-{checkpoint_id}")

    def check_restorable(self, checkpoint_id: int) -> None:
        """Restores a checkpoint on the second server, which must then hold its state."""
        for path in Path(self.prefix(checkpoint_id)).parent.glob(f"ckpt-{checkpoint_id}.*"):
            shutil.copy(path, self.directory / "reader")
        info = self.reader_client.restore_checkpoint(checkpoint_id)
        frozen = self.world.files.saved[checkpoint_id]
        assert (info.id, info.iterations) == (checkpoint_id, frozen.iterations())
        differences = state_differences(observe(self.reader_client), frozen.thaw().observe())
        assert not differences, f"checkpoint {checkpoint_id} restores to:\n" + "\n".join(
            differences
        )

    # Drawing operations ---------------------------------------------------------------------

    def push_op(self, gradients: dict[str, Any], request_id: str | None = None) -> Op:
        """A push (a retry when ``request_id`` was sent before)."""
        request_id = request_id or f"push-{len(self.pushed)}"
        self.pushed[request_id] = gradients
        return Op(
            "push",
            f"push {request_id} of {_describe(gradients)}",
            lambda client: _summary(client.push(gradients, request_id=request_id)),
            partial(push_steps, request_id=request_id, gradients=gradients),
            partial(push_count, request_id, gradients),
            request_id,
        )

    def draw_gradients(self, data: st.DataObject, names: Sequence[str]) -> dict[str, Any]:
        """Valid gradients for some of ``names``, in a random order."""
        chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        variables = self.world.model.variables
        return {
            name: _gradient(data, tuple(variables[name].variable.shape.as_list()))
            for name in chosen
        }

    def draw_push(self, data: st.DataObject) -> Op:
        """A push of valid gradients, or of one invalid among valid ones."""
        variables = list(self.world.model.variables)
        gradients = self.draw_gradients(data, variables) if variables else {}
        flaw = _flaw(data, "shape", "index", "nan", "unknown")
        if flaw is not None or not gradients:
            name = data.draw(st.sampled_from(sorted(SHAPES)))
            shape = SHAPES[name]
            if flaw == "index" and shape:
                bad: Any = IndexedSlices(np.ones((1, *shape[1:]), np.float32), [shape[0]])
            elif flaw == "nan":
                bad = np.full(shape, np.nan, np.float32)
            elif flaw == "unknown":
                name, bad = "nope", np.ones(shape, np.float32)
            else:
                bad = np.ones((*shape, 1), np.float32)
            items = [item for item in gradients.items() if item[0] != name]
            items.insert(data.draw(st.integers(0, len(items))), (name, bad))
            gradients = dict(items)
        return self.push_op(gradients)

    def draw_retry(self, data: st.DataObject) -> Op:
        """A push sent again with its request id."""
        request_id = data.draw(st.sampled_from(sorted(self.pushed)))
        return self.push_op(self.pushed[request_id], request_id)

    def save_op(self) -> Op:
        """A save."""

        def call(client: Client) -> Any:
            info = client.save_checkpoint()
            return info.id, info.iterations

        return Op("save", "save", call, save_steps)

    def draw_restore(self, data: st.DataObject) -> Op:
        """A restore of a retained checkpoint, of the latest, or of one that is gone."""
        saved = sorted(self.world.files.saved)
        which = data.draw(st.sampled_from([*self.world.files.retained(), None, *saved[:1], 99]))

        def call(client: Client) -> Any:
            info = client.restore_checkpoint(which)
            return info.id, info.iterations

        return Op("restore", f"restore {which}", call, partial(restore_steps, which=which))

    def draw_optimizer(self, data: st.DataObject) -> str:
        """An existing optimizer's name, or now and then an unknown one."""
        names = sorted(self.world.model.optimizers)
        if names and data.draw(st.integers(0, 7)):
            return data.draw(st.sampled_from(names))
        return "nope"

    def draw_set_weights(self, data: st.DataObject) -> Op:
        """set_weights with new values in Keras order, or refused ones."""
        optimizer = self.draw_optimizer(data)
        weights: list[np.ndarray] = [np.int64(0)]
        if optimizer in self.world.model.optimizers:
            current = self.world.model.optimizers[optimizer].keras.get_weights()
            dtype = data.draw(st.sampled_from([np.int64, np.int32]))
            weights = [np.asarray(data.draw(st.integers(0, 40)), dtype)]
            for weight in current[1:]:
                fill = data.draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))
                dtype = data.draw(st.sampled_from([np.float32, np.float16]))
                weights.append(np.full(weight.shape, fill, dtype))
            flaw = _flaw(data, "nan", "float", "negative", "count")
            if flaw == "nan" and len(weights) > 1:
                weights[-1] = np.full(weights[-1].shape, np.nan, np.float32)
            elif flaw in ("nan", "float"):
                weights[0] = np.float32(3.0)
            elif flaw == "negative":
                weights[0] = np.int64(-1)
            elif flaw == "count":
                weights = weights[:-1] if len(weights) > 1 else [*weights, np.ones(2, np.float32)]
        return Op(
            "set_weights",
            f"set_weights {optimizer} {[(w.dtype.name, w.shape) for w in weights]}",
            lambda client: client.set_weights(optimizer, weights),
            partial(set_weights_steps, optimizer=optimizer, weights=weights),
            lookup_count,
        )

    def draw_set_hyperparameter(self, data: st.DataObject) -> Op:
        """set_hyperparameter with a value creation accepts, or one it refuses."""
        optimizer = self.draw_optimizer(data)
        choices = [*HYPERPARAMETERS.get(optimizer, ()), *REFUSED_HYPERPARAMETERS]
        key, value = data.draw(st.sampled_from(choices))
        return Op(
            "set_hyperparameter",
            f"set_hyperparameter {optimizer} {key}={value}",
            lambda client: client.set_hyperparameter(optimizer, key, value),
            partial(set_hyperparameter_steps, optimizer=optimizer, key=key, value=value),
            lookup_count,
        )

    def draw_create_optimizer(self, data: st.DataObject) -> Op:
        """create_optimizer with one of a name's configs (the same as before, or another)."""
        name = data.draw(st.sampled_from(sorted(CONFIGS)))
        config = data.draw(st.sampled_from(CONFIGS[name]))
        return Op(
            "create_optimizer",
            f"create_optimizer {name} {config}",
            lambda client: client.create_optimizer(name, config),
            partial(create_optimizer_steps, name=name, config=config),
        )

    def draw_declarations(self, data: st.DataObject) -> dict[str, np.ndarray]:
        """Initial values for some of the variables of :data:`SHAPES`."""
        names = data.draw(
            st.lists(st.sampled_from(sorted(SHAPES)), min_size=1, max_size=3, unique=True)
        )
        return {name: _quarters(data, SHAPES[name]) for name in names}

    def create_variables_op(self, optimizer: str, declarations: dict[str, np.ndarray]) -> Op:
        """create_variables."""
        return Op(
            "create_variables",
            f"create_variables {optimizer} {list(declarations)}",
            lambda client: tuple(client.create_variables(declarations, optimizer)),
            partial(create_variables_steps, optimizer=optimizer, declarations=declarations),
        )

    def draw_create_variables(self, data: st.DataObject) -> Op:
        """create_variables of new names, existing ones (bound to this optimizer or not), an
        existing one with another shape, or a non-finite value."""
        optimizer = self.draw_optimizer(data)
        declarations = self.draw_declarations(data)
        flaw = _flaw(data, "shape", "nan")
        if flaw == "shape" and self.world.model.variables:
            name = data.draw(st.sampled_from(sorted(self.world.model.variables)))
            declarations[name] = np.zeros((*SHAPES[name], 1), np.float32)
        elif flaw == "nan":
            name = list(declarations)[-1]
            declarations[name] = np.full(SHAPES[name], np.nan, np.float32)
        return self.create_variables_op(optimizer, declarations)

    def draw(self, data: st.DataObject, kind: str) -> Op:
        """An operation of a kind."""
        if kind == "save":
            return self.save_op()
        if kind == "retry" and self.pushed:
            return self.draw_retry(data)
        drawers: dict[str, Callable[[st.DataObject], Op]] = {
            "create_optimizer": self.draw_create_optimizer,
            "create_variables": self.draw_create_variables,
            "push": self.draw_push,
            "retry": self.draw_push,
            "restore": self.draw_restore,
            "set_weights": self.draw_set_weights,
            "set_hyperparameter": self.draw_set_hyperparameter,
        }
        return drawers[kind](data)

    # Rules ----------------------------------------------------------------------------------

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """Creates an optimizer and a first batch of its variables."""
        self.run(self.draw_create_optimizer(data))
        (name,) = self.world.model.optimizers
        self.run(self.create_variables_op(name, self.draw_declarations(data)))

    @rule(data=st.data())
    def create_optimizer(self, data: st.DataObject) -> None:
        """create_optimizer."""
        self.run(self.draw_create_optimizer(data))

    @rule(data=st.data())
    def create_variables(self, data: st.DataObject) -> None:
        """create_variables."""
        self.run(self.draw_create_variables(data))

    @rule(data=st.data())
    def push(self, data: st.DataObject) -> None:
        """A push."""
        self.run(self.draw_push(data))

    @precondition(lambda self: bool(self.pushed))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A push sent again with its request id: answered from the window, or applied
        (what the window lacks) when a restore took the window back before it."""
        self.run(self.draw_retry(data))

    @rule(data=st.data())
    def set_weights(self, data: st.DataObject) -> None:
        """set_weights."""
        self.run(self.draw_set_weights(data))

    @rule(data=st.data())
    def set_hyperparameter(self, data: st.DataObject) -> None:
        """set_hyperparameter."""
        self.run(self.draw_set_hyperparameter(data))

    @rule()
    def save(self) -> None:
        """A save; the server keeps the newest checkpoints."""
        self.run(self.save_op())
        assert [c.id for c in self.client.list_checkpoints()] == self.world.files.retained()

    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        """A restore."""
        self.run(self.draw_restore(data))

    @precondition(
        lambda self: any(v.optimizer == EXACT for v in self.world.model.variables.values())
    )
    @rule(data=st.data(), count=st.integers(2, 4))
    def exact_pushes_at_once(self, data: st.DataObject, count: int) -> None:
        """Pushes to the exact SGD from several threads: every order gives the same bits, so
        the model applies them in the order they were sent; each gets its own iteration."""
        names = [n for n, v in self.world.model.variables.items() if v.optimizer == EXACT]
        ops = [self.push_op(self.draw_gradients(data, names)) for _ in range(count)]
        first = self.world.model.optimizers[EXACT].iterations()
        outcomes = self.at_once(ops)
        assert all(o.error is None and set(o.value) == {EXACT} for o in outcomes), outcomes
        assert sorted(o.value[EXACT] for o in outcomes) == list(range(first + 1, first + count + 1))
        for op, outcome in zip(ops, outcomes, strict=True):
            run_schedule(self.world, [[op]], ())
            self.world.model.window[op.request_id] = WindowEntry(outcome.value, True)
        differences = state_differences(observe(self.client), self.world.model.observe())
        assert not differences, "\n".join(differences)

    @precondition(lambda self: bool(self.world.model.variables))
    @rule(data=st.data(), count=st.integers(2, 3))
    def pushes_at_once(self, data: st.DataObject, count: int) -> None:
        """Pushes to any variables from several threads: each optimizer applies its parts one
        at a time, in the order the iterations it answered reveal; the model follows it."""
        model = self.world.model
        ops = [self.push_op(self.draw_gradients(data, list(model.variables))) for _ in range(count)]
        outcomes = self.at_once(ops)
        parts: dict[str, list[tuple[int, Op]]] = {}
        for op, outcome in zip(ops, outcomes, strict=True):
            gradients = self.pushed[op.request_id]
            assert outcome.error is None and sorted(outcome.value) == model.check_push(gradients), (
                op.description,
                outcome,
            )
            for optimizer, iterations in outcome.value.items():
                parts.setdefault(optimizer, []).append((iterations, op))
        for optimizer, applied in sorted(parts.items()):
            first = model.optimizers[optimizer].iterations()
            assert sorted(i for i, _ in applied) == list(range(first + 1, first + len(applied) + 1))
            for iterations, op in sorted(applied, key=lambda part: part[0]):
                assert model.apply(optimizer, self.pushed[op.request_id]) == iterations
        for op, outcome in zip(ops, outcomes, strict=True):
            model.window[op.request_id] = WindowEntry(outcome.value, True)
        differences = state_differences(observe(self.client), model.observe())
        assert not differences, "\n".join(differences)

    @precondition(lambda self: bool(self.world.model.variables))
    @rule(data=st.data(), count=st.integers(1, 2))
    def pushes_during_save(self, data: st.DataObject, count: int) -> None:
        """A save while a thread pushes: the checkpoint holds the state before a push, after
        it, or (a push to several optimizers) after its first optimizers."""
        pushes = [self.draw_push(data) for _ in range(count)]
        self.execute(_started(data, [pushes, [self.save_op()]]))

    @precondition(lambda self: bool(self.world.files.saved))
    @rule(data=st.data(), count=st.integers(1, 3))
    def pushes_during_restore(self, data: st.DataObject, count: int) -> None:
        """A restore while a thread pushes: each push applied before the restore (and
        replaced), refused (ABORTED, or NOT_FOUND against a restored state lacking its
        variable), or applied on top of the restored state."""
        pushes = [self.draw_push(data) for _ in range(count)]
        self.execute(_started(data, [pushes, [self.draw_restore(data)]]))

    @rule(
        data=st.data(),
        first=st.sampled_from([*KINDS, "push", "retry"]),
        second=st.sampled_from(KINDS),
    )
    def two_at_once(self, data: st.DataObject, first: str, second: str) -> None:
        """Two operations at once (pushes at once have rules of their own)."""
        self.execute(_started(data, [[self.draw(data, first)], [self.draw(data, second)]]))


TestStateModel = StateModel.TestCase
TestStateModel.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=16,
    phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])],
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Regressions: server bugs the model found ----------------------------------------------------


@pytest.mark.parametrize(("created", "changed"), [(0.0, 0.5), (0.5, 0.0)])
def test_sgd_momentum_set_across_zero_survives_a_checkpoint(
    tmp_path: Path, created: float, changed: float
) -> None:
    """The change is refused, or a checkpoint taken after it restores to the state saved.

    Keras fixes at construction whether SGD has a momentum slot (``momentum > 0``); a later
    ``opt.momentum = x`` changes the hyperparameter only. The checkpoint records the changed
    config, and a restore builds SGD from it: with the other slots. From 0 to 0.5 the restore
    fails (DATA_LOSS, slot 'momentum' missing); from 0.5 to 0 it drops the slots.
    """
    registry = Registry()
    running = create_server(registry, checkpointer=Checkpointer(registry, tmp_path, keep=KEEP))
    config = {"class_name": "SGD", "config": {"learning_rate": 0.5, "momentum": created}}
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=TIMEOUT) as client:
            client.create_optimizer("sgd", config)
            client.create_variables({"v": np.ones(3, np.float32)}, optimizer="sgd")
            client.push({"v": np.ones(3, np.float32)})
            before = observe(client)
            try:
                client.set_hyperparameter("sgd", "momentum", changed)
            except InvalidArgumentError:
                assert not state_differences(observe(client), before)
                return
            saved = observe(client)
            client.restore_checkpoint(client.save_checkpoint().id)
            assert not state_differences(observe(client), saved)
    finally:
        running.stop(None)


def test_async_push_applies_gradients_in_variable_creation_order(client: Client) -> None:
    """A push's gradients reach ``apply_gradients`` in variable-creation order (README: "A
    push is atomic"), so with ``global_clipnorm`` the order of a request's gradients cannot
    change the result. The async path keeps the request's order (the sync path sorts)."""
    config = {"class_name": "SGD", "config": {"learning_rate": 1.0, "global_clipnorm": 1.0}}
    initial = {name: np.zeros(2, np.float32) for name in ("a", "b", "c")}
    client.create_optimizer("default", config)
    client.create_variables(initial)
    gradients = {
        name: np.full(2, value, np.float32) for name, value in [("c", 2 / 3), ("b", 1 / 3)]
    }
    gradients["a"] = np.full(2, 1 / 3, np.float32)
    reference = LocalReference(config, initial)
    reference.apply(gradients)
    client.push(gradients)
    assert_all_bitwise_equal(client.pull(), reference.values())
