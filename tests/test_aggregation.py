"""Aggregation modes against a real server, with real threads and worker processes."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from prometheus_client import generate_latest

from tfps_client import (
    Async,
    Client,
    FailedPreconditionError,
    IndexedSlices,
    InvalidArgumentError,
    Outcome,
    PushResult,
    Sync,
)
from tfps_server import RunningServer

from interleave import BlockingHooks, in_background

SHAPE = (5, 3)
WORKERS = ["w0", "w1", "w2", "w3"]


def run_concurrently(
    calls: Sequence[Callable[[], Any]], order: Sequence[int] | None = None
) -> list[Any]:
    """Runs each call in its own thread, starting them in ``order``; returns results by index."""
    results: list[Any] = [None] * len(calls)
    started = [threading.Event() for _ in calls]

    def run(index: int) -> None:
        started[index].set()
        results[index] = calls[index]()

    threads = []
    for index in order if order is not None else range(len(calls)):
        thread = threading.Thread(target=run, args=(index,))
        thread.start()
        started[index].wait()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a push never returned"
    return results


def local_apply(config: dict[str, Any], initial: np.ndarray, steps: Sequence[Any]) -> tf.Variable:
    """Applies each step's gradient with a local tf_keras legacy optimizer."""
    optimizer = getattr(tf_keras.optimizers.legacy, config["class_name"])(**config["config"])
    variable = tf.Variable(initial)
    for gradient in steps:
        optimizer.apply_gradients([(gradient, variable)])
    return variable


def unit_sgd(client: Client, aggregation: Async | Sync) -> None:
    """Creates optimizer "sgd" (SGD, learning rate 1) with a zero variable "w" of SHAPE."""
    client.create_optimizer(
        "sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0}}, aggregation=aggregation
    )
    client.create_variables({"w": np.zeros(SHAPE, np.float32)}, optimizer="sgd")


# Async -----------------------------------------------------------------------------------------


def test_sixteen_threads_lose_no_update(client: Client) -> None:
    client.create_optimizer("sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
    client.create_variables(
        {"w": np.zeros(SHAPE, np.float32), "e": np.zeros(SHAPE, np.float32)}, optimizer="sgd"
    )
    pushes = 200

    def worker(index: int) -> None:
        for _ in range(pushes):
            rows = IndexedSlices(np.full((1, 3), index + 1, np.float32), np.array([index % 5]))
            result = client.push(
                {"w": np.full(SHAPE, index + 1, np.float32), "e": rows}, worker=f"w{index}"
            )
            assert result.outcomes == {"sgd": Outcome.APPLIED}

    run_concurrently([lambda i=i: worker(i) for i in range(16)])
    assert client.iterations("sgd") == 16 * pushes
    values = client.pull(["w", "e"])
    np.testing.assert_array_equal(values["w"], np.full(SHAPE, -pushes * sum(range(1, 17))))
    expected_rows = np.zeros(SHAPE, np.float32)
    for index in range(16):
        expected_rows[index % 5] -= pushes * (index + 1)
    np.testing.assert_array_equal(values["e"], expected_rows)


WORKER_PROCESS = textwrap.dedent(
    """
    import sys
    import numpy as np
    from tfps_client import Client
    address, index, pushes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Client(address) as client:
        for _ in range(pushes):
            client.push({"w": np.full((5, 3), index + 1, np.float32)}, worker=f"p{index}")
    """
)


def test_worker_processes_lose_no_update(client: Client, server: RunningServer) -> None:
    client.create_optimizer("sgd", {"class_name": "SGD", "config": {"learning_rate": 1.0}})
    client.create_variables({"w": np.zeros(SHAPE, np.float32)}, optimizer="sgd")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_PROCESS, f"127.0.0.1:{server.port}", str(index), "50"]
        )
        for index in range(4)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0, 0]
    assert client.iterations("sgd") == 200
    np.testing.assert_array_equal(client.pull(["w"])["w"], np.full(SHAPE, -50 * (1 + 2 + 3 + 4)))


