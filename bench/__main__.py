"""``python -m bench``: runs the benchmark suites and writes their report."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import report
from bench.figures import Figure
from bench.scale import FULL, QUICK

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any suite loads TensorFlow

SUITES = ("dense", "latency", "concurrency", "shards", "sparse", "training", "memory")
"""Modules of this package with ``run(scale) -> list[Figure]``, in report order."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the suites; returns 1 when one produced no figure or an unmeasured one."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: seconds, to check the suite runs"
    )
    parser.add_argument(
        "--only", default=",".join(SUITES), help=f"comma-separated suites of {', '.join(SUITES)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for BENCHMARKS.md and bench-results.json "
        "(default: the repository root; --quick: a temporary directory)",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SUITES))
    if unknown:
        parser.error(f"unknown suites {unknown}; expected some of {list(SUITES)}")
    out = args.out or (Path(tempfile.mkdtemp(prefix="tfps-bench-")) if args.quick else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    failed = []
    for name in chosen:
        print(f"bench: {name} ...", flush=True)
        start = time.monotonic()
        produced = importlib.import_module(f"bench.{name}").run(scale)
        print(f"bench: {name} took {time.monotonic() - start:.0f} s", flush=True)
        for figure in produced:
            print(
                f"  {figure.section} | {figure.what}: {figure.value:.4g} {figure.unit}, "
                f"{figure.ratio:.2f}x {figure.reference_label}",
                flush=True,
            )
        if not produced or not all(figure.is_measured() for figure in produced):
            failed.append(name)
        figures += produced
    host = report.machine()
    report.write_json(out / "bench-results.json", scale, host, figures)
    report.write_markdown(out / "BENCHMARKS.md", scale, host, figures)
    print(f"bench: wrote {out / 'BENCHMARKS.md'} and {out / 'bench-results.json'}")
    if failed:
        print(f"bench: no figures, or unmeasured ones, from {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
