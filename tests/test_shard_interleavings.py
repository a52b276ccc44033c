"""Several shards, interleaved on purpose (docs/state-model.md, "Several shards").

A sharded client's push is one push per shard, sent at once under one request id, and each
shard serializes what it receives on its own. Each test holds a thread of one shard at a
named point of its state model (tests/interleave.py), on that shard only, runs another
operation to completion, releases the thread, and compares what every shard holds, bitwise,
with a single server (the reference) given the same operations in the order that shard
saw them. No sleeps: threads are held and released by events.

Three in-process shards (each with hooks and a checkpoint directory) and the reference
serve the whole module; each test uses names of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pytest

from tfps_client import (
    AbortedError,
    Client,
    FailedPreconditionError,
    IndexedSlices,
    RetryPolicy,
    TfpsError,
    UnavailableError,
)
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_server import Registry, RunningServer, create_server
from tfps_server.checkpoints import Checkpointer

from fault_proxy import DROP_RESPONSE, PASS, FaultProxy
from helpers import assert_all_bitwise_equal, call_raw, raw_stub
from interleave import BlockingHooks, Gate, in_background

SHARDS = 3
MAX_SHARD_BYTES = 64
"""Splits each test's (12, 4) float32 table (192 bytes) in three parts of four rows, one on
each shard, so that every shard holds a part of every test's optimizer."""

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
"""Adam: its slots and bias correction make the order of two updates show in every bit."""
SLOTS = ("m", "v")


@dataclass
class Shard:
    """One shard: its server, the hooks of its state, and an unsharded client of it alone."""

    running: RunningServer
    hooks: BlockingHooks
    client: Client

    @property
    def address(self) -> str:
        """``host:port`` of the shard."""
        return f"127.0.0.1:{self.running.port}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Shard]]:
    root = tmp_path_factory.mktemp("shards")
    started = []
    for index in range(SHARDS):
        hooks = BlockingHooks()
        registry = Registry(hooks=hooks)
        checkpointer = Checkpointer(registry, root / f"shard-{index}", keep=20)
        running = create_server(registry, "127.0.0.1:0", checkpointer=checkpointer)
        client = Client(f"127.0.0.1:{running.port}", timeout=30)
        started.append(Shard(running, hooks, client))
    yield started
    for shard in started:
        shard.hooks.release_all()
        shard.client.close()
        shard.running.stop(None)


@pytest.fixture(autouse=True)
def released(shards: list[Shard]) -> Iterator[None]:
    """No server thread stays held after a test, whatever it left."""
    yield
    for shard in shards:
        shard.hooks.release_all()


@pytest.fixture(scope="module")
def reference() -> Iterator[Client]:
    """One server: what each shard is compared with."""
    running = create_server(Registry(), "127.0.0.1:0")
    with Client(f"127.0.0.1:{running.port}", timeout=30) as client:
        yield client
    running.stop(None)


def sharded_client(shards: list[Shard], timeout: float = 30, **options: Any) -> Client:
    """A client of the shards, in their order."""
    return Client(
        [s.address for s in shards], timeout=timeout, max_shard_bytes=MAX_SHARD_BYTES, **options
    )


@pytest.fixture(scope="module")
def sharded(shards: list[Shard]) -> Iterator[Client]:
    """The pushing worker."""
    with sharded_client(shards) as client:
        yield client


@pytest.fixture(scope="module")
def other(shards: list[Shard]) -> Iterator[Client]:
    """A second worker."""
    with sharded_client(shards) as client:
        yield client


@pytest.fixture(scope="module")
def admin(shards: list[Shard]) -> Iterator[Client]:
    """The client that saves, restores and sets weights while the workers' calls are in
    flight (a client's own calls share its fan-out threads: see the last test)."""
    with sharded_client(shards) as client:
        yield client


def setup(client: Client, prefix: str) -> None:
    """Optimizer ``prefix`` (Adam) with a table split over the shards and a bias on one of
    them, and one push, so that the slots hold something."""
    rng = np.random.default_rng(5)
    client.create_optimizer(prefix, ADAM)
    client.create_variables(
        {
            f"{prefix}/table": rng.normal(size=(12, 4)).astype(np.float32),
            f"{prefix}/bias": rng.normal(size=4).astype(np.float32),
        },
        optimizer=prefix,
    )
    client.push(gradients(prefix, 0))


