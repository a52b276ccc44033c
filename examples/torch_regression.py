"""A PyTorch worker: autograd computes the gradients, tfps applies Adam.

The model and the loop are those of ``examples/regression.py``: per step the gradients go to
the server as NumPy arrays and the updated parameters come back in the same round trip.
Nothing here imports TensorFlow.

PyTorch is not in requirements.txt (PyPI's Linux wheel pulls about 3 GB of CUDA libraries):
``make example-torch`` installs it into .venv and runs this. Otherwise run it with
``.venv/bin/python examples/torch_regression.py`` (it starts its own server), or with
``--server host:port`` against a running one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch

import regression
from regression import HIDDEN_BIAS, HIDDEN_KERNEL, OUTPUT_BIAS, OUTPUT_KERNEL, Params


def forward(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP's predictions, ``[n]``."""
    hidden = torch.tanh(x @ params[HIDDEN_KERNEL] + params[HIDDEN_BIAS])
    return (hidden @ params[OUTPUT_KERNEL] + params[OUTPUT_BIAS])[:, 0]


def loss_and_gradients(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """The batch's mean squared error, and its gradients as NumPy arrays for ``push``."""
    leaves = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}
    loss = torch.mean((forward(leaves, torch.tensor(x)) - torch.tensor(y)) ** 2)
    gradients = torch.autograd.grad(loss, list(leaves.values()))
    return float(loss.detach()), {
        name: gradient.numpy() for name, gradient in zip(leaves, gradients, strict=True)
    }


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    """The MLP's predictions as a NumPy array."""
    with torch.no_grad():
        tensors = {name: torch.tensor(value) for name, value in params.items()}
        return forward(tensors, torch.tensor(x)).numpy()


def main(argv: Sequence[str] | None = None) -> int:
    """Trains and reports; returns the exit code."""
    model = regression.Model(loss_and_gradients, predict)
    return regression.main(model, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
