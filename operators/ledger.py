"""The ledger's partial sums: what one priced event adds to its cost window, how a batch's events or
entries are summed per (tenant, agent, model, variant, window) before they cross workers, and the
`cost_windows` row of a window's sums. `operators.windows` keeps the windows; `operators.rollups` the
coarser levels.

An entry late by its partition's position (`operators.event_time.late`: for an event, where its
partition stood when it was read; for judge spend, where its event's did, `LedgerEntry.after_ms`)
travels alone, marked `late`, so its window makes it a correction with a stable id whatever the
batches."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from core.records import CostWindow, Event, LedgerEntry, entry_hash
from operators import event_time

SEP = "\x1f"


def ledger_entry(e: Event, late: bool = False) -> LedgerEntry:
    """What one priced event adds to its window (`late`: by its partition's position)."""
    return LedgerEntry(
        tenant_id=e.tenant_id,
        agent=e.agent,
        model=e.model,
        variant=e.variant,
        ts_ms=e.ts_ms,
        requests=1,
        input_tokens=e.input_tokens,
        output_tokens=e.output_tokens,
        cost_pusd=e.cost_pusd,
        unknown_cost_requests=1 if e.cost_source == "unknown" else 0,
        max_request_cost_pusd=e.cost_pusd,
        entry_id=e.event_id,
        ids=entry_hash(e.event_id),
        late=late,
    )


def window_row(
    w: LedgerEntry,
    size_ms: int,
    category: str,
    version: int,
    kind: str = "window",
    correction_id: str = "",
    provisional: bool = False,
    restated: bool = False,
) -> CostWindow:
    """The `cost_windows` row for the sums `w` of one window."""
    return CostWindow(
        window_start_ms=w.ts_ms,
        window_ms=size_ms,
        tenant_id=w.tenant_id,
        agent=w.agent,
        model=w.model,
        variant=w.variant,
        requests=w.requests,
        input_tokens=w.input_tokens,
        output_tokens=w.output_tokens,
        cost_pusd=w.cost_pusd,
        unknown_cost_requests=w.unknown_cost_requests,
        judge_calls=w.judge_calls,
        judge_cost_pusd=w.judge_cost_pusd,
        max_request_cost_pusd=w.max_request_cost_pusd,
        version=version,
        category=category,
        kind=kind,
        correction_id=correction_id,
        provisional=provisional,
        restated=restated,
    )


def combine_events(
    events: Iterable[Event], size_ms: int, keep_alone_before_ms: int, lateness_ms: int = 0
) -> list[LedgerEntry]:
    """`combine` for priced events (one request each), without a ledger entry per event; an event
    late by its partition's position (`event_time.late`) travels alone, marked `late`."""
    acc: dict[tuple[str, str, str, str, int], LedgerEntry] = {}
    alone: list[LedgerEntry] = []
    closes_after_ms = size_ms + lateness_ms
    for e in events:
        ts = e.ts_ms
        start = ts - ts % size_ms
        src = e.source
        if src is not None and event_time.late(src.after_ms, start + closes_after_ms):
            alone.append(ledger_entry(e, late=True))
            continue
        if ts < keep_alone_before_ms:
            alone.append(ledger_entry(e))
            continue
        k = (e.tenant_id, e.agent, e.model, e.variant, start)
        cur = acc.get(k)
        cost = e.cost_pusd
        unknown = 1 if e.cost_source == "unknown" else 0
        if cur is None:
            acc[k] = LedgerEntry(
                e.tenant_id,
                e.agent,
                e.model,
                e.variant,
                k[4],
                requests=1,
                input_tokens=e.input_tokens,
                output_tokens=e.output_tokens,
                cost_pusd=cost,
                unknown_cost_requests=unknown,
                max_request_cost_pusd=cost,
                ids=entry_hash(e.event_id),
            )
            continue
        cur.requests += 1
        cur.input_tokens += e.input_tokens
        cur.output_tokens += e.output_tokens
        cur.cost_pusd += cost
        cur.unknown_cost_requests += unknown
        cur.ids ^= entry_hash(e.event_id)
        if cost > cur.max_request_cost_pusd:
            cur.max_request_cost_pusd = cost
    return [*acc.values(), *alone]


def combine(
    entries: Iterable[LedgerEntry], size_ms: int, keep_alone_before_ms: int, lateness_ms: int = 0
) -> list[LedgerEntry]:
    """Sum entries per (key, window); late entries (marked, or late by where their event's partition
    stood: `after_ms`), and those older than `keep_alone_before_ms`, keep their identity (they are or
    may be corrections)."""
    acc: dict[tuple[str, str, str, str, int], LedgerEntry] = {}
    alone: list[LedgerEntry] = []
    closes_after_ms = size_ms + lateness_ms
    for x in entries:
        start = x.ts_ms - x.ts_ms % size_ms
        if not x.late and event_time.late(x.after_ms, start + closes_after_ms):
            x.late = True
        if x.late or (x.ts_ms < keep_alone_before_ms and x.entry_id):
            alone.append(x)
            continue
        k = (x.tenant_id, x.agent, x.model, x.variant, start)
        cur = acc.get(k)
        if cur is None:
            acc[k] = LedgerEntry(x.tenant_id, x.agent, x.model, x.variant, start)
            cur = acc[k]
        cur.add(x)
    return [*acc.values(), *alone]


class KeyMark(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What a minute-window key that may be dropped tells the steps that keep its rows (the levels,
    `operators.rollups`; the alert ledgers, `operators.alerts`), in line with its rows: `opened`, it
    started afresh (its rows may come again), or not, it was dropped (every row it will write for the
    windows it held is out)."""

    tenant_id: str
    agent: str
    model: str
    variant: str
    category: str
    opened: bool


def key_of(x: LedgerEntry | CostWindow | KeyMark) -> str:
    """The window key: tenant, agent, model, variant."""
    return SEP.join((x.tenant_id, x.agent, x.model, x.variant))
