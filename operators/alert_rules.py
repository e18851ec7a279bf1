"""Alert rules: what each one measures, its levels, and the runbook step it points to.

Every rule reads a tenant's ledger (`operators.alert_state.TenantLedger`) at
an evaluation time `end` — the end of a base window, in event time — and
returns one reading per scope ("" for the tenant, an agent name for
per-agent rules). A reading's value is compared with the rule's levels
(warn < critical < emergency; an unset level is skipped). "Now" for each rule:

    burn_rate            LLM spend of the windows in [end - 1 h, end), in $/h
    daily_spend          LLM spend since 00:00 UTC of the day `end` closes
    monthly_projection   spend since the 1st (UTC) projected linearly to the
                         month's end, as a share of the budget (the actual
                         share before `min_elapsed_s` of the month has passed)
    variant_cost         per agent: cost per request of each variant over
                         [end - window_s, end) as a multiple of the baseline's
    expensive_requests   requests above `threshold_usd` with a time in
                         [end - window_s, end); the alert lists the top N
    volume_spike         requests/min over [end - short_s, end) as a multiple
                         of the mean over the `baseline_s` before that
    judge_budget         judge spend (category "judge") since 00:00 UTC, as
                         a share of the daily judge budget
    repeated_prompts     share of the requests of the window [end - slot, end)
                         that repeat a prompt already sent in it (`operators.abuse`)
    single_user_share    share of the requests of that window sent by its top user

The last two are informational: their levels act only when `[alerts.actions] rules`
names them, and a window below `min_requests` reads as 0 (tiny windows never fire).

A reading without enough data (too few requests, too little history) holds
the current level instead of guessing.
"""

from __future__ import annotations

import shlex
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, ClassVar

from core.records import PICO_PER_USD, AbuseWindow
from operators.alert_rule import HOUR_MS, MINUTE_MS, NANO, Reading, Rule, dec, money, usd
from operators.alert_state import DAY_MS, TenantLedger, month_bounds


@dataclass(frozen=True)
class BurnRate(Rule):
    name: ClassVar[str] = "burn_rate"
    what: ClassVar[str] = "LLM spend over the last hour"
    runbook: ClassVar[str] = (
        "judgeflow report cost --tenant {tenant} --last 1h --by agent,model,variant; "
        "then judgeflow report top --tenant {tenant} --last 1h"
    )

    warn: Decimal | None = Decimal(5)
    critical: Decimal | None = Decimal(20)
    emergency: Decimal | None = Decimal(100)

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        requests, pico = led.llm_sum(end_ms - HOUR_MS, end_ms)
        spend = usd(pico)
        return [
            Reading("", spend, end_ms - HOUR_MS, lambda: {"usd_last_hour": dec(spend), "requests": requests})
        ]

    def show(self, value: Decimal) -> str:
        return f"{money(value)}/h"


@dataclass(frozen=True)
class DailySpend(Rule):
    name: ClassVar[str] = "daily_spend"
    what: ClassVar[str] = "LLM spend today (UTC)"
    runbook: ClassVar[str] = (
        "judgeflow report hourly --tenant {tenant}; "
        "then judgeflow report cost --tenant {tenant} --last 1d --by agent,model,variant"
    )

    critical: Decimal | None = Decimal(500)

    def lookback_ms(self) -> int:
        return 0  # per-day totals are kept separately

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        day = (end_ms - 1) - (end_ms - 1) % DAY_MS
        spend = usd(led.day_costs(end_ms)[0])
        return [Reading("", spend, day, lambda: {"usd_today": dec(spend), "day": _date(day)})]

    def show(self, value: Decimal) -> str:
        return money(value)


