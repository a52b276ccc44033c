"""Saves at given iterations (issue 12's logical checkpoints, the server's side): the save
waits for pushes to bring named optimizers to their values, holds the pushes that would
take one past its value until the cut, and gives up at its deadline. Interleavings are
forced with the server's hooks (tests/interleave.py), never by sleeping."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from tfps_client import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    Sync,
)
from tfps_client.types import CheckpointInfo, Outcome, ShardIdentity
from tfps_client.wire import checkpoint_layout as layout
from tfps_client.wire import convert
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire.reasons import decode_detail
from tfps_server import Registry, RunningServer, aggregation, create_server
from tfps_server.checkpoints import Checkpointer
from tfps_server.metrics import Metrics

from helpers import call_raw, raw_stub
from interleave import BlockingHooks, in_background

SGD = {"class_name": "SGD", "config": {"learning_rate": 0.5}}
ONES = np.ones(3, np.float32)


@pytest.fixture
def served(hooks: BlockingHooks, tmp_path: Path) -> Iterator[RunningServer]:
    """A real server with hooks and a checkpoint directory."""
    registry = Registry(hooks=hooks)
    running = create_server(
        registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, tmp_path / "ckpts", keep=5)
    )
    yield running
    hooks.release_all()
    running.stop(None)


@pytest.fixture
def client(served: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{served.port}", timeout=60.0) as connected:
        yield connected


@pytest.fixture
def stub(served: RunningServer) -> Iterator[object]:
    with raw_stub(served.port) as connected:
        yield connected


def setup(client: Client, *optimizers: str) -> None:
    """An SGD optimizer per name, each with one variable ``w<name>``."""
    for name in optimizers:
        client.create_optimizer(name, SGD)
        client.create_variables({f"w{name}": np.zeros(3, np.float32)}, optimizer=name)


def save_at(stub: object, group: str = "", **at_iterations: int) -> CheckpointInfo:
    request = pb.SaveCheckpointRequest(at_iterations=at_iterations, group=group)
    response = call_raw(stub.SaveCheckpoint, request)  # type: ignore[attr-defined]
    return convert.checkpoint_info_from_message(response.checkpoint)


def test_a_save_at_the_current_iterations_is_immediate_and_keeps_its_group(
    client: Client, stub: object
) -> None:
    setup(client, "a")
    client.push({"wa": ONES})
    info = save_at(stub, group="logical-7", a=1)
    assert info.iterations == {"a": 1}
    assert info.group == "logical-7"
    assert [(c.id, c.group) for c in client.list_checkpoints()] == [(info.id, "logical-7")]
    assert client.restore_checkpoint(info.id).group == "logical-7"


def test_a_save_waits_for_pushes_to_reach_its_iterations(
    client: Client, stub: object, hooks: BlockingHooks
) -> None:
    setup(client, "a")
    waiting = hooks.watch("save.waiting")
    saving = in_background(lambda: save_at(stub, a=2))
    waiting.wait_arrivals(1)
    client.push({"wa": ONES})
    waiting.wait_arrivals(2)  # it looked again, and waits on: one push short
    assert client.list_checkpoints() == []
    client.push({"wa": ONES})
    info = saving.result()
    assert info.iterations == {"a": 2}
    assert client.iterations("a") == 2


def test_a_push_past_the_target_is_held_until_the_cut_then_applied(
    served: RunningServer, client: Client, stub: object, hooks: BlockingHooks
) -> None:
    setup(client, "a")
    client.push({"wa": ONES})
    before = client.pull(["wa"])["wa"]
    captured = hooks.hold("save.captured")
    held = hooks.watch("push.held")
    saving = in_background(lambda: save_at(stub, a=1))
    captured.wait_arrivals(1)  # the cut is taken, the files are not written yet
    pushing = in_background(lambda: client.push({"wa": ONES}))
    held.wait_arrivals(1)
    assert client.iterations("a") == 1
    captured.release()
    info = saving.result()
    assert pushing.result().outcomes["a"] is Outcome.APPLIED
    assert info.iterations == {"a": 1}
    assert client.iterations("a") == 2
    client.restore_checkpoint(info.id)
    np.testing.assert_array_equal(client.pull(["wa"])["wa"], before)
    assert client.iterations("a") == 1


def test_a_push_touching_an_optimizer_at_its_value_is_held_whole(
    client: Client, stub: object, hooks: BlockingHooks
) -> None:
    """A push to ``a`` (at its value) and ``b`` (below) changes neither until the cut."""
    setup(client, "a", "b")
    captured = hooks.hold("save.captured")
    held = hooks.watch("push.held")
    saving = in_background(lambda: save_at(stub, a=0, b=0))
    captured.wait_arrivals(1)
    pushing = in_background(lambda: client.push({"wa": ONES, "wb": ONES}))
    held.wait_arrivals(1)
    assert (client.iterations("a"), client.iterations("b")) == (0, 0)
    captured.release()
    assert saving.result().iterations == {"a": 0, "b": 0}
    pushing.result()
    assert (client.iterations("a"), client.iterations("b")) == (1, 1)


@pytest.mark.parametrize(
    ("targets", "kind", "reason", "metadata"),
    [
        ({"a": 0}, FailedPreconditionError, "ITERATIONS_PASSED", {"expected": ">= 1"}),
        ({"a": -1}, InvalidArgumentError, "INVALID_ITERATIONS", {"received": "-1"}),
        ({"a": 2**62 + 1}, InvalidArgumentError, "INVALID_ITERATIONS", {}),
        ({"a": 5, "nope": 5}, NotFoundError, "UNKNOWN_OPTIMIZER", {"optimizer": "nope"}),
    ],
)
def test_a_save_it_cannot_make_is_refused_before_it_waits(
    client: Client,
    stub: object,
    targets: dict[str, int],
    kind: type[Exception],
    reason: str,
    metadata: dict[str, str],
) -> None:
    setup(client, "a")
    client.push({"wa": ONES})
    with pytest.raises(kind) as refused:
        save_at(stub, **targets)
    assert refused.value.reason == reason  # type: ignore[attr-defined]
    assert metadata.items() <= refused.value.metadata.items()  # type: ignore[attr-defined]
    if reason == "ITERATIONS_PASSED":
        message = str(refused.value)
        assert "'a'" in message and "at iterations 1" in message and "received 0" in message
    assert client.list_checkpoints() == []


def test_a_group_longer_than_an_id_is_refused_as_ids_are(client: Client, stub: object) -> None:
    with pytest.raises(ResourceExhaustedError) as refused:
        save_at(stub, group="g" * 257)
    assert refused.value.reason == "LIMIT_EXCEEDED"
    assert client.list_checkpoints() == []


def test_at_its_deadline_a_save_gives_up_and_the_held_push_applies(
    client: Client, stub: object, hooks: BlockingHooks
) -> None:
    setup(client, "a", "b")
    waiting, held = hooks.watch("save.waiting"), hooks.watch("push.held")
    request = pb.SaveCheckpointRequest(at_iterations={"a": 0, "b": 1})
    saving = in_background(lambda: stub.SaveCheckpoint(request, timeout=1.0))  # type: ignore[attr-defined]
    waiting.wait_arrivals(1)
    pushing = in_background(lambda: client.push({"wa": ONES}))
    held.wait_arrivals(1)
    error = saving.failure()
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reason, facts = decode_detail(error.trailing_metadata())
    if reason:  # the server's answer came first (else gRPC's own)
        assert (reason, facts["optimizers"]) == ("TARGET_NOT_REACHED", "b")
    assert pushing.result().outcomes["a"] is Outcome.APPLIED
    assert client.iterations("a") == 1
    assert client.list_checkpoints() == []


def test_a_sync_step_that_would_close_past_the_target_waits_for_the_cut(
    client: Client, stub: object, hooks: BlockingHooks
) -> None:
    """The closing contribution of a step at the target is held before it joins; the
    step's first contributor waits on; after the cut both aggregate as one step."""
    client.create_optimizer("s", SGD, aggregation=Sync(replicas_to_aggregate=2, timeout=60))
    client.create_variables({"ws": np.zeros(3, np.float32)}, optimizer="s")
    setup(client, "b")
    syncing, waiting = hooks.watch("sync.waiting"), hooks.watch("save.waiting")
    first = in_background(lambda: client.push({"ws": ONES}, worker="w0"))
    syncing.wait_arrivals(1)  # the step at 0 is open with one contribution
    saving = in_background(lambda: save_at(stub, s=0, b=1))
    waiting.wait_arrivals(1)
    held = hooks.watch("push.held")
    second = in_background(lambda: client.push({"ws": ONES}, worker="w1"))
    held.wait_arrivals(1)
    client.push({"wb": ONES})
    info = saving.result()
    assert info.iterations == {"b": 1, "s": 0}
    assert first.result().outcomes["s"] is Outcome.AGGREGATED
    assert second.result().outcomes["s"] is Outcome.AGGREGATED
    assert client.iterations("s") == 1


