"""ControlSink: apply the alert stage's override actions to the control store.

The store is the one the sampler reads (`deps.control`: Redis when configured,
else in-process). Actions of one tenant come from one worker, in order. The
expiry is event time + TTL, so an override from a backfill of old data has
expired already and the store never serves it. A `clear` removes the
tenant's override only if it is still the one the alert stage set — never
one set by hand in between.
"""

from __future__ import annotations

import logging

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter

from operators.alerts import OverrideAction
from operators.control import ControlStore, Override

log = logging.getLogger(__name__)

ACTIONS = Counter(
    "judgeflow_override_actions_total",
    "Sampling override actions from alerts: set, cleared, or not cleared (not ours any more)",
    ["outcome"],
)


class _ControlPartition(StatelessSinkPartition[OverrideAction]):
    def __init__(self, store: ControlStore) -> None:
        self._store = store

    def write_batch(self, items: list[OverrideAction]) -> None:
        for a in items:
            if a.op == "set":
                self._store.set(Override(a.tenant_id, a.rate, a.reason, a.set_by, a.expires_ms))
                ACTIONS.labels("set").inc()
                log.info("override for tenant %s: %s (until %d)", a.tenant_id, a.reason, a.expires_ms)
            else:
                current = self._store.active().get(a.tenant_id)
                if current is None or current.set_by != a.set_by:
                    ACTIONS.labels("not_ours").inc()
                    continue
                self._store.clear(a.tenant_id)
                ACTIONS.labels("cleared").inc()
                log.info("override for tenant %s cleared: %s", a.tenant_id, a.reason)


class ControlSink(DynamicSink[OverrideAction]):
    """Write `OverrideAction`s to `store`, in order."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ControlPartition:
        return _ControlPartition(self.store)
