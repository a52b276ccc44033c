"""Where a sharded client's variables live, and how a call's data splits over the shards.

No I/O here: :class:`Layout` is what the shards' listings say, :func:`place` decides where
new variables go, and the ``split_*``/``join_*`` functions cut a call's tensors into the
parts each shard holds and put the answers back together.

Placement follows TensorFlow's greedy load-balancing strategy for parameter servers: each
variable, in declaration order, goes to the shard holding the fewest bytes so far (ties go
to the lowest index). A variable of more than ``max_shard_bytes`` is split by rows into
parts named ``<name>/part_<i>``, as ``tf.distribute``'s ``ShardedVariable`` names them, on
distinct shards, cut as evenly as TensorFlow's fixed partitioner cuts them but only at
multiples of :data:`ALIGNMENT_BYTES` of the whole, so that each part is updated bitwise as
the whole variable would be.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfps_client import calls
from tfps_client.calls import Steps
from tfps_client.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TfpsError,
)
from tfps_client.types import IndexedSlices, Partition, Placement, VariableInfo
from tfps_client.wire import checks, codec, convert
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire.reasons import Reason


@dataclass(frozen=True)
class Part:
    """One shard's piece of a variable: the whole variable, or a range of its rows."""

    name: str
    """The name the shard knows it by: the variable's, or ``<name>/part_<i>``."""
    shard: int
    """Index of the shard in the client's address list."""
    row_offset: int
    """First row of the variable the piece holds (0 for a whole variable)."""
    rows: int
    """Rows the piece holds (the variable's first dimension, or 1 for a scalar)."""
    device: str = ""
    """The device its shard keeps it on, once listed."""


@dataclass(frozen=True)
class Placed:
    """A variable as a sharded client sees it: its declaration and its parts."""

    name: str
    """The variable's name."""
    shape: tuple[int, ...]
    """The whole variable's shape."""
    dtype: np.dtype
    """Element type."""
    optimizer: str
    """The optimizer the variable is bound to."""
    parts: tuple[Part, ...]
    """Its pieces in row order; one part named as the variable when it is not split."""
    order: int
    """Its position in creation order over all shards."""
    batch: int
    """``order`` of the first variable of the create call that declared it: the batch Keras
    created its slots in (the optimizer's weights follow the batches)."""

    @property
    def partitioned(self) -> bool:
        """Whether the variable is split by rows over several shards."""
        return self.parts[0].name != self.name

    @property
    def shards(self) -> tuple[int, ...]:
        """The shards holding its parts."""
        return tuple(part.shard for part in self.parts)

    @property
    def part_names(self) -> tuple[str, ...]:
        """The names its shards know its parts by."""
        return tuple(part.name for part in self.parts)

    def info(self) -> VariableInfo:
        """The variable as an unsharded server would list it (on its first part's device)."""
        return VariableInfo(self.name, self.shape, self.dtype, self.optimizer, self.parts[0].device)

    def placement(self, part: Part, shards: int) -> Placement:
        """Where ``part`` is, as its shard records it."""
        partition = None
        if self.partitioned:
            partition = Partition(
                self.name, self.parts.index(part), len(self.parts), part.row_offset, self.shape
            )
        return Placement(part.shard, shards, partition, self.order, self.batch)


