"""What the examples train and evaluate on: inputs and targets, split into a training part
and a held-out part (scikit-learn's ``train_test_split`` order)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """Inputs and targets, split into training and held-out examples."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