@dataclass(frozen=True)
class MonthlyProjection(Rule):
    name: ClassVar[str] = "monthly_projection"
    what: ClassVar[str] = "month-to-date spend projected to the month's end, of the monthly budget"
    runbook: ClassVar[str] = "judgeflow report budget --tenant {tenant}"

    budget_usd: Decimal = Decimal(15_000)
    min_elapsed_s: int = 86_400
    warn: Decimal | None = Decimal(1)
    critical: Decimal | None = Decimal("1.5")

    def lookback_ms(self) -> int:
        return 0

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        start, month_end = month_bounds(end_ms - 1)
        mtd = usd(led.llm_since(start))
        elapsed = end_ms - start
        projected = mtd * (month_end - start) / elapsed if elapsed >= self.min_elapsed_s * 1000 else mtd

        def details() -> dict[str, Any]:
            return {
                "mtd_usd": dec(mtd),
                "projected_usd": dec(projected.quantize(Decimal("0.01"))),
                "budget_usd": dec(self.budget_usd),
                "elapsed_days": dec((Decimal(elapsed) / DAY_MS).quantize(Decimal("0.01"))),
                "projection": elapsed >= self.min_elapsed_s * 1000,
            }

        return [Reading("", projected / self.budget_usd, start, details)]

    def show(self, value: Decimal) -> str:
        return f"{value * 100:.0f}%"


@dataclass(frozen=True)
class VariantCost(Rule):
    name: ClassVar[str] = "variant_cost"
    what: ClassVar[str] = "cost per request vs the baseline variant's"
    runbook: ClassVar[str] = "judgeflow report variants --tenant {tenant} --agent {agent}"

    baseline: str = "baseline"
    window_s: int = 3600
    min_requests: int = 50
    warn: Decimal | None = Decimal("1.5")
    critical: Decimal | None = Decimal(3)

    def lookback_ms(self) -> int:
        return self.window_s * 1000

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        return self._readings(led, end_ms, None)

    def readings(self, led: TenantLedger, end_ms: int, levelled: AbstractSet[str]) -> list[Reading]:
        # An agent whose baseline has fewer than `min_requests` in the window reads "not enough
        # data" or zero, which leaves ok as it is: of a tenant's agents (hundreds, evaluated every
        # minute) only those with a level and those with enough baseline requests are read.
        baseline, least = self.baseline, self.min_requests
        agents = {a for (a, v), (n, _) in led.agents_open.items() if v == baseline and n >= least}
        return self._readings(led, end_ms, agents.union(levelled))

    def _readings(self, led: TenantLedger, end_ms: int, agents: AbstractSet[str] | None) -> list[Reading]:
        """The readings of `agents` (None: every agent with requests in the window)."""
        start = end_ms - self.window_s * 1000
        out = []
        for agent, variants in sorted(led.agent_sums(agents).items()):  # the ledger keeps this window
            base = variants.get(self.baseline)
            others = {v: rc for v, rc in variants.items() if v != self.baseline and rc[0] > 0}
            if base is None or base[0] == 0 or base[1] == 0 or not others:
                out.append(Reading(agent, Decimal(0), start))  # nothing left to compare
                continue
            if base[0] < self.min_requests:
                out.append(Reading(agent, None, start))
                continue
            base_cpr = Decimal(base[1]) / base[0]
            best: tuple[Decimal, str, int, int] | None = None
            for variant, (n, pico) in sorted(others.items()):
                if n < self.min_requests:
                    continue
                ratio = Decimal(pico) / n / base_cpr
                if best is None or ratio > best[0]:
                    best = (ratio, variant, n, pico)
            if best is None:
                out.append(Reading(agent, None, start))
                continue
            ratio, variant, n, pico = best
            details = partial(_variant_details, self.baseline, (base[0], base[1]), variant, n, pico)
            out.append(Reading(agent, ratio, start, details))
        return out

    def show(self, value: Decimal) -> str:
        return f"{value:.2f}x"