def test_max_staleness_drops_only_pushes_beyond_the_bound(client: Client) -> None:
    unit_sgd(client, Async(max_staleness=2))
    for step in range(5):
        assert client.push({"w": np.ones(SHAPE, np.float32)}, step=step).applied
    stale = client.push({"w": np.ones(SHAPE, np.float32)}, step=2)
    assert stale.stale and stale.outcomes == {"sgd": Outcome.STALE}
    assert stale.iterations == {"sgd": 5}
    np.testing.assert_array_equal(client.pull(["w"])["w"], np.full(SHAPE, -5.0))
    inside = client.push({"w": np.ones(SHAPE, np.float32)}, step=3)
    assert inside.outcomes == {"sgd": Outcome.APPLIED} and inside.iterations == {"sgd": 6}
    with pytest.raises(FailedPreconditionError, match=r"computed at step 99.*iterations 6"):
        client.push({"w": np.ones(SHAPE, np.float32)}, step=99)


# Sync ------------------------------------------------------------------------------------------


def worker_gradients(seed: int, sparse: bool) -> list[dict[str, Any]]:
    """Per-worker gradients with many significant digits, so summation order shows."""
    rng = np.random.default_rng(seed)
    gradients = []
    for _ in WORKERS:
        values = (rng.standard_normal((4 if sparse else SHAPE[0], SHAPE[1])) * 1e3).astype(
            np.float32
        )
        indices = rng.integers(0, SHAPE[0], 4) if sparse else None
        gradients.append({"values": values, "indices": indices})
    return gradients


def as_push(gradient: dict[str, Any]) -> Any:
    if gradient["indices"] is None:
        return gradient["values"]
    return IndexedSlices(gradient["values"], gradient["indices"], SHAPE)


def summed(gradients: Sequence[dict[str, Any]], reduction: str = "sum") -> Any:
    """The reference aggregate: worker-id order, as the docs promise."""
    if gradients[0]["indices"] is None:
        total = gradients[0]["values"].copy()
        for gradient in gradients[1:]:
            total = total + gradient["values"]
        return tf.constant(total / np.float32(len(gradients)) if reduction == "mean" else total)
    values = np.concatenate([g["values"] for g in gradients])
    if reduction == "mean":
        values = values / np.float32(len(gradients))
    indices = np.concatenate([g["indices"] for g in gradients])
    return tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant(SHAPE))


SYNC_CONFIGS = {
    "adam": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
    "ftrl": {
        "class_name": "Ftrl",
        "config": {"learning_rate": 0.1, "l1_regularization_strength": 0.01},
    },
    "sgd-clipnorm": {"class_name": "SGD", "config": {"learning_rate": 0.1, "clipnorm": 1.0}},
}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("name", SYNC_CONFIGS)
def test_sync_steps_are_order_independent_and_equal_a_local_apply(
    client: Client, name: str, sparse: bool, reduction: str
) -> None:
    config, steps = SYNC_CONFIGS[name], 3
    initial = np.linspace(-1, 1, SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)
    per_step = [worker_gradients(seed, sparse) for seed in range(steps)]
    finals = []
    for run in range(3):
        optimizer = f"opt{run}"
        client.create_optimizer(optimizer, config, aggregation=Sync(4, reduction=reduction))
        client.create_variables({f"v{run}": initial}, optimizer=optimizer)
        shuffle = random.Random(run)
        for step, gradients in enumerate(per_step):
            order = list(range(4))
            shuffle.shuffle(order)
            results: list[PushResult] = run_concurrently(
                [
                    lambda w=w, g=g, v=f"v{run}", s=step: client.push(
                        {v: as_push(g)}, worker=WORKERS[w], step=s
                    )
                    for w, g in enumerate(gradients)
                ],
                order,
            )
            assert {r.outcomes[optimizer] for r in results} == {Outcome.AGGREGATED}
            assert {r.iterations[optimizer] for r in results} == {step + 1}
        finals.append(client.pull([f"v{run}"])[f"v{run}"])
    local = local_apply(config, initial, [summed(g, reduction) for g in per_step]).numpy()
    for final in finals:
        assert final.tobytes() == finals[0].tobytes(), "arrival order changed the result"
        assert final.tobytes() == local.tobytes(), "sync step differs from a local apply"


def test_clipping_applies_to_the_aggregated_gradient(client: Client) -> None:
    config = {"class_name": "SGD", "config": {"learning_rate": 1.0, "clipnorm": 1.0}}
    client.create_optimizer("sgd", config, aggregation=Sync(2))
    client.create_variables({"w": np.zeros(2, np.float32)}, optimizer="sgd")
    each = np.array([0.6, 0.0], np.float32)  # norm 0.6 < 1 each; their sum 1.2 is clipped
    run_concurrently([lambda w=w: client.push({"w": each}, worker=w) for w in ("a", "b")])
    np.testing.assert_allclose(client.pull(["w"])["w"], [-1.0, 0.0], rtol=1e-6)


