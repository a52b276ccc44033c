"""Gauges read from the store when Prometheus scrapes: nothing to update as things happen.

Per optimizer: iterations and the current learning rate. Per device: variables
held, the bytes of their values and of their optimizer slots, and the memory
TensorFlow has allocated on a GPU. The metrics themselves are described in
:mod:`tfps_server.metrics`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator

import tensorflow as tf
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tfps_server import metrics
from tfps_server.store import ManagedVariable, Store

_log = logging.getLogger(__name__)


class StateCollector(Collector):
    """A Prometheus collector that reads a :class:`Store` at scrape time.

    Args:
        store: the state to report.
        variable_labels: also label byte gauges by variable name (one series per variable).
    """

    def __init__(self, store: Store, variable_labels: bool = False) -> None:
        self._store = store
        self._variable_labels = variable_labels

    def describe(self) -> Iterable[Metric]:
        """Returns the metric families without samples, so the registry can check names."""
        return [m.family(self._variable_labels) for m in metrics.STATE_METRICS]

    def collect(self) -> Iterable[Metric]:
        """Returns the current values; each optimizer's lock is held while it is read."""
        families = {m: m.family(self._variable_labels) for m in metrics.STATE_METRICS}
        variables = self._store.variables()
        for managed in self._store.optimizers():
            with managed.lock:
                iterations = managed.iterations()
                learning_rate = float(managed.optimizer._decayed_lr(tf.float32).numpy())
            families[metrics.OPTIMIZER_ITERATIONS].add_metric([managed.name], iterations)
            families[metrics.LEARNING_RATE].add_metric([managed.name], learning_rate)
        device = self._store.device
        families[metrics.VARIABLES].add_metric([device], len(variables))
        self._add_bytes(families, device, variables)
        memory = _memory_info(device)
        if memory is not None:
            families[metrics.DEVICE_MEMORY].add_metric([device], memory["current"])
            families[metrics.DEVICE_MEMORY_PEAK].add_metric([device], memory["peak"])
        return list(families.values())

    def _add_bytes(
        self,
        families: dict[metrics.StateMetric, GaugeMetricFamily],
        device: str,
        variables: list[ManagedVariable],
    ) -> None:
        """Adds value and slot bytes, per variable or summed over the device."""
        values = families[metrics.VARIABLE_BYTES]
        slots = families[metrics.SLOT_BYTES]
        if not self._variable_labels:
            values.add_metric([device], sum(_nbytes(m.variable) for m in variables))
            slots.add_metric([device], sum(n for _, n in _slot_bytes(variables)))
            return
        for managed in variables:
            values.add_metric([device, managed.name], _nbytes(managed.variable))
        for managed, nbytes in _slot_bytes(variables):
            slots.add_metric([device, managed.name], nbytes)


def _slot_bytes(variables: list[ManagedVariable]) -> Iterator[tuple[ManagedVariable, int]]:
    """Yields each variable with the bytes of its optimizer slots."""
    by_optimizer: dict[str, list[ManagedVariable]] = defaultdict(list)
    for managed in variables:
        by_optimizer[managed.optimizer.name].append(managed)
    for group in by_optimizer.values():
        managed_optimizer = group[0].optimizer
        with managed_optimizer.lock:
            optimizer = managed_optimizer.optimizer
            slot_names = optimizer.get_slot_names()
            for managed in group:
                yield (
                    managed,
                    sum(_nbytes(optimizer.get_slot(managed.variable, slot)) for slot in slot_names),
                )


def _nbytes(variable: tf.Variable) -> int:
    return int(variable.shape.num_elements() or 0) * variable.dtype.size


def _memory_info(device: str) -> dict[str, int] | None:
    """Returns TensorFlow's allocator statistics of a GPU, None for other devices."""
    if (tf.DeviceSpec.from_string(device).device_type or "").upper() != "GPU":
        return None
    try:
        return tf.config.experimental.get_memory_info(device)
    except ValueError as error:
        _log.debug("no memory information for %s: %s", device, error)
        return None