def gradients(prefix: str, seed: int, bias_only: bool = False) -> dict[str, Any]:
    """A push of both variables (the table sparse), or of the bias alone: then the shards
    holding none of it get an ``advance`` of the optimizer."""
    rng = np.random.default_rng(100 + seed)
    bias = {f"{prefix}/bias": rng.normal(size=4).astype(np.float32)}
    if bias_only:
        return bias
    rows = IndexedSlices(rng.normal(size=(3, 4)).astype(np.float32), [1, 6, 10])
    return {f"{prefix}/table": rows, **bias}


class Piece(NamedTuple):
    """Rows of a variable's value, or of one of its slots, that one shard holds."""

    variable: str
    """The whole variable's name, without its optimizer's prefix."""
    slot: str
    """The slot; empty for the value."""
    start: int
    """The first row, of the whole variable."""
    stop: int
    """The row after the last."""
    value: np.ndarray

    @property
    def label(self) -> str:
        """``table[4:8] m``: what an assertion names it by."""
        return f"{self.variable}[{self.start}:{self.stop}] {self.slot}".rstrip()


def shard_pieces(shard: Shard, prefix: str) -> list[Piece]:
    """What one shard holds of the variables of optimizer ``prefix``: each variable or part
    there, its value and its slots."""
    pieces = []
    for info in shard.client.list_variables():
        if info.optimizer != prefix:
            continue
        partition = info.placement.partition if info.placement else None
        whole = (partition.variable if partition else info.name).removeprefix(f"{prefix}/")
        start = partition.row_offset if partition else 0
        rows = (start, start + info.shape[0])
        pieces.append(Piece(whole, "", *rows, shard.client.pull([info.name])[info.name]))
        for slot in SLOTS:
            pieces.append(Piece(whole, slot, *rows, shard.client.get_slot(info.name, slot)))
    return pieces


def one_server_state(reference: Client, prefix: str) -> dict[tuple[str, str], np.ndarray]:
    """One server's values and slots of the variables of optimizer ``prefix``, by (variable
    without the prefix, slot or empty for the value)."""
    names = {name: f"{prefix}/{name}" for name in ("table", "bias")}
    pulled = reference.pull(names.values())
    state = {}
    for name, whole in names.items():
        state[(name, "")] = pulled[whole]
        for slot in SLOTS:
            state[(name, slot)] = reference.get_slot(whole, slot)
    return state


def assert_shards_hold(
    shards: list[Shard], prefix: str, reference: Client, as_on: list[str]
) -> None:
    """Shard ``i`` holds, bitwise, the rows of one server's optimizer ``as_on[i]`` that it
    holds of optimizer ``prefix``, and its ``iterations``."""
    states = {name: one_server_state(reference, name) for name in set(as_on)}
    for shard, name in zip(shards, as_on, strict=True):
        pieces = shard_pieces(shard, prefix)
        held = {piece.label: piece.value for piece in pieces}
        expected = {
            piece.label: states[name][(piece.variable, piece.slot)][piece.start : piece.stop]
            for piece in pieces
        }
        assert_all_bitwise_equal(held, expected)
        assert shard.client.iterations(prefix) == reference.iterations(name)


def iterations_per_shard(shards: list[Shard], prefix: str) -> list[int]:
    """Each shard's own count of optimizer ``prefix``."""
    return [shard.client.iterations(prefix) for shard in shards]


def part_iterations(shards: list[Shard], group: str, prefix: str) -> list[int]:
    """The iterations of optimizer ``prefix`` in each shard's part of logical checkpoint
    ``group``."""
    return [
        next(i for i in shard.client.list_checkpoints() if i.group == group).iterations[prefix]
        for shard in shards
    ]


def held_on_one_shard(shards: list[Shard], held: int) -> tuple[Gate, list[Gate]]:
    """Holds the next push on shard ``held`` after its validation, before any lock; returns
    that gate and the gates counting the other shards' applies."""
    applied = [s.hooks.watch("push.applied") for i, s in enumerate(shards) if i != held]
    return shards[held].hooks.hold("push.validated"), applied


def wait_held_and_applied(held: Gate, applied: list[Gate]) -> None:
    """Waits until the push is held on its shard and applied on every other one."""
    held.wait_arrivals(1)
    for gate in applied:
        gate.wait_arrivals(1)


def refused(error: BaseException, kind: type[TfpsError], reason: str) -> None:
    """``error`` is a ``kind`` with ``reason``."""
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    assert error.reason == reason, f"{error.reason}: {error}"


