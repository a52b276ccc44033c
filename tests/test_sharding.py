"""The sharded client's placement and splitting, without servers (tfps_client.sharding)."""

from __future__ import annotations

import numpy as np
import pytest

from tfps_client import IndexedSlices
from tfps_client.checkpoint_groups import complete_groups, find_group
from tfps_client.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tfps_client.sharding import (
    Declared,
    Layout,
    join_parts,
    join_rows,
    layout_from_listings,
    row_ranges,
    split_dense,
    split_gradients,
    split_rows,
)
from tfps_client.types import CheckpointInfo, Partition, Placement, VariableInfo

F32 = np.dtype(np.float32)


def declared(name: str, *shape: int, optimizer: str = "default") -> Declared:
    return Declared(name, shape, F32, optimizer)


@pytest.mark.parametrize(
    ("rows", "parts", "unit", "expected"),
    [
        (10, 3, 1, [(0, 4), (4, 3), (7, 3)]),
        (9, 3, 1, [(0, 3), (3, 3), (6, 3)]),
        (2, 2, 1, [(0, 1), (1, 1)]),
        (5, 1, 1, [(0, 5)]),
        (10, 3, 4, [(0, 4), (4, 4), (8, 2)]),
        (64, 3, 8, [(0, 24), (24, 24), (48, 16)]),
    ],
)
def test_rows_split_as_tensorflows_fixed_partitioner_at_whole_units(
    rows: int, parts: int, unit: int, expected: list[tuple[int, int]]
) -> None:
    assert row_ranges(rows, parts, unit) == expected


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("width", [1, 2, 3, 16, 1000])
def test_parts_start_at_multiples_of_64_bytes(dtype: str, width: int) -> None:
    """Where TensorFlow's SIMD kernels round every element as over the whole variable."""
    (variable,) = Layout(3).place([Declared("v", (300, width), np.dtype(dtype), "o")], 64)
    row_bytes = width * np.dtype(dtype).itemsize
    assert all(part.row_offset * row_bytes % 64 == 0 for part in variable.parts)
    assert sum(part.rows for part in variable.parts) == 300


def test_each_variable_goes_to_the_least_loaded_shard_in_declaration_order() -> None:
    layout = Layout(3)
    layout.place(
        [declared("a", 100), declared("b", 10), declared("c", 10), declared("d", 30)], None
    )
    shards = {name: variable.shards for name, variable in layout.variables.items()}
    # a -> 0 (all empty, lowest index); b -> 1; c -> 2; d -> 1 (b's 40 bytes tie c's: lower index)
    assert shards == {"a": (0,), "b": (1,), "c": (2,), "d": (1,)}
    assert layout.loads() == [400, 160, 40]
    assert [v.name for v in layout.ordered()] == ["a", "b", "c", "d"]


def test_placement_is_the_same_for_the_same_declarations_and_keeps_placed_ones() -> None:
    first, second = Layout(2), Layout(2)
    declarations = [declared(f"v{i}", 1 + i % 3, 4) for i in range(7)]
    first.place(declarations, 64)
    second.place(declarations, 64)
    assert first.variables == second.variables
    before = dict(first.variables)
    assert first.place(declarations, 64) == []
    assert first.variables == before


def test_a_variable_above_max_shard_bytes_is_split_over_distinct_shards() -> None:
    layout = Layout(3)
    (emb,) = layout.place([declared("emb", 10, 4)], max_shard_bytes=64)  # 160 bytes
    assert emb.partitioned
    assert [(p.name, p.row_offset, p.rows) for p in emb.parts] == [
        ("emb/part_0", 0, 4),
        ("emb/part_1", 4, 4),
        ("emb/part_2", 8, 2),
    ]
    assert sorted(emb.shards) == [0, 1, 2]
    (small,) = layout.place([declared("bias", 4)], max_shard_bytes=64)
    assert not small.partitioned
    # never more parts than shards or rows
    (wide,) = Layout(3).place([declared("wide", 2, 1024)], max_shard_bytes=8)
    assert len(wide.parts) == 2
    (narrow,) = Layout(3).place([declared("narrow", 10, 2)], max_shard_bytes=8)
    assert len(narrow.parts) == 2  # rows 0-7 and 8-9: 64-byte units
    (scalar,) = Layout(3).place([declared("s")], max_shard_bytes=1)
    assert not scalar.partitioned


def test_dense_values_split_and_join_back() -> None:
    (emb,) = Layout(3).place([declared("emb", 10, 4)], max_shard_bytes=64)
    value = np.arange(40, dtype=np.float32).reshape(10, 4)
    pieces = split_dense(emb, value)
    assert [p.shape for p in pieces] == [(4, 4), (4, 4), (2, 4)]
    by_part = {
        (part.shard, part.name): piece for part, piece in zip(emb.parts, pieces, strict=True)
    }
    assert np.array_equal(join_parts(emb, by_part), value)


