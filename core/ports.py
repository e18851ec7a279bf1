"""Ports: how the stages reach the outside systems they keep state in, as protocols with the values
that cross them. The adapters live with the other outside-system code: `sinks/redis_store.py` (Redis,
shared by workers, processes and restarts) and `sinks/memory_store.py` (in-process, the embedded
default). An adapter raises only `core.errors` kinds (`Unavailable` when its system cannot be reached).

- `VerdictCache`: stored verdicts by content key, so identical (metric, text) pairs are judged once.
  A cache failure never stops the flow: lookups miss and writes are skipped. A stored verdict names
  the event that paid for it and what it paid (`paid_by`, `paid`): when that event comes again (read
  again after a crash, a replay of the topic) the judge emits the rows its calls gave, spend included,
  instead of a free cache hit, so judge spend paid once is counted once whatever was re-read.
- `ControlStore`: per-tenant sampling overrides with a lifetime, and the judges a fatal error disabled.
  Alerts set and clear overrides (`OverrideAction`, applied by `sinks.control.ControlSink`), operators
  do it by hand (`judgeflow overrides ...`), and the sampler reads them.

Lifetime of an override. It applies to the events whose *event time* lies in [`starts_ms`,
`expires_ms`) (`Override.covers`): an alert raised at event time E throttles the hour of traffic after
E, however fast a replay or a lagging consumer reads it. A store keeps an override for at least as long
in wall time as it lasts in event time (`keep_until_ms`) and until its expiry — the wall clock only
cleans up, it never decides which events an override applies to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

from core.records import JudgeCall, Verdict


class PaidTier(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """One tier of a judgement an event paid for: the tier's verdict and every billed call it took."""

    verdict: Verdict
    tier: int
    judge: str  # the tier's judge (the judge-spend entry's model)
    calls: tuple[JudgeCall, ...]


class CachedVerdict(msgspec.Struct, gc=False, frozen=True, array_like=True):
    verdict: Verdict
    stored_ms: int
    paid_by: str = ""  # the event whose calls gave the verdict
    paid: tuple[PaidTier, ...] = ()  # its tiers in order, the last one's verdict is `verdict`


class VerdictCache(Protocol):
    def get_many(self, keys: Sequence[str]) -> list[CachedVerdict | None]:
        """One lookup for a whole batch; a miss or a failure is None."""
        ...

    def put_many(self, items: Mapping[str, CachedVerdict]) -> None:
        """Store verdicts with the cache's TTL; failures are counted, not raised."""
        ...


class Override(msgspec.Struct, gc=False, frozen=True):
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


class DisabledJudge(msgspec.Struct, gc=False, frozen=True):
    """A judge a fatal error disabled. `config` fingerprints its configuration (provider, model,
    endpoint, key): a changed configuration is a new judge, enabled again."""

    name: str
    config: str
    reason: str
    at_ms: int


class OverrideAction(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """Set or clear a tenant's sampling override (applied by `sinks.control.ControlSink`).

    A `clear` only removes the override if it is still the one `set_by` wrote.
    """

    tenant_id: str
    op: str  # set | clear
    rate: float
    expires_ms: int
    set_by: str  # "alert:<alert id>"
    reason: str
    ts_ms: int

    def override(self) -> Override:
        """The override a `set` writes: from the alert's evaluation time to `expires_ms` (event time)."""
        return Override(self.tenant_id, self.rate, self.reason, self.set_by, self.expires_ms, self.ts_ms)


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
