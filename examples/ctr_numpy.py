"""Click-through prediction in plain NumPy: logistic regression over hashed categorical features.

A worker without TensorFlow: the data, the forward pass and the gradients are NumPy, and the
server's Keras optimizers do the updates. The model is

    p(click) = sigmoid(sum of table[hash(field, value)] over the fields + dense @ kernel + bias)

with a table of hashed feature weights (the hashing trick: every (field, value) pair falls in
one of ``BUCKETS`` rows) trained by Ftrl, and the dense feature weights and bias trained by
Adam: two optimizers on one server. Per batch the worker fetches only the table rows the
batch uses (``pull_rows``), then pushes the table's gradient as ``IndexedSlices`` with one
row per feature occurrence (the server sums repeated rows, as Keras does) together with the
dense gradients, and gets the new dense weights back in the same round trip (``push_pull``).

The clicks are drawn from a known true model with a fixed seed, so learning is checkable: the
held-out log loss and AUC are printed next to those of always predicting the base rate and
of the true model itself.

Run it with ``.venv/bin/python examples/ctr_numpy.py`` (it starts its own server), or with
``--server host:port`` against a running one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from tfps_client import Client, IndexedSlices

from local_server import SERVER_HELP, run_with_server

FIELDS, CARDINALITY = 8, 200
"""Categorical fields per example (site, ad, device...), and values each field takes."""
DENSE = 4
"""Dense features per example."""
BUCKET_BITS = 14
BUCKETS = 2**BUCKET_BITS
"""Rows of the hashed weight table."""
TRAIN_SIZE, TEST_SIZE = 40_000, 10_000
TABLE, KERNEL, BIAS = "ctr/hashed_weights", "ctr/dense_kernel", "ctr/bias"
FTRL = {"class_name": "Ftrl", "config": {"learning_rate": 2.0}}
ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.05}}


class Data(NamedTuple):
    """Examples and their clicks."""

    categorical: np.ndarray
    """Value of each categorical field, int64 ``[n, FIELDS]`` in ``[0, CARDINALITY)``."""
    dense: np.ndarray
    """Dense features, float32 ``[n, DENSE]``."""
    clicks: np.ndarray
    """1.0 for a click, else 0.0: float32 ``[n]``."""
    true_probabilities: np.ndarray
    """Click probability under the true model, float64 ``[n]``."""


class Metrics(NamedTuple):
    """How well click probabilities predict the clicks."""

    log_loss: float
    auc: float


def generate_data(seed: int) -> tuple[Data, Data]:
    """Draws a true model, then training and test examples from it.

    Field values are Zipf-like (a few are frequent, most rare), as categorical features in
    click logs are; each (field, value) pair has a weight, and so does each dense feature.

    Returns:
        The training and the test examples.
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, CARDINALITY + 1) ** 1.1
    popularity /= popularity.sum()
    value_weights = rng.normal(0.0, 0.6, (FIELDS, CARDINALITY))
    dense_weights = rng.normal(0.0, 0.5, DENSE)
    bias = -1.5

    def draw(n: int) -> Data:
        categorical = rng.choice(CARDINALITY, size=(n, FIELDS), p=popularity)
        dense = rng.normal(size=(n, DENSE)).astype(np.float32)
        logits = value_weights[np.arange(FIELDS), categorical].sum(axis=1) + dense @ dense_weights
        probabilities = sigmoid(logits + bias)
        clicks = (rng.random(n) < probabilities).astype(np.float32)
        return Data(categorical, dense, clicks, probabilities)

    return draw(TRAIN_SIZE), draw(TEST_SIZE)


def hashed_ids(categorical: np.ndarray) -> np.ndarray:
    """Returns the table row of each (field, value) pair: Knuth's multiplicative hash, the top
    ``BUCKET_BITS`` bits of ``key * 2654435761 mod 2**32``. Distinct pairs may share a row."""
    keys = np.arange(FIELDS, dtype=np.uint64) * CARDINALITY + categorical.astype(np.uint64)
    hashes = keys * np.uint64(2654435761) % np.uint64(2**32)
    return (hashes >> np.uint64(32 - BUCKET_BITS)).astype(np.int64)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-logits))


def lookup(client: Client, ids: np.ndarray) -> np.ndarray:
    """Returns ``table[ids]`` (``ids.shape + [1]``), fetching each distinct row once."""
    unique, inverse = np.unique(ids.reshape(-1), return_inverse=True)
    return client.pull_rows(TABLE, unique)[inverse].reshape(*ids.shape, 1)