def test_a_step_mixing_dense_and_sparse_contributions(client: Client) -> None:
    config = {"class_name": "SGD", "config": {"learning_rate": 1.0}}
    client.create_optimizer("sgd", config, aggregation=Sync(2))
    client.create_variables({"w": np.zeros(SHAPE, np.float32)}, optimizer="sgd")
    dense = np.full(SHAPE, 0.5, np.float32)
    rows = IndexedSlices(np.ones((2, 3), np.float32), np.array([1, 1]), SHAPE)
    run_concurrently(
        [
            lambda: client.push({"w": dense}, worker="a"),
            lambda: client.push({"w": rows}, worker="b"),
        ]
    )
    expected = -dense.copy()
    expected[1] -= 2.0
    np.testing.assert_array_equal(client.pull(["w"])["w"], expected)


def test_backup_worker_push_is_dropped_as_stale(client: Client) -> None:
    unit_sgd(client, Sync(2, total_num_replicas=3))
    ones = np.ones(SHAPE, np.float32)
    first = run_concurrently(
        [lambda w=w: client.push({"w": ones}, worker=w, step=0) for w in ("a", "b")]
    )
    assert all(r.outcomes["sgd"] is Outcome.AGGREGATED for r in first)
    late = client.push({"w": ones}, worker="c", step=0)
    assert late.stale and late.iterations == {"sgd": 1}
    np.testing.assert_array_equal(client.pull(["w"])["w"], -2 * ones)


@pytest.mark.parametrize("on_timeout", ["apply", "drop"])
def test_timeout_with_a_dead_worker_answers_the_others(
    client: Client, server: RunningServer, on_timeout: str
) -> None:
    unit_sgd(client, Sync(3, timeout=0.5, on_timeout=on_timeout))
    ones = np.ones(SHAPE, np.float32)
    results = run_concurrently(
        [lambda w=w: client.push({"w": ones}, worker=w, step=0) for w in ("a", "b")]
    )
    if on_timeout == "apply":
        assert [r.outcomes["sgd"] for r in results] == [Outcome.AGGREGATED] * 2
        assert client.iterations("sgd") == 1
        np.testing.assert_array_equal(client.pull(["w"])["w"], -2 * ones)
    else:
        assert [r.outcomes["sgd"] for r in results] == [Outcome.DROPPED] * 2
        assert client.iterations("sgd") == 0
        np.testing.assert_array_equal(client.pull(["w"])["w"], 0 * ones)
    scrape = generate_latest(server.registry.metrics.registry).decode()
    assert 'tfps_sync_steps_timed_out_total{optimizer="sgd"} 1.0' in scrape


def test_sync_refuses_a_second_contribution_and_a_missing_worker(
    client: Client, hooks: BlockingHooks
) -> None:
    unit_sgd(client, Sync(2, timeout=600))
    ones = np.ones(SHAPE, np.float32)
    with pytest.raises(InvalidArgumentError, match="expected a worker id"):
        client.push({"w": ones})
    waiting = hooks.watch("sync.waiting")
    first = in_background(lambda: client.push({"w": ones}, worker="a"))
    waiting.wait_arrivals(1)  # the first contribution now waits for its step to close
    with pytest.raises(FailedPreconditionError, match="worker 'a' already contributed to step 0"):
        client.push({"w": ones}, worker="a")
    client.push({"w": ones}, worker="b")
    assert first.result().outcomes == {"sgd": Outcome.AGGREGATED}
    assert client.iterations("sgd") == 1


def test_options_round_trip_and_conflicts(client: Client) -> None:
    sync = Sync(3, total_num_replicas=4, reduction="mean", timeout=2.5, on_timeout="drop")
    config = {"class_name": "SGD", "config": {}}
    assert client.create_optimizer("s", config, aggregation=sync, on_non_finite="skip")
    assert not client.create_optimizer("s", config, aggregation=sync, on_non_finite="skip")
    options = client.get_options("s")
    assert options.aggregation == sync and options.on_non_finite == "skip"
    client.create_optimizer("a", config, aggregation=Async(max_staleness=7))
    assert client.get_options("a").aggregation == Async(7)
    from tfps_client import AlreadyExistsError

    with pytest.raises(
        AlreadyExistsError, match=r"optimizer 's': aggregation: exists with Sync"
    ) as caught:
        client.create_optimizer("s", config, aggregation=Sync(3))
    assert "on_non_finite: exists with skip, received reject" in caught.value.message
    with pytest.raises(InvalidArgumentError, match="total_num_replicas >= replicas_to_aggregate"):
        client.create_optimizer("bad", config, aggregation=Sync(3, total_num_replicas=2))


