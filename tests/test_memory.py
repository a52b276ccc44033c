"""Bounded memory over time: nothing grows per save, per request id beyond the window, or per
restore (docs/state-model.md, "Bounded memory").

The server runs in this process, so its memory is this process's resident set (VmRSS).
Before each reading glibc hands its free pages back (``malloc_trim``), so that a reading
counts what is held, not what the allocator keeps for later. Python's cyclic garbage
collector is off while operations run: memory must be freed by the server itself, as each
operation ends, not at some later full collection (which may come after many restores,
each holding a whole model). Each test warms up, reads after N operations and again after
3N, and allows the growth of half of what keeping one operation's data per operation would
cost: a real leak per operation fails, allocator noise does not.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tfps_client import Client
from tfps_server import Registry, create_server
from tfps_server.checkpoints import Checkpointer
from tfps_server.limits import Limits

WINDOW = 20
"""``--request-window``: small, so that a few pushes turn it over."""
ID_BYTES = 512 * 1024
"""Length of each request id: a full window holds 10 MiB of them (``--max-id-bytes`` is
raised to allow it)."""
KEEP = 2
BIG = np.ones(1024 * 1024, np.float32)
"""4 MiB; with Adam's two slots the state holds 12 MiB of it."""
SMALL = np.ones(4, np.float32)
STATE_BYTES = 3 * BIG.nbytes
"""What a replaced state holds: BIG and its two slots."""
WINDOW_BYTES = WINDOW * ID_BYTES
"""What a full window holds, and so each checkpoint's metadata."""

_LIBC = ctypes.CDLL(None)


def rss_bytes() -> int:
    """This process's resident memory, with malloc's free pages handed back."""
    _LIBC.malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("/proc/self/status has no VmRSS line")


@contextmanager
def collector_off() -> Iterator[None]:
    """Collects garbage once, then keeps Python's cyclic garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class Env:
    """An in-process server with checkpoints, its checkpointer, and a client."""

    client: Client
    checkpointer: Checkpointer
    numbers: Iterator[int]

    def push(self) -> None:
        """One push of the small variable under a request id never used before."""
        request_id = f"{next(self.numbers):08d}".ljust(ID_BYTES, "x")
        self.client.push({"small": SMALL}, request_id=request_id)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A server with a window of WINDOW ids, Adam on BIG and SMALL, and a full window."""
    registry = Registry(request_window=WINDOW, limits=Limits(max_id_bytes=ID_BYTES))
    checkpointer = Checkpointer(registry, tmp_path / "ckpts", keep=KEEP)
    running = create_server(registry, "127.0.0.1:0", checkpointer=checkpointer)
    with Client(f"127.0.0.1:{running.port}", timeout=120) as client:
        client.create_optimizer("adam", {"class_name": "Adam", "config": {}})
        client.create_variables({"big": BIG, "small": SMALL}, optimizer="adam")
        environment = Env(client, checkpointer, itertools.count())
        for _ in range(WINDOW):
            environment.push()
        yield environment
    running.stop(None)


def test_the_checkpoint_summaries_cached_stay_within_keep_plus_one(env: Env) -> None:
    """However many checkpoints are saved, listed and restored, the checkpointer caches the
    summaries of at most keep + 1 of them; a checkpointer opened with a smaller keep than
    the checkpoints retained lists them all and still caches keep + 1."""
    for saved in range(1, 4 * KEEP):
        env.push()
        env.client.save_checkpoint()
        assert len(env.checkpointer._infos) <= KEEP + 1
        assert len(env.client.list_checkpoints()) == min(saved, KEEP)
        env.client.restore_checkpoint()
        assert len(env.checkpointer._infos) <= KEEP + 1
    wide = Checkpointer(Registry(), env.checkpointer.directory.parent / "wide", keep=5)
    wide.registry.create_optimizer("sgd", '{"class_name": "SGD", "config": {}}')
    for _ in range(5):
        wide.save()
    narrow = Checkpointer(Registry(), wide.directory, keep=1)
    assert [info.id for info in narrow.retained()] == [1, 2, 3, 4, 5]
    assert len(narrow._infos) == 2


def save(env: Env) -> None:
    """A save of a window none of the earlier saves held, as when training goes on."""
    for _ in range(WINDOW):
        env.push()
    env.client.save_checkpoint()


def restore(env: Env) -> None:
    env.client.restore_checkpoint()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("operation", "count", "leak_bytes"),
    [
        (save, 5, WINDOW_BYTES),
        (restore, 6, STATE_BYTES),
        (Env.push, 8 * WINDOW, ID_BYTES),
    ],
    ids=["save", "restore", "push"],
)
def test_memory_does_not_grow_with_the_number_of_operations(
    env: Env, operation: Callable[[Env], None], count: int, leak_bytes: int
) -> None:
    """RSS after 3N saves (each holding a full window), restores (each replacing the whole
    state) or pushes with new request ids is within half of leak_bytes per operation of RSS
    after N: what an operation holds is freed when it ends, not kept per operation."""
    env.client.save_checkpoint()
    with collector_off():
        for _ in range(count):
            operation(env)
        after_n = rss_bytes()
        for _ in range(2 * count):
            operation(env)
        growth = rss_bytes() - after_n
    allowed = (2 * count) * leak_bytes // 2  # half of what 2N leaking operations would keep
    assert growth < allowed, f"RSS grew {growth / 2**20:.1f} MiB, allowed {allowed / 2**20:.1f}"
