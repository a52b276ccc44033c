"""Every pair of operations of the state model (docs/state-model.md), interleaved on purpose.

Each test holds one operation at a named point inside a real server, runs the
other to completion, releases the first, and checks values, slots, iterations,
the answers both got, and that the next checkpoint restores. No sleeps: threads
are held and released by events.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from tfps_client import (
    AbortedError,
    Client,
    FailedPreconditionError,
    OptimizerOptions,
    Outcome,
    OutOfRangeError,
    RetryPolicy,
    Sync,
    TfpsError,
)
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_server import Registry, RunningServer, create_server, listing
from tfps_server.checkpoints import Checkpointer

from helpers import (
    assert_all_bitwise_equal,
    assert_bitwise_equal,
    call_raw,
    chunk,
    dense_header,
    raw_stub,
)
from interleave import BlockingHooks, in_background

SGD = {"class_name": "SGD", "config": {"learning_rate": 1.0}}
ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.5}}
ONES = np.ones(3, np.float32)


@dataclass
class Env:
    """A server with checkpoints and hooks, and a client that does not retry."""

    running: RunningServer
    hooks: BlockingHooks
    client: Client
    directory: Path

    def weights(self, optimizer: str) -> list[np.ndarray]:
        return self.client.get_weights(optimizer)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    hooks = BlockingHooks()
    registry = Registry(hooks=hooks)
    directory = tmp_path / "ckpts"
    running = create_server(
        registry, "127.0.0.1:0", checkpointer=Checkpointer(registry, directory, keep=20)
    )
    client = Client(f"127.0.0.1:{running.port}", timeout=60, retry=RetryPolicy(max_attempts=1))
    yield Env(running, hooks, client, directory)
    hooks.release_all()
    client.close()
    running.stop(None)


def checkpoint_created_in_order(directory: Path, names: list[str], sync: bool) -> int:
    """Writes a checkpoint into ``directory`` from another registry whose variables were
    created in ``names`` order, with values 1, 2, ...; returns its id."""
    registry = Registry()
    options = OptimizerOptions(Sync(2, timeout=600)) if sync else None
    registry.create_optimizer("s", json.dumps(SGD), options)
    registry.create_variables(
        "s", [(name, np.full(3, index + 1, np.float32)) for index, name in enumerate(names)]
    )
    return Checkpointer(registry, directory).save().id


def assert_restorable_everywhere(env: Env) -> None:
    """The next checkpoint restores into this server and into a fresh one (a restart)."""
    before = env.client.pull()
    info = env.client.save_checkpoint()
    env.client.restore_checkpoint(info.id)
    assert_all_bitwise_equal(env.client.pull(), before)
    fresh = Registry()
    Checkpointer(fresh, env.directory).restore(info.id)
    assert_all_bitwise_equal(dict(fresh.pull([])), before)


class HeldStream:
    """A sync push (worker w0, step 0) whose request stream stops after its first message
    until :meth:`finish`: in flight, not yet validated."""

    def __init__(self, port: int, variable: str, gradient: np.ndarray) -> None:
        self._release = threading.Event()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        header = pb.PushRequest(gradients=[dense_header(variable, gradient)], worker="w0", step=0)

        def messages() -> Iterator[pb.PushRequest]:
            yield header
            self._release.wait()
            yield pb.PushRequest(chunks=[chunk(0, 0, gradient.tobytes())])

        stub = pb_grpc.ParameterServerStub(self._channel)
        self._future = stub.Push.future(messages(), timeout=60)

    def finish(self) -> grpc.RpcError:
        """Sends the rest of the stream; returns the error the push must end with."""
        self._release.set()
        try:
            response = self._future.result(timeout=60)
        except grpc.RpcError as error:
            return error
        finally:
            self._channel.close()
        raise AssertionError(f"the push was answered {response}")


def refused(error: BaseException, kind: type[TfpsError], reason: str) -> None:
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    assert error.reason == reason, f"{error.reason}: {error}"


# Restore against everything else ----------------------------------------------------------------


def test_restore_during_a_waiting_sync_push_aborts_it(env: Env) -> None:
    """A sync push waits for its step; a restore of a checkpoint whose variables were created
    in another order replaces the state. The push is answered ABORTED and applies nothing: the
    gradient meant for 'a' never reaches 'b' by position. The new state trains correctly."""
    env.client.create_optimizer("s", SGD, aggregation=Sync(2, timeout=600))
    env.client.create_variables({"a": 0 * ONES, "b": 0 * ONES}, optimizer="s")
    checkpoint = checkpoint_created_in_order(env.directory, ["b", "a"], sync=True)
    waiting = env.hooks.watch("sync.waiting")
    push = in_background(lambda: env.client.push({"a": 5 * ONES}, worker="w0", step=0))
    waiting.wait_arrivals(1)

    env.client.restore_checkpoint(checkpoint)

    refused(push.failure(), AbortedError, "STATE_REPLACED")
    assert_all_bitwise_equal(env.client.pull(), {"b": ONES, "a": 2 * ONES})
    assert env.client.iterations("s") == 0
    results = [
        in_background(lambda w=w: env.client.push({"a": ONES}, worker=w, step=0))
        for w in ("w0", "w1")
    ]
    assert [r.result().outcomes["s"] for r in results] == [Outcome.AGGREGATED] * 2
    assert_all_bitwise_equal(env.client.pull(), {"b": ONES, "a": 0 * ONES})
    assert env.client.iterations("s") == 1
    assert_restorable_everywhere(env)


def test_an_async_push_validated_before_a_restore_applies_nothing(env: Env) -> None:
    """A push validated against the old state reaches its optimizer after a restore: ABORTED,
    and the state is exactly the checkpoint's."""
    env.client.create_optimizer("s", SGD)
    env.client.create_variables({"a": 0 * ONES, "b": 0 * ONES}, optimizer="s")
    checkpoint = checkpoint_created_in_order(env.directory, ["b", "a"], sync=False)
    held = env.hooks.hold("push.validated")
    push = in_background(lambda: env.client.push({"a": ONES, "b": ONES}))
    held.wait_arrivals(1)
    env.client.restore_checkpoint(checkpoint)
    held.release()

    refused(push.failure(), AbortedError, "STATE_REPLACED")
    assert_all_bitwise_equal(env.client.pull(), {"b": ONES, "a": 2 * ONES})
    assert env.client.iterations("s") == 0
    assert env.client.push({"a": ONES}).iterations == {"s": 1}
    assert_bitwise_equal(env.client.pull(["a"])["a"], ONES)
    assert_restorable_everywhere(env)