# A partial failure, completed by a retry with the same request id ------------------------------

FAILED = 2
"""The shard whose part of a push fails (not shard 0, which the client asks an optimizer's
options)."""


def failing_push(prefix: str) -> dict[str, Any]:
    """A push of the bias: a gradient on the shard holding it, an ``advance`` elsewhere."""
    return gradients(prefix, 1, bias_only=True)


def assert_completed_by_its_retry(
    shards: list[Shard], sharded: Client, reference: Client, prefix: str, reached_failed: bool
) -> None:
    """After :func:`failing_push` raised: the other shards applied it (the failed one too
    if ``reached_failed``); pushed again with its request id, it is applied where it is
    missing and answered from the window elsewhere, so that every shard equals one server
    that got it once, ticks included."""
    counts = [2] * SHARDS
    counts[FAILED] = 2 if reached_failed else 1
    assert iterations_per_shard(shards, prefix) == counts
    retried = sharded.push(failing_push(prefix), request_id=prefix)
    assert retried.iterations == {prefix: 2}
    reference.push(failing_push(prefix))
    assert_shards_hold(shards, prefix, reference, [prefix] * SHARDS)


@pytest.mark.parametrize(
    "fault", [pytest.param(PASS, id="unreachable"), pytest.param(DROP_RESPONSE, id="answer-lost")]
)
def test_a_push_lost_on_the_way_to_one_shard_is_completed_by_its_retry(
    shards: list[Shard], sharded: Client, reference: Client, fault: str
) -> None:
    """One shard is unreachable (its proxy stopped: the push never arrives), or applies the
    push and its answer is lost (UNAVAILABLE). The call raises UNAVAILABLE (the client does
    not retry here; its own retries would end the same way once spent, or with
    DEADLINE_EXCEEDED); the other shards applied the push. The same request id completes it
    exactly once on every shard."""
    prefix = f"retry-{fault}"
    setup(sharded, prefix)
    setup(reference, prefix)
    proxy = FaultProxy(shards[FAILED].address, lambda _: fault)
    addresses = [s.address for s in shards]
    addresses[FAILED] = proxy.address
    pusher = Client(
        addresses, timeout=30, max_shard_bytes=MAX_SHARD_BYTES, retry=RetryPolicy(max_attempts=1)
    )
    try:
        pusher.list_variables()  # the shards declared, the layout listed
        assert pusher.iterations(prefix) == 1
        if fault == PASS:
            proxy.stop()
        with pytest.raises(UnavailableError):
            pusher.push(failing_push(prefix), request_id=prefix)
    finally:
        pusher.close()
        proxy.stop()
    assert_completed_by_its_retry(shards, sharded, reference, prefix, fault == DROP_RESPONSE)


def test_a_push_aborted_on_one_shard_by_its_restore_is_completed_by_its_retry(
    shards: list[Shard], sharded: Client, reference: Client
) -> None:
    """The push is held on one shard, applied on the others, when that shard alone restores
    its own latest checkpoint (the state it had): the push is ABORTED there and the call
    raises it. The same request id completes it exactly once on every shard."""
    prefix = "retry-aborted"
    setup(sharded, prefix)
    setup(reference, prefix)
    own = shards[FAILED].client.save_checkpoint()
    held, applied = held_on_one_shard(shards, FAILED)
    pushing = in_background(lambda: sharded.push(failing_push(prefix), request_id=prefix))
    wait_held_and_applied(held, applied)
    shards[FAILED].client.restore_checkpoint(own.id)
    held.release()
    refused(pushing.failure(), AbortedError, "STATE_REPLACED")
    assert_completed_by_its_retry(shards, sharded, reference, prefix, reached_failed=False)


# Admin operations racing a push half-way across the shards -------------------------------------

HELD = 1
"""The shard where a racing push is held, having applied on the others."""


