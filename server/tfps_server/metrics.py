"""Every Prometheus metric of the server, defined once.

Each server owns a :class:`Metrics` with its own registry, so several servers in
one process (as in the tests) never mix their numbers. Names follow Prometheus
conventions: one ``tfps_`` prefix, base units, ``_total`` on counters, and
low-cardinality labels (optimizer, RPC method, outcome, reason).

Metrics the code updates as things happen live in :class:`Metrics`; gauges read
from the server's state at scrape time are described by the :class:`StateMetric`
constants below and computed by :mod:`tfps_server.state_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from tfps_server import __version__

disable_created_metrics()  # no *_created series: creation times double the series for nothing

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds, from sub-millisecond RPCs to multi-second transfers of large tensors."""

NORM_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0, 1e4, 1e6)
"""Gradient global norms, spanning healthy training to divergence."""


class Metrics:
    """The server's metrics, registered in one registry.

    Args:
        registry: where to register; a new one (with the process collector) if None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry = registry
        r = registry
        self.build = Info("tfps_build", "The running tfps-server.", registry=r)
        self.build.info({"version": __version__})

        # RPCs
        self.rpc_requests = Counter(
            "tfps_rpc_requests",
            "RPCs finished, by method and gRPC status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "tfps_rpc_duration_seconds",
            "RPC latency, from the handler's start to its response (the last one of a stream).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_in_flight = Gauge(
            "tfps_rpc_in_flight", "RPCs being served now.", ["method"], registry=r
        )
        self.rpc_request_bytes = Counter(
            "tfps_rpc_request_bytes",
            "Serialized bytes of request messages.",
            ["method"],
            registry=r,
        )
        self.rpc_response_bytes = Counter(
            "tfps_rpc_response_bytes",
            "Serialized bytes of response messages.",
            ["method"],
            registry=r,
        )

        self.rejections = Counter(
            "tfps_rejections",
            "Requests refused with a tfps reason (bad input, bounds, identity), by reason.",
            ["reason"],
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "tfps_in_flight_bytes",
            "Tensor bytes reserved now by calls in progress (the --max-in-flight-gib budget).",
            registry=r,
        )
        self.in_flight_capacity = Gauge(
            "tfps_in_flight_capacity_bytes",
            "The budget of tensor bytes in flight (--max-in-flight-gib).",
            registry=r,
        )

        # Training
        self.pushes = Counter(
            "tfps_pushes",
            "Per-optimizer push outcomes: applied, aggregated, stale, skipped.",
            ["optimizer", "outcome"],
            registry=r,
        )
        self.push_rejections = Counter(
            "tfps_push_rejections",
            "Pushes refused before any change, by reason.",
            ["reason"],
            registry=r,
        )
        self.gradient_norm = Histogram(
            "tfps_gradient_global_norm",
            "Global norm of the applied gradient, before clipping.",
            ["optimizer"],
            buckets=NORM_BUCKETS,
            registry=r,
        )
        self.clip_events = Counter(
            "tfps_gradient_clip_events",
            "Applied gradients that clipping changed, by kind "
            "(clipnorm, clipvalue, global_clipnorm).",
            ["optimizer", "kind"],
            registry=r,
        )
        self.non_finite_gradients = Counter(
            "tfps_non_finite_gradients",
            "Pushes whose gradients held NaN or Inf, by action (rejected, skipped).",
            ["optimizer", "action"],
            registry=r,
        )
        self.apply_duration = Histogram(
            "tfps_apply_duration_seconds",
            "Time of one apply_gradients call.",
            ["optimizer"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sync_wait = Histogram(
            "tfps_sync_step_wait_seconds",
            "Time a sync step waited from its first contribution until it closed.",
            ["optimizer"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sync_timeouts = Counter(
            "tfps_sync_steps_timed_out",
            "Sync steps closed by their timeout with fewer contributions than required.",
            ["optimizer"],
            registry=r,
        )

        # Checkpoints
        self.checkpoint_duration = Histogram(
            "tfps_checkpoint_duration_seconds",
            "Time to write one checkpoint.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.checkpoint_size = Gauge(
            "tfps_checkpoint_size_bytes", "Size of the newest checkpoint.", registry=r
        )
        self.checkpoint_last_success = Gauge(
            "tfps_checkpoint_last_success_timestamp_seconds",
            "Unix time of the newest successful checkpoint.",
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "tfps_checkpoint_failures", "Checkpoints that failed to write.", registry=r
        )


@dataclass(frozen=True)
class StateMetric:
    """A gauge read from the server's state at scrape time.

    Attributes:
        name: the metric name.
        documentation: its help text.
        labels: its labels.
        per_variable: it also takes a ``variable`` label when variable labels are enabled
            (``--metrics-variable-labels``); off by default, as variable names are unbounded.
    """

    name: str
    documentation: str
    labels: tuple[str, ...]
    per_variable: bool = False

    def family(self, variable_labels: bool = False) -> GaugeMetricFamily:
        """Returns an empty family of this metric, to add samples to."""
        extra = ("variable",) if self.per_variable and variable_labels else ()
        return GaugeMetricFamily(self.name, self.documentation, labels=[*self.labels, *extra])


OPTIMIZER_ITERATIONS = StateMetric(
    "tfps_optimizer_iterations", "The optimizer's iterations (applied steps).", ("optimizer",)
)
LEARNING_RATE = StateMetric(
    "tfps_learning_rate",
    "The learning rate the next step uses: a schedule's value at the current iterations, "
    "with legacy decay applied.",
    ("optimizer",),
)
VARIABLES = StateMetric("tfps_variables", "Variables held.", ("device",))
VARIABLE_BYTES = StateMetric(
    "tfps_variable_bytes", "Bytes of variable values held.", ("device",), per_variable=True
)
SLOT_BYTES = StateMetric(
    "tfps_slot_bytes", "Bytes of optimizer slot variables held.", ("device",), per_variable=True
)
DEVICE_MEMORY = StateMetric(
    "tfps_device_memory_bytes",
    "Device memory TensorFlow has allocated now (GPUs; TensorFlow reports none for CPUs).",
    ("device",),
)
DEVICE_MEMORY_PEAK = StateMetric(
    "tfps_device_memory_peak_bytes",
    "Most device memory TensorFlow has had allocated at once since start (GPUs).",
    ("device",),
)
STATE_METRICS = (
    OPTIMIZER_ITERATIONS,
    LEARNING_RATE,
    VARIABLES,
    VARIABLE_BYTES,
    SLOT_BYTES,
    DEVICE_MEMORY,
    DEVICE_MEMORY_PEAK,
)
"""Every state metric, in exposition order."""
