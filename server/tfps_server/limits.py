"""The bounds that keep every request answerable, whatever a client sends.

Each bound is one field of :class:`Limits` and one flag (and environment
variable) of ``tfps-server``, documented here once: the CLI builds its flags
from :data:`FLAGS`. A request past a bound is refused with RESOURCE_EXHAUSTED
(a call over the in-flight budget that could fit later: UNAVAILABLE, retryable)
before anything large is allocated, and counted in ``tfps_rejections_total``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

GIB = 1 << 30


def memory_bytes() -> int:
    """Returns the memory this process may use: its cgroup's limit, else the physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what requests may ask of the server; every field has a ``tfps-server`` flag."""

    max_payload_bytes: int = 8 * GIB
    """Most tensor bytes one call may carry in either direction (request or response)."""
    max_in_flight_bytes: int = 16 * GIB
    """Most tensor bytes all calls together may hold in flight, received or sent."""
    state_quota_bytes: int | None = None
    """Most bytes of state (variables and optimizer slots); None: no quota."""
    max_name_bytes: int = 1024
    """Longest variable, optimizer, slot or hyperparameter name, in UTF-8 bytes."""
    max_id_bytes: int = 256
    """Longest push request id or worker id, in UTF-8 bytes."""
    max_tensors_per_request: int = 4096
    """Most tensors (variables, gradients, weights, names) one request may declare."""
    max_variables: int = 65536
    """Most variables the server holds, over all optimizers."""
    max_optimizers: int = 256
    """Most optimizers the server holds."""
    max_config_bytes: int = 65536
    """Longest optimizer config or schedule JSON, in bytes."""
    max_schedule_boundaries: int = 64
    """Most boundaries of a piecewise-constant learning-rate schedule. Keras evaluates one with
    ``tf.case``, which nests a Python call per boundary: a few hundred exhaust the recursion
    limit at a late step."""
    max_concurrent_calls: int = 256
    """Most parameter-server calls in progress at once (health and reflection not counted)."""
    stream_idle_seconds: float = 60.0
    """Longest a stream may go without sending or reading a message before it is ended."""
    min_stream_bytes_per_second: int = 1 << 20
    """Slowest a stream of tensors may move on average: one of N bytes must end within
    ``stream_idle_seconds + N / min_stream_bytes_per_second``, so that trickling a byte per
    idle period cannot hold a reservation and a call slot for ever."""


class Flag(NamedTuple):
    """A ``tfps-server`` flag that sets one field of :class:`Limits`."""

    name: str
    field: str
    default: str
    help: str
    parse: Callable[[str], Any]
    to_field: Callable[[Any], Any]


def _gib(value: float) -> int:
    return int(value * GIB)


def _quota(value: float) -> int | None:
    return None if value == 0 else _gib(value)


def _defaults() -> tuple[str, str]:
    """The in-flight budget and state quota defaults: a quarter and a half of memory."""
    memory = memory_bytes()
    return f"{memory / 4 / GIB:.2f}", f"{memory / 2 / GIB:.2f}"


_IN_FLIGHT_DEFAULT, _QUOTA_DEFAULT = _defaults()

FLAGS = (
    Flag(
        "--max-payload-gib",
        "max_payload_bytes",
        "8",
        "most tensor data one call may carry, request or response, in GiB",
        float,
        _gib,
    ),
    Flag(
        "--max-in-flight-gib",
        "max_in_flight_bytes",
        _IN_FLIGHT_DEFAULT,
        "most tensor data all calls together may hold in flight, in GiB "
        "(default: a quarter of the memory this process may use)",
        float,
        _gib,
    ),
    Flag(
        "--state-quota-gib",
        "state_quota_bytes",
        _QUOTA_DEFAULT,
        "most bytes of variables and optimizer slots, in GiB; 0: no quota "
        "(default: half of the memory this process may use)",
        float,
        _quota,
    ),
    Flag("--max-name-bytes", "max_name_bytes", "1024", "longest name, UTF-8 bytes", int, int),
    Flag("--max-id-bytes", "max_id_bytes", "256", "longest request or worker id, bytes", int, int),
    Flag(
        "--max-tensors-per-request",
        "max_tensors_per_request",
        "4096",
        "most tensors one request may declare",
        int,
        int,
    ),
    Flag("--max-variables", "max_variables", "65536", "most variables held", int, int),
    Flag("--max-optimizers", "max_optimizers", "256", "most optimizers held", int, int),
    Flag(
        "--max-config-bytes",
        "max_config_bytes",
        "65536",
        "longest optimizer config or schedule JSON",
        int,
        int,
    ),
    Flag(
        "--max-schedule-boundaries",
        "max_schedule_boundaries",
        "64",
        "most boundaries of a PiecewiseConstantDecay schedule",
        int,
        int,
    ),
    Flag(
        "--max-concurrent-calls",
        "max_concurrent_calls",
        "256",
        "most parameter-server calls in progress at once (health not counted)",
        int,
        int,
    ),
    Flag(
        "--stream-idle-seconds",
        "stream_idle_seconds",
        "60",
        "a stream that sends or reads nothing for this long is ended",
        float,
        float,
    ),
    Flag(
        "--min-stream-mib-per-second",
        "min_stream_bytes_per_second",
        "1",
        "slowest average rate of a tensor stream: one of N MiB must end within "
        "--stream-idle-seconds + N / this many seconds",
        float,
        lambda value: max(1, int(value * (1 << 20))),
    ),
)
"""Every flag of :class:`Limits`, in the order ``--help`` shows them."""


def flag_of(field: str) -> str:
    """Returns the ``tfps-server`` flag that sets a field of :class:`Limits`."""
    return next(flag.name for flag in FLAGS if flag.field == field)


def _positive(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parsed(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, received {text!r}")
        return value

    return parsed


def add_flags(add: Callable[..., None]) -> None:
    """Adds every limit flag through the CLI's ``add(flag, default, help, **kwargs)``."""
    for flag in FLAGS:
        add(
            flag.name, flag.default, f"{flag.help}; default %(default)s", type=_positive(flag.parse)
        )


def from_args(args: argparse.Namespace) -> Limits:
    """Returns the limits the parsed flags set."""
    values = {
        flag.field: flag.to_field(getattr(args, flag.name.lstrip("-").replace("-", "_")))
        for flag in FLAGS
    }
    return Limits(**values)
