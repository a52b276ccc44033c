"""Lazy sparse updates (``lazy_sparse``): a sparse gradient changes only the rows it holds.

At every sparse step, Keras's legacy Adam, Nadam and RMSprop (without momentum) decay the
slots of every row of the variable (Adam moves every row's value too), so a sparse push
costs what the whole table costs. The classes here update, for a sparse gradient, only the
rows it holds: their slots and their values, by the Keras formula applied to those rows
alone, as TF Addons' LazyAdam does for Adam. Rows absent from the gradient keep their values
and slots exactly. **This is a different update from Keras's**: a row's moments do not decay
while it is absent from the gradients. tfps applies it only to optimizers created with
``lazy_sparse=True``.

What stays Keras's:

- dense gradients: ``_resource_apply_dense`` is not overridden, so they are bitwise Keras's;
- clipping (``clipnorm``, ``clipvalue``, ``global_clipnorm``), learning-rate schedules and
  ``decay``: the base class clips before the update, and ``_prepare_local`` computes the
  coefficients used here;
- repeated indices: Keras's ``_resource_apply_sparse_duplicate_indices`` sums them before
  ``_resource_apply_sparse`` sees them;
- ``iterations``, which grows by one per ``apply_gradients``;
- the config: each class subclasses its Keras class, whose name and config it reports.

The update of the rows ``i`` of a sparse gradient ``g``, at step ``t`` (``iterations + 1``):

- **Adam** (TF Addons' LazyAdam, and AMSGrad too):
  ``m_i = b1 m_i + (1 - b1) g``; ``v_i = b2 v_i + (1 - b2) g^2``; with ``amsgrad``,
  ``vhat_i = max(vhat_i, v_i)`` stands for ``v_i`` in
  ``x_i -= lr sqrt(1 - b2^t) / (1 - b1^t) m_i / (sqrt(v_i) + eps)``.
- **Nadam**: ``m_i`` and ``v_i`` as Adam's, then Keras's Nadam step on those rows,
  ``x_i -= lr ((1 - mu_t) g / (1 - P_t) + mu_{t+1} m_i / (1 - P_{t+1}))
  / (sqrt(v_i / (1 - b2^t)) + eps)``, where ``mu_t`` is Keras's momentum schedule and ``P_t``
  the product of its values so far: the ``momentum_cache`` weight, which Keras advances once
  per ``apply_gradients`` whatever the gradients hold, as it still does here.
- **RMSprop** without momentum: ``ms_i = rho ms_i + (1 - rho) g^2``; centered,
  ``mg_i = rho mg_i + (1 - rho) g`` and ``d_i = ms_i - mg_i^2``, else ``d_i = ms_i``;
  ``x_i -= lr g / (sqrt(d_i) + eps)``. With momentum, Keras's own sparse kernels
  (``ResourceSparseApplyRMSProp``, ``ResourceSparseApplyCenteredRMSProp``) already change
  only the given rows of ``ms``, ``mg``, ``mom`` and ``x``, and are used as they are.

The other classes (Adadelta, Adagrad, Adamax, Ftrl, SGD with or without momentum) have no lazy
variant: Keras's sparse update of each already changes only the rows given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
from tf_keras.optimizers import legacy


def _coefficients(optimizer: Any, var: tf.Variable, apply_state: Any) -> Mapping[str, Any]:
    """The coefficients Keras's ``_prepare_local`` computed for the variable's device and dtype."""
    key = (var.device, var.dtype.base_dtype)
    return (apply_state or {}).get(key) or optimizer._fallback_apply_state(*key)


def _write_rows(variable: tf.Variable, indices: tf.Tensor, rows: tf.Tensor) -> Any:
    """Sets ``variable[indices] = rows``; returns the operation (None when eager)."""
    return tf.raw_ops.ResourceScatterUpdate(resource=variable.handle, indices=indices, updates=rows)


def _average_rows(
    optimizer: Any,
    var: tf.Variable,
    slot: str,
    indices: tf.Tensor,
    decay: tf.Tensor,
    one_minus_decay: tf.Tensor,
    value: tf.Tensor,
) -> tuple[tf.Tensor, Any]:
    """Sets a slot's rows to ``decay * rows + one_minus_decay * value``, the other rows untouched.

    Returns:
        The new rows, and the operation that writes them.
    """
    accumulator = optimizer.get_slot(var, slot)
    rows = tf.gather(accumulator, indices) * decay + value * one_minus_decay
    return rows, _write_rows(accumulator, indices, rows)


def _step_rows(var: tf.Variable, indices: tf.Tensor, step: tf.Tensor, writes: Sequence[Any]) -> Any:
    """Subtracts ``step`` from the variable's rows; returns that and the slot writes as one op."""
    update = tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=indices, updates=step)
    return tf.group(update, *writes)


