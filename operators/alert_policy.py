"""The alert policy: which rules apply to a tenant with which thresholds (`RuleSet`, per-tenant
overrides), and what a level does (`Action`: a sampling override for a while). The rules themselves:
`operators.alert_rules`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from functools import cached_property
from typing import Any

from operators.alert_rule import HOUR_MS, Rule
from operators.alert_rules import (
    INFORMATIONAL_RULES,
    RULE_NAMES,
    RULE_TYPES,
    SPEND_RULES,
    BurnRate,
    DailySpend,
    ExpensiveRequests,
    JudgeBudget,
    MonthlyProjection,
    RepeatedPrompts,
    SingleUserShare,
    VariantCost,
    VolumeSpike,
)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one tenant, with that tenant's thresholds."""

    burn_rate: BurnRate = BurnRate()
    daily_spend: DailySpend = DailySpend()
    monthly_projection: MonthlyProjection = MonthlyProjection()
    variant_cost: VariantCost = VariantCost()
    expensive_requests: ExpensiveRequests = ExpensiveRequests()
    volume_spike: VolumeSpike = VolumeSpike()
    judge_budget: JudgeBudget = JudgeBudget()
    repeated_prompts: RepeatedPrompts = RepeatedPrompts()
    single_user_share: SingleUserShare = SingleUserShare()

    @classmethod
    def from_dicts(cls, rules: Mapping[str, Mapping[str, Any]]) -> RuleSet:
        """From `{rule name: {field: value}}` (the flow config's sections); keys a rule
        does not have (such as `enabled`) are ignored; `enabled = false` unsets every level."""
        built: dict[str, Any] = {}
        for rule_type in RULE_TYPES:
            given = dict(rules.get(rule_type.name, {}))
            known = {f.name for f in fields(rule_type)}
            kwargs = {k: v for k, v in given.items() if k in known}
            if given.get("enabled") is False:
                kwargs.update(warn=None, critical=None, emergency=None)
            built[rule_type.name] = rule_type(**kwargs)
        return cls(**built)

    @cached_property
    def active(self) -> tuple[Rule, ...]:
        return tuple(r for t in RULE_TYPES if (r := getattr(self, t.name)).enabled)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.active)

    def lookback_ms(self) -> int:
        return max((r.lookback_ms() for r in self), default=0)

    def only(self, names: frozenset[str]) -> RuleSet:
        """These rules with every rule not in `names` unset at every level."""
        off = {"warn": None, "critical": None, "emergency": None}
        unset = {t.name: replace(getattr(self, t.name), **off) for t in RULE_TYPES if t.name not in names}
        return replace(self, **unset)

    def llm_windows_ms(self) -> set[int]:
        """The trailing windows the rules sum LLM requests and spend over, every
        evaluation: the ledger keeps these as sliding sums."""
        v = self.volume_spike
        return {HOUR_MS, v.short_s * 1000, (v.short_s + v.baseline_s) * 1000}


@dataclass(frozen=True)
class Action:
    """Set the tenant's judge sampling rate to `sampling_rate` (0 pauses judging) for `ttl_s`."""

    sampling_rate: float
    ttl_s: int


@dataclass(frozen=True)
class AlertPolicy:
    """Everything the alert stage needs from the flow config.

    Args:
        default: the rules with the configured defaults.
        tenants: rules of tenants with overrides.
        hysteresis: a level ends only below threshold x (1 - hysteresis).
        deescalate: step down level by level (else stay at the peak until resolved).
        eval_delay_ms: evaluate a window end once the tenant's event time is this far past it,
            so the windows of all the tenant's agents and models are in.
        settle_s: ...and once nothing for an earlier time has arrived for this long (wall
            time), so a replay reading partitions at different speeds has delivered it all.
        slot_ms: the base window size: evaluations happen at its ends.
        revisable_ms: category -> how long after its key's newest window a window can
            still be revised (that category's allowed lateness plus one window).
        actions: level -> override to write to the control store.
        action_rules: the rules whose levels trigger actions (empty: all but the informational
            ones, which act only when named here).
        clear_on_resolve: clear the override when no acting level is left (else it expires).
        requests: its rules read LLM requests and spend (false for the judge-spend rules: the
            LLM windows then only move the tenant's clock, and the ledger keeps no sums of them).
    """

    default: RuleSet = RuleSet()
    tenants: Mapping[str, RuleSet] = field(default_factory=dict)
    hysteresis: Decimal = Decimal("0.1")
    deescalate: bool = False
    eval_delay_ms: int = 120_000
    settle_s: float = 5.0
    slot_ms: int = 60_000
    revisable_ms: Mapping[str, int] = field(default_factory=lambda: {"llm": 360_000, "judge": 1_860_000})
    actions: Mapping[str, Action] = field(default_factory=dict)
    action_rules: frozenset[str] = frozenset()
    clear_on_resolve: bool = True
    requests: bool = True

    def for_tenant(self, tenant: str) -> RuleSet:
        return self.tenants.get(tenant, self.default)

    def acts_on(self, rule: str) -> bool:
        if rule in INFORMATIONAL_RULES:
            return rule in self.action_rules
        return rule in SPEND_RULES and (not self.action_rules or rule in self.action_rules)

    def spend(self) -> AlertPolicy:
        """The rules over requests and their spend, with the actions: they read only the LLM
        windows, so their overrides can feed the sampler in-band (no cycle through the judges)."""
        return self._only(SPEND_RULES, actions=self.actions)

    def judge_spend(self) -> AlertPolicy:
        """The rules over judge spend, without actions (the judge stage's own budget book already
        degrades judging when a tenant's judge budget is spent)."""
        return self._only(frozenset(RULE_NAMES) - SPEND_RULES, actions={}, requests=False)

    def _only(
        self, names: frozenset[str], *, actions: Mapping[str, Action], requests: bool = True
    ) -> AlertPolicy:
        return replace(
            self,
            default=self.default.only(names),
            tenants={t: r.only(names) for t, r in self.tenants.items()},
            actions=actions,
            requests=requests,
        )