@dataclass(frozen=True)
class ExpensiveRequests(Rule):
    name: ClassVar[str] = "expensive_requests"
    what: ClassVar[str] = "requests above the single-request cost threshold"
    runbook: ClassVar[str] = "judgeflow report top --tenant {tenant} --last {window} --min-cost {threshold}"

    threshold_usd: Decimal = Decimal("0.01")
    window_s: int = 3600
    top_n: int = 5
    warn: Decimal | None = Decimal(1)

    @property
    def threshold_pusd(self) -> int:
        return int(self.threshold_usd * PICO_PER_USD)

    def lookback_ms(self) -> int:
        return self.window_s * 1000

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        start = end_ms - self.window_s * 1000
        count = led.expensive_count(start, end_ms)

        def details() -> dict[str, Any]:
            return {
                "threshold_usd": dec(self.threshold_usd),
                "count": count,
                "top": [
                    {
                        "event_id": e,
                        "cost_usd": dec(usd(c)),
                        "agent": a,
                        "model": m,
                        "variant": v,
                        "ts": _iso(t),
                    }
                    for c, e, a, m, v, t in led.expensive_top(start, end_ms, self.top_n)
                ],
            }

        return [Reading("", Decimal(count), start, details)]

    def show(self, value: Decimal) -> str:
        return f"{value:.0f}"

    def describe(self) -> str:
        return f"requests above {money(self.threshold_usd)} in the last {self.window_s // 60} min"

    def runbook_for(self, tenant: str, scope: str) -> str:
        window = f"{self.window_s // 3600}h" if self.window_s % 3600 == 0 else f"{self.window_s // 60}m"
        return self.runbook.format(
            tenant=shlex.quote(tenant), window=window, threshold=dec(self.threshold_usd)
        )


@dataclass(frozen=True)
class VolumeSpike(Rule):
    name: ClassVar[str] = "volume_spike"
    what: ClassVar[str] = "requests per minute vs the trailing baseline"
    runbook: ClassVar[str] = (
        "judgeflow report hourly --tenant {tenant}; "
        "then judgeflow report cost --tenant {tenant} --last 1h --by agent,model,variant"
    )

    short_s: int = 300
    baseline_s: int = 21_600
    min_history_s: int = 3600
    min_rpm: Decimal = Decimal(10)
    warn: Decimal | None = Decimal(3)
    critical: Decimal | None = Decimal(10)

    def lookback_ms(self) -> int:
        return (self.short_s + self.baseline_s) * 1000

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        short_start = end_ms - self.short_s * 1000
        recent, _ = led.llm_sum(short_start, end_ms)
        rpm = Decimal(recent) * MINUTE_MS / (self.short_s * 1000)
        if rpm < self.min_rpm:
            return [Reading("", Decimal(0), short_start, lambda: {"rpm": dec(rpm)})]
        base_start = max(short_start - self.baseline_s * 1000, led.first_slot_ms)
        span = short_start - base_start
        if span < self.min_history_s * 1000:
            return [Reading("", None, short_start)]
        # nothing before the first slot: the whole trailing window less the short one
        before = led.llm_sum(short_start - self.baseline_s * 1000, end_ms)[0] - recent
        base_rpm = max(Decimal(before) * MINUTE_MS / span, Decimal(1))  # a silent tenant's floor: 1/min

        def details() -> dict[str, Any]:
            return {
                "rpm": dec(rpm.quantize(Decimal("0.01"))),
                "baseline_rpm": dec(base_rpm.quantize(Decimal("0.01"))),
                "requests": recent,
                "baseline_minutes": span // MINUTE_MS,
            }

        return [Reading("", rpm / base_rpm, short_start, details)]

    def show(self, value: Decimal) -> str:
        return f"{value:.1f}x"


@dataclass(frozen=True)
class JudgeBudget(Rule):
    name: ClassVar[str] = "judge_budget"
    what: ClassVar[str] = "judge spend today (UTC), of the daily judge budget"
    runbook: ClassVar[str] = (
        "judgeflow overrides list; judgeflow report cost --tenant {tenant} --last 1d --by agent,model,variant"
    )

    budget_usd: Decimal = Decimal(20)
    warn: Decimal | None = Decimal("0.8")
    critical: Decimal | None = Decimal(1)

    def lookback_ms(self) -> int:
        return 0

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        day = (end_ms - 1) - (end_ms - 1) % DAY_MS
        spend = usd(led.day_costs(end_ms)[1])

        def details() -> dict[str, Any]:
            return {
                "judge_usd_today": dec(spend),
                "budget_usd": dec(self.budget_usd),
                "day": _date(day),
            }

        return [Reading("", spend / self.budget_usd, day, details)]

    def show(self, value: Decimal) -> str:
        return f"{value * 100:.0f}%"


