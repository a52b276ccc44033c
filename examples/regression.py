"""The framework-free half of the JAX and PyTorch examples: data, the training loop, the score.

A small MLP (10 -> 32 tanh -> 1) learns Friedman's regression problem #1 (as scikit-learn's
``make_friedman1``: ``10 sin(pi x0 x1) + 20 (x2 - 0.5)**2 + 10 x3 + 5 x4`` plus noise, from ten
uniform inputs of which five are unused), on which a linear model explains about 70% of the
variance. The server
holds the parameters and applies Adam; a framework only computes gradients, through a
:class:`Model` whose functions take and return NumPy arrays, which is what the client sends and
receives. Each step is one round trip: ``push_pull`` sends the batch's gradients and returns
the parameters after the update.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from splits import Split

from tfps_client import Client

from local_server import SERVER_HELP, run_with_server

INPUTS, HIDDEN = 10, 32
HIDDEN_KERNEL, HIDDEN_BIAS = "mlp/hidden/kernel", "mlp/hidden/bias"
OUTPUT_KERNEL, OUTPUT_BIAS = "mlp/output/kernel", "mlp/output/bias"
OPTIMIZER = "mlp_adam"
SAMPLES = 2000
"""Examples drawn, a quarter of them held out."""

Params = dict[str, np.ndarray]
"""Variable name -> value, float32."""


class Model(NamedTuple):
    """What a framework supplies, on NumPy arrays: ``x`` is ``[n, INPUTS]``, ``y`` is ``[n]``.

    ``predict(params, x)`` computes ``tanh(x @ hidden_kernel + hidden_bias) @ output_kernel +
    output_bias``, flattened to ``[n]``; ``loss_and_gradients(params, x, y)`` returns the mean
    squared error of those predictions and its gradient with respect to each parameter.
    """

    loss_and_gradients: Callable[[Params, np.ndarray, np.ndarray], tuple[float, Params]]
    predict: Callable[[Params, np.ndarray], np.ndarray]


def load_data(seed: int) -> Split:
    """Draws Friedman #1 examples and holds out a quarter of them; inputs and targets are
    standardized by the training part's mean and deviation."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(SAMPLES, INPUTS))
    y = (
        10 * np.sin(np.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
        + rng.normal(size=SAMPLES)
    )
    x_train, x_test = np.split(x, [SAMPLES - SAMPLES // 4])
    y_train, y_test = np.split(y, [SAMPLES - SAMPLES // 4])
    x_mean, x_std, y_mean, y_std = x_train.mean(0), x_train.std(0), y_train.mean(), y_train.std()
    return Split(
        ((x_train - x_mean) / x_std).astype(np.float32),
        ((x_test - x_mean) / x_std).astype(np.float32),
        ((y_train - y_mean) / y_std).astype(np.float32),
        ((y_test - y_mean) / y_std).astype(np.float32),
    )


def initial_params(seed: int) -> Params:
    """Returns Glorot-uniform kernels and zero biases, the same for every framework."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in: int, fan_out: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)

    return {
        HIDDEN_KERNEL: glorot(INPUTS, HIDDEN),
        HIDDEN_BIAS: np.zeros(HIDDEN, np.float32),
        OUTPUT_KERNEL: glorot(HIDDEN, 1),
        OUTPUT_BIAS: np.zeros(1, np.float32),
    }


def train(
    client: Client, model: Model, data: Split, steps: int, batch_size: int, seed: int
) -> Params:
    """Creates the optimizer and parameters (idempotent: a second worker joins the first's
    training), then takes ``steps`` steps on random batches; prints the mean loss ten times.

    Returns:
        The parameters after the last step.
    """
    client.create_optimizer(OPTIMIZER, {"class_name": "Adam", "config": {"learning_rate": 0.05}})
    initial = initial_params(seed)
    client.create_variables(initial, optimizer=OPTIMIZER)
    params = client.pull(initial)  # the first creator's values
    rng = np.random.default_rng(seed + 1)
    losses = []
    for step in range(1, steps + 1):
        batch = rng.choice(len(data.y_train), batch_size, replace=False)
        loss, gradients = model.loss_and_gradients(params, data.x_train[batch], data.y_train[batch])
        _, params = client.push_pull(gradients, pull=params)
        losses.append(loss)
        if step % max(1, steps // 10) == 0 or step == steps:
            print(f"  step {step:4d}/{steps}  train MSE {np.mean(losses):.4f}", flush=True)
            losses.clear()
    return params


def report(model: Model, params: Params, data: Split) -> None:
    """Prints the held-out mean squared error and R² of the model, next to those of predicting
    the training mean (R² 0 but for sampling)."""
    variance = float(np.mean((data.y_test - data.y_test.mean()) ** 2))
    rows = {
        "training mean": np.zeros_like(data.y_test),  # the targets are standardized
        "learned": model.predict(params, data.x_test),
    }
    print(f"held-out {'':<10}    MSE       R²")
    for label, predictions in rows.items():
        mse = float(np.mean((predictions - data.y_test) ** 2))
        print(f"  {label:<16} {mse:7.4f}  {1 - mse / variance:7.4f}")


def main(model: Model, description: str, argv: Sequence[str] | None = None) -> int:
    """Parses the command line, trains with ``model``'s gradients and reports.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--server", default=None, help=SERVER_HELP)
    parser.add_argument("--steps", type=int, default=200, help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
    args = parser.parse_args(argv)
    data = load_data(args.seed)
    print(f"{len(data.y_train)} training examples, {len(data.y_test)} held out", flush=True)

    def work(client: Client) -> None:
        params = train(client, model, data, args.steps, args.batch_size, args.seed)
        report(model, params, data)

    return run_with_server(args.server, work)
