"""alerts: rules over cost windows, with a level per (rule, tenant) that is
announced once per change — never once per window.

The hourly burn rate is the tenant's LLM spend over the trailing 60 minutes
of event time, recomputed whenever a window row for the tenant arrives
(revisions replace their earlier numbers, corrections add to them). Levels:
ok < warn < critical < emergency. Alert ids are deterministic, so a replay
writes the same alerts again instead of new ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import bytewax.operators as op
import xxhash
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from operators import metrics
from operators.records import PICO_PER_USD, Alert, CostWindow

LEVELS = ("ok", "warn", "critical", "emergency")
HOUR_MS = 3_600_000

RUNBOOKS = {
    "burn_rate": (
        "judgeflow report cost --tenant {tenant} --last 1h --by agent,model,variant; "
        "then judgeflow report top --tenant {tenant} --last 1h"
    ),
}


@dataclass(frozen=True)
class BurnRateLevels:
    """$ per trailing hour at which each level starts."""

    warn: Decimal
    critical: Decimal
    emergency: Decimal

    def level(self, usd_per_hour: Decimal) -> str:
        if usd_per_hour >= self.emergency:
            return "emergency"
        if usd_per_hour >= self.critical:
            return "critical"
        if usd_per_hour >= self.warn:
            return "warn"
        return "ok"

    def threshold(self, level: str) -> Decimal:
        return {"ok": Decimal(0), "warn": self.warn, "critical": self.critical, "emergency": self.emergency}[
            level
        ]


@dataclass
class _AlertState:
    # (agent, model, variant, window_start) -> picodollars from the newest row
    windows: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    corrections: dict[tuple[int, str], int] = field(default_factory=dict)
    newest_end_ms: int = 0
    level: str = "ok"


class _BurnRateLogic(StatefulBatchLogic[CostWindow, Alert, _AlertState]):
    def __init__(self, levels: BurnRateLevels, resume: _AlertState | None) -> None:
        self._levels = levels
        self._s = resume if resume is not None else _AlertState()

    def on_batch(self, values: list[CostWindow]) -> tuple[Iterable[Alert], bool]:
        s = self._s
        tenant = values[0].tenant_id
        out = []
        # evaluate at every window end in event-time order, so a fast replay
        # still walks through each level instead of jumping to the last one
        for w in sorted(values, key=lambda w: w.window_start_ms):
            if w.category != "llm":
                continue
            if w.kind == "correction":
                s.corrections[(w.window_start_ms, w.correction_id)] = w.cost_pusd
            else:
                s.windows[(w.agent, w.model, w.variant, w.window_start_ms)] = w.cost_pusd
            end = w.window_start_ms + w.window_ms
            if end > s.newest_end_ms:
                out.extend(self._evaluate(tenant))
                s.newest_end_ms = end
        out.extend(self._evaluate(tenant))
        self._forget_old()
        return out, StatefulBatchLogic.RETAIN

    def _evaluate(self, tenant: str) -> list[Alert]:
        s = self._s
        if s.newest_end_ms == 0:
            return []
        burn = self._burn_usd(s.newest_end_ms)
        level = self._levels.level(burn)
        if level == s.level:
            return []
        alert = self._alert(tenant, level, burn)
        s.level = level
        return [alert]

    def snapshot(self) -> _AlertState:
        s = self._s
        return _AlertState(dict(s.windows), dict(s.corrections), s.newest_end_ms, s.level)

    def _burn_usd(self, end_ms: int) -> Decimal:
        start = end_ms - HOUR_MS
        pico = sum(c for (_, _, _, ws), c in self._s.windows.items() if start <= ws < end_ms)
        pico += sum(c for (ws, _), c in self._s.corrections.items() if start <= ws < end_ms)
        return Decimal(pico) / PICO_PER_USD

    def _forget_old(self) -> None:
        s = self._s
        horizon = s.newest_end_ms - 2 * HOUR_MS
        for k in [k for k in s.windows if k[3] < horizon]:
            del s.windows[k]
        for k in [k for k in s.corrections if k[0] < horizon]:
            del s.corrections[k]

    def _alert(self, tenant: str, level: str, burn: Decimal) -> Alert:
        s = self._s
        previous = s.level
        end = s.newest_end_ms
        shown = level if level != "ok" else previous
        threshold = self._levels.threshold(shown)
        if level == "ok":
            message = f"resolved: {tenant} burn rate back to ${burn:.2f}/h, below the {previous} level ${threshold}/h"
        else:
            message = f"{tenant} is spending ${burn:.2f}/h over the last hour: {level} (>= ${threshold}/h)"
        metrics.ALERTS.labels("burn_rate", level).inc()
        return Alert(
            alert_id=xxhash.xxh3_128_hexdigest(f"burn_rate|{tenant}||{level}|{end}".encode()),
            rule="burn_rate",
            tenant_id=tenant,
            scope="",
            level=level,
            previous_level=previous,
            value=float(burn),
            threshold=float(threshold),
            window_start_ms=end - HOUR_MS,
            window_end_ms=end,
            ts_ms=end,
            message=message,
            runbook=RUNBOOKS["burn_rate"].format(tenant=tenant),
        )


def burn_rate_alerts(step_id: str, up: Stream[CostWindow], *, levels: BurnRateLevels) -> Stream[Alert]:
    """Per-tenant hourly burn-rate level changes."""
    keyed = op.key_on(f"{step_id}_tenant", up, lambda w: w.tenant_id)
    alerts = op.stateful_batch(f"{step_id}_rule", keyed, lambda resume: _BurnRateLogic(levels, resume))
    return op.map(f"{step_id}_unkey", alerts, lambda kv: kv[1])