def test_a_paused_sync_step_does_not_time_out_and_its_timeout_excludes_the_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The policy alone, on a fake clock: paused past its timeout, the step stays open;
    resumed, it has its whole timeout left."""
    now = [0.0]
    monkeypatch.setattr(aggregation, "time", SimpleNamespace(monotonic=lambda: now[0]))
    lock = threading.Condition()
    waits = threading.Semaphore(0)
    policy = aggregation.SyncPolicy(
        Sync(replicas_to_aggregate=2, total_num_replicas=2, timeout=10.0),
        lock,
        Metrics(),
        "s",
        waits.release,
    )
    iterations = [0]

    def apply(gradients: object) -> Outcome:
        iterations[0] += 1
        return Outcome.APPLIED

    def submit(worker: str) -> object:
        with lock:
            return policy.submit(worker, None, [], lambda: iterations[0], apply)

    first = in_background(lambda: submit("w0"))
    assert waits.acquire(timeout=60)  # opened at 0, waiting
    with lock:
        policy.pause()
        now[0] = 100.0  # far past the timeout
        lock.notify_all()
    assert waits.acquire(timeout=60)  # woke, saw the pause, waits again
    with lock:
        assert iterations[0] == 0
        policy.resume()  # 10 s of timeout left from 100
        lock.notify_all()
    assert waits.acquire(timeout=60)  # woke, did not time out, waits again
    with lock:
        assert iterations[0] == 0
    assert submit("w1").outcome is Outcome.AGGREGATED
    assert first.result().outcome is Outcome.AGGREGATED


def test_a_checkpoint_names_the_shard_it_was_saved_on(client: Client, stub: object) -> None:
    call_raw(stub.DeclareShard, pb.DeclareShardRequest(shard=1, shards=2))  # type: ignore[attr-defined]
    info = save_at(stub)
    assert (info.shard, info.group) == (ShardIdentity(1, 2), "")
    assert client.list_checkpoints()[0].shard == ShardIdentity(1, 2)


def test_metadata_without_a_group_still_reads_and_restores(client: Client) -> None:
    setup(client, "a")
    info = client.save_checkpoint()
    assert info.group == ""
    text = layout.CheckpointMetadata(0.0, (), (), (), group="").to_json()
    assert "group" not in text  # as versions before the field wrote it
    assert layout.CheckpointMetadata.from_json(text).group == ""
    assert client.restore_checkpoint(info.id).group == ""


def test_a_save_waiting_for_iterations_gives_up_when_the_server_stops(
    served: RunningServer, client: Client, stub: object, hooks: BlockingHooks
) -> None:
    setup(client, "a")
    waiting = hooks.watch("save.waiting")
    request = pb.SaveCheckpointRequest(at_iterations={"a": 1})
    saving = in_background(lambda: stub.SaveCheckpoint(request, timeout=60))  # type: ignore[attr-defined]
    waiting.wait_arrivals(1)
    served.stop(None)
    error = saving.failure()
    assert isinstance(error, grpc.RpcError)
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
