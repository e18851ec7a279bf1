"""A tenant's ledger as the alert rules read it: spend and requests per base
window (slot), per agent and variant, per UTC day, the expensive requests, and the repeated
prompts and top user of each slot (`operators.abuse`).

Window rows arrive as revisions (a newer row for the same window replaces
the older one) or corrections (which add). The ledger keeps the newest row
per window key for as long as a revision can still come, and applies the
difference of each revision to its totals — so totals are exact whatever
the order and however often a window is revised. Plain dicts and ints: the
whole ledger is the alert stage's snapshot state.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.records import AbuseWindow, CostWindow
from operators import event_time
from operators.settled_dict import SettledDict

DAY_MS = 86_400_000

# (category, agent, model, variant, window start)
WindowKey = tuple[str, str, str, str, int]

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
    # window key -> newest (requests, cost, judge cost); most of it is unchanged from one snapshot to
    # the next (`forget` settles it)
    rows: SettledDict[WindowKey, tuple[int, int, int]] = field(default_factory=SettledDict)
    # (category, agent, model, variant) -> start of its newest window row
    newest: SettledDict[tuple[str, str, str, str], int] = field(default_factory=SettledDict)
    # slot start -> [requests, cost] of LLM requests
    llm: dict[int, list[int]] = field(default_factory=dict)
    # slot start -> (agent, variant) -> [requests, cost]; a slot's dict is written again whenever it
    # changes, so only the slots changed since the last `forget` are pickled again
    agents: SettledDict[int, dict[tuple[str, str], list[int]]] = field(default_factory=SettledDict)
    # (agent, variant) -> [requests, cost] over [cursor - agent_window_ms, cursor), kept as it slides
    agent_window_ms: int = 3_600_000
    agents_open: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # width -> [requests, cost] of the LLM slots in [cursor - width, cursor), kept as it slides
    llm_open: dict[int, list[int]] = field(default_factory=dict)
    # slot start -> judge cost
    judge: dict[int, int] = field(default_factory=dict)
    # slot start -> (count above the threshold, top requests of the slot)
    expensive: dict[int, tuple[int, list[Expensive]]] = field(default_factory=dict)
    # slot start -> the newest abuse row of the slot (repeated prompts, top user)
    abuse: dict[int, AbuseWindow] = field(default_factory=dict)
    # the evaluation has reached `cursor`: `days` holds, per UTC day, the
    # [LLM cost, judge cost] of every slot before it (whatever was forgotten since)
    cursor: int = -1
    days: dict[int, list[int]] = field(default_factory=dict)
    first_slot_ms: int = -1

    def mark_llm(self, slot: int) -> None:
        """The slot has LLM requests (`has_llm`, what the evaluation clock reads), and nothing else is
        kept of them: for rules that read judge spend alone."""
        self.llm.setdefault(slot, [0, 0])

    def add_window(self, w: CostWindow) -> None:
        key = (w.category, w.agent, w.model, w.variant, w.window_start_ms)
        new = (w.requests, w.cost_pusd, w.judge_cost_pusd)
        if w.kind == "correction":
            delta = new
        else:
            old = self.rows.get(key)
            if old is None:
                if w.restated:  # a restored window's row as it stood: in the totals already, since forgotten
                    return
                old = (0, 0, 0)
            self.rows[key] = new
            if w.window_start_ms > self.newest.get(key[:4], -1):
                self.newest[key[:4]] = w.window_start_ms
            delta = (new[0] - old[0], new[1] - old[1], new[2] - old[2])
        slot = w.window_start_ms
        done = self.days.setdefault(slot - slot % DAY_MS, [0, 0]) if slot < self.cursor else None
        if w.category == "judge":
            self.judge[slot] = self.judge.get(slot, 0) + delta[2]
            if done is not None:
                done[1] += delta[2]
            return
        if done is not None:
            done[0] += delta[1]
        per_agent = self.agents.get(slot) or {}
        accs = [self.llm.setdefault(slot, [0, 0]), per_agent.setdefault((w.agent, w.variant), [0, 0])]
        self.agents[slot] = per_agent  # changed in place below: written again (`SettledDict`)
        if slot < self.cursor:  # already inside some of the sliding windows
            if self.cursor - self.agent_window_ms <= slot:
                accs.append(self.agents_open.setdefault((w.agent, w.variant), [0, 0]))
            accs.extend(acc for width, acc in self.llm_open.items() if self.cursor - width <= slot)
        for acc in accs:
            acc[0] += delta[0]
            acc[1] += delta[1]
        if self.first_slot_ms < 0 or slot < self.first_slot_ms:
            self.first_slot_ms = slot

    def key_dropped(self, key: tuple[str, str, str, str]) -> None:
        """The window key (category, agent, model, variant) was dropped upstream (`KeyMark`): every row
        it will write for the windows it held is in, so none of them can be revised any more (an entry
        for one is a correction, which adds) and its rows go at the next `forget` — not only once the
        key has been quiet for the `keys` horizon (two days), as a quiet key's last rows otherwise do."""
        if key in self.newest:
            del self.newest[key]

    def add_expensive(self, slot: int, count: int, top: list[Expensive], keep: int) -> None:
        have = self.expensive.get(slot)
        if have is None:
            self.expensive[slot] = (count, top_expensive(top, keep))
        else:
            self.expensive[slot] = (have[0] + count, top_expensive(have[1] + top, keep))

    def add_abuse(self, w: AbuseWindow) -> None:
        """A revision only ever adds requests: the row with the most is the newest, in any order."""
        have = self.abuse.get(w.window_start_ms)
        if have is None or w.requests >= have.requests:
            self.abuse[w.window_start_ms] = w

    def advance(self, end: int) -> None:
        """Move the evaluation to `end`: the slots before it count in the day totals."""
        for slot in self._slots(self.llm, self.cursor, end):
            day = self.days.setdefault(slot - slot % DAY_MS, [0, 0])
            day[0] += self.llm[slot][1]
        for slot in self._slots(self.judge, self.cursor, end):
            day = self.days.setdefault(slot - slot % DAY_MS, [0, 0])
            day[1] += self.judge[slot]
        for width, acc in self.llm_open.items():
            for sign, slot in self._sliding(self.llm, width, end):
                n, c = self.llm[slot]
                acc[0] += sign * n
                acc[1] += sign * c
        for sign, slot in self._sliding(self.agents, self.agent_window_ms, end):
            for key, (n, c) in self.agents[slot].items():
                acc = self.agents_open.setdefault(key, [0, 0])
                acc[0] += sign * n
                acc[1] += sign * c
        for key in [k for k, (n, c) in self.agents_open.items() if n == 0 and c == 0]:
            del self.agents_open[key]
        self.cursor = end

    def _sliding(
        self, d: dict[int, Any] | SettledDict[int, Any], width: int, end: int
    ) -> list[tuple[int, int]]:
        """(+1, slot) entering and (-1, slot) leaving a window of `width` that moves
        from [cursor - width, cursor) to [end - width, end)."""
        lo, hi = (self.cursor - width, self.cursor) if self.cursor >= 0 else (end - width, end - width)
        entering = self._slots(d, max(hi, end - width), end)
        leaving = self._slots(d, lo, min(hi, end - width))
        return [(1, s) for s in entering] + [(-1, s) for s in leaving]

    def _slots(self, d: dict[int, Any] | SettledDict[int, Any], start: int, end: int) -> list[int]:
        """The keys of `d` in [start, end): by stepping through the range when it
        is shorter than the dict (one window per evaluation), else by scanning."""
        if start >= 0 and (end - start) // self.slot_ms < len(d):
            first = start + (-start) % self.slot_ms
            return [s for s in range(first, end, self.slot_ms) if s in d]
        return [s for s in d if start <= s < end]

    def llm_sum(self, start: int, end: int) -> tuple[int, int]:
        """(requests, cost) of the slots starting in [start, end)."""
        if end == self.cursor and (acc := self.llm_open.get(end - start)) is not None:
            return acc[0], acc[1]  # a tracked window: kept as the cursor moves
        requests = cost = 0
        llm = self.llm
        for slot in self._slots(llm, start, end):
            n, c = llm[slot]
            requests += n
            cost += c
        return requests, cost

    def has_llm(self, start: int, end: int) -> bool:
        return bool(self._slots(self.llm, start, end))

    def day_costs(self, end: int) -> list[int]:
        """[LLM cost, judge cost] from 00:00 UTC of the day `end` closes to `end` (the cursor)."""
        day = (end - 1) - (end - 1) % DAY_MS
        return self.days.get(day, [0, 0])

    def llm_since(self, start: int) -> int:
        """LLM cost from `start` (a UTC day boundary) to the cursor."""
        return sum(c for day, (c, _) in self.days.items() if day >= start)

    def agent_sums(self, agents: AbstractSet[str] | None = None) -> dict[str, dict[str, list[int]]]:
        """agent -> variant -> [requests, cost] over [cursor - agent_window_ms, cursor), of `agents`
        (None: every agent)."""
        out: dict[str, dict[str, list[int]]] = {}
        for (agent, variant), (n, c) in self.agents_open.items():
            if n and (agents is None or agent in agents):
                out.setdefault(agent, {})[variant] = [n, c]
        return out

    def expensive_count(self, start: int, end: int) -> int:
        return sum(self.expensive[slot][0] for slot in self._slots(self.expensive, start, end))

    def expensive_top(self, start: int, end: int, n: int) -> list[Expensive]:
        top = [x for slot in self._slots(self.expensive, start, end) for x in self.expensive[slot][1]]
        return top_expensive(top, n)

    def forget(
        self,
        *,
        revisable_ms: Mapping[str, int],
        keys: int,
        llm: int,
        agents: int,
        expensive: int,
        days: int,
        abuse: int = -1,
        processed_ms: int | None = None,
    ) -> None:
        """Drop what no rule and no revision can need any more.

        A window key's rows can be revised while they are within
        `revisable_ms[category]` of that key's newest row (its own event-time progress,
        which may lag the tenant's) or of what the flow has processed of its Kafka input
        (`processed_ms`: the windows upstream hold a window until then); keys with no row
        since `keys` are dropped. The other arguments are the horizons of each kind of total.
        """
        for key in [key for key, newest in self.newest.items() if newest < keys]:
            del self.newest[key]
        newest = self.newest

        def settled(r: WindowKey) -> bool:
            at = newest.get(r[:4])
            return at is None or r[4] < event_time.settled_ms(at, processed_ms) - revisable_ms[r[0]]

        for row in [r for r in self.rows if settled(r)]:
            del self.rows[row]
        self.rows.settle()
        self.newest.settle()
        self.agents.settle()
        llm = min(llm, self.cursor)  # what the cursor has not passed is not in the day totals yet
        for s in [s for s in self.llm if s < llm]:
            del self.llm[s]
        for s in [s for s in self.judge if s < llm]:
            del self.judge[s]
        for s in [s for s in self.agents if s < agents]:
            del self.agents[s]
        for s in [s for s in self.expensive if s < expensive]:
            del self.expensive[s]
        for s in [s for s in self.abuse if s < abuse]:
            del self.abuse[s]
        for d in [d for d in self.days if d < days]:
            del self.days[d]