@dataclass(frozen=True)
class Declared:
    """A variable a ``create_variables`` call declares."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    optimizer: str

    @property
    def nbytes(self) -> int:
        """Bytes of its value."""
        return math.prod(self.shape) * self.dtype.itemsize


ALIGNMENT_BYTES = 64
"""Parts of a split variable start at multiples of this many bytes of the whole: TensorFlow's
CPU kernels update a tensor's elements a SIMD register (up to 64 bytes) at a time and the
rest one by one, which can round an element differently, so a part cut elsewhere would
not be updated bitwise as the whole variable is."""


def part_name(name: str, index: int) -> str:
    """The name of part ``index`` of variable ``name``."""
    return f"{name}/part_{index}"


def row_ranges(rows: int, parts: int, unit: int = 1) -> list[tuple[int, int]]:
    """``(offset, rows)`` of each of ``parts`` pieces of ``rows`` rows, cut at multiples of
    ``unit`` rows: the units are shared out evenly, the first ``units % parts`` pieces
    getting one more, and the last piece ends at ``rows``."""
    units = math.ceil(rows / unit)
    base, extra = divmod(units, parts)
    ranges, offset = [], 0
    for index in range(parts):
        size = min((base + (index < extra)) * unit, rows - offset)
        ranges.append((offset, size))
        offset += size
    return ranges


def alignment_rows(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The fewest rows of a variable whose bytes are a multiple of :data:`ALIGNMENT_BYTES`:
    the unit parts are cut at."""
    row_bytes = _row_bytes(shape, dtype)
    return ALIGNMENT_BYTES // math.gcd(ALIGNMENT_BYTES, row_bytes) if row_bytes else 1


class Layout:
    """The variables of a set of shards, by name.

    Args:
        shards: how many shards the client talks to.
        variables: the variables known so far.
    """

    def __init__(self, shards: int, variables: Iterable[Placed] = ()) -> None:
        self.shards = shards
        self.variables: dict[str, Placed] = {v.name: v for v in variables}

    def loads(self) -> list[int]:
        """Bytes each shard holds."""
        loads = [0] * self.shards
        for variable in self.variables.values():
            row_bytes = _row_bytes(variable.shape, variable.dtype)
            for part in variable.parts:
                loads[part.shard] += part.rows * row_bytes
        return loads

    def get(self, name: str) -> Placed:
        """The variable ``name``.

        Raises:
            NotFoundError: no shard holds it.
        """
        try:
            return self.variables[name]
        except KeyError:
            raise NotFoundError(
                f"variable {name!r} not found on any of the {self.shards} shards",
                Reason.UNKNOWN_VARIABLE.name,
                {"variable": name},
            ) from None

    def held(self) -> list[set[str]]:
        """The names each shard knows its variables and parts by."""
        held: list[set[str]] = [set() for _ in range(self.shards)]
        for variable in self.variables.values():
            for part in variable.parts:
                held[part.shard].add(part.name)
        return held

    def optimizer_shards(self, optimizer: str) -> list[int]:
        """The shards holding a variable (or a part of one) of ``optimizer``, in order."""
        return sorted(
            {s for v in self.variables.values() if v.optimizer == optimizer for s in v.shards}
        )

    def ordered(self) -> list[Placed]:
        """The variables in creation order."""
        return sorted(self.variables.values(), key=lambda v: v.order)

    def place(
        self,
        declared: Sequence[Declared],
        max_shard_bytes: int | None,
        *,
        together: bool = False,
    ) -> list[Placed]:
        """Places the variables of ``declared`` this layout does not hold, and adds them.

        Args:
            declared: the variables of one ``create_variables`` call.
            max_shard_bytes: bytes above which a variable is split; None: never.
            together: puts them all, whole, on one shard: the one holding their optimizer's
                other variables, else the least loaded (an optimizer with
                ``global_clipnorm`` needs all its gradients in one place for its norm).

        Returns:
            The new variables, in declaration order.
        """
        for one in declared:  # before anything is placed: a refused call places nothing
            if one.name in self.variables:
                _check_same_declaration(self.variables[one.name], one)
        loads = self.loads()
        order = batch = max((v.order for v in self.variables.values()), default=-1) + 1
        placed = []
        for one in declared:
            if one.name in self.variables:
                continue
            shards = range(self.shards)
            if together:
                held = self.optimizer_shards(one.optimizer)
                shards = range(held[0], held[0] + 1) if held else shards
                max_shard_bytes = None
            variable = _place_one(one, loads, shards, max_shard_bytes, (order, batch), self.held())
            order += 1
            self.variables[variable.name] = variable
            placed.append(variable)
        return placed


