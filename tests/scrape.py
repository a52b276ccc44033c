"""Reading a server's ``/metrics`` over HTTP, as Prometheus does, for the operations tests."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
"""Sample names a family of each type exposes, after its name (gauges: the name alone)."""


class Scrape:
    """One scrape: every sample, every metric family and every sample name it exports.

    Args:
        text: the exposition text.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, dict[Labels, float]] = {}
        self.names: set[str] = set()
        self.families: dict[str, str] = {}
        """Family name -> type (counter, gauge, histogram, ...)."""
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            # A family with no sample yet (a labelled counter never incremented) is exported
            # all the same: its HELP and TYPE lines name it.
            self.names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
            for sample in family.samples:
                labels = frozenset(sample.labels.items())
                self.samples.setdefault(sample.name, {})[labels] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """Returns the sample with exactly these labels; 0 when absent (a counter not moved)."""
        return self.samples.get(name, {}).get(frozenset(labels.items()), 0.0)

    def series(self, name: str) -> dict[Labels, float]:
        """Returns every sample of one name, by label set."""
        return dict(self.samples.get(name, {}))


def scrape(port: int) -> Scrape:
    """Fetches ``http://127.0.0.1:PORT/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return Scrape(response.read().decode())


def delta(after: Scrape, before: Scrape, name: str) -> dict[Labels, float]:
    """Returns how each series of ``name`` moved between two scrapes, leaving out those that
    did not move."""
    moved = {
        labels: value - before.value(name, **dict(labels))
        for labels, value in after.series(name).items()
    }
    return {labels: change for labels, change in moved.items() if change}


def labels(**pairs: str) -> Labels:
    """A label set, to compare with :func:`delta`'s keys."""
    return frozenset(pairs.items())


def wait_until(port: int, condition: Callable[[Scrape], bool], timeout: float = 30.0) -> Scrape:
    """Scrapes until ``condition`` holds; returns that scrape.

    Raises:
        AssertionError: it did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(port)
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics did not reach the condition in {timeout} s")
        time.sleep(0.05)
