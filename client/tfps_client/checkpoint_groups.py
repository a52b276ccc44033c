"""A sharded client's logical checkpoints: one checkpoint on every shard, saved at the same
iterations under one ``group`` label, seen as one.

No I/O here: the functions group the shards' own listings and merge a group's infos.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfps_client.errors import FailedPreconditionError, NotFoundError
from tfps_client.sharding import layout_from_listings
from tfps_client.types import CheckpointInfo
from tfps_client.wire.reasons import Reason

Group = list[CheckpointInfo]
"""One logical checkpoint: each shard's checkpoint of it, in shard order."""


def complete_groups(listings: Sequence[Sequence[CheckpointInfo]]) -> list[Group]:
    """The logical checkpoints every shard holds a part of, oldest first (in the first
    shard's order); checkpoints without a group (a shard's own saves) are not ones."""
    by_label = [{info.group: info for info in listing if info.group} for listing in listings]
    return [
        [labels[info.group] for labels in by_label]
        for info in listings[0]
        if info.group and all(info.group in labels for labels in by_label)
    ]


def find_group(listings: Sequence[Sequence[CheckpointInfo]], checkpoint_id: int | None) -> Group:
    """The logical checkpoint ``checkpoint_id`` (its first shard's id); the latest when None.

    Raises:
        NotFoundError: no logical checkpoint has that id, or there is none.
        FailedPreconditionError: that checkpoint of the first shard belongs to a group some
            shard lacks (deleted, or its save failed there).
    """
    groups = complete_groups(listings)
    if checkpoint_id is None:
        if not groups:
            raise NotFoundError(
                f"no checkpoint saved on all {len(listings)} shards together",
                Reason.NO_CHECKPOINT.value,
            )
        return groups[-1]
    for group in groups:
        if group[0].id == checkpoint_id:
            return group
    first = next((info for info in listings[0] if info.id == checkpoint_id), None)
    if first is None or not first.group:
        raise NotFoundError(
            f"checkpoint {checkpoint_id}: expected a checkpoint saved on all "
            f"{len(listings)} shards together, received none with that id",
            Reason.UNKNOWN_CHECKPOINT.value,
            {"checkpoint": str(checkpoint_id)},
        )
    missing = [
        shard
        for shard, listing in enumerate(listings)
        if all(info.group != first.group for info in listing)
    ]
    raise FailedPreconditionError(
        f"checkpoint {checkpoint_id}: shards {missing} hold no part of it (group "
        f"{first.group!r}): it cannot be restored whole",
        Reason.CHECKPOINT_MISMATCH.value,
        {"checkpoint": str(checkpoint_id), "group": first.group},
    )


def merged(group: Group) -> CheckpointInfo:
    """A logical checkpoint as one: the first shard's id and path, the latest save time,
    all the bytes, every optimizer's iterations, and the whole variables."""
    iterations: dict[str, int] = {}
    for info in group:
        for optimizer, count in info.iterations.items():
            iterations[optimizer] = max(iterations.get(optimizer, 0), count)
    layout = layout_from_listings([info.variables for info in group])
    return CheckpointInfo(
        id=group[0].id,
        path=group[0].path,
        saved_at=max(info.saved_at for info in group),
        size_bytes=sum(info.size_bytes for info in group),
        iterations=iterations,
        variables=tuple(placed.info() for placed in layout.ordered()),
        group=group[0].group,
    )
