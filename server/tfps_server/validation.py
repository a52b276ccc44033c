"""What a request must satisfy before the state changes: every check, in one place.

Pure checks, raising :class:`~tfps_server.errors.ServerError` subclasses whose
messages name the variable or optimizer and the expected and received values.
Each check is the one every path uses: creating a variable and restoring it
from a checkpoint run :func:`check_declarations`; ``set_weights`` and a
restore run :func:`check_weights`; a config and a hyperparameter change are
both parsed by :mod:`tfps_server.optimizers` from JSON read by :func:`parse_json`.
The bounds of :class:`~tfps_server.limits.Limits` (names, ids, counts, the state
quota, config sizes) are checked here too, by arithmetic, before anything is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from tfps_client.types import OptimizerOptions, Partition, Placement, ShardIdentity
from tfps_client.wire import checks
from tfps_client.wire.checks import VARIABLE_DTYPES, Described, WeightSpec, shape_text
from tfps_client.wire.convert import Gradient
from tfps_client.wire.reasons import Reason
from tfps_server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    clipped,
    shown,
)
from tfps_server.limits import flag_of
from tfps_server.numerics import sum_of_squares

MAX_ITERATIONS = 2**62
"""The largest ``iterations`` an optimizer may hold; a step beyond it is refused."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects in a config."""

MAX_JSON_INTEGER_DIGITS = 19
"""Longest integer literal in a config (int64 has 19 digits)."""

DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
"""Element types a variable may have, and the bytes of one element."""


class Declared(Described, Protocol):
    """A variable with the placement it was declared with, as the checks see it."""

    @property
    def placement(self) -> Placement | None: ...


# Names and declarations ------------------------------------------------------------------------


def check_name(kind: str, name: str, max_bytes: int) -> None:
    """Refuses empty, unprintable or too long names of what a request creates."""
    check_name_length(kind, name, max_bytes)
    if not name or not name.isprintable():
        raise InvalidArgument(
            f"{kind} name: expected a non-empty printable string, received {shown(name)}",
            Reason.INVALID_NAME,
            {kind: name},
        )


def check_name_length(kind: str, name: str, max_bytes: int) -> None:
    """Refuses a name of more than ``max_bytes`` UTF-8 bytes, wherever a request gives one.

    A lookup of an unknown name runs it too: no name that long can exist, and the
    client learns why its name can never be found.
    """
    check_text_bytes(f"{kind} name {shown(name)}", name, "max_name_bytes", max_bytes, {kind: name})


def check_declarations(
    declarations: Sequence[tuple[str, np.ndarray]], max_name_bytes: int, require_finite: bool = True
) -> None:
    """Checks the names, dtypes and initial values of variables declared together.

    A restore passes ``require_finite=False``: values that training made
    non-finite are what the checkpoint holds, and refusing them would make the
    server's own checkpoints unloadable.
    """
    seen: set[str] = set()
    for name, value in declarations:
        check_name("variable", name, max_name_bytes)
        if name in seen:
            raise InvalidArgument(
                f"variable {shown(name)}: declared twice in one request",
                Reason.DUPLICATE_VARIABLE,
                {"variable": name},
            )
        seen.add(name)
        finite = value.dtype.kind == "f" and math.isfinite(sum_of_squares(value))  # one pass
        with refused_as_invalid():
            checks.check_initial_value(name, value, require_finite and not finite)


def check_dtype(variable: str, dtype: str) -> None:
    """Refuses an element type no variable may have."""
    if dtype not in DTYPE_BYTES:
        raise InvalidArgument(
            f"variable {shown(variable)}: expected dtype in {list(VARIABLE_DTYPES)}, "
            f"received {clipped(dtype)}",
            Reason.INVALID_DTYPE,
            {"variable": variable, "expected": VARIABLE_DTYPES, "received": dtype},
        )