def _place_one(
    declared: Declared,
    loads: list[int],
    shards: Sequence[int],
    max_shard_bytes: int | None,
    position: tuple[int, int],
    held: Sequence[set[str]] = (),
) -> Placed:
    """Places one variable greedily on ``shards``, adding its bytes to ``loads``; a piece
    avoids a shard that already holds a variable or part of its name (``x/part_0`` and a
    part of ``x``), which would refuse it, when another shard can take it. ``position`` is
    its ``order`` and ``batch``."""
    rows = declared.shape[0] if declared.shape else 1
    unit = alignment_rows(declared.shape, declared.dtype)
    count = 1
    if max_shard_bytes is not None and declared.shape and declared.nbytes > max_shard_bytes:
        count = min(
            math.ceil(declared.nbytes / max_shard_bytes), len(shards), math.ceil(rows / unit)
        )
    row_bytes = _row_bytes(declared.shape, declared.dtype)
    parts, used = [], set()
    for index, (offset, size) in enumerate(row_ranges(rows, count, unit)):
        name = declared.name if count == 1 else part_name(declared.name, index)
        free = [s for s in shards if s not in used]
        free = [s for s in free if not held or name not in held[s]] or free
        shard = min(free, key=loads.__getitem__)
        used.add(shard)
        loads[shard] += size * row_bytes
        parts.append(Part(name, shard, offset, size))
    return Placed(
        declared.name,
        declared.shape,
        declared.dtype,
        declared.optimizer,
        tuple(parts),
        *position,
    )


def _row_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape[1:]) * dtype.itemsize


def layout_from_listings(listings: Sequence[Sequence[VariableInfo]]) -> Layout:
    """The layout the listings of every shard (in address order) describe.

    Raises:
        FailedPreconditionError: a variable is on two shards, a partitioned one lacks a
            part, or a shard holds a variable placed for another shard.
    """
    shards = len(listings)
    whole: dict[str, Placed] = {}
    pieces: dict[str, list[tuple[int, VariableInfo]]] = {}
    for shard, infos in enumerate(listings):
        for info in infos:
            placement = info.placement
            if placement is not None and (placement.shard, placement.shards) != (shard, shards):
                raise _inconsistent(
                    f"variable {info.name!r} on shard {shard} of {shards} was placed as shard "
                    f"{placement.shard} of {placement.shards}"
                )
            if placement is not None and placement.partition is not None:
                pieces.setdefault(placement.partition.variable, []).append((shard, info))
                continue
            if info.name in whole:
                raise _inconsistent(
                    f"variable {info.name!r} is on shards {whole[info.name].parts[0].shard} "
                    f"and {shard}"
                )
            rows = info.shape[0] if info.shape else 1
            order = placement.order if placement is not None else len(whole)
            whole[info.name] = Placed(
                info.name,
                info.shape,
                info.dtype,
                info.optimizer,
                (Part(info.name, shard, 0, rows, info.device),),
                order,
                placement.batch if placement is not None else order,
            )
    for name, found in pieces.items():
        whole[name] = _assembled(name, found)
    return Layout(shards, whole.values())


def _assembled(name: str, found: list[tuple[int, VariableInfo]]) -> Placed:
    """The partitioned variable ``name`` from the parts the shards listed."""
    found.sort(key=lambda item: _partition(item[1]).index)
    first = _partition(found[0][1])
    indices = [_partition(info).index for _, info in found]
    if indices != list(range(first.count)):
        raise _inconsistent(
            f"variable {name!r}: expected parts 0..{first.count - 1} on the shards, "
            f"found parts {indices}"
        )
    parts = tuple(
        Part(info.name, shard, _partition(info).row_offset, info.shape[0], info.device)
        for shard, info in found
    )
    info = found[0][1]
    placement = info.placement
    assert placement is not None
    return Placed(
        name,
        tuple(first.shape),
        info.dtype,
        info.optimizer,
        parts,
        placement.order,
        placement.batch,
    )


