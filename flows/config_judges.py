"""The `[judges]` section of the flow config: which tiers judge which metric, the LLM endpoints, the
cascade, the local model tier and the daily judge budgets. `flows.deps` builds the judges from it."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from flows.config_section import NonNegMoney
from flows.config_section import Section as _Section
from judges.base import METRICS


class JudgeTierConfig(_Section):
    provider: Literal["openai", "anthropic"] = "openai"
    model: str = "gpt-4o-mini"
    base_url: str = ""
    max_in_flight: int = Field(256, ge=1, le=4096)  # calls in flight to this endpoint
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)
    input_per_mtok: NonNegMoney | None = None
    output_per_mtok: NonNegMoney | None = None
    # client-side limits (0 = none): keep under the provider's quota instead of collecting 429s
    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)
    # circuit breaker: open after this many failures in a row, probe again after the cool-down
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)


class CascadeConfig(_Section):
    # a tier-1 score within this distance of 0.5 is unsure and goes on to tier 2
    unsure_band: float = Field(0.15, ge=0.0, le=0.5)
    escalate_flagged: bool = True  # tier 2 confirms what tier 1 flagged
    # metrics where a tier-0 rule that fires settles the verdict without an LLM
    tier0_settles: tuple[str, ...] = METRICS


class LocalModelsConfig(_Section):
    """The local model tier (judges/local.py): trained classifiers in the process, no API key."""

    enabled: bool = False
    # metric -> model; a metric is judged locally only where judges.metrics lists tier 1 for it
    models: dict[str, Literal["profanity-check"]] = {"toxicity": "profanity-check"}
    flag_at: float = Field(0.5, ge=0.0, le=1.0)  # a local score from here is `flagged`
    # a local score in [unsure_low, unsure_high) goes on to the tier-1 LLM; elsewhere it is final
    unsure_low: float = Field(0.2, ge=0.0, le=1.0)
    unsure_high: float = Field(0.8, ge=0.0, le=1.0)
    # the sample stage scores every event: `<metric>.local` flags, and the estimates' cheap signal
    score_every_event: bool = False

    @model_validator(mode="after")
    def _valid(self) -> LocalModelsConfig:
        from judges.local import MODEL_METRICS

        for metric, model in self.models.items():
            if MODEL_METRICS[model] != metric:
                msg = f"judges.local.models.{metric} = {model!r}: that model judges {MODEL_METRICS[model]}"
                raise ValueError(msg)
        if self.unsure_low > self.unsure_high:
            msg = f"judges.local: unsure_low {self.unsure_low} is above unsure_high {self.unsure_high}"
            raise ValueError(msg)
        return self


class BudgetConfig(_Section):
    """Judge spend per tenant per UTC day (event time); 0 = no limit."""

    daily_usd: NonNegMoney = Decimal(0)
    tenants: dict[str, NonNegMoney] = {}
    # share of the day's budget after which tier 2 is no longer used
    tier2_share: float = Field(0.8, ge=0.0, le=1.0)


class JudgesConfig(_Section):
    enabled: bool = True
    # metric -> tiers that judge it (0 = rules, 1 = cheap LLM, 2 = expensive LLM)
    metrics: dict[str, tuple[int, ...]] = {
        "pii": (0,),
        "refusal": (0,),
        "jailbreak": (0,),
        "toxicity": (0, 1),
        "hallucination": (1,),
    }
    tier1: JudgeTierConfig = JudgeTierConfig()
    tier2: JudgeTierConfig | None = None
    cascade: CascadeConfig = CascadeConfig()
    local: LocalModelsConfig = LocalModelsConfig()
    budget: BudgetConfig = BudgetConfig()
    max_in_flight: int = Field(256, ge=1, le=4096)  # judge calls in flight per process, all tiers
    # judge work a worker keeps queued while every slot is taken (a judge down); past it the worker
    # waits for slots and stops taking input (backpressure)
    max_queued: int = Field(10_000, ge=0)
    # transient judge faults (429, 5xx, timeouts, an open breaker) delay work up to this long;
    # only then does it become an error (0: fail after max_attempts, fail fast while open)
    give_up_after_s: float = Field(3600.0, ge=0)
    redact_pii: bool = False  # replace tier-0 PII findings before text goes to an LLM judge
    # without an API key, start the local simulated endpoint (verdicts are simulated)
    simulate_without_key: bool = True

    @model_validator(mode="after")
    def _known_metrics(self) -> JudgesConfig:
        for metric, tiers in self.metrics.items():
            if metric not in METRICS:
                msg = f"judges.metrics: unknown metric {metric!r}; allowed: {', '.join(METRICS)}"
                raise ValueError(msg)
            bad = [t for t in tiers if t not in (0, 1, 2)]
            if bad or not tiers:
                msg = f"judges.metrics.{metric}: tiers must be a non-empty list of 0, 1, 2; got {list(tiers)}"
                raise ValueError(msg)
            if 2 in tiers and self.tier2 is None:
                msg = f"judges.metrics.{metric} uses tier 2, but there is no [judges.tier2] section"
                raise ValueError(msg)
        unknown = [m for m in self.cascade.tier0_settles if m not in METRICS]
        if unknown:
            msg = f"judges.cascade.tier0_settles: unknown metrics {unknown}; allowed: {', '.join(METRICS)}"
            raise ValueError(msg)
        return self
