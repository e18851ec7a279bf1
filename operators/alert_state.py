"""A tenant's ledger as the alert rules read it: spend and requests per base
window (slot), per agent and variant, per UTC day, and the expensive requests.

Window rows arrive as revisions (a newer row for the same window replaces
the older one) or corrections (which add). The ledger keeps the newest row
per window key for as long as a revision can still come, and applies the
difference of each revision to its totals — so totals are exact whatever
the order and however often a window is revised. Plain dicts and ints: the
whole ledger is the alert stage's snapshot state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from operators.records import CostWindow

DAY_MS = 86_400_000

# (cost, event_id, agent, model, variant, ts_ms), most expensive first
Expensive = tuple[int, str, str, str, str, int]


def month_bounds(ts_ms: int) -> tuple[int, int]:
    """[start, end) of the UTC calendar month holding `ts_ms`, in ms."""
    d = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    end = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def top_expensive(items: list[Expensive], n: int) -> list[Expensive]:
    return sorted(items, key=lambda x: (-x[0], x[1]))[:n]


@dataclass
class TenantLedger:
    slot_ms: int = 60_000  # the base window size
    # (category, agent, model, variant, window start) -> newest (requests, cost, judge cost)
    rows: dict[tuple[str, str, str, str, int], tuple[int, int, int]] = field(default_factory=dict)
    # (category, agent, model, variant) -> start of its newest window row
    newest: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # slot start -> [requests, cost] of LLM requests
    llm: dict[int, list[int]] = field(default_factory=dict)
    # (agent, variant, slot start) -> [requests, cost]
    agents: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    # slot start -> judge cost
    judge: dict[int, int] = field(default_factory=dict)
    # UTC day start -> [LLM cost, judge cost]
    days: dict[int, list[int]] = field(default_factory=dict)
    # slot start -> (count above the threshold, top requests of the slot)
    expensive: dict[int, tuple[int, list[Expensive]]] = field(default_factory=dict)
    first_slot_ms: int = -1

    def add_window(self, w: CostWindow) -> None:
        key = (w.category, w.agent, w.model, w.variant, w.window_start_ms)
        new = (w.requests, w.cost_pusd, w.judge_cost_pusd)
        if w.kind == "correction":
            delta = new
        else:
            old = self.rows.get(key, (0, 0, 0))
            self.rows[key] = new
            if w.window_start_ms > self.newest.get(key[:4], -1):
                self.newest[key[:4]] = w.window_start_ms
            delta = (new[0] - old[0], new[1] - old[1], new[2] - old[2])
        slot = w.window_start_ms
        day = slot - slot % DAY_MS
        totals = self.days.setdefault(day, [0, 0])
        if w.category == "judge":
            totals[1] += delta[2]
            self.judge[slot] = self.judge.get(slot, 0) + delta[2]
            return
        totals[0] += delta[1]
        for acc in (
            self.llm.setdefault(slot, [0, 0]),
            self.agents.setdefault((w.agent, w.variant, slot), [0, 0]),
        ):
            acc[0] += delta[0]
            acc[1] += delta[1]
        if self.first_slot_ms < 0 or slot < self.first_slot_ms:
            self.first_slot_ms = slot

    def add_expensive(self, slot: int, count: int, top: list[Expensive], keep: int) -> None:
        have = self.expensive.get(slot)
        if have is None:
            self.expensive[slot] = (count, top_expensive(top, keep))
        else:
            self.expensive[slot] = (have[0] + count, top_expensive(have[1] + top, keep))

    def llm_sum(self, start: int, end: int) -> tuple[int, int]:
        """(requests, cost) of the slots starting in [start, end)."""
        requests = cost = 0
        slot_ms = self.slot_ms
        if (end - start) // slot_ms < len(self.llm):
            first = start + (-start) % slot_ms
            for slot in range(first, end, slot_ms):
                acc = self.llm.get(slot)
                if acc is not None:
                    requests += acc[0]
                    cost += acc[1]
            return requests, cost
        for slot, (n, c) in self.llm.items():
            if start <= slot < end:
                requests += n
                cost += c
        return requests, cost

    def llm_since(self, start: int, end: int) -> int:
        """LLM cost of the slots in [start, end), `start` a UTC day boundary: the
        per-day totals less the slots already in at or after `end`."""
        total = sum(c for day, (c, _) in self.days.items() if day >= start)
        return total - sum(c for slot, (_, c) in self.llm.items() if slot >= end)

    def day_costs(self, end: int) -> tuple[int, int]:
        """(LLM cost, judge cost) from 00:00 UTC of the day `end` closes to `end`."""
        day = (end - 1) - (end - 1) % DAY_MS
        llm, judge = self.days.get(day, (0, 0))
        next_day = day + DAY_MS
        llm -= sum(c for slot, (_, c) in self.llm.items() if end <= slot < next_day)
        judge -= sum(c for slot, c in self.judge.items() if end <= slot < next_day)
        return llm, judge

    def agent_sums(self, start: int, end: int) -> dict[str, dict[str, list[int]]]:
        """agent -> variant -> [requests, cost] over the slots in [start, end)."""
        out: dict[str, dict[str, list[int]]] = {}
        for (agent, variant, slot), (n, c) in self.agents.items():
            if start <= slot < end and n:
                acc = out.setdefault(agent, {}).setdefault(variant, [0, 0])
                acc[0] += n
                acc[1] += c
        return out

    def expensive_in(self, start: int, end: int, n: int) -> tuple[int, list[Expensive]]:
        count = 0
        top: list[Expensive] = []
        for slot, (k, items) in self.expensive.items():
            if start <= slot < end:
                count += k
                top.extend(items)
        return count, top_expensive(top, n)

    def forget(
        self, *, revisable_ms: int, keys: int, llm: int, agents: int, expensive: int, days: int
    ) -> None:
        """Drop what no rule and no revision can need any more.

        A window key's rows can be revised while they are within
        `revisable_ms` of that key's newest row (its own event-time progress,
        which may lag the tenant's); keys with no row since `keys` are dropped.
        The other arguments are the horizons of each kind of total.
        """
        for k in [k for k, newest in self.newest.items() if newest < keys]:
            del self.newest[k]
        newest = self.newest
        for k in [k for k in self.rows if k[:4] not in newest or k[4] < newest[k[:4]] - revisable_ms]:
            del self.rows[k]
        for s in [s for s in self.llm if s < llm]:
            del self.llm[s]
        for s in [s for s in self.judge if s < llm]:
            del self.judge[s]
        for k in [k for k in self.agents if k[2] < agents]:
            del self.agents[k]
        for s in [s for s in self.expensive if s < expensive]:
            del self.expensive[s]
        for d in [d for d in self.days if d < days]:
            del self.days[d]
