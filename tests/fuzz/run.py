"""The runs: the hypothesis settings of a batch, and the loop that drives batches until
a wall-clock budget is spent.

Each batch is one hypothesis run of :data:`BATCH` cases under its own seed, so a run is
reproduced by its seeds; the clock is read between batches, so a run stops within one
batch of its budget. A batch that finds a fault raises it, shrunk. The smoke run fails on
it; the long run saves it into the corpus, from then on counts the cases that fail the
same way (by :class:`~fuzz.oracle.Signature`) rather than raising them, and goes on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as with_seed

from fuzz import corpus
from fuzz.cases import Case
from fuzz.generate import cases
from fuzz.oracle import Finding, Signature, check
from fuzz.target import Target

BATCH = 50
"""Cases per hypothesis run."""

SETTINGS = settings(
    max_examples=BATCH,
    deadline=None,
    database=None,
    phases=(Phase.generate, Phase.shrink),
    suppress_health_check=(
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ),
    report_multiple_bugs=False,
    print_blob=False,
)
"""The hypothesis settings of a batch: no deadline (the oracle has its own), no example
database (the corpus is ours), and the first fault found raised, shrunk."""

INFLIGHT = "inflight.tmp"
"""The file in the corpus directory that holds the case being sent in a long run, so that
one that kills the process is there for the next run to find."""


@dataclass
class Report:
    """What a run did.

    Attributes:
        cases: cases judged, shrinking included.
        seconds: wall time of the run.
        statuses: cases that passed, by (method, status code name).
        findings: the new faults found, shrunk.
        known: cases that failed the way a fault found before did.
    """

    cases: int = 0
    seconds: float = 0.0
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    known: Counter[Signature] = field(default_factory=Counter)

    def summary(self) -> str:
        """The report in a few lines: totals, cases per method and status, the faults."""
        rate = self.cases / max(self.seconds, 1.0)
        lines = [
            f"{self.cases} cases in {self.seconds:.0f} s ({rate:.1f}/s), "
            f"{len(self.findings)} new faults, {sum(self.known.values())} cases of known ones"
        ]
        for method in sorted({method for method, _ in self.statuses}):
            codes = [f"{c} {n}" for (m, c), n in sorted(self.statuses.items()) if m == method]
            lines.append(f"  {method}: {', '.join(codes)}")
        lines += [f"  new: {finding}" for finding in self.findings]
        lines += [f"  known: {signature} x{n}" for signature, n in self.known.items()]
        return "\n".join(lines)


def fuzz(
    target: Target,
    seeds: Iterable[int],
    seconds: float,
    *,
    min_cases: int = 0,
    known: Iterable[Signature] = (),
    save_to: Path | None = None,
) -> Report:
    """Runs batches of cases against ``target`` until ``seconds`` have passed and at least
    ``min_cases`` cases ran, or the seeds run out.

    Args:
        target: the server.
        seeds: one hypothesis seed per batch.
        seconds: the wall-clock budget, checked between batches.
        min_cases: cases to run whatever the clock says.
        known: faults to count rather than raise.
        save_to: a corpus directory to save new faults into, and to keep the case in
            flight in; None raises the first new fault instead.

    Raises:
        Finding: a new fault, when ``save_to`` is None.
    """
    report = Report()
    tolerated = set(known)
    start = time.monotonic()
    for batch_seed in seeds:
        if time.monotonic() - start >= seconds and report.cases >= min_cases:
            break
        judge = _judge(target, report, tolerated, save_to)
        batch = SETTINGS(with_seed(batch_seed)(given(cases(target.seed))(judge)))
        try:
            batch()
        except Finding as finding:
            if save_to is None:
                raise
            corpus.save(finding.case, save_to)
            tolerated.add(finding.signature)
            report.findings.append(finding)
        finally:
            report.seconds = time.monotonic() - start
    return report


def _judge(
    target: Target, report: Report, tolerated: set[Signature], save_to: Path | None
) -> Callable[[Case], None]:
    def judge(case: Case) -> None:
        report.cases += 1
        if save_to is not None:
            corpus.write(case, save_to / INFLIGHT)
        try:
            answer = check(target, case)
        except Finding as finding:
            if finding.signature not in tolerated:
                raise
            report.known[finding.signature] += 1
            return
        finally:
            if save_to is not None:
                (save_to / INFLIGHT).unlink()
        report.statuses[case.method, answer.code.name] += 1

    return judge


def rescue_inflight(directory: Path) -> Path | None:
    """Moves a case left in flight by a run that died into the corpus; returns its path."""
    inflight = directory / INFLIGHT
    if not inflight.exists():
        return None
    saved = corpus.save(corpus.decode(inflight.read_bytes()), directory)
    inflight.unlink()
    return saved
