"""The tfps benchmark suite: every figure is a ratio to a reference measured in the same run.

Run ``make bench`` (full sizes; writes BENCHMARKS.md and bench-results.json) or
``make bench-quick`` (small sizes, seconds; part of ``make test``). See
``python -m bench --help``.
"""
