"""Keras's ``apply_gradients``, traced into a TensorFlow function for the pushes that recur.

An eager Keras apply dispatches every op of the update from Python, one at a time:
most of a small push's cost. Workers push the same variables step after step, so
once a push signature (which variables, dense or sparse) has been applied
:data:`HOT_AFTER` times eagerly, it is traced into a ``tf.function`` and called as
one graph from then on. The traced function runs the very same Keras code on the
same variables; Grappler's graph rewrites, which reassociate floating-point
arithmetic, are turned off in the server process, so the compiled update stays
bitwise the eager one (the parity tests check both paths).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

HOT_AFTER = 4
"""Eager applies of a signature before it is traced."""
MAX_FUNCTIONS = 64
"""Traced functions kept per optimizer; the least recently used beyond are dropped."""

Signature = tuple[tuple[int, bool, str], ...]
"""Per gradient: its variable's creation position, whether it is sparse, and the dtype of
its indices (empty when dense)."""


@functools.cache
def _exact_graphs() -> None:
    """Turns Grappler off in this process: its arithmetic and constant-folding rewrites
    change the last bits of updates (Adam's, for one)."""
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


class CompiledApply:
    """The traced applies of one Keras optimizer, by push signature.

    Not thread-safe: used under the optimizer's lock, as the optimizer itself.

    Args:
        optimizer: the ``tf_keras.optimizers.legacy`` instance.
    """

    def __init__(self, optimizer: Any) -> None:
        self._optimizer = optimizer
        self._counts: collections.Counter[Signature] = collections.Counter()
        self._functions: collections.OrderedDict[Signature, Any] = collections.OrderedDict()
        self.traces = 0
        """Times a function was traced (a test counts them: no retracing)."""

    def apply(
        self,
        signature: Signature,
        gradients: Sequence[tf.Tensor | tf.IndexedSlices],
        variables: Sequence[tf.Variable],
    ) -> None:
        """Applies ``gradients`` to ``variables`` as ``optimizer.apply_gradients`` does.

        Keras's cross-replica sum of the gradients is skipped
        (``experimental_aggregate_gradients=False``): with one replica it is an identity,
        and a third of an eager small push's apply.
        """
        function = self._functions.get(signature)
        if function is None:
            self._counts[signature] += 1
            if self._counts[signature] <= HOT_AFTER:
                self._optimizer.apply_gradients(
                    zip(gradients, variables, strict=True), experimental_aggregate_gradients=False
                )
                return
            function = self._functions[signature] = self._trace(list(variables))
            del self._counts[signature]
            if len(self._functions) > MAX_FUNCTIONS:
                self._functions.popitem(last=False)
        self._functions.move_to_end(signature)
        function(list(gradients))

    def clear(self) -> None:
        """Drops every traced function: a hyperparameter set to a schedule or a number
        that Keras keeps in Python (rather than in a variable) changed what they baked in."""
        self._functions.clear()
        self._counts.clear()

    def _trace(self, variables: list[tf.Variable]) -> Any:
        _exact_graphs()
        optimizer = self._optimizer

        def apply(gradients: list[tf.Tensor | tf.IndexedSlices]) -> None:
            self.traces += 1
            optimizer.apply_gradients(
                zip(gradients, variables, strict=True), experimental_aggregate_gradients=False
            )

        return tf.function(apply, reduce_retracing=True)