def _partition(info: VariableInfo) -> Partition:
    assert info.placement is not None and info.placement.partition is not None
    return info.placement.partition


def declaration(
    layout: Layout, variable: Placed, part: Part, value: np.ndarray
) -> pb.VariableDeclaration:
    """The declaration of ``part`` of ``variable``, with ``value`` its initial value."""
    return codec.build_message(
        pb.VariableDeclaration,
        name=part.name,
        spec=codec.spec_of(value),
        placement=convert.placement_to_message(variable.placement(part, layout.shards)),
    )


def _inconsistent(message: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"the shards disagree on placement: {message} (a different or reordered shard list?)",
        Reason.SHARD_MISMATCH.name,
    )


# Splitting calls ----------------------------------------------------------------------------


def split_gradients(
    layout: Layout, gradients: Mapping[str, object]
) -> dict[int, dict[str, object]]:
    """The gradients each shard gets, by the names it knows its parts by.

    A dense gradient of a partitioned variable is cut by rows; a sparse one gives each part
    the rows it holds, renumbered, and none to a part holding none of them (still a sparse
    gradient: Keras's Adam, Adamax and Nadam update every row of a variable given one).

    Every gradient is checked first, as one server checks a push before anything changes,
    so that no shard applies a push another one refuses.

    Raises:
        NotFoundError: a gradient names a variable no shard holds.
        InvalidArgumentError: a gradient does not fit its variable (dtype, shape,
            ``dense_shape``, indices), with a server's reason and message.
    """
    for name, gradient in gradients.items():
        if gradient is not None:
            check_gradient(layout.get(name), gradient)
    by_shard: dict[int, dict[str, object]] = {}
    for name, gradient in gradients.items():
        if gradient is None:
            continue
        variable = layout.get(name)
        if not variable.partitioned:
            by_shard.setdefault(variable.parts[0].shard, {})[name] = gradient
            continue
        slices = convert.as_indexed_slices(gradient)
        if slices is None:
            dense = convert.to_numpy(gradient)
            for part, rows in zip(variable.parts, split_dense(variable, dense), strict=True):
                by_shard.setdefault(part.shard, {})[part.name] = rows
            continue
        indices = np.asarray(slices.indices).reshape(-1)
        values = np.asarray(slices.values)
        check_rows(variable, indices)
        for part in variable.parts:  # every part, rows or none: Adam's updates all rows
            held = (indices >= part.row_offset) & (indices < part.row_offset + part.rows)
            by_shard.setdefault(part.shard, {})[part.name] = IndexedSlices(
                values[held],
                (indices[held] - part.row_offset).astype(indices.dtype),
                (part.rows, *variable.shape[1:]),
            )
    return by_shard


def check_gradient(variable: Placed, gradient: object) -> None:
    """Refuses a gradient that does not fit ``variable`` (the whole variable, split or
    not), with the reason and message of a server's check
    (:func:`tfps_client.wire.checks.check_gradient`, which servers run).

    Raises:
        InvalidArgumentError: a wrong dtype, shape, ``dense_shape`` or indices.
    """
    slices = convert.as_indexed_slices(gradient)
    if slices is None:
        wire: convert.Gradient = convert.DenseGradient(variable.name, convert.to_numpy(gradient))
    else:
        wire = convert.SparseGradient(
            variable.name,
            np.asarray(slices.values),
            np.asarray(slices.indices),
            tuple(slices.dense_shape or ()),
        )
    with refused_as_invalid():
        checks.check_gradient(variable, wire)


