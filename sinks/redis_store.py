"""Redis adapters of the ports (`core.ports`): shared by every worker, process and restart.

`RedisVerdictCache`: one MGET per batch, a pipelined SET with TTL per write. A failure never stops the
flow: lookups miss, writes are skipped, the outage is counted and logged once, and Redis is tried again
after `retry_after_s`. `RedisControlStore`: overrides as `jf:ovr:<tenant>` keys whose Redis TTL is the
override's (`Override.keep_until_ms`), reads cached for `refresh_s`; an outage keeps the last overrides
read (it must not lift a pause). Writes that cannot reach Redis raise `core.errors.Unavailable` — the
only Redis error anything outside this module sees.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core import metrics
from core.errors import Unavailable
from core.ports import CachedVerdict, DisabledJudge, Override

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNREACHABLE = (redis.RedisError, OSError)
_encode_verdict = msgspec.msgpack.Encoder().encode
_decode_verdict = msgspec.msgpack.Decoder(CachedVerdict).decode
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Override).decode
_decode_judge = msgspec.json.Decoder(DisabledJudge).decode


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Redis errors (and socket errors under them) as `Unavailable`: the boundary's translation."""
    try:
        yield
    except redis.WatchError:
        raise  # not a failure: the optimistic transaction looks again
    except _UNREACHABLE as exc:
        msg = f"{what}: Redis unavailable: {type(exc).__name__}"
        raise Unavailable(msg) from exc


def one_quick_retry() -> Retry:
    """One immediate retry on a fresh connection: enough for a socket left stale by a restart, and a
    dead server fails fast (redis-py's default retries 10 times)."""
    return Retry(NoBackoff(), 1)


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
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=one_quick_retry(),
        )
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
        except _UNREACHABLE as exc:
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
                    pipe.set(self._prefix + k, _encode_verdict(v), px=self._ttl_ms)
                pipe.execute()
        except _UNREACHABLE as exc:
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


class RedisControlStore:
    """Overrides as `jf:ovr:<tenant>` keys whose Redis TTL is the override's."""

    PREFIX = "jf:ovr:"

    def __init__(
        self,
        url: str,
        *,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._redis = redis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=one_quick_retry()
        )
        self._refresh_s = refresh_s
        self._clock = clock
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._cached: dict[str, Override] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()
        self._failing = False

    def active(self) -> dict[str, Override]:
        with self._lock:
            if self._clock() - self._fetched_at >= self._refresh_s:
                self._fetched_at = self._clock()
                self._cached = self._fetch()
            out = dict(self._cached)  # Redis expires them (`Override.keep_until_ms`)
        metrics.OVERRIDES_ACTIVE.set(len(out))
        return out

    def set(self, override: Override) -> None:
        now = self._clock_ms()
        ttl_ms = max(1, override.keep_until_ms(now) - now)
        with translated("set an override"):
            self._redis.set(self.PREFIX + override.tenant_id, _encode(override), px=ttl_ms)
        self._fetched_at = float("-inf")

    def clear(self, tenant_id: str, *, if_set_by: str | None = None) -> bool:
        key = self.PREFIX + tenant_id
        with translated("clear an override"):
            removed = (
                bool(self._redis.delete(key)) if if_set_by is None else self._clear_if_owner(key, if_set_by)
            )
        self._fetched_at = float("-inf")
        return removed

    def _clear_if_owner(self, key: str, owner: str) -> bool:
        """Delete `key` only if `owner` set it: an optimistic transaction, so an
        override set by hand meanwhile is never removed."""
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None or _safe_owner(raw) != owner:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # changed between the read and the delete: look again

    JUDGE_PREFIX = "jf:judge-disabled:"

    def ping(self) -> None:
        """Reach Redis now (`Unavailable` if it cannot): the reads ride out outages quietly."""
        with translated("ping"):
            self._redis.ping()

    def disabled_judges(self) -> dict[str, DisabledJudge]:
        """Read at start (`Unavailable` propagates: the caller decides)."""
        with translated("read the disabled judges"):
            return {r.name: r for r in self._scan(self.JUDGE_PREFIX, _decode_judge)}

    def disable_judge(self, record: DisabledJudge) -> None:
        with translated("disable a judge"):
            self._redis.set(self.JUDGE_PREFIX + record.name, msgspec.json.encode(record))

    def enable_judge(self, name: str) -> bool:
        with translated("enable a judge"):
            return bool(self._redis.delete(self.JUDGE_PREFIX + name))

    def close(self) -> None:
        self._redis.close()

    def _fetch(self) -> dict[str, Override]:
        try:
            overrides = self._scan(self.PREFIX, _decode)
        except _UNREACHABLE as exc:
            if not self._failing:
                log.warning("control store unavailable, keeping the last overrides: %s", type(exc).__name__)
            self._failing = True
            return self._cached  # keep what we had: an outage must not lift a pause
        self._failing = False
        return {o.tenant_id: o for o in overrides}

    def _scan(self, prefix: str, decode: Callable[[bytes | str], T]) -> list[T]:
        """Every value under `prefix` (one SCAN, one MGET); unreadable ones are skipped."""
        keys = list(self._redis.scan_iter(match=prefix + "*", count=500))
        out = []
        for raw in self._redis.mget(keys) if keys else []:
            if raw is None:
                continue
            try:
                out.append(decode(raw))
            except msgspec.DecodeError:
                continue  # written by another version
        return out


def _safe_decode(raw: bytes | str) -> CachedVerdict | None:
    if isinstance(raw, str):  # (the client is made with decode_responses=False: never, in fact)
        raw = raw.encode()
    try:
        return _decode_verdict(raw)
    except msgspec.DecodeError:
        return None  # written by an older version: a miss, re-judged and overwritten


def _safe_owner(raw: bytes | str) -> str | None:
    try:
        return _decode(raw).set_by
    except msgspec.DecodeError:
        return None
