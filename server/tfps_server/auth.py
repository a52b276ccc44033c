"""Who may call what: bearer tokens from a file, each with a role.

The tokens file holds one token per line as ``ROLE TOKEN``, where ROLE is
``reader``, ``worker`` or ``admin``; blank lines and lines starting with ``#``
are ignored. A token is at least :data:`MIN_TOKEN_CHARACTERS` printable ASCII
characters without spaces (``openssl rand -hex 32`` makes a good one). Clients
send theirs as ``authorization: Bearer TOKEN`` metadata.

Each role may do what the roles below it may (:data:`REQUIRED_ROLE` names the
least role of every RPC): a ``reader`` reads variables, optimizers and
checkpoints; a ``worker`` also creates optimizers and variables and pushes; an
``admin`` also replaces optimizer weights and hyperparameters, and saves and
restores checkpoints.

No token text ever reaches a log or an error message: a malformed file is
reported by line number, and a presented token is compared with every known one
through SHA-256 digests and :func:`hmac.compare_digest`, so the time a lookup
takes does not depend on how much of the token is right.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from tfps_client.wire.reasons import Reason
from tfps_server.errors import PermissionDenied, Unauthenticated
from tfps_server.watched import stamp

_log = logging.getLogger(__name__)

MIN_TOKEN_CHARACTERS = 16
"""Fewest characters a token may have: shorter ones are too easy to guess."""

BEARER = "bearer"
"""The ``authorization`` scheme that carries a token, compared case-insensitively."""


class Role(enum.IntEnum):
    """What a token may do; a higher role may do everything a lower one may."""

    READER = 1
    WORKER = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role | None:
        """Returns the role named ``text`` as the tokens file spells it (lowercase), or None."""
        role = cls.__members__.get(text.upper())
        return role if role is not None and str(role) == text else None


REQUIRED_ROLE: Mapping[str, Role] = MappingProxyType(
    {
        "Pull": Role.READER,
        "PullRows": Role.READER,
        "GetOptimizerWeights": Role.READER,
        "GetOptimizerConfig": Role.READER,
        "GetIterations": Role.READER,
        "GetSlotNames": Role.READER,
        "GetSlot": Role.READER,
        "ListVariables": Role.READER,
        "ListCheckpoints": Role.READER,
        "DownloadCheckpoint": Role.READER,
        "CreateOptimizer": Role.WORKER,
        "CreateVariables": Role.WORKER,
        "Push": Role.WORKER,
        "PushPull": Role.WORKER,
        "DeclareShard": Role.WORKER,
        "SetOptimizerWeights": Role.ADMIN,
        "SetHyperparameter": Role.ADMIN,
        "SaveCheckpoint": Role.ADMIN,
        "RestoreCheckpoint": Role.ADMIN,
    }
)
"""The least role allowed to call each ``tfps.v1.ParameterServer`` method, by short name."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _token_problem(text: str) -> str:
    """What keeps ``text`` (a field without spaces) from being a token, without showing it;
    empty if it is one."""
    if len(text) < MIN_TOKEN_CHARACTERS:
        return f"{len(text)} characters"
    if not all("!" <= character <= "~" for character in text):
        return f"{len(text)} characters, not all of them printable ASCII"
    return ""