@pytest.mark.parametrize("first", ["create", "restore"])
def test_create_variables_racing_a_restore(env: Env, first: str) -> None:
    """create_variables holding the structure lock, or running between a restore's rebuild and
    its swap: either way the variables land in one generation with live slots, get_weights has
    the right length, and every later checkpoint restores (also in a restarted server)."""
    env.client.create_optimizer("s", ADAM)
    env.client.create_variables({"a": ONES}, optimizer="s")
    checkpoint = env.client.save_checkpoint().id
    env.client.push({"a": ONES})
    if first == "create":
        held = env.hooks.hold("create_variables.locked")
        create = in_background(lambda: env.client.create_variables({"c": ONES}, optimizer="s"))
        held.wait_arrivals(1)
        rebuilt = env.hooks.watch("restore.rebuilt")
        restore = in_background(lambda: env.client.restore_checkpoint(checkpoint))
        rebuilt.wait_arrivals(1)  # the restore now waits for the structure lock
        held.release()
    else:
        held = env.hooks.hold("restore.rebuilt")
        restore = in_background(lambda: env.client.restore_checkpoint(checkpoint))
        held.wait_arrivals(1)
        create = in_background(lambda: env.client.create_variables({"c": ONES}, optimizer="s"))
        create.result()
        held.release()
    assert create.result().created == ("c",)
    restore.result()

    assert list(env.client.pull()) == ["a"]  # the restore came last: 'c' went with the old state
    assert env.client.iterations("s") == 0
    assert len(env.weights("s")) == 1 + 2 * 1
    assert env.client.create_variables({"c": 3 * ONES}, optimizer="s").created == ("c",)
    assert len(env.weights("s")) == 1 + 2 * 2
    env.client.push({"a": ONES, "c": ONES})
    assert_restorable_everywhere(env)


@pytest.mark.parametrize("operation", ["set_weights", "set_hyperparameter"])
def test_an_admin_change_validated_before_a_restore_applies_nothing(
    env: Env, operation: str
) -> None:
    """set_weights and set_hyperparameter that found the optimizer before a restore swapped
    the state are ABORTED: the restored weights and config stay as the checkpoint has them."""
    env.client.create_optimizer("s", ADAM)
    env.client.create_variables({"a": ONES}, optimizer="s")
    env.client.push({"a": ONES})
    checkpoint = env.client.save_checkpoint().id
    saved_weights, saved_config = env.weights("s"), env.client.get_config("s")
    changed = [np.int64(7), *(2 * w for w in saved_weights[1:])]
    held = env.hooks.hold(f"{operation}.found")
    change = in_background(
        (lambda: env.client.set_weights("s", changed))
        if operation == "set_weights"
        else (lambda: env.client.set_hyperparameter("s", "learning_rate", 0.125))
    )
    held.wait_arrivals(1)
    env.client.restore_checkpoint(checkpoint)
    held.release()

    refused(change.failure(), AbortedError, "STATE_REPLACED")
    assert_all_bitwise_equal(env.weights("s"), saved_weights)
    assert env.client.get_config("s") == saved_config
    assert_restorable_everywhere(env)


