"""The control store: per-tenant sampling overrides with a time to live.

Alerts write overrides (e.g. judge 1% of a tenant's traffic during a cost
spike, or pause judging it), operators set and clear them by hand
(`judgeflow overrides ...`), and the sampler reads them. `RedisControlStore`
shares them across workers, processes and restarts; `MemoryControlStore` is
the in-process fallback of the embedded default. Reads are cached for
`refresh_s` so the hot path does not make a round trip per batch.

Lifetime. An override applies to the events whose *event time* lies in
[`starts_ms`, `expires_ms`) (`Override.covers`): an alert raised at event time E
throttles the hour of traffic after E, however fast a replay or a lagging
consumer reads it. The store keeps an override for at least as long in wall
time as it lasts in event time (its `ttl_ms`) and until its expiry — the wall
clock only cleans up, it never decides which events an override applies to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec

from core import metrics
from operators.cache import one_quick_retry

log = logging.getLogger(__name__)
T = TypeVar("T")


class Override(msgspec.Struct, frozen=True):
    """`rate` replaces the sampler's rates for the tenant's events with event
    times in [starts_ms, expires_ms); 0.0 pauses judging."""

    tenant_id: str
    rate: float
    reason: str
    set_by: str  # "alert:<alert_id>" or "cli:<user>"
    expires_ms: int
    starts_ms: int = 0

    def covers(self, ts_ms: int) -> bool:
        return self.starts_ms <= ts_ms < self.expires_ms

    def keep_until_ms(self, now_ms: int) -> int:
        """Wall time until which a store keeps it: its expiry, and at least its lifetime from now."""
        return (
            max(self.expires_ms, now_ms + self.expires_ms - self.starts_ms)
            if self.starts_ms
            else self.expires_ms
        )


class DisabledJudge(msgspec.Struct, frozen=True):
    """A judge a fatal error disabled. `config` fingerprints its configuration (provider, model,
    endpoint, key): a changed configuration is a new judge, enabled again."""

    name: str
    config: str
    reason: str
    at_ms: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Override).decode
_decode_judge = msgspec.json.Decoder(DisabledJudge).decode


class ControlStore(Protocol):
    def active(self) -> dict[str, Override]:
        """Every override that has not expired, by tenant (cached for a moment)."""
        ...

    def set(self, override: Override) -> None: ...

    def clear(self, tenant_id: str, *, if_set_by: str | None = None) -> bool:
        """Remove a tenant's override (only if `if_set_by` set it, when given),
        atomically; True if one was removed."""
        ...

    def disabled_judges(self) -> dict[str, DisabledJudge]:
        """Judges a fatal error disabled (401, unknown model), by name."""
        ...

    def disable_judge(self, record: DisabledJudge) -> None: ...

    def enable_judge(self, name: str) -> bool:
        """Forget that a judge was disabled; True if it was."""
        ...


class MemoryControlStore:
    def __init__(self, *, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._data: dict[str, Override] = {}
        self._keep_until: dict[str, int] = {}
        self._judges: dict[str, DisabledJudge] = {}
        self._lock = threading.Lock()

    def active(self) -> dict[str, Override]:
        now = self._clock()
        with self._lock:
            for t in [t for t, until in self._keep_until.items() if until <= now]:
                del self._data[t], self._keep_until[t]
            out = dict(self._data)
        metrics.OVERRIDES_ACTIVE.set(len(out))
        return out

    def set(self, override: Override) -> None:
        with self._lock:
            self._data[override.tenant_id] = override
            self._keep_until[override.tenant_id] = override.keep_until_ms(self._clock())

    def clear(self, tenant_id: str, *, if_set_by: str | None = None) -> bool:
        with self._lock:
            current = self._data.get(tenant_id)
            if current is None or (if_set_by is not None and current.set_by != if_set_by):
                return False
            del self._data[tenant_id], self._keep_until[tenant_id]
            return True

    def disabled_judges(self) -> dict[str, DisabledJudge]:
        with self._lock:
            return dict(self._judges)

    def disable_judge(self, record: DisabledJudge) -> None:
        with self._lock:
            self._judges[record.name] = record

    def enable_judge(self, name: str) -> bool:
        with self._lock:
            return self._judges.pop(name, None) is not None


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
        import redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=one_quick_retry()
        )
        self._errors = (redis.RedisError, OSError)
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
        self._redis.set(self.PREFIX + override.tenant_id, _encode(override), px=ttl_ms)
        self._fetched_at = float("-inf")

    def clear(self, tenant_id: str, *, if_set_by: str | None = None) -> bool:
        key = self.PREFIX + tenant_id
        removed = bool(self._redis.delete(key)) if if_set_by is None else self._clear_if_owner(key, if_set_by)
        self._fetched_at = float("-inf")
        return removed

    def _clear_if_owner(self, key: str, owner: str) -> bool:
        """Delete `key` only if `owner` set it: an optimistic transaction, so an
        override set by hand meanwhile is never removed."""
        import redis

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

    def disabled_judges(self) -> dict[str, DisabledJudge]:
        """Read at start (a Redis error propagates: the caller decides)."""
        return {r.name: r for r in self._scan(self.JUDGE_PREFIX, _decode_judge)}

    def disable_judge(self, record: DisabledJudge) -> None:
        self._redis.set(self.JUDGE_PREFIX + record.name, msgspec.json.encode(record))

    def enable_judge(self, name: str) -> bool:
        return bool(self._redis.delete(self.JUDGE_PREFIX + name))

    def close(self) -> None:
        self._redis.close()

    def _fetch(self) -> dict[str, Override]:
        try:
            overrides = self._scan(self.PREFIX, _decode)
        except self._errors as exc:
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


def _safe_owner(raw: bytes | str) -> str | None:
    try:
        return _decode(raw).set_by
    except msgspec.DecodeError:
        return None