def parse_tokens(text: str, source: str) -> tuple[tuple[bytes, Role], ...]:
    """Returns the (SHA-256 digest, role) of every token in a tokens file's text.

    Args:
        text: the file's contents.
        source: the file's name, for error messages.

    Raises:
        ValueError: a line is not ``ROLE TOKEN``, names an unknown role, holds a
            token too short or not printable ASCII, or repeats a token; or the
            file holds no token. The message names the file and the line number,
            never the line's text (it may hold a token).
    """
    entries: list[tuple[bytes, Role]] = []
    first_line: dict[bytes, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"tokens file {source}, line {number}"
        if len(fields) != 2:
            raise ValueError(
                f"{where}: expected 'ROLE TOKEN' (two fields), received {len(fields)} fields"
            )
        role = Role.parse(fields[0])
        if role is None:
            raise ValueError(
                f"{where}: expected a role ({', '.join(str(r) for r in Role)}) as the first "
                "field, received something else (not shown: it may be a token)"
            )
        problem = _token_problem(fields[1])
        if problem:
            raise ValueError(
                f"{where}: expected a token of at least {MIN_TOKEN_CHARACTERS} printable ASCII "
                f"characters, received {problem}"
            )
        digest = _digest(fields[1])
        if digest in first_line:
            raise ValueError(f"{where}: the token of line {first_line[digest]} again")
        first_line[digest] = number
        entries.append((digest, role))
    if not entries:
        raise ValueError(
            f"tokens file {source}: expected at least one 'ROLE TOKEN' line, received none "
            "(an open server takes no tokens file)"
        )
    return tuple(entries)


class TokenFile:
    """The tokens of a tokens file and their roles, re-read by :meth:`reload` (SIGHUP) and
    when the file changes (a lookup looks at most once every ``check_every_seconds``).

    Safe to use from any thread: lookups see either the old or the new tokens,
    never a mix.

    Args:
        path: the tokens file.
        check_every_seconds: how often lookups check whether the file changed.

    Raises:
        ValueError: the file cannot be read or is malformed (see :func:`parse_tokens`).
    """

    def __init__(self, path: str | Path, check_every_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self._reload_lock = threading.Lock()
        self._check_every = check_every_seconds
        self._stamp = stamp(self.path)
        self._checked_at = time.monotonic()
        self._entries = self._read()
        _log.info("tokens file %s: %s", self.path, self.summary())

    def _read(self) -> tuple[tuple[bytes, Role], ...]:
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise ValueError(
                f"tokens file {self.path}: cannot read it ({error.strerror or error})"
            ) from None
        # Bytes that are not UTF-8 become lone surrogates, which no role or token accepts.
        text = data.decode("utf-8-sig", "surrogateescape")
        return parse_tokens(text, str(self.path))

    def __len__(self) -> int:
        return len(self._entries)

    def summary(self) -> str:
        """Returns how many tokens of each role the file holds, such as ``2 tokens: 1 admin,
        1 worker``, for logs."""
        entries = self._entries
        counts = ", ".join(
            f"{sum(1 for _, held in entries if held is role)} {role}"
            for role in reversed(Role)
            if any(held is role for _, held in entries)
        )
        return f"{len(entries)} tokens: {counts}"

    def reload(self) -> bool:
        """Re-reads the file; on an unreadable or malformed file, keeps the tokens it had.

        Returns:
            True if the file's tokens are now in effect, False if the old ones were
            kept (an error was logged, naming the file and line but no token).
        """
        with self._reload_lock:
            self._stamp = stamp(self.path)  # a broken file is tried again once it changes
            try:
                entries = self._read()
            except ValueError as error:
                _log.error("%s; keeping the %d tokens read before", error, len(self._entries))
                return False
            self._entries = entries
        _log.info("reloaded tokens file %s: %s", self.path, self.summary())
        return True

    def _reload_if_changed(self) -> None:
        """Reloads the file if it changed (a Secret update, an edit), looking at most once
        every ``check_every_seconds``."""
        now = time.monotonic()
        if now - self._checked_at < self._check_every:
            return
        self._checked_at = now
        if stamp(self.path) != self._stamp:
            self.reload()

    def role_of(self, token: str) -> Role | None:
        """Returns the role of ``token``, or None if the file does not hold it.

        Every known token is compared (by digest, with :func:`hmac.compare_digest`),
        whichever matches, so the time taken does not depend on the token's content.
        """
        self._reload_if_changed()
        digest = _digest(token)
        found: Role | None = None
        for known, role in self._entries:
            if hmac.compare_digest(known, digest):
                found = role
        return found


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """Returns the token of a call's single ``authorization: Bearer TOKEN`` entry, else None.

    None means no usable token: no ``authorization`` entry, more than one, another
    scheme, or an empty token.
    """
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if len(values) != 1:
        return None
    value = values[0]
    text = value.decode("ascii", "surrogateescape") if isinstance(value, bytes) else value
    fields = text.split(None, 1)
    if len(fields) != 2 or fields[0].lower() != BEARER:
        return None
    return fields[1].strip()


def authorize(
    tokens: TokenFile | None, method: str, metadata: Iterable[tuple[str, str | bytes]]
) -> Role | None:
    """Checks that a call may be made; returns the caller's role.

    Args:
        tokens: the known tokens; None runs an open server, where every call is allowed.
        method: the short name of the ``tfps.v1.ParameterServer`` method, such as
            ``"Push"``; a name not in :data:`REQUIRED_ROLE` needs ``admin``.
        metadata: the call's invocation metadata.

    Returns:
        The role of the call's token; None on an open server.

    Raises:
        Unauthenticated: no usable ``authorization: Bearer`` token (MISSING_TOKEN), or
            one the server does not know (UNKNOWN_TOKEN).
        PermissionDenied: the token's role is below the method's (ROLE_REQUIRED); the
            metadata names the role expected and the role received.
    """
    if tokens is None:
        return None
    token = bearer_token(metadata)
    if token is None:
        raise Unauthenticated(
            f"{method}: expected one 'authorization: Bearer TOKEN' metadata entry, "
            "received none that holds a token",
            Reason.MISSING_TOKEN,
            {"method": method},
        )
    role = tokens.role_of(token)
    if role is None:
        raise Unauthenticated(
            f"{method}: expected a token the server knows, received an unknown token "
            f"of {len(token)} characters",
            Reason.UNKNOWN_TOKEN,
            {"method": method},
        )
    required = REQUIRED_ROLE.get(method, Role.ADMIN)
    if role < required:
        raise PermissionDenied(
            f"{method}: expected a token of role {required} or higher, "
            f"received a token of role {role}",
            Reason.ROLE_REQUIRED,
            {"method": method, "expected": required, "received": role},
        )
    return role
