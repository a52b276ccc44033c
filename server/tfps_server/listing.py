"""ListVariables a page at a time (AIP-158), so that no answer grows with the names.

A page holds at most :data:`MAX_PAGE_SIZE` variables and :data:`MAX_PAGE_BYTES` bytes of
them, or one variable if it alone is larger. Its token names the state it was cut from (the
server process and the generation: generation numbers start over with each process) and the
position of the next variable in creation order, which stays true within a generation,
whose variables are only ever appended. A page asked with the token of a state replaced
since (by a restore or a restart) is ABORTED: the client lists again from the first page.
"""

from __future__ import annotations

import base64
import secrets
import struct
import threading

from tfps_client.wire import convert
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire.reasons import Reason
from tfps_server.errors import Aborted, InvalidArgument, shown
from tfps_server.registry import Registry
from tfps_server.state import Generation

MAX_PAGE_SIZE = 1000
"""Most variables on a page, and the number a ``page_size`` of 0 asks for."""

MAX_PAGE_BYTES = 1 << 20
"""Most bytes of serialized variables on a page, unless its first alone is larger."""

_TOKEN = struct.Struct(">QQQ")
"""A page token's bytes, before base64: the server process, the generation number, and the
position of the page's first variable."""


class VariableListing:
    """Pages of the current generation's variables, built in a worker thread.

    Each variable is serialized once per generation, as a ``ListVariablesResponse`` of its
    own: a page is the concatenation of its variables' and of one holding its token
    (serialized messages concatenated parse as one, repeated fields appended).

    Args:
        registry: the state listed.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._process = secrets.randbits(64)
        self._lock = threading.Lock()
        self._generation = -1
        self._entries: list[bytes] = []
        """The serialized variables of generation number ``_generation``, in creation order."""

    def page(self, page_size: int, page_token: str) -> bytes:
        """Returns a serialized ``ListVariablesResponse``: the page that starts at the token's
        position, or the first page for an empty token.

        Raises:
            InvalidArgument: a negative ``page_size``, or a ``page_token`` that no page gave
                (``INVALID_PAGE``).
            Aborted: the state the listing began in was replaced, by a restore or a restart
                (``STATE_REPLACED``); nothing is wrong with the request itself.
        """
        size = _page_size(page_size)
        generation = self._registry.current()
        self._registry.hooks.reach("list_variables.read")
        start = self._start(page_token, generation.number) if page_token else 0
        with self._lock:
            entries = self._entries_of(generation)
            if start > len(entries):
                raise _not_a_token(page_token)
            end, nbytes = start, 0
            while end < min(len(entries), start + size):
                nbytes += len(entries[end])
                if nbytes > MAX_PAGE_BYTES and end > start:
                    break
                end += 1
            page = entries[start:end]
            last = end == len(entries)
        token = "" if last else _token(self._process, generation.number, end)
        return b"".join(page) + pb.ListVariablesResponse(next_page_token=token).SerializeToString()

    def _entries_of(self, generation: Generation) -> list[bytes]:
        """The serialized variables of ``generation``, those created since the last call
        serialized now; the caller holds the lock."""
        if self._generation != generation.number:
            self._generation, self._entries = generation.number, []
        if len(generation.variables) > len(self._entries):
            infos = self._registry.variable_infos(generation, len(self._entries))
            self._entries += [
                pb.ListVariablesResponse(
                    variables=[convert.variable_info_to_message(info)]
                ).SerializeToString()
                for info in infos
            ]
        return self._entries

    def _start(self, page_token: str, generation: int) -> int:
        """The position a page token gives, once it is known to be of the current state."""
        try:
            process, number, position = _TOKEN.unpack(base64.urlsafe_b64decode(page_token))
        except (ValueError, struct.error):  # not base64 (binascii.Error), or not 24 bytes
            raise _not_a_token(page_token) from None
        if _token(process, number, position) != page_token:  # the one spelling a page gives
            raise _not_a_token(page_token)
        if (process, number) != (self._process, generation):
            raise Aborted(
                "ListVariables: the state this listing began in was replaced (by a restore, "
                "or a restart of the server); list again from the first page",
                Reason.STATE_REPLACED,
            )
        return position


def _page_size(page_size: int) -> int:
    """The variables a page may hold: ``page_size``, 0 meaning the most, clamped to it."""
    if page_size < 0:
        raise InvalidArgument(
            f"ListVariables: expected page_size >= 0 (0: {MAX_PAGE_SIZE}), received {page_size}",
            Reason.INVALID_PAGE,
            {"field": "page_size", "expected": ">= 0", "received": page_size},
        )
    return min(page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)


def _token(process: int, generation: int, position: int) -> str:
    return base64.urlsafe_b64encode(_TOKEN.pack(process, generation, position)).decode()


def _not_a_token(page_token: str) -> InvalidArgument:
    return InvalidArgument(
        "ListVariables: expected page_token to be the next_page_token of a page, "
        f"received {shown(page_token)}",
        Reason.INVALID_PAGE,
        {"field": "page_token", "received": page_token},
    )