def check_same_declaration(
    existing: Declared,
    existing_optimizer: str,
    optimizer: str,
    value: np.ndarray,
    placement: Placement | None,
) -> None:
    """Refuses a declaration (optimizer, initial value, placement) that differs from the
    existing variable, naming what differs."""
    differences: list[tuple[str, object, object]] = []
    if existing.shape != value.shape:
        differences.append(("shape", list(existing.shape), list(value.shape)))
    if existing.dtype != value.dtype.name:
        differences.append(("dtype", existing.dtype, value.dtype.name))
    if existing_optimizer != optimizer:
        differences.append(("optimizer", existing_optimizer, optimizer))
    if existing.placement != placement:
        differences.append(
            ("placement", placement_text(existing.placement), placement_text(placement))
        )
    _refuse_differences("variable", existing.name, differences, Reason.VARIABLE_EXISTS)


# Shards and placements ------------------------------------------------------------------------


def shard_text(identity: ShardIdentity) -> str:
    """A shard identity as messages show it: ``shard 1 of 3``."""
    return f"shard {identity.shard} of {identity.shards}"


def placement_text(placement: Placement | None) -> str:
    """A placement as messages show it: ``none``, ``shard 1 of 3``, or with its partition
    ``shard 1 of 3, part 0 of 2 of 'emb' [10, 4] from row 0``."""
    if placement is None:
        return "none"
    text = shard_text(placement.identity)
    part = placement.partition
    if part is None:
        return text
    return (
        f"{text}, part {part.index} of {part.count} of {shown(part.variable)} "
        f"{shape_text(part.shape)} from row {part.row_offset}"
    )


def check_shard(where: str, shard: int, shards: int) -> ShardIdentity:
    """Returns the identity of shard ``shard`` of ``shards``, refusing one out of range."""
    if shards < 1 or not 0 <= shard < shards:
        raise InvalidArgument(
            f"{where}: expected shards >= 1 and shard in [0, shards), received shard {shard} "
            f"of {shards}",
            Reason.INVALID_SHARD,
            {"expected": "shards >= 1, 0 <= shard < shards", "received": f"{shard} of {shards}"},
        )
    return ShardIdentity(shard, shards)


def check_same_shard(held: ShardIdentity | None, declared: ShardIdentity) -> None:
    """Refuses a shard identity other than the one the server holds (none: any is taken)."""
    if held is not None and held != declared:
        raise FailedPrecondition(
            f"this server is {shard_text(held)}; the client declared it {shard_text(declared)} "
            "(a different or reordered shard list)",
            Reason.SHARD_MISMATCH,
            {"expected": shard_text(held), "received": shard_text(declared)},
        )


def check_placements(
    declarations: Sequence[tuple[str, np.ndarray]],
    placements: Mapping[str, Placement],
    max_name_bytes: int,
) -> ShardIdentity | None:
    """Checks the placements of variables declared together; returns the shard they name.

    Every declaration carries a placement of the same shard as the first declaration's, or
    none carries one (None is returned then); each placement and partition must be in range
    and fit its variable.
    """
    if not placements:
        return None
    first = declarations[0][0]
    expected = _shard_of(placements.get(first))
    for name, value in declarations:
        placement = placements.get(name)
        if _shard_of(placement) != expected:
            received = placement_text(placement)
            raise InvalidArgument(
                f"variable {shown(name)}: expected the placement of every declaration of one "
                f"request on one shard, that of the first ({shown(first)}: {expected}), "
                f"received {received}",
                Reason.INVALID_PLACEMENT,
                {"variable": name, "expected": expected, "received": received},
            )
        if placement is not None:
            check_shard(f"variable {shown(name)}: placement", placement.shard, placement.shards)
            if placement.partition is not None:
                check_partition(name, value.shape, placement.partition, max_name_bytes)
    placed = placements.get(first)
    return None if placed is None else placed.identity


def _shard_of(placement: Placement | None) -> str:
    return "none" if placement is None else shard_text(placement.identity)


def check_partition(
    name: str, shape: tuple[int, ...], partition: Partition, max_name_bytes: int
) -> None:
    """Checks that a variable of ``shape`` is the part of its whole that ``partition`` says."""
    try:
        check_name("variable", partition.variable, max_name_bytes)
    except (InvalidArgument, ResourceExhausted) as error:
        raise type(error)(
            f"variable {shown(name)}: partition: whole {error.message}",
            error.reason,
            {**error.metadata, "variable": name},
        ) from None
    problem = _partition_problem(shape, partition)
    if problem is not None:
        field, expected, received = problem
        raise InvalidArgument(
            f"variable {shown(name)}: partition of {shown(partition.variable)}: expected "
            f"{expected}, received {received}",
            Reason.INVALID_PLACEMENT,
            {"variable": name, "field": field, "expected": expected, "received": received},
        )


