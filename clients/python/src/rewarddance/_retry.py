"""Retries of whole calls, shared by both clients: which status codes are retried, the backoff
between tries, when to stop (the call's deadline), and the log lines that an outage produces.

The contract (README.md of the package, and docs/python-client.md):

* Only `UNAVAILABLE` (server draining, restarting or unreachable) and `RESOURCE_EXHAUSTED` (its
  queue is full) are retried. `Score`, `ScoreGrad`, `Rank` and `Info` are reads without side
  effects, so a repeated call cannot double anything.
* The budget is the call's deadline (`timeout=`, default the client's, itself 120 s by default;
  there is no infinite timeout), not a number of tries: tries go on while the next backoff ends
  before the deadline, so a call gives up at most one backoff (`max_backoff`) early.
  `max_attempts` optionally caps the tries too.
* Backoff: `initial_backoff` (50 ms) multiplied by `multiplier` (2) per try up to `max_backoff`
  (2 s), each delay scaled by a random factor in `[1 - jitter, 1]`.
* Logging (logger `rewarddance`): one WARNING when calls start retrying, one INFO when a call
  succeeds again, each try in between at DEBUG; one WARNING for each call that gives up.
"""
from __future__ import annotations

import logging
import math
import numbers
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Optional, Sequence, Tuple

import grpc

from ._types import RewardError

DEFAULT_TIMEOUT = 120.0

log = logging.getLogger("rewarddance")


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried: on `retryable` status codes only, with jittered exponential backoff,
    until the call's deadline (and at most `max_attempts` tries when that is set).

    The delay after failed try k is `min(max_backoff, initial_backoff * multiplier**(k-1))`,
    scaled by a uniform random factor in `[1 - jitter, 1]`; a retry whose delay would end after
    the deadline is not made.

    `wait_for_ready=True` makes each try wait for a connection instead of failing at once with
    `UNAVAILABLE` while the channel cannot connect (grpc's wait-for-ready). Use it with one
    target; with several, a try then waits on a dead target instead of moving on to the next.
    """

    max_attempts: Optional[int] = None
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retryable: FrozenSet[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
    )
    wait_for_ready: bool = False

    def __post_init__(self):
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be None (no cap: the deadline bounds the tries) or >= 1")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter <= 1")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        exp = min(attempt - 1, 64)  # large tries stay at max_backoff without overflowing
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** exp)
        return base * (1.0 - self.jitter * random.random())

    def should_retry(self, code: grpc.StatusCode, attempt: int) -> bool:
        """Whether `code` from try number `attempt` may be retried (the deadline aside)."""
        return code in self.retryable and (self.max_attempts is None or attempt < self.max_attempts)


NO_RETRY = RetryPolicy(max_attempts=1)


def check_timeout(timeout: Any) -> float:
    """A call's overall timeout in seconds: finite and positive (there is no unbounded call)."""
    t = float(timeout) if isinstance(timeout, numbers.Real) else math.nan
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, not {timeout!r}")
    return t


def call_timeout(default: float, timeout: Optional[float]) -> float:
    """A call's overall timeout: its own `timeout=`, else the client's `default`."""
    return default if timeout is None else check_timeout(timeout)


def status_of(e: grpc.RpcError) -> Tuple[grpc.StatusCode, str]:
    """(code, details) of a failed grpc call."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else str(e)) or ""
    return code, details


class Outage:
    """A client's retry episodes, for its log: one WARNING when a call first has to retry, DEBUG
    for each further retry (of any call), one INFO when a call succeeds again. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: Optional[float] = None
        self._retries = 0

    def retry(self, code: grpc.StatusCode, details: str, target: str, attempt: int, delay: float,
              left: float) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since, self._retries = time.monotonic(), 0
            self._retries += 1
        if first:
            what = "busy" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else "unavailable"
            log.warning("server %s (%s from %s: %s); retrying with backoff until each call's deadline "
                        "(%.1f s left for this one); further retries are logged at DEBUG until a call succeeds",
                        what, code.name, target, details, left)
        else:
            log.debug("retrying after %s from %s (try %d) in %.3f s, %.1f s left: %s", code.name, target,
                      attempt, delay, left, details)

    def ok(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, retries, self._since = self._since, self._retries, None
        if since is not None:
            log.info("server answering again: calls succeed after %.1f s of retrying (%d retries)",
                     time.monotonic() - since, retries)


class Attempts:
    """The tries of one call: its deadline, the try count, and what to do after a failure."""

    def __init__(self, policy: RetryPolicy, outage: Outage, total: float, deadline: Optional[float] = None):
        self.policy = policy
        self.outage = outage
        self.total = total
        self.deadline = time.monotonic() + total if deadline is None else deadline
        self.start = self.deadline - total
        self.attempt = 0
        # The last retryable failure, reported if the deadline passes during its backoff.
        self._last: Optional[Tuple[grpc.StatusCode, str, str]] = None

    def begin(self, metadata: Optional[Sequence[Tuple[str, str]]]) -> Dict[str, Any]:
        """Starts the next try and returns its call options (the time left as its gRPC timeout);
        raises `RewardError(DEADLINE_EXCEEDED)` when no time is left."""
        self.attempt += 1
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            if self._last is not None:
                # The backoff overran the deadline (a loaded machine sleeps long): the call
                # failed because of what the server kept answering, so say that.
                code, details, target = self._last
                raise RewardError(code, f"{details} (the call's timeout of {self.total:g} s passed "
                                  f"before try {self.attempt})", self.attempt - 1, target)
            raise RewardError(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"timeout of {self.total:g} s passed before try {self.attempt}", self.attempt - 1)
        kw: Dict[str, Any] = {"timeout": remaining, "metadata": metadata}
        if self.policy.wait_for_ready:
            kw["wait_for_ready"] = True
        return kw

    def failed(self, e: grpc.RpcError, target: str, retry: bool = True) -> float:
        """Seconds to wait before the next try after `e`; raises the call's `RewardError` when
        there is none (a code that is not retried, `retry=False`, or no time left)."""
        code, details = status_of(e)
        if retry and code in self.policy.retryable:
            delay = self.policy.backoff(self.attempt)
            left = self.deadline - time.monotonic()
            if self.policy.should_retry(code, self.attempt) and delay < left:
                self.outage.retry(code, details, target, self.attempt, delay, left)
                self._last = (code, details, target)
                return delay
            if self.attempt > 1:
                log.warning("giving up a call after %d tries in %.1f s (its timeout: %g s): %s from %s: %s",
                            self.attempt, time.monotonic() - self.start, self.total, code.name, target, details)
        raise RewardError(code, details, self.attempt, target) from None

    def succeeded(self) -> None:
        self.outage.ok()
