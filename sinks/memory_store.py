"""In-process adapters of the ports (`core.ports`): the embedded default when no Redis is configured.
Thread-safe (bytewax workers are threads); nothing is shared across processes or restarts."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from core import metrics
from core.ports import CachedVerdict, DisabledJudge, Override


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