def _partition_problem(part: tuple[int, ...], partition: Partition) -> tuple[str, str, str] | None:
    """The first field of a partition that does not fit its part: (field, expected, received)."""
    whole = tuple(partition.shape)
    if partition.count < 1 or partition.index >= partition.count:
        return (
            "index",
            "count >= 1 and index < count",
            f"index {partition.index} of count {partition.count}",
        )
    if not whole:
        return "shape", "a whole shape of rank >= 1", "[]"
    if len(part) != len(whole) or part[1:] != whole[1:]:
        return (
            "shape",
            f"a part of the whole's shape {shape_text(whole)} but for its rows",
            shape_text(part),
        )
    if not 0 <= partition.row_offset <= whole[0] - part[0]:
        return (
            "row_offset",
            f"row_offset >= 0 with the part's {part[0]} rows within the whole's {whole[0]}",
            str(partition.row_offset),
        )
    return None


def check_same_optimizer(
    name: str,
    existing: tuple[Mapping[str, Any], OptimizerOptions],
    received: tuple[Mapping[str, Any], OptimizerOptions],
) -> None:
    """Refuses a creation whose config or options differ from the existing optimizer's,
    naming each field that differs (the class alone when the classes differ: their
    arguments differ with them). Config values are shown as JSON."""
    (old_config, old_options), (new_config, new_options) = existing, received
    differences: list[tuple[str, object, object]] = []
    if old_config["class_name"] != new_config["class_name"]:
        differences.append(
            ("class_name", _json(old_config["class_name"]), _json(new_config["class_name"]))
        )
    else:
        old_arguments, new_arguments = old_config["config"], new_config["config"]
        for key in dict.fromkeys([*old_arguments, *new_arguments]):
            old, new = old_arguments.get(key), new_arguments.get(key)
            if old != new:
                differences.append((key, _json(old), _json(new)))
    for field in dataclasses.fields(OptimizerOptions):
        old, new = getattr(old_options, field.name), getattr(new_options, field.name)
        if old != new:
            differences.append((field.name, old, new))
    _refuse_differences("optimizer", name, differences, Reason.OPTIMIZER_EXISTS)


def _json(value: object) -> str:
    return json.dumps(value)


def _refuse_differences(
    kind: str, name: str, differences: Sequence[tuple[str, object, object]], reason: Reason
) -> None:
    """Raises AlreadyExists naming every differing field of an existing variable or
    optimizer, with the first one in the metadata."""
    if not differences:
        return
    text = "; ".join(
        f"{what}: exists with {clipped(str(old))}, received {clipped(str(new))}"
        for what, old, new in differences
    )
    what, old, new = differences[0]
    raise AlreadyExists(
        f"{kind} {shown(name)}: {text}",
        reason,
        {kind: name, "field": what, "expected": old, "received": new},
    )


# Limits ----------------------------------------------------------------------------------------


def past_limit(
    where: str,
    what: str,
    field: str,
    bound: int,
    received: int,
    metadata: Mapping[str, object] | None = None,
    note: str = "",
) -> ResourceExhausted:
    """The refusal of a request that passes one bound of :class:`~tfps_server.limits.Limits`.

    Args:
        where: what the request named, for messages: ``variable name 'w'``, ``push``, ...
        what: what the bound counts: ``UTF-8 bytes``, ``variables``, ...
        field: the :class:`~tfps_server.limits.Limits` field; the message names its flag.
        bound: the field's value.
        received: what the request asked for, in the units of the bound.
        metadata: facts besides the limit, the bound and the value received.
        note: said after the value received, e.g. how it adds up.
    """
    return ResourceExhausted(
        f"{where}: expected at most {bound} {what} ({flag_of(field)}), received {received}{note}",
        Reason.LIMIT_EXCEEDED,
        {**(metadata or {}), "limit": field, "expected": bound, "received": received},
    )


