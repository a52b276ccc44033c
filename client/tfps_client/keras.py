"""TensorFlow/Keras conveniences. TensorFlow is imported lazily, only when these run.

The short way is Keras's own training loop, through :class:`RemoteOptimizer`::

    model.compile(optimizer=RemoteOptimizer(client), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5)

The explicit worker loop, with the helpers below::

    create_variables(client, model.trainable_variables, optimizer="default")
    for x, y in batches:
        pull_into(client, model.trainable_variables)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        push_gradients(client, zip(tape.gradient(loss, model.trainable_variables),
                                   model.trainable_variables))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfps_client.checkpoint_reader import Checkpoint, open_checkpoint
from tfps_client.client import Client
from tfps_client.types import CreateVariablesResult, PushResult
from tfps_client.wire import checkpoint_layout as layout

if TYPE_CHECKING:
    from tfps_client.keras_optimizer import RemoteOptimizer

__all__ = [
    "LoadReport",
    "RemoteOptimizer",
    "create_variables",
    "load_into",
    "pull_into",
    "push_gradients",
    "variable_name",
]


def __getattr__(name: str) -> Any:
    """Loads :class:`RemoteOptimizer` (which imports TensorFlow) on first use."""
    if name == "RemoteOptimizer":
        from tfps_client.keras_optimizer import RemoteOptimizer

        return RemoteOptimizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def variable_name(variable: Any) -> str:
    """Returns the server-side name of a TensorFlow variable: its name without ``:0``."""
    name: str = variable.name
    return name[:-2] if name.endswith(":0") else name


def create_variables(
    client: Client, variables: Sequence[Any], optimizer: str = "default"
) -> CreateVariablesResult:
    """Declares TensorFlow variables (e.g. ``model.trainable_variables``) on the server.

    Idempotent, so every worker calls it at start: the first worker's initial
    values win; pull them with :func:`pull_into` before training.
    """
    return client.create_variables(
        {variable_name(v): v.numpy() for v in variables}, optimizer=optimizer
    )


def push_gradients(
    client: Client, grads_and_vars: Iterable[tuple[Any, Any]], **push_options: Any
) -> PushResult:
    """Pushes ``zip(grads, variables)`` as one request; ``None`` gradients are skipped.

    ``tf.IndexedSlices`` gradients (embedding lookups) travel sparse.
    ``push_options`` (``worker``, ``step``, ``request_id``) go to :meth:`Client.push`.
    """
    return client.push(
        {variable_name(v): g for g, v in grads_and_vars if g is not None}, **push_options
    )


def pull_into(client: Client, variables: Sequence[Any]) -> None:
    """Pulls the server's values of ``variables`` and assigns them in place."""
    values = client.pull([variable_name(v) for v in variables])
    for variable in variables:
        variable.assign(values[variable_name(variable)])


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_into` matched between a model and a checkpoint."""

    loaded: tuple[str, ...]
    """Checkpoint names loaded into the model."""
    missing: tuple[str, ...]
    """Model variables (checkpoint names after the name map) the checkpoint lacks."""
    unexpected: tuple[str, ...]
    """Checkpoint variables no model variable maps to."""
    mismatched: tuple[str, ...]
    """Names whose shapes differ, as ``"name: model [..] vs checkpoint [..]"``."""


def load_into(
    model: Any,
    checkpoint: str | Path,
    optimizer: Any = None,
    name_map: Mapping[str, str] | None = None,
    strict: bool = True,
) -> LoadReport:
    """Loads a tfps checkpoint into a tf_keras model, and optionally a local optimizer.

    Model variables are matched by name (``dense/kernel``); ``name_map`` maps a
    model name to a different checkpoint name. Given a local
    ``tf_keras.optimizers.legacy`` optimizer of the same class as the server's,
    its slots, ``iterations`` and hyperparameters are loaded too, so local
    training continues exactly where the server was.

    Args:
        model: a built tf_keras model; its trainable variables are loaded.
        checkpoint: a checkpoint path prefix (``.../ckpt-3``) or a directory
            (its latest checkpoint).
        optimizer: a local legacy optimizer to load, or None.
        name_map: model name -> checkpoint name, for renamed variables.
        strict: raise when a model variable is missing or has another shape.

    Raises:
        FileNotFoundError: ``checkpoint`` is neither a checkpoint prefix nor a directory
            with a ``checkpoint`` state file.
        ValueError: ``strict`` and names are missing or mismatched, a ``name_map`` key
            names no model variable, or the optimizer's class differs from the server
            optimizer's.
    """
    opened = open_checkpoint(checkpoint)
    metadata = opened.metadata
    declared = {v.name: v for v in metadata.variables}
    names = dict(name_map or {})
    model_names = [variable_name(v) for v in model.trainable_variables]
    unmatched = [name for name in names if name not in model_names]
    if unmatched:
        raise ValueError(
            f"load_into: name_map maps {unmatched}, which name no trainable variable of the "
            f"model; expected names among {model_names}"
        )
    pairs, missing, mismatched, mismatched_names = [], [], [], set()
    for variable in model.trainable_variables:
        local = variable_name(variable)
        name = names.get(local, local)
        entry = declared.get(name)
        if entry is None:
            missing.append(name)
        elif tuple(variable.shape.as_list()) != entry.shape:
            mismatched_names.add(name)
            mismatched.append(
                f"{name}: model {variable.shape.as_list()} vs checkpoint {list(entry.shape)}"
            )
        else:
            pairs.append((entry, variable))
    matched = {entry.name for entry, _ in pairs}
    report = LoadReport(
        loaded=tuple(sorted(matched)),
        missing=tuple(missing),
        unexpected=tuple(n for n in declared if n not in matched | mismatched_names),
        mismatched=tuple(mismatched),
    )
    if strict and (report.missing or report.mismatched):
        raise ValueError(
            f"load_into {opened.description}: missing {list(report.missing)}, "
            f"shape mismatches {list(report.mismatched)}, unexpected {list(report.unexpected)}"
        )
    for entry, variable in pairs:
        variable.assign(opened.value(entry.name))
    if optimizer is not None:
        _load_optimizer(opened, optimizer, pairs)
    return report


def _load_optimizer(
    opened: Checkpoint,
    optimizer: Any,
    pairs: Sequence[tuple[layout.VariableEntry, Any]],
) -> None:
    import tf_keras

    metadata = opened.metadata
    owners = {entry.optimizer for entry, _ in pairs}
    if len(owners) != 1:
        raise ValueError(
            f"load_into: the model's variables belong to optimizers {sorted(owners)}; "
            "expected exactly one to load into the local optimizer"
        )
    saved = next(o for o in metadata.optimizers if o.name in owners)
    if type(optimizer).__name__ != saved.class_name:
        raise ValueError(
            f"load_into: expected a {saved.class_name} optimizer as on the server, "
            f"received {type(optimizer).__name__}"
        )
    ordered = sorted(pairs, key=lambda pair: metadata.variables.index(pair[0]))
    differences = _construction_differences(optimizer, saved)
    if differences:
        raise ValueError(
            f"load_into: the local {saved.class_name} is constructed unlike the server's "
            f"{saved.name!r}, so training could not continue exactly: {'; '.join(differences)}"
        )
    for key, value in saved.config["config"].items():
        if key in optimizer._hyper:
            if isinstance(value, dict):
                value = tf_keras.optimizers.schedules.deserialize(value)
            setattr(optimizer, key, value)
    optimizer._create_all_weights([variable for _, variable in ordered])
    for entry, variable in ordered:
        for slot in saved.slots:
            optimizer.get_slot(variable, slot).assign(opened.slot(entry.name, slot))
    slots = {id(optimizer.get_slot(v, s)) for _, v in ordered for s in saved.slots}
    for weight in optimizer.weights:
        if id(weight) not in slots:
            short = layout.weight_name(weight.name)
            weight.assign(opened.optimizer_weight(saved.name, short))


def _construction_differences(optimizer: Any, saved: layout.OptimizerEntry) -> list[str]:
    """What the local optimizer fixed at construction unlike the server's: arguments that
    are not hyperparameters (``epsilon``, ``amsgrad``, ...), its slots (SGD has a momentum
    slot only if constructed with momentum) and whether decay applies."""
    import tensorflow as tf

    config = saved.config["config"]
    local = optimizer.get_config()
    differences = [
        f"{key}: local {local.get(key)!r}, server {value!r}"
        for key, value in config.items()
        if key not in optimizer._hyper and key != "name" and local.get(key) != value
    ]
    if (optimizer._initial_decay > 0) != (config.get("decay", 0) > 0):
        differences.append(
            f"decay: local {optimizer._initial_decay!r}, server {config.get('decay', 0)!r}"
        )
    probe = type(optimizer).from_config(local)
    probe._create_all_weights([tf.Variable(tf.zeros([1]))])
    if list(probe.get_slot_names()) != list(saved.slots):
        differences.append(f"slots: local {probe.get_slot_names()}, server {list(saved.slots)}")
    return differences