def test_a_restore_during_a_restore_leaves_the_later_one(env: Env) -> None:
    """Two restores: the one that swaps last wins, whole."""
    env.client.create_optimizer("s", SGD)
    env.client.create_variables({"a": ONES}, optimizer="s")
    first = env.client.save_checkpoint().id
    env.client.push({"a": ONES})
    second = env.client.save_checkpoint().id
    held = env.hooks.hold("restore.rebuilt")
    early = in_background(lambda: env.client.restore_checkpoint(first))
    held.wait_arrivals(1)
    late = in_background(lambda: env.client.restore_checkpoint(second))
    held.wait_arrivals(2)
    held.release()
    early.result(), late.result()
    assert env.client.iterations("s") in (0, 1)
    expected = ONES if env.client.iterations("s") == 0 else 0 * ONES
    assert_bitwise_equal(env.client.pull(["a"])["a"], expected)
    assert_restorable_everywhere(env)


def five_variables_after_a_checkpoint_of_three(env: Env) -> int:
    """Creates a, b, c, saves them, creates d, e; returns the checkpoint's id."""
    env.client.create_optimizer("s", SGD)
    env.client.create_variables({"a": ONES, "b": ONES, "c": ONES}, optimizer="s")
    saved = env.client.save_checkpoint().id
    env.client.create_variables({"d": ONES, "e": ONES}, optimizer="s")
    return saved


def test_a_restore_between_two_pages_aborts_the_next_page(env: Env) -> None:
    """A page token names the state its listing began in: after a restore, the next page is
    ABORTED (STATE_REPLACED) rather than a page of another state, and a new listing gives the
    restored variables."""
    saved = five_variables_after_a_checkpoint_of_three(env)
    with raw_stub(env.running.port) as stub:
        first = call_raw(stub.ListVariables, pb.ListVariablesRequest(page_size=2))
        env.client.restore_checkpoint(saved)
        with pytest.raises(AbortedError) as aborted:
            call_raw(
                stub.ListVariables,
                pb.ListVariablesRequest(page_size=2, page_token=first.next_page_token),
            )
    refused(aborted.value, AbortedError, "STATE_REPLACED")
    assert [info.name for info in env.client.list_variables()] == ["a", "b", "c"]