def check_text_bytes(
    where: str, text: str, field: str, bound: int, metadata: Mapping[str, object] | None = None
) -> None:
    """Refuses text (a name, an id, a JSON document) of more than ``bound`` UTF-8 bytes.

    The text itself is not repeated: ``where`` shows as much of it as a message may.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > bound:
        raise past_limit(where, "UTF-8 bytes", field, bound, size, metadata)


def check_config_size(where: str, text: str, limit: int) -> None:
    """Refuses an optimizer config or a schedule given as JSON of more than ``limit`` bytes,
    before it is parsed (``Limits.max_config_bytes``)."""
    check_text_bytes(where, text, "max_config_bytes", limit)


def check_count(where: str, what: str, field: str, bound: int, held: int, new: int) -> None:
    """Refuses ``new`` more of what the server holds ``held`` of, past ``bound`` in all."""
    if held + new > bound:
        note = f" ({held} held, {new} new)" if held else ""
        raise past_limit(where, what, field, bound, held + new, {"held": held}, note)


def state_bytes(shape: Sequence[int], dtype: str, slots: int) -> int:
    """Returns the bytes of a variable and of its ``slots`` optimizer slots.

    Every slot of a ``tf_keras`` legacy optimizer has its variable's shape and dtype.
    """
    return math.prod(shape) * DTYPE_BYTES[dtype] * (1 + slots)


def check_state_quota(where: str, held: int, asked: int, quota: int | None) -> None:
    """Refuses state of ``asked`` more bytes that would take the ``held`` ones past ``quota``.

    Args:
        where: what the request is, for the message.
        held: bytes of the variables and slots the server holds (those a restore replaces: 0).
        asked: bytes the request would add.
        quota: ``Limits.state_quota_bytes``; None: no quota.
    """
    if quota is not None and held + asked > quota:
        raise ResourceExhausted(
            f"{where}: expected state (variables and optimizer slots) of at most {quota} bytes "
            f"({flag_of('state_quota_bytes')}), received a request for {asked} bytes with "
            f"{held} bytes held",
            Reason.STATE_QUOTA,
            {
                "limit": "state_quota_bytes",
                "expected": quota,
                "received": held + asked,
                "held": held,
                "asked": asked,
            },
        )


# Values ----------------------------------------------------------------------------------------


def check_finite(
    where: str,
    what: str,
    values: np.ndarray,
    metadata: dict[str, object],
    reason: Reason = Reason.NON_FINITE_VALUE,
) -> None:
    """Refuses NaN and Inf anywhere in ``values``."""
    if values.dtype.kind == "f" and math.isfinite(sum_of_squares(values)):
        return
    with refused_as_invalid():
        checks.check_finite(where, what, values, metadata, reason)


def check_iterations(where: str, value: np.ndarray) -> int:
    """Returns ``iterations`` given as a value, refusing anything but an integer in range."""
    if value.shape != () or value.dtype.kind not in "iu":
        raise InvalidArgument(
            f"{where}: expected iterations as an integer scalar, received "
            f"{value.dtype.name} of shape {list(value.shape)}",
            Reason.INVALID_ITERATIONS,
            {"expected": "integer scalar", "received": value.dtype.name},
        )
    iterations = int(value)
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise InvalidArgument(
            f"{where}: expected iterations in [0, 2**62], received {iterations}",
            Reason.INVALID_ITERATIONS,
            {"expected": "[0, 2**62]", "received": iterations},
        )
    return iterations


def check_weights(
    optimizer: str,
    specs: Sequence[WeightSpec],
    weights: Sequence[Any],
    require_finite: bool = True,
) -> None:
    """Checks a whole list of optimizer weights in Keras order (iterations, then slots).

    Each value must have its weight's shape, a dtype that casts up to the
    weight's exactly, and finite values (unless ``require_finite`` is False, as
    for a restore); ``iterations`` must be an integer in range.
    """
    where = f"optimizer {shown(optimizer)}"
    if len(weights) != len(specs):
        raise InvalidArgument(
            f"{where}: expected {len(specs)} weights (iterations, then the slots in creation "
            f"order), received {len(weights)}",
            Reason.WEIGHTS_MISMATCH,
            {"optimizer": optimizer, "expected": len(specs), "received": len(weights)},
        )
    for index, (spec, weight) in enumerate(zip(specs, weights, strict=True)):
        value = np.asarray(weight)
        if index == 0:
            check_iterations(where, value)
            continue
        finite = require_finite and value.dtype.kind == "f" and math.isfinite(sum_of_squares(value))
        with refused_as_invalid():
            checks.check_weight(optimizer, index, spec, value, require_finite and not finite)


# Gradients -------------------------------------------------------------------------------------


def check_gradient(managed: Described, gradient: Gradient) -> None:
    """Checks a gradient's dtype, shape and indices against its variable (the checks a
    sharded client runs too: :func:`tfps_client.wire.checks.check_gradient`)."""
    with refused_as_invalid():
        checks.check_gradient(managed, gradient)


@contextlib.contextmanager
def refused_as_invalid() -> Iterator[None]:
    """Raises a :class:`~tfps_client.wire.checks.Refusal` of the shared checks as
    INVALID_ARGUMENT."""
    try:
        yield
    except checks.Refusal as refusal:
        raise InvalidArgument(refusal.message, refusal.reason, refusal.metadata) from None


def check_rows_bytes(managed: Described, rows: int, max_bytes: int | None) -> None:
    """Refuses rows of a variable whose bytes would pass ``max_bytes``, before gathering them.

    A 256 MiB PullRows request names some 2**28 rows: of a wide variable, terabytes.
    """
    if max_bytes is None or not managed.shape:
        return
    row_bytes = math.prod(managed.shape[1:]) * np.dtype(managed.dtype).itemsize
    if rows * row_bytes > max_bytes:
        raise ResourceExhausted(
            f"variable {shown(managed.name)}: expected rows of at most {max_bytes} bytes "
            "(--max-payload-gib), "
            f"received a request for {rows} rows of {row_bytes} bytes",
            Reason.TOO_LARGE,
            {"variable": managed.name, "expected": max_bytes, "received": rows * row_bytes},
        )


def check_step(step: int | None) -> None:
    """Refuses a push's ``step`` (the iterations its gradients were computed at) out of range."""
    if step is not None and not 0 <= step <= MAX_ITERATIONS:
        raise InvalidArgument(
            f"push: expected step (the iterations the gradients were computed at) in "
            f"[0, 2**62], received {step}",
            Reason.INVALID_ITERATIONS,
            {"expected": "[0, 2**62]", "received": step},
        )