def predict(rows: np.ndarray, dense: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """Returns click probabilities from the batch's table rows and the dense weights."""
    logits = rows.sum(axis=(1, 2)) + dense @ weights[KERNEL][:, 0] + weights[BIAS][0]
    return sigmoid(logits)


def train_step(
    client: Client, batch: Data, weights: dict[str, np.ndarray]
) -> tuple[float, dict[str, np.ndarray]]:
    """Computes the mean log loss of a batch and its gradients; pushes them.

    Returns:
        The batch's log loss, and the dense weights after the update.
    """
    ids = hashed_ids(batch.categorical)
    probabilities = predict(lookup(client, ids), batch.dense, weights)
    loss = log_loss(batch.clicks, probabilities)
    # d(mean log loss)/d(logit) of each example; every term of the logit gets it unchanged.
    errors = ((probabilities - batch.clicks) / len(batch.clicks)).astype(np.float32)
    gradients = {
        # One row per occurrence: a row used twice in the batch gets both terms, summed.
        TABLE: IndexedSlices(np.repeat(errors, FIELDS)[:, None], ids.reshape(-1)),
        KERNEL: batch.dense.T @ errors[:, None],
        BIAS: errors.sum(keepdims=True),
    }
    _, weights = client.push_pull(gradients, pull=[KERNEL, BIAS])
    return loss, weights


def log_loss(clicks: np.ndarray, probabilities: np.ndarray) -> float:
    """Returns the mean binary cross-entropy, in nats."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-np.mean(clicks * np.log(p) + (1 - clicks) * np.log(1 - p)))


def auc(clicks: np.ndarray, scores: np.ndarray) -> float:
    """Returns the area under the ROC curve: the chance that a random click scores above a
    random non-click, ties counting half."""
    _, groups, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[groups]  # 1-based, ties get their mean
    positives = clicks == 1
    n_positive = int(positives.sum())
    n_negative = len(clicks) - n_positive
    return float(
        (ranks[positives].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    )


def metrics(clicks: np.ndarray, probabilities: np.ndarray) -> Metrics:
    """Returns the log loss and AUC of click probabilities."""
    return Metrics(log_loss(clicks, probabilities), auc(clicks, probabilities))


def evaluate(client: Client, test: Data) -> Metrics:
    """Returns the metrics of the server's weights on the test examples."""
    weights = client.pull([KERNEL, BIAS])
    rows = lookup(client, hashed_ids(test.categorical))
    return metrics(test.clicks, predict(rows, test.dense, weights))


def train(client: Client, train_data: Data, epochs: int, batch_size: int, seed: int) -> None:
    """Creates the optimizers and variables (idempotent), then trains; prints the mean
    training log loss per epoch."""
    client.create_optimizer("ctr_ftrl", FTRL)
    client.create_optimizer("ctr_adam", ADAM)
    client.create_variables({TABLE: np.zeros((BUCKETS, 1), np.float32)}, optimizer="ctr_ftrl")
    client.create_variables(
        {KERNEL: np.zeros((DENSE, 1), np.float32), BIAS: np.zeros(1, np.float32)},
        optimizer="ctr_adam",
    )
    weights = client.pull([KERNEL, BIAS])
    rng = np.random.default_rng(seed + 1)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(TRAIN_SIZE)
        losses = []
        for start in range(0, TRAIN_SIZE, batch_size):
            batch = Data(*(array[order[start : start + batch_size]] for array in train_data))
            loss, weights = train_step(client, batch, weights)
            losses.append(loss)
        print(
            f"  epoch {epoch}/{epochs}  train log loss {np.mean(losses):.4f}  "
            f"server iterations: Ftrl {client.iterations('ctr_ftrl')}, "
            f"Adam {client.iterations('ctr_adam')}",
            flush=True,
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=None, help=SERVER_HELP)
    parser.add_argument("--epochs", type=int, default=3, help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=1000, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
    return parser.parse_args(argv)


def report(learned: Metrics, train_data: Data, test: Data) -> None:
    """Prints the held-out metrics of the learned model between those of always predicting
    the training click rate and of the true model."""
    click_rate = float(train_data.clicks.mean())
    rows = {
        f"base rate ({click_rate:.3f} always)": metrics(
            test.clicks, np.full(TEST_SIZE, click_rate)
        ),
        "learned": learned,
        "true model": metrics(test.clicks, test.true_probabilities),
    }
    print(f"held-out {'':<22} log loss     AUC")
    for label, row in rows.items():
        print(f"  {label:<28} {row.log_loss:8.4f}  {row.auc:6.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Trains and evaluates; returns the exit code."""
    args = parse_args(argv)
    train_data, test = generate_data(args.seed)
    print(
        f"{TRAIN_SIZE} training examples, {TEST_SIZE} held out; {FIELDS} categorical fields "
        f"hashed into {BUCKETS} rows, {DENSE} dense features",
        flush=True,
    )

    def work(client: Client) -> None:
        train(client, train_data, args.epochs, args.batch_size, args.seed)
        report(evaluate(client, test), train_data, test)

    return run_with_server(args.server, work)


if __name__ == "__main__":
    sys.exit(main())
