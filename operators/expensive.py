"""expensive_requests: the requests above a tenant's single-request cost threshold.

Windows only keep sums, so this rule needs the events themselves. Each worker
keeps, per batch, only the events above the threshold and combines them per
(tenant, base window) into a count plus the top N — so a few small records
cross workers, not the events — and the alert stage adds them to the
tenant's ledger (`operators.alerts`).
"""

from __future__ import annotations

from collections.abc import Iterable

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator

from core.records import Event
from operators.alert_policy import AlertPolicy
from operators.alert_state import Expensive, top_expensive


class ExpensiveSlot(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """Requests of one tenant in one base window that cost more than its threshold."""

    tenant_id: str
    slot_ms: int
    count: int
    top: list[Expensive]


@operator
def expensive_requests(step_id: str, up: Stream[Event], *, policy: AlertPolicy) -> Stream[ExpensiveSlot]:
    """Count and rank, per tenant and base window, the requests above the threshold."""
    slot_ms = policy.slot_ms
    limits: dict[str, tuple[int, int] | None] = {}  # tenant -> (threshold picodollars, top N)

    def limit_of(tenant: str) -> tuple[int, int] | None:
        if tenant not in limits:
            rule = policy.for_tenant(tenant).expensive_requests
            limits[tenant] = (rule.threshold_pusd, rule.top_n) if rule.enabled else None
        return limits[tenant]

    def pick(events: list[Event]) -> Iterable[ExpensiveSlot]:
        acc: dict[tuple[str, int], list[Expensive]] = {}
        for e in events:
            limit = limit_of(e.tenant_id)
            if limit is None or e.cost_pusd <= limit[0]:
                continue
            slot = e.ts_ms - e.ts_ms % slot_ms
            acc.setdefault((e.tenant_id, slot), []).append(
                (e.cost_pusd, e.event_id, e.agent, e.model, e.variant, e.ts_ms)
            )
        out = []
        for (tenant, slot), items in acc.items():
            limit = limits[tenant]
            assert limit is not None
            out.append(ExpensiveSlot(tenant, slot, len(items), top_expensive(items, limit[1])))
        return out

    return op.flat_map_batch("pick", up, pick)
