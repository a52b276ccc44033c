"""A JAX worker: JAX computes the gradients (``jax.value_and_grad``), tfps applies Adam.

The model and the loop are those of ``examples/regression.py``: per step the gradients go to
the server as NumPy arrays and the updated parameters come back in the same round trip.
Nothing here imports TensorFlow.

Run it with ``.venv/bin/python examples/jax_regression.py`` (it starts its own server), or
with ``--server host:port`` against a running one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import regression
from regression import HIDDEN_BIAS, HIDDEN_KERNEL, OUTPUT_BIAS, OUTPUT_KERNEL, Params


def forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """The MLP's predictions, ``[n]``."""
    hidden = jnp.tanh(x @ params[HIDDEN_KERNEL] + params[HIDDEN_BIAS])
    return (hidden @ params[OUTPUT_KERNEL] + params[OUTPUT_BIAS])[:, 0]


def mean_squared_error(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    """The loss the gradients are of."""
    return jnp.mean((forward(params, x) - y) ** 2)


_loss_and_gradients = jax.jit(jax.value_and_grad(mean_squared_error))
_forward = jax.jit(forward)


def loss_and_gradients(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """The batch's loss, and its gradients as NumPy arrays for ``push``."""
    loss, gradients = _loss_and_gradients(params, x, y)
    return float(loss), {name: np.asarray(gradient) for name, gradient in gradients.items()}


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    """The MLP's predictions as a NumPy array."""
    return np.asarray(_forward(params, x))


def main(argv: Sequence[str] | None = None) -> int:
    """Trains and reports; returns the exit code."""
    model = regression.Model(loss_and_gradients, predict)
    return regression.main(model, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
