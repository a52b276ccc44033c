"""ListVariables a page at a time: every variable once, in creation order, across pages
bounded in variables and in bytes; page sizes and tokens no page gave are refused. A restore
between two pages is in test_interleavings.py."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tfps_client import AbortedError, Client, InvalidArgumentError
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire import parameter_server_pb2_grpc as pb_grpc
from tfps_server import Registry, RunningServer, create_server, listing
from tfps_server.limits import Limits

from helpers import assert_refused, assert_same_state, call_raw, raw_stub, snapshot

SGD = {"class_name": "SGD", "config": {"learning_rate": 0.5}}
SCALAR = np.zeros((), np.float32)


def pages(stub: pb_grpc.ParameterServerStub, page_size: int) -> list[pb.ListVariablesResponse]:
    """Every page of one listing, asking for ``page_size`` variables a page."""
    listed = [call_raw(stub.ListVariables, pb.ListVariablesRequest(page_size=page_size))]
    while token := listed[-1].next_page_token:
        request = pb.ListVariablesRequest(page_size=page_size, page_token=token)
        listed.append(call_raw(stub.ListVariables, request))
    return listed


def names(page: pb.ListVariablesResponse) -> list[str]:
    return [info.name for info in page.variables]


def test_pages_list_every_variable_once_in_creation_order(
    server: RunningServer, client: Client
) -> None:
    """Pages of page_size variables, over two optimizers, give each variable once in creation
    order; one created between two pages comes on a later page; the client reads them all."""
    client.create_optimizer("default", SGD)
    client.create_optimizer("second", SGD)
    client.create_variables({"c": SCALAR, "a": SCALAR, "e": SCALAR})
    client.create_variables({"b": SCALAR, "d": SCALAR}, optimizer="second")
    with raw_stub(server.port) as stub:
        assert [names(page) for page in pages(stub, 2)] == [["c", "a"], ["e", "b"], ["d"]]
        first = call_raw(stub.ListVariables, pb.ListVariablesRequest(page_size=3))
        client.create_variables({"f": SCALAR})
        rest = pb.ListVariablesRequest(page_token=first.next_page_token)
        assert names(call_raw(stub.ListVariables, rest)) == ["b", "d", "f"]
        assert [names(page) for page in pages(stub, 0)] == [["c", "a", "e", "b", "d", "f"]]
    assert [info.name for info in client.list_variables()] == ["c", "a", "e", "b", "d", "f"]


def test_page_size_zero_is_the_most_and_larger_ones_are_clamped_to_it(
    server: RunningServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """page_size 0 and page sizes past the most a page holds both give pages of the most."""
    monkeypatch.setattr(listing, "MAX_PAGE_SIZE", 2)
    client.create_optimizer("default", SGD)
    client.create_variables({name: SCALAR for name in "abcde"})
    with raw_stub(server.port) as stub:
        for page_size in (0, 3, 2**31 - 1):
            assert [names(page) for page in pages(stub, page_size)] == [
                ["a", "b"],
                ["c", "d"],
                ["e"],
            ]
    assert [info.name for info in client.list_variables()] == list("abcde")


def test_pages_are_bounded_in_bytes_whatever_the_names() -> None:
    """Names of 200 KB fill a page with five variables (about 1 MiB), whatever page_size asks;
    a variable larger than a page alone comes on a page of its own."""
    running = create_server(Registry(limits=Limits(max_name_bytes=2 << 20)), "127.0.0.1:0")
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=60) as client:
            client.create_optimizer("default", SGD)
            wide = [f"{index:02d}".ljust(200_000, "w") for index in range(12)]
            huge = "h" * (3 << 19)
            client.create_variables({name: SCALAR for name in wide})
            client.create_variables({huge: SCALAR})
            with raw_stub(running.port) as stub:
                listed = pages(stub, 1000)
            assert [info.name for info in client.list_variables()] == [*wide, huge]
    finally:
        running.stop(None)
    assert [len(page.variables) for page in listed] == [5, 5, 2, 1]
    assert [name for page in listed for name in names(page)] == [*wide, huge]
    assert all(page.ByteSize() <= listing.MAX_PAGE_BYTES + 64 for page in listed[:3])


def test_a_negative_page_size_or_a_token_no_page_gave_is_refused(
    server: RunningServer, client: Client
) -> None:
    """INVALID_ARGUMENT (INVALID_PAGE) naming the field, and nothing changes: a negative
    page_size; a token that is not base64, not a token's length, not spelled as a page
    spells it, or past the last variable."""
    client.create_optimizer("default", SGD)
    client.create_variables({name: SCALAR for name in "abc"})
    before = snapshot(client)
    with raw_stub(server.port) as stub:
        token = call_raw(stub.ListVariables, pb.ListVariablesRequest(page_size=1)).next_page_token
        process, generation, _ = listing._TOKEN.unpack(base64.urlsafe_b64decode(token))
        past = listing._TOKEN.pack(process, generation, 4)
        refusals = [
            (pb.ListVariablesRequest(page_size=-1), "page_size"),
            *(
                (pb.ListVariablesRequest(page_token=bad), "page_token")
                for bad in (
                    "not a token",
                    "\u00e9t\u00e9",
                    token[:-4],
                    f"{token[:8]}!{token[8:]}",
                    base64.urlsafe_b64encode(past).decode(),
                )
            ),
        ]
        for request, field in refusals:
            with pytest.raises(InvalidArgumentError) as refused:
                call_raw(stub.ListVariables, request)
            assert_refused(
                refused.value, InvalidArgumentError, "INVALID_PAGE", [field], {"field": field}
            )
    assert_same_state(snapshot(client), before)


def test_a_token_of_another_server_process_is_aborted(
    server: RunningServer, client: Client
) -> None:
    """Generation numbers start over with each process: a token given before a restart names
    a state that is gone, and is ABORTED (STATE_REPLACED) like one from before a restore."""
    client.create_optimizer("default", SGD)
    client.create_variables({name: SCALAR for name in "ab"})
    restarted = create_server(Registry(), "127.0.0.1:0")
    try:
        with raw_stub(server.port) as stub:
            token = call_raw(stub.ListVariables, pb.ListVariablesRequest(page_size=1))
        with raw_stub(restarted.port) as stub, pytest.raises(AbortedError) as aborted:
            request = pb.ListVariablesRequest(page_token=token.next_page_token)
            call_raw(stub.ListVariables, request)
    finally:
        restarted.stop(None)
    assert_refused(aborted.value, AbortedError, "STATE_REPLACED", ["list again"])
