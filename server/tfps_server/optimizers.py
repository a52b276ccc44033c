"""Keras config -> tf_keras legacy optimizer, with everything checked at creation.

Keras is the engine: the optimizer returned is a real
``tf_keras.optimizers.legacy`` instance (with the ``lazy_sparse`` option, of a
subclass from :mod:`tfps_server.lazy` whose sparse updates change only the
gradient's rows). This module only decides which class, which arguments, and
refuses up front every config that could not apply later.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras

from tfps_client.wire.reasons import Reason
from tfps_server.errors import InvalidArgument, clipped, shown
from tfps_server.lazy import LAZY_CLASSES
from tfps_server.limits import Limits
from tfps_server.validation import parse_json, past_limit

_legacy = tf_keras.optimizers.legacy
_schedules = tf_keras.optimizers.schedules

OPTIMIZER_CLASSES: dict[str, type] = {
    cls.__name__.lower(): cls
    for cls in (
        _legacy.Adadelta,
        _legacy.Adagrad,
        _legacy.Adam,
        _legacy.Adamax,
        _legacy.Ftrl,
        _legacy.Nadam,
        _legacy.RMSprop,
        _legacy.SGD,
    )
}
"""The accepted optimizer classes, by lower-case class name."""

SCHEDULE_CLASSES: dict[str, type] = {
    cls.__name__.lower(): cls
    for cls in (
        _schedules.ExponentialDecay,
        _schedules.PiecewiseConstantDecay,
        _schedules.PolynomialDecay,
        _schedules.InverseTimeDecay,
        _schedules.CosineDecay,
        _schedules.CosineDecayRestarts,
    )
}
"""The accepted learning-rate schedule classes, by lower-case class name."""

_BASE_KWARGS = ("clipnorm", "clipvalue", "global_clipnorm", "decay", "lr")
_BOOLEAN_ARGS = frozenset({"amsgrad", "nesterov", "centered", "staircase", "cycle"})
_STRING_ARGS = frozenset({"name"})
_OPTIONAL_NUMBER_ARGS = frozenset({"clipnorm", "clipvalue", "global_clipnorm", "epsilon"})
_SERIALIZATION_KEYS = frozenset({"module", "registered_name"})
_KERAS_REFUSALS = (ValueError, TypeError, ArithmeticError, RecursionError, tf.errors.OpError)
"""What Keras and TensorFlow raise for arguments they cannot use."""


class OptimizerSpec(NamedTuple):
    """A validated optimizer config: the Keras class, its constructor arguments, and whether
    its sparse updates are lazy (:mod:`tfps_server.lazy`)."""

    cls: type
    kwargs: dict[str, Any]
    lazy_sparse: bool = False

    def construct(self) -> tf_keras.optimizers.legacy.Optimizer:
        """Constructs the optimizer: the Keras class, or its lazy subclass."""
        cls = LAZY_CLASSES[self.cls] if self.lazy_sparse else self.cls
        return cls(**self.kwargs)


def _fail(message: str, **metadata: object) -> InvalidArgument:
    return InvalidArgument(message, Reason.INVALID_CONFIG, metadata)


def _parameters(cls: type) -> list[str]:
    signature = inspect.signature(cls)
    return [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]


def _class_names(classes: Mapping[str, type]) -> list[str]:
    return sorted(cls.__name__ for cls in classes.values())


def _number_lists(limits: Limits) -> dict[str, int]:
    """Arguments that are lists of numbers (PiecewiseConstantDecay's), and their longest length."""
    return {
        "boundaries": limits.max_schedule_boundaries,
        "values": limits.max_schedule_boundaries + 1,
    }


def _check_value(where: str, key: str, value: Any, lists: Mapping[str, int]) -> None:
    """Checks that one argument has the type Keras will need when applying.

    Args:
        where: what the argument belongs to, for messages.
        key: its name.
        value: its value.
        lists: the arguments that are lists of numbers, and their longest length.
    """
    if key in _BOOLEAN_ARGS:
        if not isinstance(value, bool):
            raise _fail(f"{where}: expected a boolean for '{key}', received {shown(value)}")
    elif key in _STRING_ARGS:
        if not (value is None or isinstance(value, str)):
            raise _fail(f"{where}: expected a string for '{key}', received {shown(value)}")
    elif key in lists:
        if not isinstance(value, list) or not value:
            raise _fail(
                f"{where}: expected a non-empty list of numbers for '{key}', "
                f"received {shown(value)}"
            )
        if len(value) > lists[key]:
            raise past_limit(
                where, f"numbers for '{key}'", "max_schedule_boundaries", lists[key], len(value)
            )
        for item in value:
            _check_number(where, key, item)
    elif not (value is None and key in _OPTIONAL_NUMBER_ARGS):
        _check_number(where, key, value)


def _check_number(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{where}: expected a number for '{key}', received {shown(value)}")
    if not math.isfinite(value):
        raise _fail(f"{where}: expected a finite number for '{key}', received {value!r}")


def _split_serialized(where: str, serialized: Any) -> tuple[str, dict[str, Any]]:
    """Returns (class_name, config) of a ``{"class_name": ..., "config": {...}}`` dict."""
    if not isinstance(serialized, Mapping):
        raise _fail(
            f"{where}: expected an object with 'class_name' and 'config', "
            f"received {shown(serialized)}"
        )
    unknown = set(serialized) - {"class_name", "config"} - _SERIALIZATION_KEYS
    if unknown:
        raise _fail(
            f"{where}: expected keys 'class_name' and 'config', received also "
            f"{shown(sorted(unknown))}"
        )
    class_name = serialized.get("class_name")
    if not isinstance(class_name, str):
        raise _fail(f"{where}: expected a string 'class_name', received {shown(class_name)}")
    config = serialized.get("config", {})
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise _fail(f"{where}: expected 'config' to be an object, received {shown(config)}")
    return class_name, dict(config)


def _check_arguments(
    where: str,
    cls: type,
    config: Mapping[str, Any],
    extra: tuple[str, ...],
    lists: Mapping[str, int],
) -> None:
    allowed = [*_parameters(cls), *extra]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise _fail(
            f"{where}: unknown argument(s) {shown(unknown)} for {cls.__name__}; "
            f"expected some of {sorted(allowed)}"
        )
    for key, value in config.items():
        if key != "learning_rate" or not isinstance(value, Mapping):
            _check_value(where, key, value, lists)


def build_schedule(
    serialized: Any, limits: Limits
) -> tf_keras.optimizers.schedules.LearningRateSchedule:
    """Builds one of the allowed learning-rate schedules from its Keras serialization.

    Raises:
        InvalidArgument: unknown class, bad argument, or a schedule that cannot be evaluated.
        ResourceExhausted: more boundaries than ``limits.max_schedule_boundaries``.
    """
    class_name, config = _split_serialized("learning_rate schedule", serialized)
    cls = SCHEDULE_CLASSES.get(class_name.lower())
    if cls is None:
        raise _fail(
            f"learning_rate schedule: expected one of {_class_names(SCHEDULE_CLASSES)}, "
            f"received class_name {shown(class_name)}",
            received=class_name,
        )
    _check_arguments(
        f"learning_rate schedule {cls.__name__}", cls, config, (), _number_lists(limits)
    )
    try:
        schedule = cls(**config)
        for step in _probe_steps(config):
            value = float(schedule(tf.constant(step, tf.int64)))
            if not math.isfinite(value):
                raise ValueError(f"its learning rate at step {step} is {value}")
    except _KERAS_REFUSALS as error:
        raise _fail(f"learning_rate schedule {cls.__name__}: {_first_line(error)}") from None
    return schedule


def _probe_steps(config: Mapping[str, Any]) -> list[int]:
    """Steps at which a schedule is evaluated before it is accepted.

    The first steps, and the steps where a schedule changes its formula (each boundary,
    the end of each decay period, and their neighbours): PolynomialDecay with a negative
    power, for one, is finite at first and infinite from ``decay_steps`` on.
    """
    marks = [int(b) for b in config.get("boundaries", [])]
    marks += [int(config[k]) for k in ("decay_steps", "first_decay_steps") if k in config]
    near = {m + offset for m in marks for offset in (-1, 0, 1)}
    return sorted({0, 1, 1000, *(n for n in near if n >= 0)})


def parse(config_json: str, limits: Limits) -> OptimizerSpec:
    """Parses and checks an optimizer config given as JSON.

    Raises:
        InvalidArgument: the JSON, class name or any argument is wrong.
        ResourceExhausted: its schedule passes a bound of ``limits``.
    """
    return parse_serialized(parse_json(config_json, "optimizer config"), limits)


def parse_serialized(serialized: Any, limits: Limits) -> OptimizerSpec:
    """Checks a decoded ``{"class_name": ..., "config": {...}}`` optimizer config.

    Raises:
        InvalidArgument: the class name or any argument is wrong.
        ResourceExhausted: its schedule passes a bound of ``limits``.
    """
    class_name, config = _split_serialized("optimizer config", serialized)
    cls = OPTIMIZER_CLASSES.get(class_name.lower())
    if cls is None:
        raise _fail(
            f"optimizer config: expected class_name in {_class_names(OPTIMIZER_CLASSES)} "
            f"(case-insensitive), received {shown(class_name)}",
            received=class_name,
        )
    where = f"optimizer {cls.__name__}"
    _check_arguments(where, cls, config, _BASE_KWARGS, {})
    if "lr" in config:
        if "learning_rate" in config:
            raise _fail(f"{where}: expected one of 'lr' and 'learning_rate', received both")
        config["learning_rate"] = config.pop("lr")
    if isinstance(config.get("learning_rate"), Mapping):
        config["learning_rate"] = build_schedule(config["learning_rate"], limits)
    return OptimizerSpec(cls, config)


def with_lazy_sparse(spec: OptimizerSpec) -> OptimizerSpec:
    """Returns the spec with lazy sparse updates, for a class that has them.

    Raises:
        InvalidArgument: the class has no lazy variant: its Keras sparse update already
            changes only the rows given (reason ``INVALID_OPTIONS``).
    """
    name = spec.cls.__name__
    if spec.cls not in LAZY_CLASSES:
        expected = sorted(cls.__name__ for cls in LAZY_CLASSES)
        raise InvalidArgument(
            f"options: expected lazy_sparse=True only with a class in {expected}, whose Keras "
            f"sparse updates change rows outside the gradient; received it with {name}, whose "
            "Keras sparse update already changes only the rows given",
            Reason.INVALID_OPTIONS,
            {"expected": expected, "received": name},
        )
    return spec._replace(lazy_sparse=True)


def instantiate(spec: OptimizerSpec) -> tf_keras.optimizers.legacy.Optimizer:
    """Creates the optimizer, refusing what Keras refuses, and proves it can apply.

    A throwaway copy applies one dense and one sparse float32 update to a
    throwaway variable, so a config that could only fail later fails now.

    Raises:
        InvalidArgument: Keras refused the config, or it cannot apply an update.
    """
    name = spec.cls.__name__
    try:
        optimizer = spec.construct()
    except _KERAS_REFUSALS as error:
        raise _fail(f"optimizer {name}: {_first_line(error)}") from None
    check_dtypes(spec, ["float32"])
    return optimizer


def check_dtypes(spec: OptimizerSpec, dtypes: Collection[str], device: str | None = None) -> None:
    """Proves the optimizer can update variables of each dtype, alone and all together.

    A push may hold variables of every dtype the optimizer has at once, and some
    options mix them (``global_clipnorm`` stacks the norms of all gradients), so the
    dtypes are also applied together in one call when there are several.

    Raises:
        InvalidArgument: an update fails or gives non-finite values; the message names
            the dtype, or the dtypes that fail only together.
    """
    for dtype in sorted(dtypes):
        _check_applies(spec, [dtype], device)
    if len(dtypes) > 1:
        _check_applies(spec, sorted(dtypes), device)


def _check_applies(spec: OptimizerSpec, dtypes: Sequence[str], device: str | None) -> None:
    """Applies a dense and then a sparse update to one throwaway variable of each dtype."""
    name = spec.cls.__name__
    try:
        with tf.device(device):
            probe = spec.construct()
            variables = [tf.Variable(tf.ones([2, 2], dtype)) for dtype in dtypes]
            dense = [tf.fill([2, 2], tf.constant(0.5, v.dtype)) for v in variables]
            sparse = [
                tf.IndexedSlices(
                    tf.fill([2, 2], tf.constant(0.5, v.dtype)),
                    tf.constant([1, 1]),
                    tf.constant([2, 2]),
                )
                for v in variables
            ]
            probe.apply_gradients(list(zip(dense, variables, strict=True)))
            probe.apply_gradients(list(zip(sparse, variables, strict=True)))
            if not all(np.all(np.isfinite(v.numpy().astype(np.float64))) for v in variables):
                raise ValueError("a unit update produced non-finite values")
    except _KERAS_REFUSALS as error:
        together = "" if len(dtypes) == 1 else " together"
        what = f"{' and '.join(dtypes)} variables{together}"
        raise _fail(
            f"optimizer {name} cannot update {what}: {_first_line(error)}", dtype=",".join(dtypes)
        ) from None


def with_hyperparameter(
    serialized: Mapping[str, Any],
    created: OptimizerSpec,
    dtypes: Collection[str],
    key: str,
    value: Any,
    limits: Limits,
    device: str | None = None,
) -> OptimizerSpec:
    """Checks a config with one hyperparameter changed, as creating it would.

    As creating the optimizer and its variables would: the changed optimizer must
    update the dtypes of the variables it holds, alone and together.

    Keras fixes some things when an optimizer is constructed, from the values given
    then: which slots it has (SGD's and RMSprop's momentum slot exists only for a
    momentum above 0) and whether ``decay`` applies at all. A change that would alter
    them is refused: the running optimizer would ignore it, and a restore (which
    constructs from the changed config) would not fit the checkpoint.

    Args:
        serialized: ``{"class_name": ..., "config": {...}}`` of the optimizer now.
        created: what the running optimizer was constructed from.
        dtypes: the dtypes of its variables.
        key: the hyperparameter, as a config argument (``learning_rate``, ``beta_1``, ...).
        value: a number, or for ``learning_rate`` a serialized schedule.
        limits: the server's bounds.
        device: where its variables live.

    Raises:
        InvalidArgument: creating an optimizer with the changed config would be refused,
            or it would be constructed differently.
        ResourceExhausted: the changed config passes a bound of ``limits``.
    """
    changed = copy.deepcopy(dict(serialized))
    changed["config"] = {**changed.get("config", {}), key: value}
    spec = parse_serialized(changed, limits)._replace(lazy_sparse=created.lazy_sparse)
    instantiate(spec)
    check_dtypes(spec, dtypes, device)
    before, after = _construction(created), _construction(spec)
    if before != after:
        raise _fail(
            f"optimizer {spec.cls.__name__}: '{key}' = {shown(value)} would change what Keras "
            f"fixes at construction (slots {list(before[0])} -> {list(after[0])}, decay "
            f"{'on' if before[1] else 'off'} -> {'on' if after[1] else 'off'}); create another "
            "optimizer instead",
            received=value,
        )
    return spec


def _construction(spec: OptimizerSpec) -> tuple[tuple[str, ...], bool]:
    """What Keras decides at construction: the slot names, and whether decay applies."""
    return slot_names(spec), spec.construct()._initial_decay > 0


def slot_names(spec: OptimizerSpec) -> tuple[str, ...]:
    """Returns the slots Keras creates for each variable, found on a probe of one element.

    Keras fixes them at construction; each has its variable's shape and dtype.
    """
    probe = spec.construct()
    probe._create_all_weights([tf.Variable(tf.zeros([1]))])
    return tuple(probe.get_slot_names())


def _first_line(error: BaseException) -> str:
    text = str(error)
    return clipped(text.splitlines()[0], 500) if text else type(error).__name__


def keras_class_name(optimizer: tf_keras.optimizers.legacy.Optimizer) -> str:
    """Returns the name of the optimizer's Keras class: a lazy optimizer's is its base's."""
    return next(
        cls.__name__
        for cls in type(optimizer).__mro__
        if OPTIMIZER_CLASSES.get(cls.__name__.lower()) is cls
    )


def serialize(optimizer: tf_keras.optimizers.legacy.Optimizer) -> dict[str, Any]:
    """Returns ``{"class_name": ..., "config": ...}`` with plain JSON values, as Keras
    serializes the optimizer's Keras class (laziness is an option, not a config)."""
    config = json.loads(json.dumps(optimizer.get_config(), default=_plain))
    return {"class_name": keras_class_name(optimizer), "config": config}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialize {type(value).__name__}")
