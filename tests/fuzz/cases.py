"""A fuzz case: one call of one method of the service, its request messages as bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from tfps_client.wire import parameter_server_pb2

SERVICE = parameter_server_pb2.DESCRIPTOR.services_by_name["ParameterServer"]
"""The service under test."""

SHOWN_BYTES = 300
"""Characters of one message a description shows."""


@dataclass(frozen=True)
class Method:
    """One RPC of the service, as the wire sees it.

    Attributes:
        name: the short name, for example ``"Push"``.
        path: the path a call goes to, ``/tfps.v1.ParameterServer/Push``.
        request: the request message class.
        request_type: its descriptor.
        request_streaming: the client sends a stream of messages.
        response_streaming: the server answers with a stream of messages.
    """

    name: str
    path: str
    request: type[Message]
    request_type: Descriptor
    request_streaming: bool
    response_streaming: bool

    @classmethod
    def of(cls, descriptor: MethodDescriptor) -> Method:
        """The method a descriptor of the service describes."""
        return cls(
            name=descriptor.name,
            path=f"/{SERVICE.full_name}/{descriptor.name}",
            request=GetMessageClass(descriptor.input_type),
            request_type=descriptor.input_type,
            request_streaming=descriptor.client_streaming,
            response_streaming=descriptor.server_streaming,
        )


METHODS: dict[str, Method] = {m.name: Method.of(m) for m in SERVICE.methods}
"""Every method of the service, by short name, in declaration order."""


@dataclass(frozen=True)
class Case:
    """One call: the method's short name and the request messages, serialized or not.

    A unary method takes exactly one message; a client-streaming one any number.
    """

    method: str
    messages: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"expected a method of {SERVICE.full_name}, received {self.method!r}")
        if not METHODS[self.method].request_streaming and len(self.messages) != 1:
            raise ValueError(
                f"{self.method}: expected one request message, received {len(self.messages)}"
            )

    @classmethod
    def of(cls, method: str, messages: Any) -> Case:
        """The case that sends ``messages`` (protobuf messages or bytes) to ``method``."""
        return cls(
            method,
            tuple(m if isinstance(m, bytes) else m.SerializeToString() for m in messages),
        )

    def __repr__(self) -> str:
        return f"Case({self.method}: {describe(self)})"


def describe(case: Case) -> str:
    """The messages of a case in protobuf text format, or as bytes where they do not parse."""
    request = METHODS[case.method].request
    shown = []
    for data in case.messages:
        try:
            text = text_format.MessageToString(request.FromString(data), as_one_line=True)
            text = "{" + text + "}"
        except DecodeError:
            text = f"<{len(data)} bytes that do not parse: {data[:64]!r}>"
        shown.append(text if len(text) <= SHOWN_BYTES else text[:SHOWN_BYTES] + "...")
    return "[" + ", ".join(shown) + "]"
