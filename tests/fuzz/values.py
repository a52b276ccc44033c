"""Biased values: the names, numbers, shapes and JSON that tend to find faults.

Each pool mixes what the seed holds (so that requests reach past the name lookups)
with what a careless or hostile client sends: empty, long, unprintable and
look-alike names, type extremes, non-finite numbers, impossible shapes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from hypothesis import strategies as st

from fuzz import seed

LONG_NAME = "n" * 1100
"""A name past the server's longest (1024 UTF-8 bytes)."""

ODD_TEXTS = ("", " ", "\x00", "a\nb", "\u2028", "é/ü", "../../etc/passwd", "%s%n", LONG_NAME)
"""Strings no well-behaved client sends as names or ids."""

VARIABLE_NAMES = (*seed.VARIABLES, "dense/kernel:0", "DENSE/KERNEL", "emb/", "fresh/var")
"""Variable names: the seed's, look-alikes and a new one."""

OPTIMIZER_NAMES = (*seed.OPTIMIZERS, "default", "SGD", "fresh")
"""Optimizer names: the seed's, look-alikes and a new one."""

SLOT_NAMES = ("m", "v", "vhat", "momentum", "accumulator", "rms", "mg", "iterations", "bogus")
"""Slot names of the eight optimizer classes, and two that no optimizer has."""

HYPERPARAMETERS = (
    "learning_rate",
    "lr",
    "beta_1",
    "beta_2",
    "epsilon",
    "momentum",
    "rho",
    "decay",
    "initial_accumulator_value",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "nesterov",
    "amsgrad",
    "centered",
    "iterations",
    "name",
    "bogus",
)
"""Hyperparameter names: every kind the classes have, and names that are not one."""

WORKERS = ("w0", "w1", "worker-2", "n" * 300)
"""Worker and request ids, one past the longest id (256 bytes)."""

INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
"""The range of each integer type protobuf has."""

EDGE_INTEGERS = (0, 1, 2, 3, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**62 + 1)
"""Integers at the edges of what the server checks (iterations and steps stop at 2**62)."""

EDGE_DOUBLES = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    5e-324,
    1e-300,
    3.5e38,
    1e300,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
)
"""Doubles at the edges: subnormal, past float32, the largest, non-finite."""

SYNC_TIMEOUTS = (0.0, -1.0, 0.01, seed.SYNC_TIMEOUT, math.nan, math.inf, -math.inf, 1e300)
"""Sync-step timeouts: refused ones and short valid ones. A long valid timeout would make
a push to a new sync optimizer wait that long, which is the design and not a hang."""

SAVE_AT_ITERATIONS = (0, -1, 2**62 + 1, 2**63 - 1, -(2**63))
"""Iterations to save at: refused ones, and 0, which every seed optimizer reached or passed.
A value an optimizer has yet to reach makes the save wait for pushes until its deadline,
which is the design and not a hang."""

DIMENSIONS = (0, 1, 2, 3, 6, -1, 2**31 - 1, 2**31, 2**62, 2**63 - 1)
"""Tensor dimensions: the seed's, zero, negative, past int32 and past any memory."""


