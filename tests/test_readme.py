"""Every code block of the READMEs is true: the Python examples run, the shell commands name
real flags and make targets, and excerpts of the examples are the examples' own lines.

Conventions for a fenced block of README.md (server/README.md and client/README.md alike),
by its info string:

- ```` ```python ````: run, top to bottom, in one namespace per file (as one script), against
  one fresh server started as ``tfps-server --checkpoint-dir DIR`` on a free port, with its
  metrics port off so that tests can run side by side, from a temporary working directory.
  The address the README gives, ``127.0.0.1:50051``, is replaced by the server's, and only
  that literal. Variable and optimizer names are global on a server, so blocks must not
  declare one name two ways. A block with top-level ``await`` runs in an event loop of its
  own (``asyncio.run``): it opens and closes what it awaits on.
- ```` ```python no-run ````: needs what a test cannot have here (a ``TF_CONFIG`` cluster,
  TLS secrets, a remote host); compiled only.
- ```` ```python excerpt=PATH ````: lines of ``PATH`` (which other tests run), compiled; each
  line, without its trailing comment, must be one of ``PATH``'s. Comment-only lines and ``...``
  are the README's own.
- ```` ```sh ```` (or ``bash``, ``shell``, ``console``): each ``tfps-server`` and
  ``tfps-ckpt`` command parses with the real argument parser, and each ``make`` target exists.

Any other language (```` ```text ````, none) is not checked. A failure names the file and line.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import inspect
import io
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tfps_client import Client, ckpt_cli
from tfps_server import cli

from helpers import LISTENING, REPO, ServerProcess, free_port, server_env

DOCUMENTS = ("README.md", "server/README.md", "client/README.md")
README_ADDRESS = "127.0.0.1:50051"
"""The server address the README's examples use: ``tfps-server``'s default."""
SHELLS = ("sh", "bash", "shell", "console")
FENCE = re.compile(r"^```(?P<info>.*)$")
TRAILING_COMMENT = re.compile(r"\s+# .*$")
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "tfps-server": cli.build_parser,
    "tfps-ckpt": ckpt_cli.build_parser,
}
"""The commands whose arguments shell blocks are checked against, and their real parsers."""


class Block(NamedTuple):
    """A fenced code block."""

    document: str
    """Its file, relative to the repository."""
    line: int
    """The file's line number of its first line of code."""
    language: str
    options: tuple[str, ...]
    """The info string's words after the language."""
    code: str

    @property
    def where(self) -> str:
        """``document:line``, as failures name it."""
        return f"{self.document}:{self.line}"


def read_blocks(document: str) -> list[Block]:
    """Returns the fenced code blocks of a Markdown file, in order."""
    blocks = []
    lines = (REPO / document).read_text(encoding="utf-8").splitlines()
    opened: tuple[int, list[str]] | None = None
    for number, line in enumerate(lines, start=1):
        fence = FENCE.match(line)
        if fence is None:
            continue
        if opened is None:
            opened = number, fence.group("info").split() or [""]
        else:
            start, (language, *options) = opened
            code = "\n".join(lines[start : number - 1]) + "\n"
            blocks.append(Block(document, start + 1, language, tuple(options), code))
            opened = None
    assert opened is None, f"{document}:{opened[0]}: a code block is never closed"
    return blocks


BLOCKS = [block for document in DOCUMENTS for block in read_blocks(document)]
PYTHON = [block for block in BLOCKS if block.language == "python"]
RUN = [block for block in PYTHON if not block.options]
CHECKED = [block for block in PYTHON if block.options]
EXCERPTS = [block for block in CHECKED if block.options[0].startswith("excerpt=")]
SHELL = [block for block in BLOCKS if block.language in SHELLS]


def _ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def _compile(block: Block, source: str) -> Any:
    """Compiles a block so that tracebacks name the document and its line numbers."""
    try:
        return compile(
            "\n" * (block.line - 1) + source,
            str(REPO / block.document),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        )
    except SyntaxError as error:
        raise AssertionError(f"{block.document}:{error.lineno}: {error.msg}") from error


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of one fresh ``tfps-server``, as the README starts it, for every block."""
    executable = Path(sys.executable).with_name("tfps-server")
    assert executable.exists(), f"no tfps-server next to {sys.executable}"
    port = free_port()
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    args = ["--port", str(port), "--checkpoint-dir", str(checkpoints)]
    with ServerProcess(args, server_env(), command=[str(executable)]) as server:
        server.wait_for(LISTENING)
        yield f"127.0.0.1:{port}"
        assert server.terminate() == 0, server.output


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """One script namespace per document, run from a temporary working directory; the clients
    the scripts leave open are closed after them."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))
    scripts: dict[str, dict[str, Any]] = {
        document: {"__name__": "__main__"} for document in DOCUMENTS
    }
    yield scripts
    os.chdir(previous)
    for namespace in scripts.values():
        for value in namespace.values():
            if isinstance(value, Client):
                value.close()


