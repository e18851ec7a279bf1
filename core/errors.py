"""The failure vocabulary: one root, three kinds, and one back-off policy for every retry loop.

- `RetryableError`: it may pass if tried again later — an outside system is unreachable or
  overloaded (`Unavailable`), a call timed out, a rate limit answered. Work waits and is retried
  within a bound; it is never silently dropped.
- `FatalError`: retrying cannot help — wrong credentials, a missing table, an unknown model, a bad
  configuration. The part concerned stops (a judge is disabled, the job exits with the reason).
- `InvalidInput`: one record can never be processed (not UTF-8, the wrong shape, absurd values). It
  becomes a dead letter with the reason; the rest of the stream goes on.

Adapters translate their clients' errors into these at the boundary (`judges/errors.py` for the judge
SDKs, `sinks/redis_store.py` for Redis, `sinks/clickhouse.py` for ClickHouse), so no stage catches a
client library's exception by name. `Backoff` is the one policy: exponential with jitter, capped, and
raised to a server's Retry-After; `call_with_retries` runs it for synchronous calls, and the async
loops (the judge runtime, the webhooks) ask it for their delays.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class JudgeflowError(Exception):
    """The root of every error judgeflow raises on purpose."""


class RetryableError(JudgeflowError):
    """May pass if tried again later. `retry_after_s`: how long the other side asked us to wait."""

    def __init__(self, msg: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after_s = retry_after_s


class Unavailable(RetryableError):
    """An outside system (a store, a cache, a database) could not be reached or did not answer."""


class FatalError(JudgeflowError):
    """Retrying cannot help; the message says what to fix."""


class InvalidInput(JudgeflowError, ValueError):
    """One record that can never be processed: it becomes a dead letter with this message."""


class GaveUp(RetryableError):
    """Retryable failures went on past the bound (`attempts` calls in `elapsed_s`); the last one
    is the cause (`__cause__`)."""

    def __init__(self, msg: str, *, attempts: int, elapsed_s: float) -> None:
        super().__init__(msg)
        self.attempts = attempts
        self.elapsed_s = elapsed_s


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with jitter: the n-th retry (from 1) waits a uniform time in [d/2, d],
    d = min(cap_s, base_s * 2**(n-1)), and at least a server's Retry-After (up to cap_s). The jitter
    spreads the retries of a burst; it decides when, never what is written."""

    base_s: float
    cap_s: float

    def delay_s(self, retry: int, retry_after_s: float | None = None) -> float:
        d = min(self.cap_s, self.base_s * 2 ** min(max(retry - 1, 0), 32))
        delay = random.uniform(d / 2, d)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s))
        return delay


def call_with_retries(
    fn: Callable[[], T],
    *,
    backoff: Backoff,
    retryable: Callable[[BaseException], bool] = lambda e: isinstance(e, RetryableError),
    attempts: int | None = None,
    within_s: float | None = None,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `fn` until it returns. A failure `retryable` accepts is tried again after the back-off
    (`on_retry(retry, delay_s, exc)` is told first) until `attempts` calls were made or `within_s`
    seconds passed since the first; then `GaveUp` is raised from the last failure. Any other failure
    is raised as it is, at once."""
    started = clock()
    retry = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            elapsed = clock() - started
            remaining = float("inf") if within_s is None else within_s - elapsed
            if (attempts is not None and retry + 1 >= attempts) or remaining <= 0:
                msg = f"gave up after {retry + 1} attempts in {elapsed:.1f}s: {exc!r}"
                raise GaveUp(msg, attempts=retry + 1, elapsed_s=elapsed) from exc
            retry += 1
            delay = min(backoff.delay_s(retry, getattr(exc, "retry_after_s", None)), remaining)
            if on_retry is not None:
                on_retry(retry, delay, exc)
            sleep(delay)
