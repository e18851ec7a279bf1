"""The `[alerts]` section of the flow config: the rules and their levels, per-tenant overrides, the
actions (sampling overrides) and the webhooks. `operators.alert_rules` evaluates what this declares."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from flows.config_section import NonNegMoney, PositiveAmount
from flows.config_section import Section as _Section

AlertLevel = Literal["warn", "critical", "emergency"]


class _AlertRule(_Section):
    """A value at or above a level's threshold enters that level; unset levels are skipped."""

    enabled: bool = True
    warn: PositiveAmount | None = None
    critical: PositiveAmount | None = None
    emergency: PositiveAmount | None = None

    @model_validator(mode="after")
    def _ordered(self) -> _AlertRule:
        given = [t for t in (self.warn, self.critical, self.emergency) if t is not None]
        if given != sorted(given):
            msg = f"need warn <= critical <= emergency, got {self.warn}, {self.critical}, {self.emergency}"
            raise ValueError(msg)
        return self


class BurnRateRule(_AlertRule):
    """LLM spend over the trailing hour, $/h."""

    warn: PositiveAmount | None = Decimal(5)
    critical: PositiveAmount | None = Decimal(20)
    emergency: PositiveAmount | None = Decimal(100)


class DailySpendRule(_AlertRule):
    """LLM spend since 00:00 UTC, $."""

    critical: PositiveAmount | None = Decimal(500)


class MonthlyProjectionRule(_AlertRule):
    """Month-to-date spend projected linearly to the month's end, as a share of the budget."""

    budget_usd: PositiveAmount = Decimal(15_000)
    min_elapsed_s: int = Field(86_400, ge=0)  # before this, the actual month-to-date share
    warn: PositiveAmount | None = Decimal(1)
    critical: PositiveAmount | None = Decimal("1.5")


class VariantCostRule(_AlertRule):
    """Per agent: a variant's cost per request as a multiple of the baseline's."""

    baseline: str = "baseline"
    window_s: int = Field(3600, ge=60)
    min_requests: int = Field(50, ge=1)  # per variant within the window, else the level holds
    warn: PositiveAmount | None = Decimal("1.5")
    critical: PositiveAmount | None = Decimal(3)


class ExpensiveRequestsRule(_AlertRule):
    """Requests costing more than `threshold_usd` within the trailing window (a count)."""

    threshold_usd: NonNegMoney = Decimal("0.01")
    window_s: int = Field(3600, ge=60)
    top_n: int = Field(5, ge=1, le=100)  # the most expensive requests listed in the alert
    warn: PositiveAmount | None = Decimal(1)


class VolumeSpikeRule(_AlertRule):
    """Requests/min over `short_s` as a multiple of the mean over the `baseline_s` before."""

    short_s: int = Field(300, ge=60)
    baseline_s: int = Field(21_600, ge=60)
    min_history_s: int = Field(3600, ge=0)  # less history than this: the level holds
    min_rpm: NonNegMoney = Decimal(10)  # quieter than this is never a spike
    warn: PositiveAmount | None = Decimal(3)
    critical: PositiveAmount | None = Decimal(10)


class JudgeBudgetRule(_AlertRule):
    """Judge spend since 00:00 UTC as a share of the daily judge budget."""

    # unset: judges.budget (daily_usd, or the tenant's entry); no budget there turns the rule off
    budget_usd: PositiveAmount | None = None
    warn: PositiveAmount | None = Decimal("0.8")
    critical: PositiveAmount | None = Decimal(1)


Share = Annotated[Decimal, Field(gt=0, le=1, max_digits=24, decimal_places=12)]


class RepeatedPromptsRule(_AlertRule):
    """Share of a window's requests repeating a prompt already sent in it (informational)."""

    min_requests: int = Field(30, ge=1)  # fewer requests in the window read as 0
    warn: Share | None = Decimal("0.7")
    critical: Share | None = Decimal("0.9")
    emergency: Share | None = None


class SingleUserShareRule(_AlertRule):
    """Share of a window's requests sent by its top user id (informational)."""

    min_requests: int = Field(30, ge=1)  # fewer requests in the window read as 0
    warn: Share | None = Decimal("0.5")
    critical: Share | None = Decimal("0.8")
    emergency: Share | None = None


class AlertAction(_Section):
    """Set the tenant's judge sampling rate (0 pauses judging) for `ttl_s`."""

    sampling_rate: float = Field(ge=0.0, le=1.0)
    ttl_s: int = Field(3600, ge=1)


class AlertActionsConfig(_Section):
    enabled: bool = True
    # rules whose levels act (empty: all but repeated_prompts and single_user_share, which act only
    # when named)
    rules: tuple[str, ...] = ()
    clear_on_resolve: bool = True  # else the override runs until its TTL
    warn: AlertAction | None = None
    critical: AlertAction | None = AlertAction(sampling_rate=0.01)
    emergency: AlertAction | None = AlertAction(sampling_rate=0.0)