def test_a_restore_racing_a_push_aborts_it_where_held_and_replaces_it_elsewhere(
    shards: list[Shard], sharded: Client, admin: Client, reference: Client
) -> None:
    """A push has applied on two shards and is held on the third when another client
    restores a logical checkpoint saved before it. The restore succeeds; the push is ABORTED
    on the held shard (its optimizer retired) and raises, its update replaced by the
    checkpoint's state on the others: every shard holds the checkpoint. Its windows do not
    hold the push, so a retry with the same request id applies it once on every shard."""
    prefix = "restore"
    setup(sharded, prefix)
    setup(reference, prefix)
    saved = admin.save_checkpoint()
    push = gradients(prefix, 1)

    held, applied = held_on_one_shard(shards, HELD)
    pushing = in_background(lambda: sharded.push(push, request_id=prefix))
    wait_held_and_applied(held, applied)
    admin.restore_checkpoint(saved.id)
    held.release()
    refused(pushing.failure(), AbortedError, "STATE_REPLACED")
    assert_shards_hold(shards, prefix, reference, [prefix] * SHARDS)

    assert sharded.push(push, request_id=prefix).iterations == {prefix: 2}
    reference.push(push)
    assert_shards_hold(shards, prefix, reference, [prefix] * SHARDS)


def test_set_weights_racing_a_push_leaves_each_shard_its_own_order(
    shards: list[Shard], sharded: Client, admin: Client, reference: Client
) -> None:
    """A push has applied on two shards and is held on the third when another client's
    set_weights replaces the optimizer's weights on all three. Neither call fails: set_weights
    aborts no async push. The two shards hold the push, then the weights set (their values
    updated by the push, their slots and iterations the ones set); the third holds the
    weights set, then the push applied to them. Each shard is one server's serialization,
    but not the same one: the held shard counts one step more, until weights are set again.
    set_weights keeps the exactly-once window: the push's retry is answered from it."""
    prefix = "set-weights"
    setup(sharded, prefix)
    push = gradients(prefix, 1)
    for order in ("push-then-set", "set-then-push"):
        setup(reference, f"{prefix}-{order}")
    weights = reference.get_weights(f"{prefix}-push-then-set")
    changed = [np.int64(10), *(np.asarray(w) * 0.5 for w in weights[1:])]

    held, applied = held_on_one_shard(shards, HELD)
    pushing = in_background(lambda: sharded.push(push, request_id=prefix))
    wait_held_and_applied(held, applied)
    admin.set_weights(prefix, changed)
    held.release()
    assert pushing.result().iterations == {prefix: 2}  # the lowest: shards 0 and 2's

    reference.push(gradients(f"{prefix}-push-then-set", 1))
    reference.set_weights(f"{prefix}-push-then-set", changed)
    reference.set_weights(f"{prefix}-set-then-push", changed)
    reference.push(gradients(f"{prefix}-set-then-push", 1))
    pushed_first, set_first = f"{prefix}-push-then-set", f"{prefix}-set-then-push"
    assert_shards_hold(shards, prefix, reference, [pushed_first, set_first, pushed_first])
    assert iterations_per_shard(shards, prefix) == [10, 11, 10]
    admin.set_weights(prefix, changed)  # aligned again, as the logical saves below need
    assert sharded.push(push, request_id=prefix).iterations == {prefix: 2}  # the windows'
    assert iterations_per_shard(shards, prefix) == [10, 10, 10]


# Logical checkpoints -----------------------------------------------------------------------------


def test_a_logical_checkpoint_cuts_the_same_count_of_pushes_not_the_same_pushes(
    shards: list[Shard], sharded: Client, other: Client, admin: Client, reference: Client
) -> None:
    """Two workers' pushes cross: A is held on shard 1, B on shards 0 and 2, each applied
    elsewhere. Every shard is then one step on, so a logical save cuts each at once: shards
    0 and 2 with A, shard 1 with B. Restored, iterations agree and each shard is one server
    that got its one push; each part's window holds that push's result, so pushing both again
    with their request ids applies each where it is missing, once."""
    prefix = "cut"
    setup(sharded, prefix)
    push_a, push_b = gradients(prefix, 1), gradients(prefix, 2)

    held_a, applied_a = held_on_one_shard(shards, 1)
    pushing_a = in_background(lambda: sharded.push(push_a, request_id="cut-a"))
    wait_held_and_applied(held_a, applied_a)
    shards[1].hooks.watch("push.validated")  # B passes on shard 1, where A waits
    applied_b = shards[1].hooks.watch("push.applied")
    held_b = [shards[s].hooks.hold("push.validated") for s in (0, 2)]
    pushing_b = in_background(lambda: other.push(push_b, request_id="cut-b"))
    for gate in held_b:
        gate.wait_arrivals(1)
    applied_b.wait_arrivals(1)
    assert iterations_per_shard(shards, prefix) == [2, 2, 2]
    saved = admin.save_checkpoint()
    for gate in [held_a, *held_b]:
        gate.release()
    pushing_a.result(), pushing_b.result()

    admin.restore_checkpoint(saved.id)
    for name, seed in (("a", 1), ("b", 2)):
        setup(reference, f"{prefix}-{name}")
        reference.push(gradients(f"{prefix}-{name}", seed))
    assert_shards_hold(shards, prefix, reference, ["cut-a", "cut-b", "cut-a"])

    sharded.push(push_a, request_id="cut-a")
    other.push(push_b, request_id="cut-b")
    reference.push(gradients(f"{prefix}-a", 2))  # A then B: shards 0 and 2
    reference.push(gradients(f"{prefix}-b", 1))  # B then A: shard 1
    assert_shards_hold(shards, prefix, reference, ["cut-a", "cut-b", "cut-a"])
    assert iterations_per_shard(shards, prefix) == [3, 3, 3]


