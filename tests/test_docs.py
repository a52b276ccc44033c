"""README.md and SECURITY.md tell the truth about the code: the configuration table lists
every tfps-server flag, with its environment variable and default as ``--help`` has them, and
nothing else; the metrics table names every metric family; SECURITY.md lists every resource
bound and gives every RPC the role the server requires."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator

import pytest

from tfps_server import limits
from tfps_server.auth import REQUIRED_ROLE, Role
from tfps_server.cli import ENV_PREFIX, build_parser
from tfps_server.metrics import STATE_METRICS, Metrics

from helpers import REPO

README = REPO / "README.md"
SECURITY = REPO / "SECURITY.md"
COMPUTED_DEFAULT = "(default:"
"""How a flag's help says its default is computed, not a constant (memory-derived bounds)."""


def _table(text: str, header: str) -> list[list[str]]:
    """Returns the cells of each row of the Markdown table whose header row is ``header``."""
    lines = text.splitlines()
    start = lines.index(header) + 2  # the header, then the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _code(cell: str) -> list[str]:
    """Returns the `code` spans of a table cell."""
    return re.findall(r"`([^`]+)`", cell)


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, argparse.Action]]:
    """tfps-server's configuration flags (long option -> its action; not --help and
    --version), parsed with no TFPS_* variable set, so that the defaults are the built-in
    ones."""
    for name in os.environ:
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    yield {
        option: action
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--version")
    }


def _environment(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _check_rows(rows: list[list[str]], flags: dict[str, argparse.Action]) -> None:
    """Each row is `--flag` | `TFPS_FLAG` | default | ...: the variable the server reads for
    the flag, and its default as --help gives it (a constant in code font, a computed or absent
    one in words)."""
    for flag_cell, environment_cell, default_cell, *_ in rows:
        (flag,) = _code(flag_cell)
        action = flags[flag]
        assert _code(environment_cell) == [_environment(flag)], flag
        literal = re.fullmatch(r"`([^`]+)`", default_cell)
        if literal is None:
            assert action.default is None or COMPUTED_DEFAULT in (action.help or ""), flag
        elif action.default is None:  # a default the server derives: --help says it
            assert f"default {literal.group(1)}" in (action.help or ""), flag
        else:
            assert literal.group(1) == str(action.default), flag


def test_readme_configuration_table_is_the_parser(flags: dict[str, argparse.Action]) -> None:
    """Every flag of `tfps-server --help` has one row, in --help's order, and no row names a
    flag the server does not have (such as a renamed one)."""
    rows = _table(README.read_text(), "| Flag | Environment | Default | Meaning |")
    assert [_code(row[0])[0] for row in rows] == list(flags)
    _check_rows(rows, flags)


def test_security_bounds_table_is_limits(flags: dict[str, argparse.Action]) -> None:
    """SECURITY.md's table of resource bounds has a row for every flag of limits.FLAGS, and only
    those, with its variable and default."""
    rows = _table(SECURITY.read_text(), "| Flag | Environment | Default | Refused with |")
    assert [_code(row[0])[0] for row in rows] == [flag.name for flag in limits.FLAGS]
    _check_rows(rows, flags)


def test_security_roles_table_is_the_servers() -> None:
    """Each role's row names exactly the RPCs whose least role it is."""
    rows = _table(SECURITY.read_text(), "| Role | May call, besides what the roles above may |")
    listed = {role_cell.strip("`"): set(_code(calls)) for role_cell, calls in rows}
    assert listed == {
        str(role): {method for method, least in REQUIRED_ROLE.items() if least is role}
        for role in Role
    }


def test_readme_metrics_table_names_every_family() -> None:
    """Every metric family of the server (counters with _total) is in the metrics table, by
    name or by a `prefix_*` row."""
    rows = _table(README.read_text(), "| Metric | Labels | What |")
    names = [name for row in rows for name in _code(row[0])]
    families = {family.name for family in Metrics().registry.collect()}
    families |= {metric.name for metric in STATE_METRICS}
    suffixes = {"counter": "_total", "info": "_info"}
    suffix = {family.name: suffixes.get(family.type, "") for family in Metrics().registry.collect()}
    for family in families:
        shown = family + suffix.get(family, "")
        assert any(
            name == shown or (name.endswith("*") and shown.startswith(name[:-1])) for name in names
        ), family
