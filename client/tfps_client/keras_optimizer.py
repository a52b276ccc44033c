"""``RemoteOptimizer``: a tf_keras optimizer whose updates happen on a tfps server.

Imports TensorFlow; :mod:`tfps_client.keras` loads this module only when
``RemoteOptimizer`` is first used, so the rest of the client stays TensorFlow-free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.python.ops.resource_variable_ops import ResourceVariable
from tf_keras.src.utils import control_flow_util

from tfps_client import tf_config
from tfps_client.client import Client
from tfps_client.keras import create_variables, variable_name
from tfps_client.types import Aggregation, IndexedSlices, Sync

_Schedule = tf_keras.optimizers.schedules.LearningRateSchedule


class _LearningRateVariable(ResourceVariable):
    """A float32 variable that calls ``on_assign`` after each eager assignment, so that
    ``backend.set_value(optimizer.lr, ...)``, as Keras's callbacks do it, reaches the server
    at once. (Assignments inside a ``tf.function`` are caught at the next step or read.)"""

    def __init__(self, on_assign: Callable[[], None]) -> None:
        super().__init__(0.0, trainable=False, name="learning_rate", dtype=tf.float32)
        self._on_assign = on_assign

    def assign(
        self, value: Any, use_locking: Any = None, name: Any = None, read_value: bool = True
    ) -> Any:
        assigned = super().assign(value, use_locking, name, read_value)
        if not tf.inside_function():
            self._on_assign()
        return assigned


@dataclass(frozen=True)
class _Layout:
    """How one step's gradients travel into ``tf.py_function`` as a flat tensor list.

    Attributes:
        names: server names of the variables, in the order of the step.
        shapes: the variables' shapes.
        sparse: per variable, whether its gradient is ``tf.IndexedSlices`` (two tensors in
            the flat list, values then indices) rather than dense (one tensor).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sparse: tuple[bool, ...]

    def flatten(self, gradients: Sequence[tf.Tensor | tf.IndexedSlices]) -> list[tf.Tensor]:
        """Returns the tensors to pass into the Python step."""
        flat: list[tf.Tensor] = []
        for gradient, sparse in zip(gradients, self.sparse, strict=True):
            flat.extend([gradient.values, gradient.indices] if sparse else [gradient])
        return flat

    def gradients(self, flat: Sequence[tf.Tensor]) -> dict[str, np.ndarray | IndexedSlices]:
        """Rebuilds the gradients, as the client pushes them, from the flat tensors."""
        gradients: dict[str, np.ndarray | IndexedSlices] = {}
        position = 0
        for name, shape, sparse in zip(self.names, self.shapes, self.sparse, strict=True):
            if sparse:
                values, indices = flat[position].numpy(), flat[position + 1].numpy()
                gradients[name] = IndexedSlices(values, indices, dense_shape=shape)
                position += 2
            else:
                gradients[name] = flat[position].numpy()
                position += 1
        return gradients