def check_finite_gradients(gradients: Sequence[tuple[str, object]]) -> None:
    """Refuses NaN and Inf in the values of ``gradients`` (name, gradient), as a server
    refuses them for an optimizer created with ``on_non_finite="reject"``.

    Raises:
        InvalidArgumentError: a gradient holds some (reason ``NON_FINITE_GRADIENT``).
    """
    for name, gradient in gradients:
        with refused_as_invalid():
            checks.check_finite(
                f"variable {checks.shown(name)}",
                "gradient values",
                _values(gradient),
                {"variable": name},
                Reason.NON_FINITE_GRADIENT,
            )


def all_finite(gradients: Iterable[object]) -> bool:
    """Whether no value of ``gradients`` is NaN or Inf: else a server skips the update of an
    optimizer created with ``on_non_finite="skip"`` that they all go to.

    One server decides on the norm of the optimizer's gradients, which is not finite either
    when a float64 gradient's squares overflow (elements of 1e154 or more): that case is
    not seen here.
    """
    return all(np.isfinite(_values(gradient)).all() for gradient in gradients)


def _values(gradient: object) -> np.ndarray:
    """The values of a dense or sparse gradient."""
    slices = convert.as_indexed_slices(gradient)
    return convert.to_numpy(gradient) if slices is None else np.asarray(slices.values)


def check_rows(variable: Placed, indices: np.ndarray) -> None:
    """Refuses row indices of ``variable`` out of ``[0, rows)``, as a server does.

    Raises:
        InvalidArgumentError: an index is out of range.
    """
    with refused_as_invalid():
        checks.check_rows(variable, indices)


@contextlib.contextmanager
def refused_as_invalid() -> Iterator[None]:
    """Raises a :class:`~tfps_client.wire.checks.Refusal` as the
    :class:`InvalidArgumentError` a server's would be."""
    try:
        yield
    except checks.Refusal as refusal:
        raise InvalidArgumentError(
            refusal.message,
            refusal.reason.value,
            {key: checks.fact(value) for key, value in refusal.metadata.items()},
        ) from None


def check_weights(
    optimizer: str, specs: Sequence[checks.WeightSpec], weights: Sequence[np.ndarray]
) -> None:
    """Refuses, as a server's ``set_weights`` does, weights after ``iterations`` that do not
    fit their specs (both in one server's order), before any shard sets its own.

    Raises:
        InvalidArgumentError: ``WEIGHTS_MISMATCH`` or ``NON_FINITE_VALUE``, as a server's.
    """
    with refused_as_invalid():
        for index, (spec, value) in enumerate(zip(specs, weights, strict=True), 1):
            checks.check_weight(optimizer, index, spec, value)


def _check_same_declaration(existing: Placed, declared: Declared) -> None:
    """Refuses a declaration of an existing variable that differs from it, naming what
    differs, as a server does (before any shard is asked to create anything).

    Raises:
        AlreadyExistsError: its shape, dtype or optimizer differs.
    """
    differences = [
        (what, old, new)
        for what, old, new in (
            ("shape", list(existing.shape), list(declared.shape)),
            ("dtype", existing.dtype.name, declared.dtype.name),
            ("optimizer", existing.optimizer, declared.optimizer),
        )
        if old != new
    ]
    if not differences:
        return
    text = "; ".join(f"{what}: exists with {old}, received {new}" for what, old, new in differences)
    what, old, new = differences[0]
    raise AlreadyExistsError(
        f"variable {checks.shown(existing.name)}: {text}",
        Reason.VARIABLE_EXISTS.name,
        {"variable": existing.name, "field": what, "expected": str(old), "received": str(new)},
    )


def split_dense(variable: Placed, value: np.ndarray) -> list[np.ndarray]:
    """``value`` cut into the rows of each part of ``variable`` (whole when not split)."""
    if not variable.partitioned or value.ndim == 0:
        return [value]
    return [value[part.row_offset : part.row_offset + part.rows] for part in variable.parts]


