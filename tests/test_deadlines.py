"""One deadline per method call, retries included, logged at DEBUG; for both clients.

A server that is down refuses connections (UNAVAILABLE, retried); a server held at a hook
point never answers; a proxy records the time each call had left. Times are asserted only
as bounds far from what the code does.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tfps_client import DeadlineExceededError, RetryPolicy, UnavailableError
from tfps_server import Registry, RunningServer, create_server
from tfps_server.state import Hooks

from clients import KINDS
from fault_proxy import PASS, FaultProxy
from helpers import free_port
from interleave import BlockingHooks

MakeClient = Callable[..., Any]
each_client = pytest.mark.parametrize("make", KINDS.values(), ids=KINDS.keys())


def retry_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tfps_client"]


@each_client
def test_retries_stop_at_the_deadline_of_the_call(
    make: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tfps_client")
    retry = RetryPolicy(max_attempts=10)  # 0.1 s, 0.2 s, 0.4 s, ... between attempts
    started = time.monotonic()
    with (
        make(f"127.0.0.1:{free_port()}", timeout=1.0, retry=retry) as client,
        pytest.raises(DeadlineExceededError) as caught,
    ):
        client.iterations("sgd")
    assert time.monotonic() - started < 5
    attempts = int(re.search(r"after (\d+) attempts", caught.value.message)[1])  # type: ignore[index]
    assert 2 <= attempts < 10
    assert caught.value.message.startswith("GetIterations: the deadline of 1.0 s passed after")
    assert "the last failed with UNAVAILABLE: " in caught.value.message
    records = retry_records(caplog)
    assert len(records) == attempts - 1
    for number, record in enumerate(records, 1):
        assert re.fullmatch(
            rf"GetIterations: attempt {number} failed with UNAVAILABLE \(.*\); "
            r"retrying in 0\.\d+ s",
            record,
            re.S,
        ), record


@each_client
def test_spent_attempts_raise_the_last_error(
    make: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tfps_client")
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with (
        make(f"127.0.0.1:{free_port()}", timeout=60.0, retry=retry) as client,
        pytest.raises(UnavailableError),
    ):
        client.list_variables()
    assert [record.split(" failed")[0] for record in retry_records(caplog)] == [
        "ListVariables: attempt 1",
        "ListVariables: attempt 2",
    ]


@each_client
def test_an_attempt_gets_the_time_left(
    make: MakeClient, server: RunningServer, hooks: BlockingHooks
) -> None:
    hooks.hold("list_variables.read")  # the server never answers
    started = time.monotonic()
    with (
        make(f"127.0.0.1:{server.port}", timeout=1.0, retry=RetryPolicy(max_attempts=10)) as c,
        pytest.raises(DeadlineExceededError) as caught,
    ):
        c.list_variables()
    assert time.monotonic() - started < 5
    assert re.fullmatch(
        r"ListVariables: the deadline of 1\.0 s passed after 1 attempt; "
        r"the last failed with DEADLINE_EXCEEDED: .*",
        caught.value.message,
    ), caught.value.message


class SlowFirstPage(Hooks):
    """Answers the first ListVariables page a second late."""

    def __init__(self) -> None:
        self._pages = 0
        self._lock = threading.Lock()

    def reach(self, point: str) -> None:
        if point == "list_variables.read":
            with self._lock:
                self._pages += 1
                first = self._pages == 1
            if first:
                time.sleep(1.0)


@pytest.fixture
def slow_listing() -> Iterator[FaultProxy]:
    """A proxy before a server that answers the first page of every listing a second late."""
    hooks = SlowFirstPage()
    running = create_server(Registry(hooks=hooks), "127.0.0.1:0")
    proxy = FaultProxy(f"127.0.0.1:{running.port}", lambda _: PASS)
    yield proxy
    proxy.stop()
    running.stop(None)


@each_client
def test_the_pages_of_a_listing_share_one_deadline(
    make: MakeClient, slow_listing: FaultProxy
) -> None:
    with make(slow_listing.address, timeout=60.0) as client:
        client.create_optimizer("sgd", {"class_name": "SGD", "config": {}})
        variables = {f"v{i}": np.zeros(1, np.float32) for i in range(1001)}
        client.create_variables(variables, optimizer="sgd")
    slow_listing.time_remaining.clear()
    with make(slow_listing.address, timeout=10.0) as client:
        assert len(client.list_variables()) == 1001
    (first_page, first_left), (second_page, second_left) = slow_listing.time_remaining
    assert first_page == second_page == "ListVariables"
    assert first_left is not None and second_left is not None
    # The second page had what the slow first left (a deadline per page would give it 10 s).
    assert second_left < first_left - 0.5


@each_client
def test_a_timeout_that_is_not_a_positive_number_is_refused(make: MakeClient) -> None:
    address = f"127.0.0.1:{free_port()}"
    for timeout in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout: expected seconds above 0 or None"):
            make(address, timeout=timeout)
    for timeout in ("5", True):
        with pytest.raises(TypeError, match="timeout: expected seconds as a number or None"):
            make(address, timeout=timeout)


@each_client
def test_an_infinite_timeout_waits_forever(make: MakeClient, server: RunningServer) -> None:
    # gRPC fails a call given timeout=inf at once: the client keeps no deadline instead.
    with make(f"127.0.0.1:{server.port}", timeout=float("inf")) as client:
        assert client.timeout is None
        assert client.pull() == {}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": 1.5}, TypeError),
        ({"initial_backoff": -0.1}, ValueError),  # time.sleep raised it at the first retry
        ({"initial_backoff": float("nan")}, ValueError),
        ({"max_backoff": float("inf")}, ValueError),
        ({"multiplier": 0.5}, ValueError),
        ({"multiplier": "2"}, TypeError),
    ],
)
def test_a_retry_policy_out_of_range_is_refused(fields: dict[str, Any], error: type) -> None:
    with pytest.raises(error, match=f"RetryPolicy.{next(iter(fields))}: expected"):
        RetryPolicy(**fields)