def _moment_rows(
    optimizer: Any, var: tf.Variable, indices: tf.Tensor, c: Any, grad: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, list[Any]]:
    """Adam's and Nadam's first and second moments, updated on the gradient's rows only:
    the new m and v rows and their writes."""
    m, m_write = _average_rows(
        optimizer, var, "m", indices, c["beta_1_t"], c["one_minus_beta_1_t"], grad
    )
    v, v_write = _average_rows(
        optimizer, var, "v", indices, c["beta_2_t"], c["one_minus_beta_2_t"], tf.square(grad)
    )
    return m, v, [m_write, v_write]


class LazyAdam(legacy.Adam):
    """Keras's legacy Adam, whose sparse update changes only the gradient's rows (see module)."""

    def _resource_apply_sparse(
        self, grad: tf.Tensor, var: tf.Variable, indices: tf.Tensor, apply_state: Any = None
    ) -> Any:
        c = _coefficients(self, var, apply_state)
        m, v, writes = _moment_rows(self, var, indices, c, grad)
        if self.amsgrad:
            vhat = self.get_slot(var, "vhat")
            v = tf.maximum(tf.gather(vhat, indices), v)
            writes.append(_write_rows(vhat, indices, v))
        return _step_rows(var, indices, c["lr"] * m / (tf.sqrt(v) + c["epsilon"]), writes)


class LazyNadam(legacy.Nadam):
    """Keras's legacy Nadam, whose sparse update changes only the gradient's rows (see module)."""

    def _resource_apply_sparse(
        self, grad: tf.Tensor, var: tf.Variable, indices: tf.Tensor, apply_state: Any = None
    ) -> Any:
        c = _coefficients(self, var, apply_state)
        m, v, writes = _moment_rows(self, var, indices, c, grad)
        m_bar = (
            c["one_minus_m_t"] * grad / c["one_minus_m_schedule_new"]
            + c["m_t_1"] * m / c["one_minus_m_schedule_next"]
        )
        denominator = tf.sqrt(v / c["v_t_prime_denominator"]) + c["epsilon"]
        return _step_rows(var, indices, c["lr_t"] * m_bar / denominator, writes)


class LazyRMSprop(legacy.RMSprop):
    """Keras's legacy RMSprop, whose sparse update changes only the gradient's rows (see module)."""

    def _resource_apply_sparse(
        self, grad: tf.Tensor, var: tf.Variable, indices: tf.Tensor, apply_state: Any = None
    ) -> Any:
        if self._momentum:  # Keras's momentum kernels already change only the given rows
            return super()._resource_apply_sparse(grad, var, indices, apply_state)
        c = _coefficients(self, var, apply_state)
        ms, ms_write = _average_rows(
            self, var, "rms", indices, c["rho"], c["one_minus_rho"], tf.square(grad)
        )
        writes = [ms_write]
        denominator = ms
        if self.centered:
            mg, mg_write = _average_rows(
                self, var, "mg", indices, c["rho"], c["one_minus_rho"], grad
            )
            writes.append(mg_write)
            denominator = ms - tf.square(mg)
        step = c["lr_t"] * grad / (tf.sqrt(denominator) + c["epsilon"])
        return _step_rows(var, indices, step, writes)


LAZY_CLASSES: dict[type, type] = {
    legacy.Adam: LazyAdam,
    legacy.Nadam: LazyNadam,
    legacy.RMSprop: LazyRMSprop,
}
"""The lazy class of each Keras class that has one."""
