"""Cases of every method of the service, made each of the three ways: generic messages,
valid requests with a few things wrong, and bytes that are not a valid message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from fuzz import messages, raw, streams, unary
from fuzz.cases import METHODS, Case
from fuzz.seed import SeedState

Draw = Callable[..., Any]

MAX_STREAM = 3
"""Most messages of a generic or random stream."""


def cases(state: SeedState) -> st.SearchStrategy[Case]:
    """Cases of a method drawn first (so each gets its share), then a way to make one."""
    return st.sampled_from(sorted(METHODS)).flatmap(lambda method: _cases_of(method, state))


def _cases_of(method: str, state: SeedState) -> st.SearchStrategy[Case]:
    typed = messages.messages(METHODS[method].request_type)
    serialized = typed.map(lambda message: message.SerializeToString())
    if not METHODS[method].request_streaming:
        return st.one_of(
            typed.map(lambda message: Case.of(method, [message])),
            unary.requests(method, state),
            raw.corrupted(serialized).map(lambda data: Case(method, (data,))),
        )
    ways = [
        st.lists(typed, max_size=MAX_STREAM).map(lambda stream: Case.of(method, stream)),
        st.lists(st.one_of(serialized, raw.corrupted(serialized)), max_size=MAX_STREAM).map(
            lambda stream: Case(method, tuple(stream))
        ),
    ]
    if method in streams.LAYOUTS:
        structured = streams.streams(method, state)
        ways += [structured, _one_corrupted(structured)]
    return st.one_of(ways)


@st.composite
def _one_corrupted(draw: Draw, cases: st.SearchStrategy[Case]) -> Case:
    """A case whose messages are all valid but one, which is damaged."""
    case = draw(cases)
    if not case.messages:
        return case
    index = draw(st.integers(0, len(case.messages) - 1))
    damaged = draw(raw.corrupted(st.just(case.messages[index])))
    return Case(case.method, (*case.messages[:index], damaged, *case.messages[index + 1 :]))
