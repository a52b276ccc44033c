"""TensorFlow/Keras conveniences. TensorFlow is imported lazily, only when these run.

Typical worker loop::

    create_variables(client, model.trainable_variables, optimizer="default")
    for x, y in batches:
        pull_into(client, model.trainable_variables)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        push_gradients(client, zip(tape.gradient(loss, model.trainable_variables),
                                   model.trainable_variables))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tfps_client.client import Client
from tfps_client.types import CreateVariablesResult, PushResult


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
