"""The fuzzing harness of tests/fuzz against a live in-process server: the committed
corpus replayed, a bounded smoke run, and the long run of ``make fuzz``.

The smoke run is seeded (batch seeds 0, 1, 2, ...), so it makes the same cases in the
same order on every machine; it stops after about 20 seconds, once it has run at least
:data:`SMOKE_MIN_CASES`. ``make fuzz`` runs for ``FUZZ_SECONDS`` (default 30 minutes)
from random seeds and saves every new fault it finds into the corpus.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator

import pytest

from fuzz import corpus
from fuzz.cases import METHODS, Case
from fuzz.oracle import Finding, check
from fuzz.run import fuzz, rescue_inflight
from fuzz.target import Target

SMOKE_SECONDS = 20.0
"""Wall time of the smoke run, give or take a batch."""

SMOKE_MIN_CASES = 300
"""Cases the smoke run makes however slow the machine: enough for every method."""

LONG_SECONDS = float(os.environ.get("FUZZ_SECONDS", "0"))
"""Wall time of the long run; 0 (unset) skips it."""

CORPUS = list(corpus.load())


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """A server planted with the seed, shared by the tests here (each case resets it)."""
    running = Target()
    yield running
    running.close()


@pytest.mark.parametrize("case", [case for _, case in CORPUS], ids=[name for name, _ in CORPUS])
def test_corpus_case_passes_the_oracle(target: Target, case: Case) -> None:
    """Every committed case: no hang, no INTERNAL or UNKNOWN, a reason with every refusal,
    the server healthy after it, and no change of state unless it succeeded at a write."""
    check(target, case)


@pytest.mark.timeout(SMOKE_SECONDS + 840)  # shrinking a fault it finds takes minutes more
def test_smoke_run_finds_no_fault(target: Target) -> None:
    """About a minute of generated cases over every method passes the oracle."""
    report = fuzz(target, itertools.count(), SMOKE_SECONDS, min_cases=SMOKE_MIN_CASES)
    print(report.summary())
    assert {method for method, _ in report.statuses} == set(METHODS), report.summary()


@pytest.mark.skipif(not LONG_SECONDS, reason="the long run is `make fuzz` (FUZZ_SECONDS)")
@pytest.mark.timeout(LONG_SECONDS + 1800)
def test_long_run_finds_no_new_fault(target: Target) -> None:
    """``FUZZ_SECONDS`` of cases from random seeds; new faults are saved into the corpus.

    Faults the corpus already shows (and a case that killed an earlier run) are counted,
    not failed on: the corpus replay fails on them.
    """
    rescued = rescue_inflight(corpus.DIRECTORY)
    if rescued is not None:
        print(f"a case in flight when an earlier run died is now {rescued}")
    known = set()
    for _, case in corpus.load():
        try:
            check(target, case)
        except Finding as finding:
            known.add(finding.signature)
    first = random.SystemRandom().randrange(2**32)
    print(f"batch seeds from {first}; faults the corpus shows: {sorted(known)}")
    report = fuzz(
        target,
        itertools.count(first),
        LONG_SECONDS,
        known=known,
        save_to=corpus.DIRECTORY,
    )
    print(report.summary())
    assert not report.findings, report.summary()


def test_a_corpus_file_holds_its_case_exactly() -> None:
    """The corpus format keeps empty streams, empty messages and arbitrary bytes."""
    case = Case("Push", (b"", b"\x00\xff" * 3, b"\n\x03abc"))
    assert corpus.decode(corpus.encode(case)) == case
    assert corpus.file_name(case).startswith("Push-")
    assert corpus.decode(corpus.encode(Case("Push", ()))) == Case("Push", ())