@dataclass(frozen=True)
class _AbuseShare(Rule):
    """A share of the last closed abuse window's requests (`operators.abuse`); windows with fewer
    than `min_requests` read 0, so tiny windows never fire."""

    runbook: ClassVar[str] = "judgeflow report abuse --tenant {tenant} --last 1h"

    min_requests: int = 30

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        start = end_ms - led.slot_ms
        w = led.abuse.get(start)
        if w is None or w.requests < self.min_requests:
            return [Reading("", Decimal(0), start)]
        share = Decimal(self._count(w)) / w.requests
        return [Reading("", share, start, lambda: self._details(w), self._note(w))]

    def show(self, value: Decimal) -> str:
        return f"{value * 100:.0f}%"

    def _count(self, w: AbuseWindow) -> int:
        raise NotImplementedError

    def _details(self, w: AbuseWindow) -> dict[str, Any]:
        raise NotImplementedError

    def _note(self, w: AbuseWindow) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class RepeatedPrompts(_AbuseShare):
    name: ClassVar[str] = "repeated_prompts"
    what: ClassVar[str] = "share of requests repeating a prompt already sent in the window"

    warn: Decimal | None = Decimal("0.7")
    critical: Decimal | None = Decimal("0.9")

    def _count(self, w: AbuseWindow) -> int:
        return w.repeated_requests

    def _details(self, w: AbuseWindow) -> dict[str, Any]:
        return {
            "requests": w.requests,
            "repeated_requests": w.repeated_requests,
            "distinct_prompts": w.distinct_prompts,
            "top_prompt_requests": w.top_prompt_requests,
        }

    def _note(self, w: AbuseWindow) -> str:
        return f"the most repeated prompt was sent {w.top_prompt_requests} times of {w.requests}"


@dataclass(frozen=True)
class SingleUserShare(_AbuseShare):
    name: ClassVar[str] = "single_user_share"
    what: ClassVar[str] = "share of the window's requests from one user"

    warn: Decimal | None = Decimal("0.5")
    critical: Decimal | None = Decimal("0.8")

    def _count(self, w: AbuseWindow) -> int:
        return w.top_user_requests

    def _details(self, w: AbuseWindow) -> dict[str, Any]:
        return {
            "requests": w.requests,
            "top_user": w.top_user,
            "top_user_requests": w.top_user_requests,
            "distinct_users": w.distinct_users,
        }

    def _note(self, w: AbuseWindow) -> str:
        return f"user {w.top_user!r} sent {w.top_user_requests} of {w.requests}"


RULE_TYPES: tuple[type[Rule], ...] = (
    BurnRate,
    DailySpend,
    MonthlyProjection,
    VariantCost,
    ExpensiveRequests,
    VolumeSpike,
    JudgeBudget,
    RepeatedPrompts,
    SingleUserShare,
)
RULE_NAMES = tuple(r.name for r in RULE_TYPES)
SPEND_RULES = frozenset(RULE_NAMES) - {"judge_budget"}  # the rules that read requests, not judge calls
# rules that only inform: they act only when `AlertPolicy.action_rules` names them
INFORMATIONAL_RULES = frozenset({"repeated_prompts", "single_user_share"})


def _variant_details(baseline: str, base: tuple[int, int], variant: str, n: int, pico: int) -> dict[str, Any]:
    return {
        "variant": variant,
        "baseline": baseline,
        "variant_usd_per_request": dec((usd(pico) / n).quantize(NANO)),
        "baseline_usd_per_request": dec((usd(base[1]) / base[0]).quantize(NANO)),
        "variant_requests": n,
        "baseline_requests": base[0],
    }


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
