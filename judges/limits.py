"""Client-side limits per judge endpoint: rate limits and a circuit breaker.

Both live on the judge runtime's event loop (single-threaded: no locks) and
take an injected clock, so they are tested without sleeping.

- `RateLimiter`: token buckets for requests and tokens per minute. A caller
  takes what it needs at once and is told how long to wait until the bucket
  has covered it; taking before waiting queues callers in arrival order
  without a lock, and the wait never busy-loops.
- `CircuitBreaker`: opens after `failures` consecutive failures (5xx,
  timeouts, connection errors, broken bodies; a 429 only says the endpoint is
  busy and does not count), fails calls fast while open, lets one probe through
  after `cooldown_s` (half-open), and closes on the probe's success.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """`per_minute` units per minute, with a burst of `burst_s` seconds' worth."""

    def __init__(self, per_minute: float, *, burst_s: float = 1.0, clock: Clock = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self._clock = clock
        self._level = self.capacity
        self._at = clock()

    def take(self, n: float) -> float:
        """Take `n` units now; return the seconds until they are paid for (0 = go ahead).

        The level may go below zero: that debt is what makes later callers
        wait, in the order they came. A request larger than the burst waits
        for its excess only.
        """
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now
        self._level -= n
        return 0.0 if self._level >= 0 else -self._level / self.rate

    def give_back(self, n: float) -> None:
        """Return units taken in excess (a call used fewer tokens than estimated); negative takes more."""
        self._level = min(self.capacity, self._level + n)


class RateLimiter:
    """Requests and tokens per minute for one endpoint; 0 means no limit."""

    def __init__(
        self, requests_per_minute: float = 0, tokens_per_minute: float = 0, *, clock: Clock = time.monotonic
    ) -> None:
        self._requests = TokenBucket(requests_per_minute, clock=clock) if requests_per_minute > 0 else None
        self._tokens = TokenBucket(tokens_per_minute, clock=clock) if tokens_per_minute > 0 else None

    @property
    def limited(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def reserve(self, tokens: int) -> float:
        """Take one request and `tokens` tokens; the seconds to wait before sending."""
        wait = 0.0
        if self._requests is not None:
            wait = self._requests.take(1)
        if self._tokens is not None:
            wait = max(wait, self._tokens.take(tokens))
        return wait

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the call's real token count is known."""
        if self._tokens is not None:
            self._tokens.give_back(estimated - actual)


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Per-endpoint breaker: closed -> open after `failures` in a row -> half-open after `cooldown_s`."""

    def __init__(self, failures: int, cooldown_s: float, *, clock: Clock = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self.rejected = 0  # calls failed fast while open
        self.opened = 0  # times it opened
        self._clock = clock
        self._in_a_row = 0
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """May a call go out now? While half-open, only one probe at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        self.rejected += 1
        return False

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def success(self) -> None:
        self.state = CLOSED
        self._in_a_row = 0
        self._probing = False

    def failure(self) -> None:
        self._in_a_row += 1
        if self.state == HALF_OPEN or self._in_a_row >= self.failures:
            if self.state != OPEN:
                self.opened += 1
            self.state = OPEN
            self._opened_at = self._clock()
        self._probing = False
