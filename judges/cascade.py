"""The judge plan: which tiers judge which metric, and when a verdict goes up a tier.

Routing for one (event, metric), given the ceiling the tenant's budget
allows (`judges.budget`):

1. Tier 0 (free rules) answers first when the metric lists it. A tier-0
   `flagged` settles the metric without any LLM when the metric is in
   `tier0_settles`. With the budget spent (ceiling 0) the rules answer every
   metric they cover, listed or not.
2. The first LLM tier is the lowest listed tier with a judge: tier 1 for
   `[1]`, `[0, 1]` or `[1, 2]`; tier 2 for a metric that requires it (`[2]`,
   `[0, 2]`). Under a ceiling of 1, a metric that requires tier 2 is judged
   by tier 1 instead (cheaper, not nothing).
3. A tier-1 verdict goes on to tier 2 when the metric lists tier 2, the
   ceiling allows it, and tier 1 is unsure (score within `unsure_band` of 0.5)
   or, with `escalate_flagged`, flagged the item.

A local model (`judges.local`) answers the metrics it covers at tier 1 when
the metric lists tier 1, after tier 0 and before the tier-1 LLM: its verdict
is final unless its score falls in `local_unsure` (low <= score < high), where
the tier-1 LLM is asked instead (`asks_llm`), so confident local verdicts save
LLM calls. With no LLM to ask (no tier configured, or the budget spent) the
local verdict stands, unsure or not. A final local verdict is a tier-1 verdict: with tier 2
listed it escalates as a tier-1 LLM's would (`flagged`, with `escalate_flagged`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from core.records import Verdict
from judges.base import FLAGGED, METRICS, JudgeItem
from judges.budget import BudgetPolicy
from judges.redact import Redactor
from judges.rubrics import estimate_prompt_tokens

# (input_tokens, output_tokens) -> picodollars
CostFn = Callable[[int, int], int]

EXPECTED_OUTPUT_TOKENS = 60  # a verdict: score, label and one sentence


@dataclass(frozen=True)
class JudgePlan:
    """Everything the judge operator decides by: tiers, cascade, budget, redaction, prices.

    Args:
        metrics: metric -> tiers that judge it (0 rules, 1 cheap LLM, 2 expensive LLM).
        llm_tiers: the LLM tiers that have a judge configured.
        unsure_band: a tier-1 score within this distance of 0.5 is unsure.
        escalate_flagged: a tier-1 `flagged` is confirmed by tier 2.
        tier0_settles: metrics for which a tier-0 `flagged` skips the LLM tiers.
        budget: per-tenant daily judge budgets.
        redactor: replaces PII before text goes to an LLM judge (None: send as is).
        costs: tier -> call cost function, for budget estimates.
        local_metrics: metrics a local model answers at tier 1 (before the tier-1 LLM).
        local_unsure: [low, high) local scores the tier-1 LLM is asked about.
    """

    metrics: Mapping[str, tuple[int, ...]]
    llm_tiers: frozenset[int] = frozenset({1})
    unsure_band: float = 0.15
    escalate_flagged: bool = True
    tier0_settles: frozenset[str] = frozenset(METRICS)
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    redactor: Redactor | None = None
    costs: Mapping[int, CostFn] = field(default_factory=dict)
    local_metrics: frozenset[str] = frozenset()
    local_unsure: tuple[float, float] = (0.2, 0.8)

    @property
    def llm_metrics(self) -> tuple[str, ...]:
        """Metrics an LLM may judge (their verdicts are cached)."""
        return tuple(m for m in self.metrics if self._llm_tiers(m))

    def first_tier(self, metric: str, ceiling: int) -> int | None:
        """The LLM tier to ask first under `ceiling`, or None for no LLM."""
        tiers = self._llm_tiers(metric)
        if not tiers or ceiling < 1:
            return None
        allowed = [t for t in tiers if t <= ceiling]
        if allowed:
            return allowed[0]
        return 1 if 1 in self.llm_tiers else None  # degrade a tier-2 metric to tier 1

    def escalation(self, verdict: Verdict, ceiling: int) -> str | None:
        """Why a verdict goes on to tier 2 ("unsure" or "flagged"), or None when it is final."""
        if verdict.tier != 1 or ceiling < 2 or 2 not in self._llm_tiers(verdict.metric):
            return None
        if abs(verdict.score - 0.5) < self.unsure_band:
            return "unsure"
        if self.escalate_flagged and verdict.label == FLAGGED:
            return "flagged"
        return None

    def degraded(self, metric: str, ceiling: int) -> bool:
        """Does `ceiling` keep this metric below a tier it lists?"""
        tiers = self._llm_tiers(metric)
        return bool(tiers) and ceiling < tiers[-1]

    def uses_local(self, metric: str) -> bool:
        """Does a local model answer this metric (it has one, and the metric lists tier 1)?"""
        return metric in self.local_metrics and 1 in self.metrics.get(metric, ())

    def asks_llm(self, local: Verdict) -> bool:
        """Is this local verdict unsure, so that the tier-1 LLM is asked instead?"""
        low, high = self.local_unsure
        return low <= local.score < high

    def settles(self, tier0: Verdict | None) -> bool:
        """Does this tier-0 verdict make the LLM tiers unnecessary?"""
        return tier0 is not None and tier0.label == FLAGGED and tier0.metric in self.tier0_settles

    def default_tier(self, metric: str) -> int:
        """The tier a metric's evaluation is reported under when nothing judged it."""
        tiers = self._llm_tiers(metric)
        return tiers[0] if tiers else 0

    def estimate_pusd(self, tier: int, metric: str, item: JudgeItem) -> int:
        """What one call will probably cost, from the prompt's length and the tier's prices."""
        cost = self.costs.get(tier)
        if cost is None:
            return 0
        return cost(estimate_prompt_tokens(metric, item), EXPECTED_OUTPUT_TOKENS)

    def _llm_tiers(self, metric: str) -> list[int]:
        return sorted(t for t in self.metrics.get(metric, ()) if t > 0 and t in self.llm_tiers)