def test_list_variables_starts_again_when_a_restore_comes_between_its_pages(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's listing, its first page read before a restore, starts again from the first
    page once its next page is ABORTED: it returns the restored state, not a mix."""
    monkeypatch.setattr(listing, "MAX_PAGE_SIZE", 2)
    saved = five_variables_after_a_checkpoint_of_three(env)
    held = env.hooks.hold("list_variables.read")
    listed = in_background(env.client.list_variables)
    held.wait_arrivals(1)
    env.client.restore_checkpoint(saved)
    held.release()
    assert [info.name for info in listed.result()] == ["a", "b", "c"]
    assert held.arrivals == 4, "a page of the old state, its next refused, two of the new one"


# Saves --------------------------------------------------------------------------------------------


def test_a_save_during_an_open_sync_step_holds_none_of_it(env: Env) -> None:
    """A checkpoint cut while a sync step waits holds the state before the step and no trace of
    the waiting push; the step then closes normally."""
    env.client.create_optimizer("s", SGD, aggregation=Sync(2, timeout=600))
    env.client.create_variables({"a": ONES}, optimizer="s")
    waiting = env.hooks.watch("sync.waiting")
    first = in_background(
        lambda: env.client.push({"a": ONES}, worker="w0", step=0, request_id="first")
    )
    waiting.wait_arrivals(1)
    info = env.client.save_checkpoint()
    second = env.client.push({"a": ONES}, worker="w1", step=0)

    assert first.result().outcomes == second.outcomes == {"s": Outcome.AGGREGATED}
    assert info.iterations == {"s": 0}
    env.client.restore_checkpoint(info.id)
    assert_bitwise_equal(env.client.pull(["a"])["a"], ONES)
    retried = in_background(
        lambda: env.client.push({"a": ONES}, worker="w0", step=0, request_id="first")
    )
    env.client.push({"a": ONES}, worker="w1", step=0)
    assert retried.result().iterations == {"s": 1}  # not in the checkpoint: applied anew
    assert_bitwise_equal(env.client.pull(["a"])["a"], -ONES)


def test_a_push_validated_before_a_save_applies_after_it(env: Env) -> None:
    """A push held after validation while a save cuts: the checkpoint is the state before it,
    the push applies after, and both checkpoints restore."""
    env.client.create_optimizer("s", ADAM)
    env.client.create_variables({"a": ONES}, optimizer="s")
    held = env.hooks.hold("push.validated")
    push = in_background(lambda: env.client.push({"a": ONES}))
    held.wait_arrivals(1)
    before = env.client.save_checkpoint()
    held.release()
    assert push.result().iterations == {"s": 1}
    assert before.iterations == {"s": 0}
    env.client.restore_checkpoint(before.id)
    assert_bitwise_equal(env.client.pull(["a"])["a"], ONES)
    assert_restorable_everywhere(env)


# set_weights and set_hyperparameter against sync steps ----------------------------------------


def test_set_weights_aborts_an_open_sync_step(env: Env) -> None:
    """set_weights replaces the state a waiting sync step was opened against: its contributors
    are answered ABORTED, nothing of the step is applied, and the next step starts from the
    weights set."""
    env.client.create_optimizer("s", SGD, aggregation=Sync(2, timeout=600))
    env.client.create_variables({"a": ONES}, optimizer="s")
    waiting = env.hooks.watch("sync.waiting")
    push = in_background(lambda: env.client.push({"a": ONES}, worker="w0", step=0))
    waiting.wait_arrivals(1)
    env.client.set_weights("s", [np.int64(7)])

    refused(push.failure(), AbortedError, "STATE_REPLACED")
    assert env.client.iterations("s") == 7
    assert_bitwise_equal(env.client.pull(["a"])["a"], ONES)
    steps = [
        in_background(lambda w=w: env.client.push({"a": ONES}, worker=w, step=7))
        for w in ("w0", "w1")
    ]
    assert [s.result().iterations for s in steps] == [{"s": 8}] * 2
    assert_bitwise_equal(env.client.pull(["a"])["a"], -ONES)


def test_set_hyperparameter_during_an_open_sync_step_applies_to_that_step(env: Env) -> None:
    """A hyperparameter changed while a step is open is linearized before the step closes."""
    env.client.create_optimizer("s", SGD, aggregation=Sync(2, timeout=600))
    env.client.create_variables({"a": 0 * ONES}, optimizer="s")
    waiting = env.hooks.watch("sync.waiting")
    push = in_background(lambda: env.client.push({"a": ONES}, worker="w0", step=0))
    waiting.wait_arrivals(1)
    env.client.set_hyperparameter("s", "learning_rate", 0.25)
    env.client.push({"a": ONES}, worker="w1", step=0)
    assert push.result().outcomes == {"s": Outcome.AGGREGATED}
    assert_bitwise_equal(env.client.pull(["a"])["a"], np.full(3, -0.5, np.float32))


# Exactly-once across a failure part-way ---------------------------------------------------------


def test_a_push_aborted_part_way_is_completed_by_its_retry_not_repeated(env: Env) -> None:
    """A push to an async optimizer 'a' and a sync optimizer 's': 'a' applies, then the sync
    step is aborted. A retry with the same request id applies only what is missing."""
    env.client.create_optimizer("a", SGD)
    env.client.create_optimizer("s", SGD, aggregation=Sync(2, timeout=600))
    env.client.create_variables({"wa": 0 * ONES}, optimizer="a")
    env.client.create_variables({"ws": 0 * ONES}, optimizer="s")
    gradients = {"wa": ONES, "ws": ONES}
    waiting = env.hooks.watch("sync.waiting")
    push = in_background(lambda: env.client.push(gradients, worker="w0", request_id="r"))
    waiting.wait_arrivals(1)
    env.client.set_weights("s", env.weights("s"))
    refused(push.failure(), AbortedError, "STATE_REPLACED")
    assert env.client.iterations("a") == 1

    retry = in_background(lambda: env.client.push(gradients, worker="w0", request_id="r"))
    waiting.wait_arrivals(2)
    env.client.push({"ws": ONES}, worker="w1")
    result = retry.result()
    assert result.outcomes == {"a": Outcome.APPLIED, "s": Outcome.AGGREGATED}
    assert result.iterations == {"a": 1, "s": 1}
    assert_all_bitwise_equal(env.client.pull(), {"wa": -ONES, "ws": -2 * ONES})


# Iterations at their bound ------------------------------------------------------------------


def test_iterations_never_pass_their_bound(env: Env) -> None:
    """At 2**62 iterations a push is refused (OUT_OF_RANGE) instead of wrapping around."""
    env.client.create_optimizer("s", SGD)
    env.client.create_variables({"a": ONES}, optimizer="s")
    env.client.set_weights("s", [np.int64(2**62 - 1)])
    assert env.client.push({"a": ONES}).iterations == {"s": 2**62}
    with pytest.raises(OutOfRangeError) as caught:
        env.client.push({"a": ONES})
    refused(caught.value, OutOfRangeError, "ITERATIONS_EXHAUSTED")
    assert env.client.iterations("s") == 2**62
    assert_bitwise_equal(env.client.pull(["a"])["a"], 0 * ONES)
    assert_restorable_everywhere(env)


def test_a_checkpoint_cut_right_after_an_apply_holds_its_result(env: Env) -> None:
    """A push's result is recorded under the lock that applied it: a checkpoint cut just
    after the apply holds the update and the result, so the push's retry after a restore
    is answered from the window, never applied twice."""
    env.client.create_optimizer("s", SGD)
    env.client.create_variables({"a": 0 * ONES}, optimizer="s")
    held = env.hooks.hold("push.applied")
    push = in_background(lambda: env.client.push({"a": ONES}, request_id="r1"))
    held.wait_arrivals(1)
    info = env.client.save_checkpoint()
    held.release()
    assert push.result().iterations == {"s": 1}
    env.client.restore_checkpoint(info.id)
    retried = env.client.push({"a": ONES}, request_id="r1")
    assert retried.iterations == {"s": 1} and retried.outcomes == {"s": Outcome.APPLIED}
    assert env.client.iterations("s") == 1
    assert_bitwise_equal(env.client.pull(["a"])["a"], -ONES)


def test_a_restore_finishing_during_shutdown_leaves_no_sync_step_open(env: Env) -> None:
    """Shutdown answers sync steps UNAVAILABLE and refuses new ones; a restore that swaps in
    a new state during the shutdown must not bring back optimizers that accept them, or the
    process would wait out the step's timeout and apply it after the final checkpoint."""
    env.client.create_optimizer("s", SGD, aggregation=Sync(2, timeout=3600))
    env.client.create_variables({"a": 0 * ONES}, optimizer="s")
    checkpoint = env.client.save_checkpoint().id
    stream = HeldStream(env.running.port, "a", ONES)
    rebuilt = env.hooks.hold("restore.rebuilt")
    restore = in_background(lambda: env.client.restore_checkpoint(checkpoint))
    rebuilt.wait_arrivals(1)
    draining = env.hooks.watch("shutdown.draining")
    stopping = in_background(lambda: env.running.stop(30))
    draining.wait_arrivals(1)
    rebuilt.release()
    restore.result()
    error = stream.finish()
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    stopping.result()


def test_set_weights_between_admission_and_apply_refuses_only_the_later_optimizer(
    env: Env,
) -> None:
    """Every optimizer admits a push before any applies it; the one window left (the state
    model's rule) is an admin's set_weights lowering a later optimizer's iterations between
    the admission and that optimizer's turn: the earlier optimizer's part stays applied and
    recorded, the later one refuses (STEP_AHEAD) and changes nothing, and a retry with the
    same request id once the step fits again applies only the missing part."""
    for name in ("a", "b"):
        env.client.create_optimizer(name, SGD)
        env.client.create_variables({f"w{name}": 0 * ONES}, optimizer=name)
        env.client.push({f"w{name}": ONES})  # iterations 1
    lowered = env.client.get_weights("b")
    lowered[0] = np.array(0, np.int64)
    applied = env.hooks.hold("push.applied")
    push = in_background(lambda: env.client.push({"wa": ONES, "wb": ONES}, step=1, request_id="r"))
    applied.wait_arrivals(1)  # a applied and recorded its part; b has not started
    env.client.set_weights("b", lowered)
    applied.release()

    refused(push.failure(), FailedPreconditionError, "STEP_AHEAD")
    assert (env.client.iterations("a"), env.client.iterations("b")) == (2, 0)
    assert_all_bitwise_equal(env.client.pull(), {"wa": -2 * ONES, "wb": -ONES})
    env.client.push({"wb": ONES})  # b back at iterations 1: the step fits again
    retried = env.client.push({"wa": ONES, "wb": ONES}, step=1, request_id="r")
    assert retried.iterations == {"a": 2, "b": 2}
    assert_all_bitwise_equal(env.client.pull(), {"wa": -2 * ONES, "wb": -3 * ONES})
