"""Retry policy: which failures are worth another try, and how long to wait.

Built on tenacity from plain configuration values.  Retried:

* transport errors (connect refused/timed out, connection closed, read
  timeout, no gateway available) - the cluster layer moves to the next
  gateway on the following attempt;
* the transient cluster states STARTUP, WAIT_FOR_JOIN, SHUTDOWN, KILLED and
  HALT (a node going away or the cluster waiting for nodes);
* the other result codes the protocol marks transient (EIO, NO_MEM,
  VDI_WRITE, BASE_VDI_WRITE, NETWORK_ERROR, NODE_IN_RECOVERY, AGAIN,
  CLUSTER_ERROR, COLLECTING_CINFO, ...): ``ServerError.transient``;
* VDI_LOCKED only when the caller asked to wait for the lock.

WAIT_FOR_FORMAT is *not* retried by default.  The design lists it among the
transient states, but a never-formatted cluster stays that way until an admin
runs ``cluster format``; retrying only delays a clear error (protocol §14.1).
``retry_wait_for_format=True`` opts in (for a client started together with a
cluster that a script formats a moment later); the total deadline still ends it.

Waits grow exponentially from ``base_backoff`` to ``max_backoff`` plus a random
jitter of up to ``jitter`` x the wait, and never run past the total
``deadline``.  Running out of attempts or time raises ``RetryExhausted``
carrying the last error.  Whether an operation may be repeated at all is the
caller's business (reads repeat freely; creates reconcile first).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import tenacity

from sheepdog_backend.exception import (
    InvalidInput,
    RetryExhausted,
    ServerError,
    TransportError,
    VdiLocked,
    WaitForFormat,
)

T = TypeVar("T")


class RetryPolicy:
    def __init__(self, *, attempts: int = 6, base_backoff: float = 0.05,
                 max_backoff: float = 2.0, deadline: float = 60.0, jitter: float = 0.5,
                 retry_wait_for_format: bool = False,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        if attempts < 1:
            raise InvalidInput(f"retry attempts must be at least 1, got {attempts}")
        if base_backoff < 0 or max_backoff < base_backoff:
            raise InvalidInput("need 0 <= base_backoff <= max_backoff")
        if deadline <= 0:
            raise InvalidInput(f"retry deadline must be positive, got {deadline}")
        if not 0 <= jitter <= 1:
            raise InvalidInput(f"jitter is a fraction in [0, 1], got {jitter}")
        self.attempts = attempts
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.deadline = deadline
        self.jitter = jitter
        self.retry_wait_for_format = retry_wait_for_format
        self.sleep = sleep
        self.clock = clock
        self.rng = rng

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | Any, **overrides: Any) -> RetryPolicy:
        """Build from a mapping or an object with attributes named like the
        keyword arguments (``attempts``, ``base_backoff``, ...)."""
        names = ("attempts", "base_backoff", "max_backoff", "deadline", "jitter",
                 "retry_wait_for_format")
        kwargs: dict[str, Any] = {}
        for name in names:
            if isinstance(values, Mapping):
                if name in values:
                    kwargs[name] = values[name]
            elif hasattr(values, name):
                kwargs[name] = getattr(values, name)
        kwargs.update(overrides)
        return cls(**kwargs)

    def is_retryable(self, exc: BaseException, *, wait_for_lock: bool = False) -> bool:
        if isinstance(exc, TransportError):
            return True
        if isinstance(exc, VdiLocked):
            return wait_for_lock
        if isinstance(exc, WaitForFormat):
            return self.retry_wait_for_format
        if isinstance(exc, ServerError):
            return exc.transient
        return False

    def backoff(self, attempt: int) -> float:
        """Wait before attempt ``attempt + 1`` (attempt counts from 1)."""
        wait = min(self.max_backoff, self.base_backoff * 2 ** (attempt - 1))
        return float(wait + wait * self.jitter * self.rng())

    def call(self, fn: Callable[[], T], *, wait_for_lock: bool = False,
             what: str = "operation") -> T:
        start = self.clock()

        def remaining() -> float:
            return self.deadline - (self.clock() - start)

        def stop(state: tenacity.RetryCallState) -> bool:
            return state.attempt_number >= self.attempts or remaining() <= 0

        def wait(state: tenacity.RetryCallState) -> float:
            return max(0.0, min(self.backoff(state.attempt_number), remaining()))

        retrying = tenacity.Retrying(
            stop=stop, wait=wait, sleep=self.sleep, reraise=False,
            retry=tenacity.retry_if_exception(
                lambda e: self.is_retryable(e, wait_for_lock=wait_for_lock)))
        try:
            return retrying(fn)
        except tenacity.RetryError as exc:
            attempt = exc.last_attempt
            last = attempt.exception() if attempt.failed else None
            raise RetryExhausted(
                f"{what} failed after {attempt.attempt_number} attempt(s) in "
                f"{self.clock() - start:.2f}s: {type(last).__name__}: {last}", last) from last
