"""Retries under one deadline, without I/O: how long each attempt of a call may take, and
after a failure how long to wait before the next attempt or which error to raise. The
transports make the attempts and do the waiting."""

from __future__ import annotations

import logging
import random
import time

import grpc

from tfps_client.errors import DeadlineExceededError, TfpsError, from_rpc_error
from tfps_client.types import RetryPolicy

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Status codes the client retries by itself."""

logger = logging.getLogger("tfps_client")
"""Where retries are logged, at DEBUG."""


class Deadline:
    """When one method call of a client must be over: all its RPCs, their attempts and the
    waits between them together.

    Args:
        timeout: seconds from now; None never passes.
    """

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (zero or less once passed); None without a deadline."""
        return None if self._end is None else self._end - time.monotonic()


class Attempts:
    """The attempts of one RPC under a retry policy and a deadline.

    Each attempt may take the time left until the deadline. A failure with a status in
    :data:`RETRYABLE` is retried after an exponential backoff with jitter while attempts
    are left and the wait ends before the deadline; each retry is logged at DEBUG on the
    ``tfps_client`` logger.

    Args:
        method: the RPC's name, for logs and errors.
        policy: how many attempts, and the waits between them.
        deadline: the deadline of the method call the RPC belongs to.
    """

    def __init__(self, method: str, policy: RetryPolicy, deadline: Deadline) -> None:
        self.method = method
        self.made = 0
        """Attempts started so far."""
        self._policy = policy
        self._deadline = deadline
        self._backoff = policy.initial_backoff
        self._last: TfpsError | None = None

    def start(self) -> float | None:
        """Counts an attempt and returns the seconds it may take (None: no limit).

        Raises:
            DeadlineExceededError: the deadline has passed.
        """
        remaining = self._deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise self._expired()
        self.made += 1
        return remaining

    def failed(self, error: grpc.RpcError) -> float:
        """Returns the seconds to wait before retrying after an attempt failed with ``error``.

        Raises:
            TfpsError: ``error`` as its subclass, when its status is not retried or the
                policy's attempts are spent; :class:`DeadlineExceededError`, naming the
                attempts made and the last error, when the deadline has passed or would
                pass during the wait.
        """
        self._last = from_rpc_error(error)
        if self._last.code not in RETRYABLE:
            raise self._last from None
        remaining = self._deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise self._expired() from None
        if self.made >= self._policy.max_attempts:
            raise self._last from None
        delay = self._backoff * random.uniform(0.5, 1.0)
        if remaining is not None and delay >= remaining:
            raise self._expired() from None
        self._backoff = min(self._backoff * self._policy.multiplier, self._policy.max_backoff)
        logger.debug(
            "%s: attempt %d failed with %s (%s); retrying in %.3f s",
            self.method,
            self.made,
            self._last.code.name,
            self._last.message,
            delay,
        )
        return delay

    def _expired(self) -> DeadlineExceededError:
        last = f"; the last failed with {self._last}" if self._last is not None else ""
        return DeadlineExceededError(
            f"{self.method}: the deadline of {self._deadline.timeout} s passed after "
            f"{self.made} attempt{'s' * (self.made != 1)}{last}"
        )