class WebhookTarget(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    format: Literal["slack", "alertmanager"]
    url: str = ""  # or the name of an environment variable holding it (Slack URLs are secrets)
    url_env: str = ""
    min_level: AlertLevel = "warn"  # resolved alerts follow the level they end
    rules: tuple[str, ...] = ()  # empty: all
    tenants: tuple[str, ...] = ()  # empty: all

    @model_validator(mode="after")
    def _one_url(self) -> WebhookTarget:
        if bool(self.url) == bool(self.url_env):
            msg = f"webhook {self.name!r}: set exactly one of url and url_env"
            raise ValueError(msg)
        return self


class WebhooksConfig(_Section):
    targets: tuple[WebhookTarget, ...] = ()
    timeout_s: float = Field(5.0, gt=0)  # per request
    max_attempts: int = Field(3, ge=1, le=10)  # 5xx, 429 and network errors are retried
    backoff_s: float = Field(0.5, ge=0)  # doubled per attempt, with jitter
    budget_s: float = Field(10.0, gt=0)  # for all posts of one batch, retries included
    max_in_flight: int = Field(8, ge=1, le=256)  # targets posted to at once; one target's posts go in order
    # alerts older than this (event time vs now) are not posted, so backfills stay quiet
    max_age_s: int = Field(3600, ge=0)
    firing_ttl_s: int = Field(86_400, ge=60)  # Alertmanager endsAt of a firing alert, until resolved


class AlertsConfig(_Section):
    hysteresis: float = Field(0.1, ge=0.0, lt=1.0)  # a level ends below threshold x (1 - hysteresis)
    deescalate: bool = False  # step down level by level instead of staying at the peak until resolved
    eval_delay_s: int = Field(120, ge=0)  # evaluate a minute once the tenant's event time is this far past it
    # ...and once nothing for an earlier minute has arrived for this long (replays read partitions unevenly)
    settle_s: float = Field(5.0, ge=0)
    burn_rate: BurnRateRule = BurnRateRule()
    daily_spend: DailySpendRule = DailySpendRule()
    monthly_projection: MonthlyProjectionRule = MonthlyProjectionRule()
    variant_cost: VariantCostRule = VariantCostRule()
    expensive_requests: ExpensiveRequestsRule = ExpensiveRequestsRule()
    volume_spike: VolumeSpikeRule = VolumeSpikeRule()
    judge_budget: JudgeBudgetRule = JudgeBudgetRule()
    repeated_prompts: RepeatedPromptsRule = RepeatedPromptsRule()
    single_user_share: SingleUserShareRule = SingleUserShareRule()
    # per-tenant overrides of any rule key: tenant -> rule -> {key: value}
    tenants: dict[str, dict[str, dict[str, Any]]] = {}
    actions: AlertActionsConfig = AlertActionsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()

    @classmethod
    def rule_names(cls) -> tuple[str, ...]:
        return tuple(
            name
            for name, f in cls.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, _AlertRule)
        )

    def rule(self, name: str, tenant: str | None = None) -> _AlertRule:
        """Rule `name` with the tenant's overrides applied."""
        base: _AlertRule = getattr(self, name)
        over = self.tenants.get(tenant, {}).get(name) if tenant is not None else None
        return base if not over else type(base).model_validate({**base.model_dump(), **over})

    @model_validator(mode="after")
    def _known_names(self) -> AlertsConfig:
        names = self.rule_names()
        for where, given in (
            ("alerts.actions.rules", self.actions.rules),
            *((f"alerts.webhooks.targets.{t.name}.rules", t.rules) for t in self.webhooks.targets),
        ):
            unknown = [r for r in given if r not in names]
            if unknown:
                msg = f"{where}: unknown rules {unknown}; allowed: {', '.join(names)}"
                raise ValueError(msg)
        for tenant, rules in self.tenants.items():
            for name in rules:
                if name not in names:
                    msg = f"alerts.tenants.{tenant}: unknown rule {name!r}; allowed: {', '.join(names)}"
                    raise ValueError(msg)
                try:
                    self.rule(name, tenant)
                except ValidationError as exc:
                    errs = "; ".join(
                        (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"]
                        for e in exc.errors()
                    )
                    msg = f"alerts.tenants.{tenant}.{name}: {errs}"
                    raise ValueError(msg) from None
        seen = [t.name for t in self.webhooks.targets]
        if len(set(seen)) != len(seen):
            msg = f"alerts.webhooks.targets: names must be unique, got {seen}"
            raise ValueError(msg)
        return self