def split_rows(variable: Placed, ids: np.ndarray) -> dict[int, tuple[Part, np.ndarray]]:
    """For ``pull_rows``: the part and local row ids each shard is asked for (only the
    shards holding some of ``ids``)."""
    if not variable.partitioned:
        return {variable.parts[0].shard: (variable.parts[0], ids)}
    check_rows(variable, ids)
    asked = {}
    for part in variable.parts:
        held = (ids >= part.row_offset) & (ids < part.row_offset + part.rows)
        if held.any():
            asked[part.shard] = (part, ids[held] - part.row_offset)
    if not asked:  # no ids: the first part answers none, as a server does
        asked[variable.parts[0].shard] = (variable.parts[0], ids[:0])
    return asked


def join_rows(variable: Placed, ids: np.ndarray, answers: Mapping[int, np.ndarray]) -> np.ndarray:
    """The rows of ``ids`` in their order, from each shard's answer to :func:`split_rows`."""
    if not variable.partitioned:
        return answers[variable.parts[0].shard]
    rows = np.empty((ids.size, *variable.shape[1:]), variable.dtype)
    for part in variable.parts:
        held = (ids >= part.row_offset) & (ids < part.row_offset + part.rows)
        if held.any():
            rows[held] = answers[part.shard]
    return rows


def join_parts(variable: Placed, values: Mapping[tuple[int, str], np.ndarray]) -> np.ndarray:
    """The whole value of ``variable`` from its parts' values, by (shard, part name): a
    part's name may be another variable's on another shard."""
    if not variable.partitioned:
        return values[(variable.parts[0].shard, variable.name)]
    return np.concatenate([values[(part.shard, part.name)] for part in variable.parts])


def check_initial_value(name: str, value: np.ndarray) -> None:
    """Refuses an initial value a server would refuse (dtype, dimensions, NaN or Inf), before
    any shard creates anything.

    Raises:
        InvalidArgumentError: as a server's.
    """
    with refused_as_invalid():
        checks.check_initial_value(name, value)


def as_whole(
    wholes: Mapping[str, str], step: calls.Call | calls.Fanout, *, part_fact: bool = False
) -> Steps[Any]:
    """Makes ``step``, which names parts of split variables (``wholes``: part name ->
    variable name); an error naming a part is raised naming its variable, as one server
    would: in the part's place in the message or, when the error is about a fact of the
    part's own (``part_fact``: its name's length, say), in front of the message.

    Raises:
        TfpsError: the step's, the part's name in its ``variable`` replaced by the variable's.
    """
    try:
        return (yield step)
    except TfpsError as error:
        part = error.metadata.get("variable", "")
        whole = wholes.get(part, part)
        if whole == part:
            raise
        message = (
            f"variable {checks.shown(whole)}: {error.message}"
            if part_fact
            else error.message.replace(checks.shown(part), checks.shown(whole))
        )
        raise type(error)(message, error.reason, {**error.metadata, "variable": whole}) from None


VARIABLE_MAJOR = frozenset({"ftrl"})
"""Keras classes (lower case) whose ``_create_slots`` makes every slot of one variable
before the next variable's; the others make one slot name for every variable at a time."""