# Non-finite gradients, push_pull ---------------------------------------------------------------


def test_non_finite_reject_and_skip(client: Client, server: RunningServer) -> None:
    config = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
    client.create_optimizer("reject", config)
    client.create_optimizer("skip", config, on_non_finite="skip")
    client.create_variables({"r": np.ones(SHAPE, np.float32)}, optimizer="reject")
    client.create_variables({"s": np.ones(SHAPE, np.float32)}, optimizer="skip")
    bad = np.ones(SHAPE, np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(InvalidArgumentError, match="variable 'r': expected finite"):
        client.push({"r": bad})
    assert client.iterations("reject") == 0
    before = client.get_weights("skip")
    result = client.push({"s": bad})
    assert result.outcomes == {"skip": Outcome.SKIPPED} and result.iterations == {"skip": 1}
    np.testing.assert_array_equal(client.pull(["s"])["s"], np.ones(SHAPE, np.float32))
    after = client.get_weights("skip")
    assert after[0] == 1 and all(
        np.array_equal(a, b) for a, b in zip(before[1:], after[1:], strict=True)
    )
    scrape = generate_latest(server.registry.metrics.registry).decode()
    assert 'tfps_non_finite_gradients_total{action="rejected",optimizer="reject"} 1.0' in scrape
    assert 'tfps_non_finite_gradients_total{action="skipped",optimizer="skip"} 1.0' in scrape


def test_push_pull_returns_the_updated_values(client: Client) -> None:
    client.create_optimizer("sgd", {"class_name": "SGD", "config": {"learning_rate": 0.5}})
    client.create_variables(
        {"w": np.ones(SHAPE, np.float32), "e": np.ones(SHAPE, np.float32)}, optimizer="sgd"
    )
    result, pulled = client.push_pull({"w": np.ones(SHAPE, np.float32)}, pull=["w", "e"])
    assert result.applied and result.iterations == {"sgd": 1}
    np.testing.assert_array_equal(pulled["w"], np.full(SHAPE, 0.5, np.float32))
    np.testing.assert_array_equal(pulled["e"], np.ones(SHAPE, np.float32))
    assert set(pulled) == {"w", "e"}


def test_push_pull_of_nothing_pulls_nothing(client: Client) -> None:
    """An empty pull list returns no values (a plain pull of nothing returns every one)."""
    unit_sgd(client, Async())
    result, pulled = client.push_pull({"w": np.ones(SHAPE, np.float32)}, pull=[])
    assert pulled == {} and result.iterations == {"sgd": 1}


@pytest.mark.parametrize(
    ("later", "push", "refusal"),
    [
        (Async(), {"step": 2}, "computed at step 2"),
        (Sync(2, timeout=600), {"step": 0}, "expected a worker id"),
    ],
    ids=["step-ahead", "sync-without-worker"],
)
def test_a_push_one_optimizer_refuses_applies_to_none(
    client: Client, later: Async | Sync, push: dict[str, Any], refusal: str
) -> None:
    """A push to two optimizers that the second (in name order) refuses by its state or
    options changes neither: every optimizer admits a push before any applies it."""
    client.create_optimizer("a", {"class_name": "SGD"})
    client.create_optimizer("b", {"class_name": "SGD"}, aggregation=later)
    ones = np.ones(SHAPE, np.float32)
    client.create_variables({"wa": ones}, optimizer="a")
    client.create_variables({"wb": ones}, optimizer="b")
    for _ in range(2):
        client.push({"wa": ones})  # a is at iterations 2, b at 0
    before = client.pull()
    with pytest.raises((FailedPreconditionError, InvalidArgumentError), match=refusal):
        client.push({"wa": ones, "wb": ones}, **push)
    assert client.iterations("a") == 2
    assert client.iterations("b") == 0
    for name, value in client.pull().items():
        assert value.tobytes() == before[name].tobytes(), name
