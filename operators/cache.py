"""The verdict cache: stored verdicts by content key, so identical pairs are judged once.

`VerdictCache` has two implementations: `RedisVerdictCache` (shared by all
workers and restarts; one MGET per batch, pipelined SET with TTL) and
`MemoryVerdictCache` (an LRU for the embedded default). A cache failure never
stops the flow: lookups miss, writes are skipped, the outage is counted and
logged once, and the cache is retried after a short back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import msgspec

from core import metrics
from core.records import Verdict

log = logging.getLogger(__name__)


class CachedVerdict(msgspec.Struct, frozen=True, array_like=True):
    verdict: Verdict
    stored_ms: int


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(CachedVerdict).decode


class VerdictCache(Protocol):
    def get_many(self, keys: Sequence[str]) -> list[CachedVerdict | None]:
        """One lookup for a whole batch; a miss or a failure is None."""
        ...

    def put_many(self, items: Mapping[str, CachedVerdict]) -> None:
        """Store verdicts with the cache's TTL; failures are counted, not raised."""
        ...


class MemoryVerdictCache:
    """In-process LRU with TTL; thread-safe (bytewax workers are threads)."""

    def __init__(
        self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._data: OrderedDict[str, tuple[float, CachedVerdict]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[CachedVerdict | None]:
        now = self._clock()
        out: list[CachedVerdict | None] = []
        with self._lock:
            for k in keys:
                hit = self._data.get(k)
                if hit is None or hit[0] <= now:
                    if hit is not None:
                        del self._data[k]
                    out.append(None)
                else:
                    self._data.move_to_end(k)
                    out.append(hit[1])
        return out

    def put_many(self, items: Mapping[str, CachedVerdict]) -> None:
        expires = self._clock() + self._ttl
        with self._lock:
            for k, v in items.items():
                self._data[k] = (expires, v)
                self._data.move_to_end(k)
            while len(self._data) > self._max:
                self._data.popitem(last=False)


class RedisVerdictCache:
    """Redis-backed cache. Build it on the worker (it opens a connection pool)."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        prefix: str = "jf:v:",
        retry_after_s: float = 5.0,
        socket_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis

        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # one immediate retry on a fresh connection: enough for a socket left stale by a
            # restart, and a dead server fails fast (redis-py's default retries 10 times)
            retry=one_quick_retry(),
        )
        self._errors = (redis.RedisError, OSError)
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._prefix = prefix
        self._retry_after = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self._outage = False
        self._state_lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[CachedVerdict | None]:
        if not keys or self._skipping():
            return [None] * len(keys)
        try:
            raw = self._redis.mget([self._prefix + k for k in keys])
        except self._errors as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._recovered()
        return [None if r is None else _safe_decode(r) for r in raw]

    def put_many(self, items: Mapping[str, CachedVerdict]) -> None:
        if not items or self._skipping():
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for k, v in items.items():
                    pipe.set(self._prefix + k, _encode(v), px=self._ttl_ms)
                pipe.execute()
        except self._errors as exc:
            self._failed(exc)
            return
        self._recovered()

    def close(self) -> None:
        self._redis.close()

    def _skipping(self) -> bool:
        return self._outage and self._clock() < self._down_until

    def _failed(self, exc: Exception) -> None:
        metrics.CACHE_ERRORS.inc()
        with self._state_lock:  # worker threads share the cache: one outage is counted once
            first = not self._outage
            self._outage = True
            self._down_until = self._clock() + self._retry_after
        if first:
            metrics.CACHE_OUTAGES.inc()
            log.warning("verdict cache unavailable, judging without it: %s", type(exc).__name__)
            # idle pooled sockets to a dead server would each fail once more after it is back
            self._redis.connection_pool.disconnect(inuse_connections=False)

    def _recovered(self) -> None:
        if self._outage:
            with self._state_lock:
                back, self._outage = self._outage, False
            if back:
                log.warning("verdict cache is back")


def one_quick_retry():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 1)


def _safe_decode(raw: bytes | str) -> CachedVerdict | None:
    if isinstance(raw, str):  # (the client is made with decode_responses=False: never, in fact)
        raw = raw.encode()
    try:
        return _decode(raw)
    except msgspec.DecodeError:
        return None  # written by an older version: a miss, re-judged and overwritten
