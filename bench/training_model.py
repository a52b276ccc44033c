"""The training benchmark's model and data, defined once for tfps and ParameterServerStrategy.

A click-through-rate style binary classifier: each example has ``fields`` categorical ids
into one shared embedding table and ``dense_features`` floats. The embedded ids are
flattened, joined with the floats and fed to a ReLU tower ending in one logit; the loss
is binary cross-entropy on the logit. The full model has a 200,000 x 64 embedding
(12,800,000 parameters) and 4,295,809 dense parameters (see :data:`FULL`).

The data is synthetic and deterministic: ids are uniform over the table, floats are
standard normal, and the label is the sign of a fixed random linear "teacher" of both
(plus noise), so a model that trains sees its loss fall.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras

EMBEDDING = "embedding"
"""Name of the embedding layer; its table is the variable ``embedding/embeddings``."""
TOWER = "tower"
"""Name of the model after the embedding lookup, a layer of the whole model."""
LEARNING_RATE = 1e-3
SEED = 0


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """The sizes of the model and of its batches.

    Attributes:
        vocabulary: rows of the embedding table.
        embedding_dim: columns of the embedding table.
        fields: categorical ids per example.
        dense_features: float features per example.
        hidden: units of the ReLU layers, in order; one logit follows them.
        batch: examples per step (of one worker).
        batches: distinct batches of synthetic data, cycled through.
    """

    vocabulary: int
    embedding_dim: int
    fields: int
    dense_features: int
    hidden: tuple[int, ...]
    batch: int
    batches: int

    def dense_parameters(self) -> int:
        """Parameters of the tower: every kernel and bias after the embedding."""
        widths = [self.fields * self.embedding_dim + self.dense_features, *self.hidden, 1]
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(widths))

    def describe(self) -> str:
        """A one-line description: embedding, tower, parameter counts, batch."""
        tower = " -> ".join(
            str(width)
            for width in (self.fields * self.embedding_dim + self.dense_features, *self.hidden, 1)
        )
        return (
            f"{self.vocabulary:,}x{self.embedding_dim} embedding "
            f"({self.vocabulary * self.embedding_dim:,} parameters, {self.fields} ids per "
            f"example, flattened) + {self.dense_features} dense features, ReLU tower "
            f"{tower} ({self.dense_parameters():,} dense parameters), sigmoid "
            f"cross-entropy, batch {self.batch}"
        )


FULL = ModelSizes(
    vocabulary=200_000,
    embedding_dim=64,
    fields=16,
    dense_features=16,
    hidden=(2048, 1024, 64),
    batch=256,
    batches=64,
)
QUICK = ModelSizes(
    vocabulary=1_000,
    embedding_dim=8,
    fields=4,
    dense_features=4,
    hidden=(16,),
    batch=32,
    batches=8,
)
SIZES = {"full": FULL, "quick": QUICK}
"""Model sizes by ``Scale.name``."""


class Batch(NamedTuple):
    """One batch: ids ``[batch, fields]`` int32, floats ``[batch, dense_features]`` float32,
    labels ``[batch, 1]`` float32 in {0, 1}."""

    ids: np.ndarray
    dense: np.ndarray
    labels: np.ndarray


def synthetic_batches(sizes: ModelSizes, seed: int = SEED) -> list[Batch]:
    """The benchmark's data: ``sizes.batches`` batches, the same for a given seed."""
    rng = np.random.default_rng(seed)
    id_weights = rng.normal(size=sizes.vocabulary)
    dense_weights = rng.normal(size=sizes.dense_features)
    batches = []
    for _ in range(sizes.batches):
        ids = rng.integers(0, sizes.vocabulary, size=(sizes.batch, sizes.fields))
        dense = rng.normal(size=(sizes.batch, sizes.dense_features))
        score = (
            dense @ dense_weights / math.sqrt(sizes.dense_features)
            + id_weights[ids].sum(axis=1) / math.sqrt(sizes.fields)
            + rng.normal(scale=0.5, size=sizes.batch)
        )
        batches.append(
            Batch(
                ids.astype(np.int32),
                dense.astype(np.float32),
                (score > 0).astype(np.float32).reshape(-1, 1),
            )
        )
    return batches


def build_tower(sizes: ModelSizes) -> tf_keras.Model:
    """The model after the embedding lookup: ``[embedded, dense] -> logit``.

    ``embedded`` is ``[batch, fields, embedding_dim]``, as the embedding layer returns it.
    """
    embedded = tf_keras.Input(shape=(sizes.fields, sizes.embedding_dim), name="embedded")
    dense = tf_keras.Input(shape=(sizes.dense_features,), name="dense")
    x = tf_keras.layers.Concatenate(name="features")(
        [tf_keras.layers.Flatten(name="flatten")(embedded), dense]
    )
    for index, units in enumerate(sizes.hidden):
        x = tf_keras.layers.Dense(units, activation="relu", name=f"hidden_{index}")(x)
    logit = tf_keras.layers.Dense(1, name="logit")(x)
    return tf_keras.Model([embedded, dense], logit, name=TOWER)


def build_model(sizes: ModelSizes, seed: int = SEED) -> tf_keras.Model:
    """The whole model, ``[ids, dense] -> logit``: the embedding layer, then the tower.

    The same seed gives the same initial weights in every process.
    """
    tf_keras.utils.set_random_seed(seed)
    ids = tf_keras.Input(shape=(sizes.fields,), dtype="int32", name="ids")
    dense = tf_keras.Input(shape=(sizes.dense_features,), name="dense")
    embedded = tf_keras.layers.Embedding(sizes.vocabulary, sizes.embedding_dim, name=EMBEDDING)(ids)
    logit = build_tower(sizes)([embedded, dense])
    return tf_keras.Model([ids, dense], logit, name="ctr")


def loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of the logits, averaged over the batch.

    A plain function rather than a ``Loss`` object: those refuse their default reduction
    inside ``strategy.run``.
    """
    return tf.reduce_mean(tf_keras.losses.binary_crossentropy(labels, logits, from_logits=True))


def optimizer_config() -> dict[str, object]:
    """The Keras config of the optimizer tfps's server applies: :func:`legacy_optimizer`'s."""
    return {"class_name": "Adam", "config": {"learning_rate": LEARNING_RATE}}


def legacy_optimizer() -> tf_keras.optimizers.legacy.Optimizer:
    """The optimizer ParameterServerStrategy trains with, as tfps's server makes it."""
    return tf_keras.optimizers.legacy.Adam(learning_rate=LEARNING_RATE)
