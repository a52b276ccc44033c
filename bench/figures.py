"""What a benchmark measures: a figure of tfps next to its reference from the same run."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

Better = Literal["lower", "higher"]


@dataclasses.dataclass(frozen=True)
class Figure:
    """One measured figure and its reference.

    Attributes:
        section: the table it belongs to, such as "Dense push + apply".
        what: the row, such as "SGD, 16 MiB".
        value: tfps's figure (a median unless ``unit`` says otherwise).
        reference: the reference's figure, measured in the same run.
        reference_label: what the reference is, such as "raw TCP + in-process apply".
        unit: the unit of both figures, such as "ms" or "steps/s".
        better: whether a lower or a higher ``value`` is better.
        target: the ratio to meet (``value / reference`` when lower is better, else
            ``value / reference`` must be at least it); None: reported only.
        note: anything a reader needs to read the figure right (p99, spread, ...).
    """

    section: str
    what: str
    value: float
    reference: float
    reference_label: str
    unit: str
    better: Better = "lower"
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        """``value / reference``: tfps's cost (or rate) in multiples of the reference's."""
        return self.value / self.reference if self.reference else math.inf

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is none."""
        if self.target is None:
            return None
        return self.ratio <= self.target if self.better == "lower" else self.ratio >= self.target

    def is_measured(self) -> bool:
        """Whether both figures are finite and positive (a run that produced nothing is not)."""
        return all(math.isfinite(x) and x > 0 for x in (self.value, self.reference))

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON object, with its ratio and whether it met its target."""
        return {**dataclasses.asdict(self), "ratio": self.ratio, "met": self.met}