class RemoteOptimizer(tf_keras.optimizers.legacy.Optimizer):
    """A tf_keras optimizer that trains through a tfps server.

    ``model.compile(optimizer=RemoteOptimizer(client), loss=...)`` then ``model.fit(...)``:
    each step pushes the step's gradients (dense, and ``tf.IndexedSlices`` from embeddings,
    unchanged) to the server's optimizer and assigns the updated values it answers to the
    model's variables before the next step, in one round trip (``push_pull``). The server
    applies Keras's own update, so the weights are bitwise what a local tf_keras legacy
    optimizer of the same config gives. ``apply_gradients(zip(grads, variables))`` is the
    same step for custom ``tf.GradientTape`` loops, eager or in a ``tf.function``.

    The model's variables are registered on the server the first time a step is traced or
    run (idempotent: the first worker's initial values win, and the others take them before
    their first gradient counts). The server optimizer's config is the truth:
    :meth:`get_config`, :attr:`learning_rate` and :attr:`iterations` read it, and setting
    ``learning_rate`` (as ``ReduceLROnPlateau`` and ``LearningRateScheduler`` do) changes it
    on the server for every worker.

    A step calls Python (``tf.py_function``), so it cannot run where Python cannot be
    called: inside XLA (``jit_compile=True``) or under a ``tf.distribute`` strategy (the
    server is the distribution); both raise ``RuntimeError`` when the step is traced. A
    call the server refuses raises the client's :class:`~tfps_client.TfpsError` in an eager
    step; in a ``tf.function`` (``model.fit``), TensorFlow reports it as an ``OpError``
    whose message holds the client's.

    Args:
        client: the tfps client.
        optimizer: name of the server's optimizer.
        worker: this worker's id, required by :class:`~tfps_client.Sync` optimizers.
            ``None`` takes ``"<task type>:<index>"`` from ``TF_CONFIG`` when it is set.
        config: a Keras optimizer config (or a ``tf_keras.optimizers.legacy`` optimizer
            to take it from) to create the server's optimizer with, if it does not exist
            yet; ``None`` uses the existing one.
        aggregation: the aggregation mode to create it with (only with ``config``).
        name: the Keras name of this optimizer object.

    Raises:
        NotFoundError: the server has no optimizer ``optimizer`` and no config was given.
        ValueError: the server's optimizer is synchronous and no worker id is known.
    """

    def __init__(
        self,
        client: Client,
        optimizer: str = "default",
        *,
        worker: str | None = None,
        config: Mapping[str, Any] | tf_keras.optimizers.legacy.Optimizer | None = None,
        aggregation: Aggregation | None = None,
        name: str = "RemoteOptimizer",
    ) -> None:
        super().__init__(name=name)
        if config is not None:
            client.create_optimizer(optimizer, _keras_config(config), aggregation)
        elif aggregation is not None:
            raise ValueError("RemoteOptimizer: aggregation is only used with config")
        options = client.get_options(optimizer)
        self._client = client
        self._server_optimizer = optimizer
        self._worker = _worker_id(worker)
        if isinstance(options.aggregation, Sync) and not self._worker:
            raise ValueError(
                f"RemoteOptimizer: the server's optimizer {optimizer!r} is synchronous, so "
                "each worker needs its own id: pass worker=..., or set TF_CONFIG"
            )
        self._variables: dict[str, tf.Variable] = {}
        """The variables registered on the server, by server name."""
        self._step: int | None = None
        """The server's ``iterations`` the model's values are from (sent with each push)."""
        self._discard_next_push = False
        """True when registering replaced the values the pending gradients came from."""
        self._learning_rate_synced = 0.0
        """The value of ``_learning_rate`` when it was last read from or sent to the server:
        any other value was assigned locally since, and goes to the server."""
        self._learning_rate = _LearningRateVariable(on_assign=self._send_learning_rate)
        self._read_learning_rate()  # a graph that reads or scales it starts from the server's

    @property
    def server_optimizer(self) -> str:
        """Name of the server's optimizer this object trains with."""
        return self._server_optimizer

    @property
    def worker(self) -> str:
        """This worker's id, sent with every push (empty for none)."""
        return self._worker

    # What the server holds --------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """Returns the server optimizer's Keras config (``optimizer.get_config()`` there)."""
        config: dict[str, Any] = self._client.get_config(self._server_optimizer)["config"]
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], custom_objects: Any = None) -> Any:
        """Refuses: a ``RemoteOptimizer`` needs a live client, which no config holds.

        Raises:
            TypeError: always; load saved models with ``compile=False`` and compile them
                with a new ``RemoteOptimizer``.
        """
        raise TypeError(
            "RemoteOptimizer cannot be rebuilt from a saved config: it needs a tfps Client. "
            "Load the model with compile=False, then compile it with RemoteOptimizer(client)"
        )

    @property
    def iterations(self) -> tf.Variable:
        """The server optimizer's ``iterations``, read from the server when read eagerly."""
        variable = super().iterations
        if not tf.inside_function():
            variable.assign(self._client.iterations(self._server_optimizer))
        return variable

    @property
    def learning_rate(self) -> Any:
        """The server optimizer's learning rate: a variable, or its schedule.

        Read eagerly, it is the server's current value. Assigning a number or a schedule to
        this attribute, or a number to the returned variable (``backend.set_value``, as
        Keras's callbacks do), sets it on the server (an assignment inside a ``tf.function``
        at the next step or read).
        """
        if tf.inside_function():
            return self._learning_rate
        self._send_learning_rate()
        return self._read_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if isinstance(value, _Schedule):
            serialized = tf_keras.optimizers.schedules.serialize(value, use_legacy_format=True)
            self._client.set_hyperparameter(self._server_optimizer, "learning_rate", serialized)
            return
        if callable(value):
            raise TypeError(
                "RemoteOptimizer.learning_rate: expected a number or a "
                f"LearningRateSchedule, received {type(value).__name__}"
            )
        self._learning_rate_synced = float("nan")  # differs from every value: always sent
        self._learning_rate.assign(float(tf_keras.backend.get_value(value)))

    lr = learning_rate
    """Keras's alias of :attr:`learning_rate`."""

    def _read_learning_rate(self) -> Any:
        """Reads the server's learning rate into the local variable (unless it is a
        schedule); returns the variable, or the schedule."""
        served = self.get_config()["learning_rate"]
        if isinstance(served, Mapping):
            return tf_keras.optimizers.schedules.deserialize(dict(served))
        self._learning_rate_synced = float(np.float32(served))
        self._learning_rate.assign(served)
        return self._learning_rate

    def _send_learning_rate(self) -> None:
        """Sets the server's learning rate if the local variable was assigned since it was
        last read or sent."""
        value = float(self._learning_rate.numpy())
        if value != self._learning_rate_synced:
            self._client.set_hyperparameter(self._server_optimizer, "learning_rate", value)
            self._learning_rate_synced = value

    # Steps ------------------------------------------------------------------------------------

    def apply_gradients(
        self,
        grads_and_vars: Iterable[tuple[Any, tf.Variable]],
        name: str | None = None,
        experimental_aggregate_gradients: bool = True,
    ) -> Any:
        """Pushes the gradients and assigns the server's updated values to the variables.

        Gradients that are ``None`` are left out (their variables are still refreshed).
        Eager or in a ``tf.function``; ``name`` and ``experimental_aggregate_gradients``
        are accepted for Keras's signature and change nothing (the server aggregates).

        Raises:
            ValueError: no variable has a gradient, or two variables (or two gradients)
                of the step have one server name.
            RuntimeError: called inside XLA or under a distribution strategy.
        """
        pairs = list(grads_and_vars)
        pushed = [(g, v) for g, v in pairs if g is not None]
        if not pushed:
            raise ValueError(
                "RemoteOptimizer.apply_gradients: no gradients for any variable: "
                f"{[v.name for _, v in pairs]}"
            )
        _refuse_unsupported_context()
        variables = list(dict.fromkeys(v.ref() for _, v in pairs))
        refreshed = [ref.deref() for ref in variables]
        _refuse_duplicate_names([v for _, v in pushed], refreshed)
        with tf.init_scope():
            self._register(refreshed, tracing=tf.inside_function())
            iterations = super().iterations
        layout = _Layout(
            names=tuple(variable_name(v) for _, v in pushed),
            shapes=tuple(tuple(v.shape.as_list()) for _, v in pushed),
            sparse=tuple(isinstance(g, tf.IndexedSlices) for g, _ in pushed),
        )
        pulled_names = [variable_name(v) for v in refreshed]

        flat = layout.flatten([g for g, _ in pushed])
        if tf.executing_eagerly():  # called straight: the client's own errors reach the caller
            *values, served_iterations = self._push_pull(layout, flat, pulled_names)
        else:
            *values, served_iterations = tf.py_function(
                lambda *flat: self._push_pull(layout, flat, pulled_names),
                flat,
                Tout=[v.dtype for v in refreshed] + [tf.int64],
                name="tfps_push_pull",
            )
            for variable, value in zip(refreshed, values, strict=True):
                value.set_shape(variable.shape)
        assignments = [
            variable.assign(value, read_value=False)
            for variable, value in zip(refreshed, values, strict=True)
        ]
        assignments.append(iterations.assign(served_iterations, read_value=False))
        return tf.group(*assignments)

    def pull(self) -> None:
        """Assigns the server's current values to every variable this optimizer registered
        (for example before evaluating, when other workers trained since this one's last
        step)."""
        values = self._client.pull(list(self._variables))
        for name, variable in self._variables.items():
            variable.assign(values[name])

    def _register(self, variables: Sequence[tf.Variable], *, tracing: bool) -> None:
        """Declares variables not registered yet; where another worker declared them first,
        takes its values (and, in an eager step, drops the pending gradients, computed from
        this worker's values)."""
        # By identity: a new variable of a registered name (a model rebuilt or cloned and
        # compiled with this optimizer) takes the server's values too.
        new = [v for v in variables if self._variables.get(variable_name(v)) is not v]
        if not new:
            return
        if self._step is None:
            # Read before the values: a push landing in between makes this step older than
            # the values, which a sync server drops as stale rather than miscounting.
            self._step = self._client.iterations(self._server_optimizer)
        existing = set(create_variables(self._client, new, self._server_optimizer).existing)
        served = self._client.pull([variable_name(v) for v in new if variable_name(v) in existing])
        for variable in new:
            name = variable_name(variable)
            if name in served and not np.array_equal(variable.numpy(), served[name]):
                variable.assign(served[name])
                self._discard_next_push |= not tracing
            self._variables[name] = variable

    def _push_pull(self, layout: _Layout, flat: Sequence[tf.Tensor], names: list[str]) -> list[Any]:
        """The Python side of a step: pushes, and returns the values of ``names`` and the
        iterations after the push."""
        self._send_learning_rate()
        if self._discard_next_push:
            self._discard_next_push = False
            iterations = self._client.iterations(self._server_optimizer)
            pulled = self._client.pull(names)
        else:
            result, pulled = self._client.push_pull(
                layout.gradients(flat), names, worker=self._worker, step=self._step
            )
            iterations = result.iterations[self._server_optimizer]
        self._step = iterations
        return [pulled[name] for name in names] + [np.int64(iterations)]


