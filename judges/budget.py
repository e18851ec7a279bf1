"""Per-tenant daily judge budgets: how much each tenant's judging may cost per day.

A tenant's spend decides the highest tier its events may use (the ceiling):
2 while spend is below `tier2_share` of the day's budget, then 1, and 0 (free
rules only) once the budget is spent.

Choices, and why:

- **The day is the UTC day of the event's time**, not of the wall clock: a
  replay or backfill meets the same budgets as the live run did, and the
  spend lines up with the judge-spend windows of the cost ledger.
- **Spend is booked when work is submitted**, at an estimate from the
  prompt's length and the tier's prices, and corrected to the real cost when
  the call returns. Decisions therefore depend only on what came before in
  the stream (and on how much of it has returned), not on network timing
  alone, and a burst cannot overshoot the budget by everything in flight.
- **Each judge shard owns an equal share of every budget** and keeps its
  book in its snapshot. No shared store is needed, a restart resumes the
  book exactly as snapshotted (estimates for work still in flight
  included), and the shares add up to the budget, so the total never
  exceeds it. The cost: a tenant whose events are unevenly spread over the
  shards may be degraded on one shard slightly before its whole budget is spent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DAY_MS = 86_400_000
KEEP_DAYS = 3  # days kept in the book: today and two before, for late events


@dataclass(frozen=True)
class BudgetPolicy:
    """Daily judge budgets in picodollars; 0 or a missing tenant = unlimited unless `daily_pusd`."""

    daily_pusd: int = 0
    tenants: Mapping[str, int] = field(default_factory=dict)
    tier2_share: float = 0.8
    shards: int = 1

    def limit(self, tenant: str) -> int:
        """This shard's share of the tenant's daily budget; 0 = unlimited."""
        total = self.tenants.get(tenant, self.daily_pusd)
        return total // self.shards if total else 0

    @property
    def enabled(self) -> bool:
        return bool(self.daily_pusd) or any(self.tenants.values())


class BudgetBook:
    """One shard's spend per (tenant, UTC day). `spent` is its snapshot."""

    def __init__(self, policy: BudgetPolicy, spent: Mapping[tuple[str, int], int] | None = None) -> None:
        self.policy = policy
        self.spent: dict[tuple[str, int], int] = dict(spent or {})
        self._newest_day = max((d for _, d in self.spent), default=0)

    def ceiling(self, tenant: str, ts_ms: int) -> int:
        """The highest tier this tenant's event may use now: 2, 1 or 0."""
        limit = self.policy.limit(tenant)
        if not limit:
            return 2
        spent = self.spent.get((tenant, ts_ms // DAY_MS), 0)
        if spent >= limit:
            return 0
        return 2 if spent < limit * self.policy.tier2_share else 1

    def charge(self, tenant: str, ts_ms: int, pusd: int) -> None:
        """Book `pusd` (negative to correct an estimate downwards)."""
        if not pusd or not self.policy.enabled:
            return
        day = ts_ms // DAY_MS
        key = (tenant, day)
        self.spent[key] = self.spent.get(key, 0) + pusd
        if day > self._newest_day:
            self._newest_day = day
            oldest = day - KEEP_DAYS + 1
            self.spent = {k: v for k, v in self.spent.items() if k[1] >= oldest}