class OptimizerWeights:
    """Where an optimizer's weights live over the shards, in Keras order.

    One server orders them as ``iterations``, its other non-slot weights (Nadam's
    ``momentum_cache``), then per ``create_variables`` call (a batch) the slots in the order
    Keras's ``_create_slots`` makes them: each slot name in turn for every variable of the
    call, except Ftrl's, every slot of one variable after the other
    (:data:`VARIABLE_MAJOR`). Each shard orders its own the same way over the parts it
    holds (one create request per call), so the two orders map onto each other.

    Args:
        layout: the variables.
        optimizer: the optimizer's name.
        slots: its slot names, in Keras's order.
        class_name: its Keras class.
    """

    def __init__(
        self, layout: Layout, optimizer: str, slots: Sequence[str], class_name: str
    ) -> None:
        self._variable_major = class_name.lower() in VARIABLE_MAJOR
        held = [v for v in layout.ordered() if v.optimizer == optimizer]
        batches: dict[int, list[Placed]] = {}
        for variable in held:
            batches.setdefault(variable.batch, []).append(variable)
        self._batches = [batches[b] for b in sorted(batches)]
        self._slots = list(slots)
        self.shards = sorted({shard for variable in held for shard in variable.shards})
        """The shards holding its variables (and so its slots)."""
        self._count = layout.shards

    def whole(self) -> list[tuple[Placed, str]]:
        """(variable, slot) of each slot weight, in one server's order."""
        return [pair for batch in self._batches for pair in self._created(batch)]

    def of_shard(self, shard: int) -> list[tuple[Placed, Part, str]]:
        """(variable, part, slot) of each slot weight ``shard`` holds, in its order."""
        return [
            (v, part, s)
            for batch in self._batches
            for v, s in self._created(batch)
            for part in v.parts
            if part.shard == shard
        ]

    def _created(self, batch: Sequence[Placed]) -> list[tuple[Placed, str]]:
        """(variable, slot) in the order Keras creates a batch's slots."""
        if self._variable_major:
            return [(v, s) for v in batch for s in self._slots]
        return [(v, s) for s in self._slots for v in batch]

    def join(self, by_shard: Mapping[int, Sequence[np.ndarray]]) -> list[np.ndarray]:
        """One server's weights from each holding shard's ``get_weights``."""
        if not self.shards:
            return list(by_shard[0])
        home = by_shard[self.shards[0]]
        other = len(home) - 1 - len(self.of_shard(self.shards[0]))  # non-slot weights
        parts: dict[tuple[int, str, str], np.ndarray] = {}
        for shard in self.shards:
            listed = self.of_shard(shard)
            for (_, part, slot), value in zip(listed, by_shard[shard][1 + other :], strict=True):
                parts[(part.shard, part.name, slot)] = value
        slots = [
            np.concatenate([parts[(p.shard, p.name, s)] for p in v.parts]) for v, s in self.whole()
        ]
        return [*home[: 1 + other], *slots]

    def split(self, weights: Sequence[np.ndarray], others: int) -> dict[int, list[np.ndarray]]:
        """Each shard's ``set_weights`` list from one server's ``weights``, which hold
        ``others`` non-slot weights after ``iterations``.

        Raises:
            InvalidArgumentError: the number of weights, or a slot's shape, is not the
                optimizer's (reason ``WEIGHTS_MISMATCH``); nothing was sent.
        """
        whole = self.whole()
        expected = 1 + others + len(whole)
        if len(weights) != expected:
            raise InvalidArgumentError(
                f"set_weights: expected {expected} weights (iterations, {others} others and "
                f"{len(whole)} slots), received {len(weights)}",
                Reason.WEIGHTS_MISMATCH.value,
                {"expected": str(expected), "received": str(len(weights))},
            )
        values: dict[tuple[int, str, str], np.ndarray] = {}
        for (variable, slot), value in zip(whole, weights[1 + others :], strict=True):
            if np.shape(value) != variable.shape:
                raise InvalidArgumentError(
                    f"set_weights: expected slot {slot!r} of {variable.name!r} of shape "
                    f"{list(variable.shape)}, received {list(np.shape(value))}",
                    Reason.WEIGHTS_MISMATCH.value,
                    {"variable": variable.name, "slot": slot},
                )
            pieces = split_dense(variable, np.asarray(value))
            for part, piece in zip(variable.parts, pieces, strict=True):
                values[(part.shard, part.name, slot)] = piece
        head = list(weights[: 1 + others])
        return {  # a shard without its variables has only iterations
            shard: head + [values[(shard, p.name, s)] for _, p, s in self.of_shard(shard)]
            if shard in self.shards
            else head[:1]
            for shard in range(self._count)
        }