LAGGING = 2
"""The shard restarted from an older checkpoint."""


def test_a_shard_restored_from_an_older_checkpoint_lags_until_the_next_logical_save(
    shards: list[Shard], sharded: Client, admin: Client
) -> None:
    """One shard restored alone from its own older checkpoint (as a restart from it) is
    behind by the pushes it lost, and every later push keeps the gap: each shard counts the
    pushes it gets. A push with a ``step`` the others are at is ahead of it there: the others
    apply it, that shard refuses it (STEP_AHEAD), and again on a retry. A logical save
    saves at the highest iterations, so the lagging shard's part is cut as many pushes after
    the others: the parts have equal iterations (a restore of them realigns every shard)
    but not the same pushes. set_weights realigns the counts too."""
    prefix = "lag"
    setup(sharded, prefix)
    own = shards[LAGGING].client.save_checkpoint()
    for seed in (1, 2):
        sharded.push(gradients(prefix, seed))
    shards[LAGGING].client.restore_checkpoint(own.id)
    assert iterations_per_shard(shards, prefix) == [3, 3, 1]

    for _ in range(2):
        with pytest.raises(FailedPreconditionError) as ahead:
            sharded.push(gradients(prefix, 3), step=3, request_id="lag-ahead")
        refused(ahead.value, FailedPreconditionError, "STEP_AHEAD")
    assert iterations_per_shard(shards, prefix) == [4, 4, 1]

    cut = [shards[s].hooks.watch("save.captured") for s in range(SHARDS) if s != LAGGING]
    waiting = shards[LAGGING].hooks.watch("save.waiting")
    saving = in_background(admin.save_checkpoint)
    for gate in cut:
        gate.wait_arrivals(1)  # the others' parts: after pushes 1, 2 and 3
    waiting.wait_arrivals(1)
    for seed in (4, 5, 6):
        sharded.push(gradients(prefix, seed))
    saved = saving.result()  # the lagging shard's part: after pushes 4, 5 and 6
    assert iterations_per_shard(shards, prefix) == [7, 7, 4]
    assert part_iterations(shards, saved.group, prefix) == [4, 4, 4]
    admin.set_weights(prefix, admin.get_weights(prefix))  # the first shard's count, everywhere
    assert iterations_per_shard(shards, prefix) == [7, 7, 7]


def test_a_logical_save_waits_for_a_push_in_flight_on_every_shard(
    shards: list[Shard], sharded: Client, admin: Client
) -> None:
    """A push has applied on two shards and is held on the third when a logical save reads
    the iterations: it saves at the highest, so the third shard's part waits for the push,
    and every part holds it."""
    prefix = "in-flight"
    setup(sharded, prefix)
    held, applied = held_on_one_shard(shards, HELD)
    pushing = in_background(lambda: sharded.push(gradients(prefix, 1)))
    wait_held_and_applied(held, applied)
    waiting = shards[HELD].hooks.watch("save.waiting")
    saving = in_background(admin.save_checkpoint)
    waiting.wait_arrivals(1)
    held.release()
    pushing.result()
    assert part_iterations(shards, saving.result().group, prefix) == [2, 2, 2]