def integers(cpp_type: int) -> st.SearchStrategy[int]:
    """Integers of a protobuf integer type, edges first."""
    low, high = INT_RANGES[cpp_type]
    edges = [v for v in (*EDGE_INTEGERS, low, high) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def doubles() -> st.SearchStrategy[float]:
    """Doubles, edges first."""
    return st.one_of(st.sampled_from(EDGE_DOUBLES), st.floats())


def texts() -> st.SearchStrategy[str]:
    """Strings, odd ones first."""
    return st.one_of(st.sampled_from(ODD_TEXTS), st.text(max_size=16))


def names(pool: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Names from a pool, now and then an odd one."""
    return st.one_of(st.sampled_from(pool), texts())


def shapes() -> st.SearchStrategy[list[int]]:
    """Tensor shapes: small ones of any dimension, and some past the largest rank (32)."""
    return st.one_of(
        st.lists(st.one_of(st.sampled_from(DIMENSIONS), st.integers(0, 8)), max_size=4),
        st.lists(st.just(1), min_size=32, max_size=34),
    )


def dtypes() -> st.SearchStrategy[int]:
    """Wire dtype enum values: the six defined, unspecified, and unknown ones."""
    return st.one_of(st.integers(0, 6), st.sampled_from([7, 99, -1, 2**31 - 1]))


# JSON ------------------------------------------------------------------------------------------

OPTIMIZER_CLASSES = (
    *("SGD", "Adam", "Adagrad", "Adadelta", "Adamax", "Ftrl", "Nadam", "RMSprop"),
    *("adam", "Optimizer", "LossScaleOptimizer", "ExponentialDecay", "Bogus", ""),
)
"""Optimizer class names: the eight, another case, and names that are not one of them."""

CONFIG_KEYS = (
    *HYPERPARAMETERS,
    "learning_rate_power",
    "l1_regularization_strength",
    "l2_regularization_strength",
    "l2_shrinkage_regularization_strength",
    "beta",
    "jit_compile",
    "is_legacy_optimizer",
)
"""Keys of optimizer configs, and keys that no class takes."""

SCHEDULE_CLASSES = (
    *("ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay", "InverseTimeDecay"),
    *("CosineDecay", "CosineDecayRestarts", "LearningRateSchedule", "Adam", "Bogus"),
)
"""Learning-rate schedule class names, and names that are not one."""

SCHEDULE_KEYS = (
    *("initial_learning_rate", "decay_steps", "decay_rate", "staircase", "boundaries"),
    *("values", "end_learning_rate", "power", "cycle", "alpha", "first_decay_steps"),
    *("t_mul", "m_mul", "warmup_target", "warmup_steps", "name", "bogus"),
)
"""Keys of schedule configs, and one that no schedule takes."""

VALID_CONFIGS = (
    *({"class_name": name, "config": {}} for name in OPTIMIZER_CLASSES[:8]),
    {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.5, "nesterov": True}},
    {"class_name": "Adam", "config": {"learning_rate": 0.01, "amsgrad": True, "clipnorm": 1.0}},
    {
        "class_name": "RMSprop",
        "config": {
            "centered": True,
            "learning_rate": {
                "class_name": "PiecewiseConstantDecay",
                "config": {"boundaries": [1, 2], "values": [0.1, 0.05, 0.01]},
            },
        },
    },
)
"""Configs creation accepts."""

HOSTILE_JSON = (
    "",
    "{",
    "null",
    "[]",
    '"Adam"',
    "-Infinity",
    "1e400",
    "[" * 40 + "]" * 40,
    '{"class_name": "SGD", "config": {"momentum": ' + "9" * 40 + "}}",
    '{"class_name": "SGD\\ud800", "config": {}}',
    '{"class_name": "Adam", "config": {}, "class_name": "SGD"}',
    '{"class_name": "Adam"}',
    '{"config": {}}',
)
"""JSON texts that are not a config: broken, too deep, out of range, unpaired surrogates."""


def _json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        integers(FieldDescriptor.CPPTYPE_INT64),
        st.sampled_from([2**64, -(2**70)]),
        doubles(),
        texts(),
    )


def schedules() -> st.SearchStrategy[dict[str, Any]]:
    """Serialized learning-rate schedules, mostly malformed."""
    values = st.one_of(_json_scalars(), st.lists(_json_scalars(), max_size=4))
    return st.fixed_dictionaries(
        {
            "class_name": st.sampled_from(SCHEDULE_CLASSES),
            "config": st.dictionaries(st.sampled_from(SCHEDULE_KEYS), values, max_size=4),
        }
    )


def configs() -> st.SearchStrategy[dict[str, Any]]:
    """Serialized optimizer configs: valid ones, and ones with odd classes, keys and values."""
    values = st.one_of(_json_scalars(), schedules())
    return st.one_of(
        st.sampled_from(VALID_CONFIGS),
        st.fixed_dictionaries(
            {
                "class_name": st.sampled_from(OPTIMIZER_CLASSES),
                "config": st.dictionaries(st.sampled_from(CONFIG_KEYS), values, max_size=4),
            }
        ),
    )


def json_texts(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """JSON texts of ``objects`` (NaN and Infinity as Python writes them), or hostile ones."""
    return st.one_of(objects.map(json.dumps), st.sampled_from(HOSTILE_JSON), st.text(max_size=32))
