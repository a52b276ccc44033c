"""Gauges read from the registry when Prometheus scrapes: nothing to update as things happen.

Per optimizer: iterations and the current learning rate. Per device: variables
held, the bytes of their values and of their optimizer slots, and the memory
TensorFlow has allocated on a GPU. The metrics themselves are described in
:mod:`tfps_server.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import tensorflow as tf
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tfps_server import metrics
from tfps_server.registry import Registry

_log = logging.getLogger(__name__)


class StateCollector(Collector):
    """A Prometheus collector that reads a :class:`Registry` at scrape time.

    Args:
        registry: the state to report.
        variable_labels: also label byte gauges by variable name (one series per variable).
    """

    def __init__(self, registry: Registry, variable_labels: bool = False) -> None:
        self._registry = registry
        self._variable_labels = variable_labels

    def describe(self) -> Iterable[Metric]:
        """Returns the metric families without samples, so the registry can check names."""
        return [m.family(self._variable_labels) for m in metrics.STATE_METRICS]

    def collect(self) -> Iterable[Metric]:
        """Returns the current values, each optimizer read under its lock."""
        families = {m: m.family(self._variable_labels) for m in metrics.STATE_METRICS}
        for view in self._registry.optimizer_views():
            families[metrics.OPTIMIZER_ITERATIONS].add_metric([view.name], view.iterations)
            families[metrics.LEARNING_RATE].add_metric([view.name], view.learning_rate)
        device = self._registry.device
        held = self._registry.variable_bytes()
        families[metrics.VARIABLES].add_metric([device], len(held))
        values, slots = families[metrics.VARIABLE_BYTES], families[metrics.SLOT_BYTES]
        if self._variable_labels:
            for entry in held:
                values.add_metric([device, entry.name], entry.value_bytes)
                slots.add_metric([device, entry.name], entry.slot_bytes)
        else:
            values.add_metric([device], sum(entry.value_bytes for entry in held))
            slots.add_metric([device], sum(entry.slot_bytes for entry in held))
        memory = _memory_info(device)
        if memory is not None:
            families[metrics.DEVICE_MEMORY].add_metric([device], memory["current"])
            families[metrics.DEVICE_MEMORY_PEAK].add_metric([device], memory["peak"])
        return list(families.values())


def _memory_info(device: str) -> dict[str, int] | None:
    """Returns TensorFlow's allocator statistics of a GPU, None for other devices."""
    if (tf.DeviceSpec.from_string(device).device_type or "").upper() != "GPU":
        return None
    try:
        return tf.config.experimental.get_memory_info(device)
    except ValueError as error:
        _log.debug("no memory information for %s: %s", device, error)
        return None