def _keras_config(config: Mapping[str, Any] | tf_keras.optimizers.legacy.Optimizer) -> Any:
    """A server optimizer config from a config mapping or a local legacy optimizer."""
    if isinstance(config, tf_keras.optimizers.legacy.Optimizer):
        return {"class_name": type(config).__name__, "config": config.get_config()}
    return dict(config)


def _worker_id(worker: str | None) -> str:
    """The given id, else ``type:index`` of this task in ``TF_CONFIG``, else empty."""
    if worker is not None:
        return worker
    parsed = tf_config.load()
    return f"{parsed.task_type}:{parsed.task_index}" if parsed and parsed.task_type else ""


def _refuse_duplicate_names(pushed: Sequence[Any], refreshed: Sequence[Any]) -> None:
    """Raises ValueError where two gradients, or two variables, of one step would meet
    under one server name (one of them would be lost, or both take one variable's value)."""
    for what, variables in (("gradients", pushed), ("variables", refreshed)):
        counts = Counter(variable_name(v) for v in variables)
        repeated = sorted(name for name, count in counts.items() if count > 1)
        if repeated:
            raise ValueError(
                f"RemoteOptimizer.apply_gradients: several {what} for the server name(s) "
                f"{repeated}: the server knows a variable by its name, so each variable of a "
                "step needs its own name (name the layers of repeated sub-models apart) and "
                "one gradient"
            )


def _refuse_unsupported_context() -> None:
    """Raises RuntimeError where a step cannot call Python or would train wrongly.

    A plain RuntimeError: TensorFlow's autograph keeps its type and message when it
    re-raises it from a traced ``model.fit`` step (a subclass would reach the user as a
    ``StagingError``)."""
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        raise RuntimeError(
            "RemoteOptimizer cannot run inside XLA (model.compile(jit_compile=True) or "
            "tf.function(jit_compile=True)): each step calls the tfps server from Python. "
            "Compile with jit_compile=False"
        )
    if tf.distribute.has_strategy():
        strategy = type(tf.distribute.get_strategy()).__name__
        raise RuntimeError(
            f"RemoteOptimizer cannot run under {strategy}: the tfps server is the "
            "distribution, and each worker process trains one model replica with the "
            "default strategy"
        )