def test_a_push_overtaking_a_logical_save_on_one_shard_waits_for_it(
    shards: list[Shard], sharded: Client, admin: Client
) -> None:
    """A logical save reads every shard's iterations, then asks each to save at the
    highest; a push that reaches a shard before the save does takes it past that value. The
    gap is one round trip under training; here a save at the next step, waiting on the last
    shard, keeps the logical save's request there from registering until the push came (it
    waits its turn). The client promises that a push past the save waits for it."""
    prefix = "overtaken"
    setup(sharded, prefix)
    waiting = shards[2].hooks.watch("save.waiting")
    with raw_stub(shards[2].running.port) as stub:
        request = pb.SaveCheckpointRequest(at_iterations={prefix: 2})
        saving_next = in_background(lambda: call_raw(stub.SaveCheckpoint, request))
        waiting.wait_arrivals(1)
        cut = shards[0].hooks.watch("save.captured")
        saving = in_background(admin.save_checkpoint)
        cut.wait_arrivals(1)  # the iterations were read: shard 0 saves at 1
        sharded.push(gradients(prefix, 1))
        saving_next.result()
    saved = saving.result()
    assert saved.iterations[prefix] in (1, 2)
    assert saved.id in [info.id for info in admin.list_checkpoints()]


# Concurrent pushes of two workers ---------------------------------------------------------------


def test_two_workers_pushes_are_applied_in_opposite_orders_on_two_shards(
    shards: list[Shard], sharded: Client, other: Client, reference: Client
) -> None:
    """Async mode: worker A's push is held on shard 0 after the others applied it; worker B's
    push overtakes it there. Shard 0 applied B then A, shards 1 and 2 A then B: each equals
    one server given the pushes in its order (Adam's slots tell the orders apart), and
    every shard counted both."""
    prefix = "orders"
    setup(sharded, prefix)
    first, second = gradients(prefix, 1), gradients(prefix, 2)

    held, applied = held_on_one_shard(shards, 0)
    pushing = in_background(lambda: sharded.push(first))
    wait_held_and_applied(held, applied)
    shards[0].hooks.watch("push.validated")  # the second push passes where the first waits
    assert other.push(second).iterations == {prefix: 2}  # the lowest: shard 0 saw it first
    held.release()
    assert pushing.result().iterations == {prefix: 2}  # shards 1 and 2 saw it first

    for order in ("ab", "ba"):
        setup(reference, f"{prefix}-{order}")
        for seed in (1, 2) if order == "ab" else (2, 1):
            reference.push(gradients(f"{prefix}-{order}", seed))
    assert not np.array_equal(
        reference.get_slot(f"{prefix}-ab/bias", "m"), reference.get_slot(f"{prefix}-ba/bias", "m")
    )
    assert_shards_hold(shards, prefix, reference, ["orders-ba", "orders-ab", "orders-ab"])
    assert iterations_per_shard(shards, prefix) == [3, 3, 3]


def test_a_step_read_while_another_push_is_in_flight_is_ahead_on_no_shard(
    shards: list[Shard], sharded: Client, other: Client
) -> None:
    """Worker A's push has applied on two shards and not yet on the third when worker B
    reads the iterations to push gradients computed at that step (as RemoteOptimizer does
    with its push results): B's push must not be refused by the shard A has not reached."""
    prefix = "step"
    setup(sharded, prefix)
    held, applied = held_on_one_shard(shards, HELD)
    pushing = in_background(lambda: sharded.push(gradients(prefix, 1)))
    wait_held_and_applied(held, applied)
    shards[HELD].hooks.watch("push.validated")  # B passes where A waits
    try:
        other.push(gradients(prefix, 2), step=other.iterations(prefix))
    finally:
        held.release()
        pushing.result()
    assert iterations_per_shard(shards, prefix) == [3, 3, 3]


def test_a_call_held_on_the_shards_holds_up_no_other_call_of_the_same_client(
    shards: list[Shard], sharded: Client
) -> None:
    """One client's push is held on every shard; the same client's listing, from another
    thread, must still reach every shard. (Two sync workers sharing one client wait on each
    other this way until their steps time out, and the shards then close different steps.)
    """
    prefix = "shared-client"
    setup(sharded, prefix)
    with sharded_client(shards, timeout=60) as shared:
        shared.list_variables()  # the shards declared, the layout listed
        assert shared.iterations(prefix) == 1
        held = [shard.hooks.hold("push.validated") for shard in shards]
        pushing = in_background(lambda: shared.push(gradients(prefix, 1)))
        for gate in held:
            gate.wait_arrivals(1)
        listed = shared.list_variables()
        for gate in held:
            gate.release()
        assert pushing.result().iterations == {prefix: 2}
    assert f"{prefix}/table" in [info.name for info in listed]