def test_a_sparse_gradient_gives_each_part_its_rows_renumbered() -> None:
    layout = Layout(3)
    (emb,) = layout.place([declared("emb", 10, 4)], max_shard_bytes=64)  # rows 0-3, 4-7, 8-9
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    by_shard = split_gradients(layout, {"emb": IndexedSlices(values, np.array([9, 0, 5, 0]))})
    parts = {part.name: by_shard[part.shard][part.name] for part in emb.parts}
    assert np.array_equal(parts["emb/part_0"].indices, [0, 0])
    assert np.array_equal(parts["emb/part_0"].values, values[[1, 3]])
    assert np.array_equal(parts["emb/part_1"].indices, [1])  # row 5 - offset 4
    assert np.array_equal(parts["emb/part_2"].indices, [1])  # row 9 - offset 8
    assert parts["emb/part_2"].dense_shape == (2, 4)
    only_first = split_gradients(layout, {"emb": IndexedSlices(values[:1], np.array([1]))})
    empty = only_first[emb.parts[1].shard]["emb/part_1"]
    assert empty.values.shape == (0, 4)  # still a sparse gradient: Adam updates every row


def test_rows_out_of_range_of_a_partitioned_variable_are_refused_before_any_call() -> None:
    layout = Layout(2)
    layout.place([declared("emb", 10, 2)], max_shard_bytes=16)
    for bad in (10, -1):
        with pytest.raises(InvalidArgumentError, match=r"expected row indices in \[0, 10\)"):
            split_gradients(
                layout, {"emb": IndexedSlices(np.ones((1, 2), np.float32), np.array([bad]))}
            )
        with pytest.raises(InvalidArgumentError, match=r"expected row indices in \[0, 10\)"):
            split_rows(layout.get("emb"), np.array([bad]))
    with pytest.raises(NotFoundError, match="'nope' not found on any of the 2 shards"):
        split_gradients(layout, {"nope": np.ones(1)})


def test_pulled_rows_come_back_in_the_order_asked() -> None:
    (emb,) = Layout(3).place([declared("emb", 10, 2)], max_shard_bytes=32)
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    ids = np.array([9, 0, 5, 0, 4])
    asked = split_rows(emb, ids)
    answers = {shard: table[part.row_offset + local] for shard, (part, local) in asked.items()}
    assert np.array_equal(join_rows(emb, ids, answers), table[ids])


def info(name: str, shape: tuple[int, ...], placement: Placement | None) -> VariableInfo:
    return VariableInfo(name, shape, F32, "default", "/device:CPU:0", placement)


def test_listings_make_the_layout_back() -> None:
    whole = Placement(1, 2, None, 0)
    part = Partition("emb", 0, 2, 0, (5, 2))
    other = Partition("emb", 1, 2, 3, (5, 2))
    layout = layout_from_listings(
        [
            [info("emb/part_0", (3, 2), Placement(0, 2, part, 1))],
            [info("w", (4,), whole), info("emb/part_1", (2, 2), Placement(1, 2, other, 1))],
        ]
    )
    assert [v.name for v in layout.ordered()] == ["w", "emb"]
    emb = layout.get("emb")
    assert emb.shape == (5, 2) and emb.shards == (0, 1) and emb.parts[1].row_offset == 3


@pytest.mark.parametrize(
    ("listings", "message"),
    [
        ([[info("w", (1,), Placement(1, 2, None, 0))], []], "placed as shard 1 of 2"),
        ([[info("w", (1,), None)], [info("w", (1,), None)]], "'w' is on shards 0 and 1"),
        (
            [[info("e/part_0", (1,), Placement(0, 2, Partition("e", 0, 2, 0, (2,)), 0))], []],
            r"expected parts 0\.\.1",
        ),
    ],
    ids=["reordered", "twice", "missing-part"],
)
def test_listings_that_disagree_are_refused(
    listings: list[list[VariableInfo]], message: str
) -> None:
    with pytest.raises(FailedPreconditionError, match=message):
        layout_from_listings(listings)


def checkpoint(checkpoint_id: int, group: str = "") -> CheckpointInfo:
    return CheckpointInfo(checkpoint_id, f"ckpt-{checkpoint_id}", 0.0, 1, {}, (), group)


def test_logical_checkpoints_are_the_groups_every_shard_holds() -> None:
    listings = [
        [checkpoint(1, "a"), checkpoint(2), checkpoint(3, "b"), checkpoint(4, "c")],
        [checkpoint(7, "a"), checkpoint(8, "b")],
        [checkpoint(1, "b"), checkpoint(2, "a"), checkpoint(3, "c")],
    ]
    groups = complete_groups(listings)
    assert [[info.id for info in group] for group in groups] == [[1, 7, 2], [3, 8, 1]]
    assert [info.id for info in find_group(listings, None)] == [3, 8, 1]
    assert [info.id for info in find_group(listings, 1)] == [1, 7, 2]
    with pytest.raises(FailedPreconditionError, match=r"shards \[1\] hold no part of it"):
        find_group(listings, 4)
    for unknown in (2, 99):
        with pytest.raises(NotFoundError, match="expected a checkpoint saved on all 3 shards"):
            find_group(listings, unknown)
    with pytest.raises(NotFoundError, match="no checkpoint saved on all 2 shards together"):
        find_group([[checkpoint(1)], []], None)