def check_rows(managed: Described, indices: np.ndarray) -> None:
    """Checks that every index names a row of the variable."""
    with refused_as_invalid():
        checks.check_rows(managed, indices)


# JSON ------------------------------------------------------------------------------------------


def parse_json(text: str, what: str) -> Any:
    """Parses JSON from a client, refusing what Python's parser accepts but nothing else should.

    Refused: malformed JSON, ``NaN``/``Infinity``, numbers that overflow a float,
    integers out of the range of int64, nesting deeper than :data:`MAX_JSON_DEPTH`, and
    strings holding lone surrogates (``"\\ud800"``), which cannot be encoded again.

    Raises:
        InvalidArgument: ``what`` names the document; the message says what is wrong.
    """
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                           parse_int=_bounded_int)  # fmt: skip
    except RecursionError:
        value = None
        problem = f"expected JSON nested at most {MAX_JSON_DEPTH} deep"
    except ValueError as error:
        value = None
        problem = f"expected JSON, received {shown(text)} ({shown(str(error))})"
    else:
        problem = _json_problem(value)
    if problem:
        raise InvalidArgument(f"{what}: {problem}", Reason.INVALID_CONFIG)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} overflows a float")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_JSON_INTEGER_DIGITS or not -(2**63) <= int(text) < 2**63:
        raise ValueError(f"an integer of {digits} digits is out of the range of int64")
    return int(text)


def _json_problem(value: Any) -> str:
    """Returns what is wrong with a decoded JSON value, walking it without recursion."""
    pending: list[tuple[Any, int]] = [(value, 1)]  # (item, its level if a container)
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)) and depth > MAX_JSON_DEPTH:
            return f"expected JSON nested at most {MAX_JSON_DEPTH} deep"
        if isinstance(item, dict):
            pending.extend((key, depth + 1) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"expected text encodable as UTF-8, received {shown(item)}"
    return ""
