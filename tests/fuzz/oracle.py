"""The oracle every case is judged by, and what it reports when a case fails.

A case fails when its call does not end within the deadline (a hang); ends with
INTERNAL or UNKNOWN, or any code a client could not act on; is refused without a reason
in its error detail; leaves the server not answering SERVING to the health check; or
changes observable state while it was refused or only read. A call that may change the
state and succeeded is followed by a reset to the seed, which must give the seed back.
"""

from __future__ import annotations

import base64
import time
from typing import NamedTuple

import grpc
from google.protobuf.message import DecodeError

from tfps_client import TfpsError
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire.reasons import Reason

from fuzz import corpus
from fuzz.cases import Case, describe
from fuzz.target import Answer, Fingerprint, Target

Code = grpc.StatusCode

REFUSALS = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.OUT_OF_RANGE,
        Code.ABORTED,
    }
)
"""The codes a request may be refused with: each tells the client what to change."""

SAVES = frozenset({"SaveCheckpoint"})
"""Methods that may add (and retire) checkpoints but change nothing else."""

WRITES = frozenset(
    {
        "CreateOptimizer",
        "CreateVariables",
        "Push",
        "PushPull",
        "SetOptimizerWeights",
        "SetHyperparameter",
        "RestoreCheckpoint",
        "DeclareShard",
    }
)
"""Methods that may change the state (variables, optimizers, the shard identity); every
other method only reads."""

STUCK = frozenset({"hang", "health", "unreadable"})
"""Kinds of failure after which the server is replaced rather than reset."""

SHOWN_DETAILS = 500
"""Characters of a status's details a finding shows."""


class Signature(NamedTuple):
    """What tells one fault from another: the method, the kind of failure, and the status."""

    method: str
    kind: str
    code: str
    reason: str


class Finding(AssertionError):
    """A case that failed the oracle.

    Attributes:
        case: the case.
        signature: the method, kind of failure and status.
    """

    def __init__(self, case: Case, kind: str, answer: Answer, explanation: str) -> None:
        self.case = case
        self.signature = Signature(case.method, kind, answer.code.name, answer.reason)
        encoded = base64.b64encode(corpus.encode(case)).decode()
        super().__init__(
            f"{kind}: {case.method} answered {answer.code.name} {answer.reason or '(no reason)'}"
            f" {answer.details[:SHOWN_DETAILS]!r}: {explanation}\n"
            f"  request: {describe(case)}\n"
            f"  as corpus file {corpus.file_name(case)} (base64): {encoded}"
        )


def check(target: Target, case: Case) -> Answer:
    """Sends a case and judges it; the target is at the seed again afterwards.

    Raises:
        Finding: the case failed; the target was reset, or restarted if it was stuck.
    """
    try:
        return _judge(target, case)
    except Finding as finding:
        target.recover(stuck=finding.signature.kind in STUCK)
        raise


def _judge(target: Target, case: Case) -> Answer:
    names = target.optimizers | _optimizers_named(case)
    before = target.baseline if names == target.optimizers else target.fingerprint(names)
    answer = _answered(target, case)
    if answer.code == Code.OK and case.method in WRITES:
        _reset(target, case, answer, names, before)
    else:
        _unchanged(target, case, answer, names, before)
    return answer


def _answered(target: Target, case: Case) -> Answer:
    """Sends the case; its answer must be one a client can act on, the server healthy after."""
    start = time.monotonic()
    answer = target.call(case)
    if answer.code == Code.DEADLINE_EXCEEDED:
        raise Finding(case, "hang", answer, f"no answer in {time.monotonic() - start:.0f} s")
    if answer.code in (Code.INTERNAL, Code.UNKNOWN):
        raise Finding(case, "internal", answer, "a fault of the server, not of the request")
    if answer.code != Code.OK and answer.code not in REFUSALS:
        raise Finding(case, "status", answer, "not a code a request is refused with")
    if answer.code != Code.OK and answer.reason not in Reason.__members__:
        raise Finding(case, "reason", answer, "a refusal without a known reason")
    health = target.health()
    if health != "SERVING":
        raise Finding(case, "health", answer, f"the server then reported {health}")
    return answer


def _unchanged(
    target: Target, case: Case, answer: Answer, names: frozenset[str], before: Fingerprint
) -> None:
    """After a refusal or a read nothing changed; after a save, only the checkpoints."""
    try:
        after = target.fingerprint(names)
    except TfpsError as error:
        explanation = f"reading the state then failed: {error}"
        raise Finding(case, "unreadable", answer, explanation) from None
    if answer.code == Code.OK and case.method in SAVES:
        if after.model() != before.model():
            raise Finding(case, "state", answer, _changed(after.model(), before.model()))
        target.baseline = after
    elif after != before:
        raise Finding(case, "state", answer, _changed(after, before))


def _reset(
    target: Target, case: Case, answer: Answer, names: frozenset[str], before: Fingerprint
) -> None:
    """After a write succeeded, a reset gives the state from before it back."""
    try:
        target.reset()
    except TfpsError as error:
        explanation = f"restoring the seed then failed: {error}"
        raise Finding(case, "reset", answer, explanation) from None
    restored = target.fingerprint(names) if names != target.optimizers else target.baseline
    if restored.model() != before.model():
        raise Finding(case, "reset", answer, _changed(restored.model(), before.model()))


def _changed(after: Fingerprint, before: Fingerprint) -> str:
    return "the state changed: " + "; ".join(after.differences(before))


def _optimizers_named(case: Case) -> frozenset[str]:
    """The name a CreateOptimizer case asks for, so that a fingerprint reads it."""
    if case.method != "CreateOptimizer":
        return frozenset()
    try:
        return frozenset({pb.CreateOptimizerRequest.FromString(case.messages[0]).name})
    except DecodeError:
        return frozenset()