def test_the_readme_has_examples_that_run() -> None:
    """The blocks are found, and the examples talk to the README's address, which the test
    replaces."""
    assert RUN and any(README_ADDRESS in block.code for block in RUN)


@pytest.mark.parametrize("block", BLOCKS, ids=_ids(BLOCKS))
def test_the_info_string_is_known(block: Block) -> None:
    """Python is spelled ``python``, with at most one option this module knows."""
    if block.language.startswith("py"):
        assert block.language == "python", f"{block.where}: write ```python"
        assert len(block.options) <= 1, f"{block.where}: one option at most"
        for option in block.options:
            assert option == "no-run" or option.startswith("excerpt="), (
                f"{block.where}: unknown option {option!r}"
            )


@pytest.mark.parametrize("block", RUN, ids=_ids(RUN))
def test_python_block_runs(
    block: Block, address: str, namespaces: dict[str, dict[str, Any]]
) -> None:
    """The block runs after the blocks above it, in their namespace."""
    namespace = namespaces[block.document]
    code = _compile(block, block.code.replace(README_ADDRESS, address))
    try:
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, namespace))
        else:
            exec(code, namespace)
    except Exception as error:
        path = str(REPO / block.document)
        lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
        raise AssertionError(
            f"{block.document}:{lines[-1]} (the block of line {block.line}) raised {error!r}"
        ) from error


@pytest.mark.parametrize("block", CHECKED, ids=_ids(CHECKED))
def test_python_block_that_does_not_run_compiles(block: Block) -> None:
    """A block that cannot run here is still Python."""
    _compile(block, block.code)


def _code_line(line: str) -> str:
    """A line without its indentation and trailing comment."""
    return TRAILING_COMMENT.sub("", line).strip()


@pytest.mark.parametrize("block", EXCERPTS, ids=_ids(EXCERPTS))
def test_an_excerpt_is_its_file(block: Block) -> None:
    """Each line of an excerpt is a line of the file it names."""
    source = REPO / block.options[0].removeprefix("excerpt=")
    assert source.is_file(), f"{block.where}: no file {source}"
    lines = {_code_line(line) for line in source.read_text(encoding="utf-8").splitlines()}
    checked = 0
    for offset, line in enumerate(block.code.splitlines()):
        code = _code_line(line)
        if code and not code.startswith("#") and code != "...":
            assert code in lines, f"{block.document}:{block.line + offset}: not in {source.name}"
            checked += 1
    assert checked, f"{block.where}: an excerpt without code"


def _commands(block: Block) -> Iterator[tuple[int, list[str]]]:
    """Yields each simple command of a shell block (split at ``|``, ``&&``, ``;``...), with
    the document's line number where its line starts; comments and ``NAME=value`` prefixes
    are left out."""
    logical = ""
    start = block.line
    for offset, line in enumerate(block.code.splitlines()):
        if not logical:
            start = block.line + offset
        logical += line.removesuffix("\\") + " "
        if line.endswith("\\"):
            continue
        lexer = shlex.shlex(logical, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("|&;<>()"):
                if command:
                    yield start, command
                command = []
            elif command or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token):
                command.append(token)
        logical = ""


def _exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser, and its subcommands' parsers, refusing abbreviated options: the README
    spells flags out."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _exact(command)
    return parser


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))


@pytest.mark.parametrize("block", SHELL, ids=_ids(SHELL))
def test_shell_commands_name_what_exists(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tfps-server``, ``tfps-ckpt``: the real parser takes the arguments; ``make``: each
    target is the Makefile's."""
    for name in os.environ:
        if name.startswith(cli.ENV_PREFIX):
            monkeypatch.delenv(name)
    targets = _make_targets()
    for line, (program, *args) in _commands(block):
        where = f"{block.document}:{line}: {shlex.join([program, *args])}"
        if program in PARSERS:
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                try:
                    _exact(PARSERS[program]()).parse_args(args)
                except SystemExit as exit:
                    error = (stderr.getvalue().strip().splitlines() or [""])[-1]
                    assert exit.code in (0, None), f"{where}: {error}"
        elif program == "make":
            unknown = [arg for arg in args if "=" not in arg and arg not in targets]
            assert not unknown, f"{where}: no make target {unknown}"
