"""ControlSink: apply the alert stage's override actions to the control store.

The store is the one the sampler reads (`deps.control`: Redis when configured,
else in-process). Actions of one tenant come from one worker, in order. The
expiry is event time + TTL, so an override from a backfill of old data has
expired already and the store never serves it. A `clear` removes the
tenant's override only if it is still the one the alert stage set — never
one set by hand in between.

A store that is down (`core.errors.Unavailable`) does not stop the flow: each
action is tried `attempts` times with the back-off, then given up, logged and counted
(`judgeflow_override_actions_total{outcome="failed"}`); the alert itself is
in ClickHouse, on Kafka and at the webhooks, and the runbook's
`judgeflow overrides set` does the same by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter

from core.errors import Backoff, GaveUp, call_with_retries
from core.ports import ControlStore, OverrideAction

log = logging.getLogger(__name__)

ACTIONS = Counter(
    "judgeflow_override_actions_total",
    "Sampling override actions from alerts: set, cleared, not_ours (someone else's override "
    "by then), failed (the control store was unreachable)",
    ["outcome"],
)


class _ControlPartition(StatelessSinkPartition[OverrideAction]):
    def __init__(
        self, store: ControlStore, attempts: int, backoff_s: float, sleep: Callable[[float], None]
    ) -> None:
        self._store = store
        self._attempts = attempts
        self._backoff = Backoff(base_s=backoff_s, cap_s=backoff_s * 2**attempts)
        self._sleep = sleep

    def write_batch(self, items: list[OverrideAction]) -> None:
        for a in items:
            try:
                outcome = call_with_retries(
                    partial(self._apply, a), backoff=self._backoff, attempts=self._attempts, sleep=self._sleep
                )
            except GaveUp as exc:
                outcome = "failed"
                log.warning(
                    "override %s for tenant %s not applied, control store unreachable: %s",
                    a.op,
                    a.tenant_id,
                    exc.__cause__,
                )
            ACTIONS.labels(outcome).inc()

    def _apply(self, a: OverrideAction) -> str:
        if a.op == "set":
            self._store.set(a.override())
            log.info("override for tenant %s: %s (until %d)", a.tenant_id, a.reason, a.expires_ms)
            return "set"
        if not self._store.clear(a.tenant_id, if_set_by=a.set_by):
            return "not_ours"
        log.info("override for tenant %s cleared: %s", a.tenant_id, a.reason)
        return "cleared"


class ControlSink(DynamicSink[OverrideAction]):
    """Write `OverrideAction`s to `store`, in order, with `attempts` tries each."""

    def __init__(
        self,
        store: ControlStore,
        *,
        attempts: int = 3,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ControlPartition:
        return _ControlPartition(self.store, self.attempts, self.backoff_s, self.sleep)
