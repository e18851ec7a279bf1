"""Builds what the stages need from the settings: the composition root's helpers.

Clients are created lazily (the verdict cache's Redis pool on first use, the
LLM clients inside the judge runtime's loop on the first judgement), so
building a flow never connects anywhere.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from core import metrics
from core.errors import Unavailable
from core.ports import ControlStore, DisabledJudge, VerdictCache
from core.records import PICO_PER_USD, usd_to_pico
from flows import gc_policy
from flows.config import ConfigError, Settings
from flows.config_judges import JudgeTierConfig
from judges.base import LLMJudge, RuleJudge
from judges.budget import BudgetPolicy
from judges.local import LocalJudge, load_local_models
from judges.redact import Redactor
from judges.rubrics import RUBRIC_VERSION
from judges.rules import Tier0Rules
from judges.runtime import EndpointPolicy, JudgeRuntime, RetryPolicy
from operators.alert_policy import Action, AlertPolicy, RuleSet
from operators.decode import DecodeLimits
from operators.dedup import ContentKeyer
from operators.judge import JudgePlan
from operators.otlp import OtlpMapping
from operators.price import Catalog, Pricer, override_rates
from operators.sample_design import Sampler, StratumRule
from operators.savings import Baseline, ReferenceJudge, reference_judge
from sinks.memory_store import MemoryControlStore, MemoryVerdictCache
from sinks.redis_store import RedisControlStore, RedisVerdictCache
from sinks.webhooks import Delivery, WebhookSink, WebhookTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deps:
    brokers: list[str]
    decode_limits: DecodeLimits
    otlp: OtlpMapping | None  # None: OTLP input off
    otlp_join_wait_s: float
    otlp_join_call_max_s: float
    now_ms: Callable[[], int]
    pricer: Pricer
    cache: VerdictCache
    keyer: ContentKeyer
    plan: JudgePlan
    sampler: Sampler
    baseline: Baseline  # reference cost of judging an event on every metric (savings ledger)
    rules: RuleJudge
    local: LocalJudge | None  # the local model tier (None: off, or its package is not installed)
    runtime: JudgeRuntime
    alert_policy: AlertPolicy
    control: ControlStore
    webhooks: WebhookSink | None

    def close(self) -> None:
        """Stop the judge loop and close clients once the dataflow has returned."""
        self.runtime.close()
        for client in (self.cache, self.control):
            close = getattr(client, "close", None)
            if close is not None:
                close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def build_deps(settings: Settings) -> Deps:
    cfg = settings.flow
    metrics.configure_labels(cfg.metrics.max_label_values, cfg.metrics.max_label_sets)
    gc_policy.tune()
    rules = Tier0Rules()
    local = build_local(settings)
    return Deps(
        brokers=cfg.kafka.broker_list,
        decode_limits=DecodeLimits(
            earliest_ts_ms=int(cfg.decode.earliest_ts.timestamp() * 1000),
            max_future_ms=cfg.decode.max_future_s * 1000,
            max_tokens=cfg.decode.max_tokens,
            max_cost_pico=int(cfg.decode.max_cost_usd * PICO_PER_USD),
            max_record_bytes=cfg.decode.max_record_bytes,
        ),
        otlp=OtlpMapping(
            tenant_attribute=cfg.otlp.tenant_attribute,
            variant_attribute=cfg.otlp.variant_attribute,
            default_tenant=cfg.otlp.default_tenant,
        )
        if cfg.otlp.enabled
        else None,
        otlp_join_wait_s=cfg.otlp.join_wait_s,
        otlp_join_call_max_s=cfg.otlp.join_call_max_s,
        now_ms=now_ms,
        pricer=Pricer(
            {
                model: override_rates(
                    o.input_per_mtok, o.output_per_mtok, o.cache_read_per_mtok, o.cache_write_per_mtok
                )
                for model, o in cfg.pricing.overrides.items()
            },
            prefer_provided=cfg.pricing.prefer_provided_cost,
        ),
        cache=build_cache(settings),
        keyer=ContentKeyer(
            lowercase=cfg.cache.lowercase,
            volatile_patterns=cfg.cache.volatile_patterns,
            judge_version=judge_version(settings, rules, local),
        ),
        plan=build_plan(settings, rules, local),
        sampler=build_sampler(settings),
        baseline=build_baseline(settings),
        rules=rules,
        local=local,
        runtime=build_runtime(settings, control := build_control(settings)),
        alert_policy=build_alert_policy(settings),
        control=control,
        webhooks=build_webhooks(settings),
    )


def build_alert_policy(settings: Settings) -> AlertPolicy:
    """The alert rules with every tenant's thresholds, and the actions, from `[alerts]`."""
    a, w = settings.flow.alerts, settings.flow.windows
    budget = settings.flow.judges.budget

    def rules(tenant: str | None) -> RuleSet:
        given = {name: a.rule(name, tenant).model_dump() for name in a.rule_names()}
        judge = given["judge_budget"]
        if judge["budget_usd"] is None:  # the judge stage's own daily budget
            usd = budget.tenants.get(tenant, budget.daily_usd) if tenant else budget.daily_usd
            if usd > 0:
                judge["budget_usd"] = usd
            else:  # no budget anywhere: nothing to alert on
                judge.update(enabled=False, budget_usd=1)
        return RuleSet.from_dicts(given)

    acts = a.actions
    return AlertPolicy(
        default=rules(None),
        tenants={t: rules(t) for t in {*a.tenants, *budget.tenants}},
        hysteresis=Decimal(str(a.hysteresis)),
        deescalate=a.deescalate,
        eval_delay_ms=a.eval_delay_s * 1000,
        settle_s=a.settle_s,
        slot_ms=w.size_s * 1000,
        revisable_ms={
            "llm": (w.allowed_lateness_s + w.size_s) * 1000,
            "judge": (w.judge_allowed_lateness_s + w.size_s) * 1000,
        },
        actions={
            level: Action(act.sampling_rate, act.ttl_s)
            for level in ("warn", "critical", "emergency")
            if acts.enabled and (act := getattr(acts, level)) is not None
        },
        action_rules=frozenset(acts.rules),
        clear_on_resolve=acts.clear_on_resolve,
    )


def build_cache(settings: Settings) -> VerdictCache:
    c = settings.flow.cache
    if c.backend == "redis" or (c.backend == "auto" and c.redis_url):
        if not c.redis_url:
            msg = "cache.backend = 'redis' needs JUDGEFLOW_REDIS_URL (or cache.redis_url)"
            raise ValueError(msg)
        return RedisVerdictCache(c.redis_url, ttl_s=c.ttl_s, retry_after_s=c.retry_after_s)
    return MemoryVerdictCache(max_entries=c.max_entries, ttl_s=c.ttl_s)


def build_webhooks(settings: Settings) -> WebhookSink | None:
    """The webhook sink of `[alerts.webhooks]`, or None without targets; URLs
    from the config or from the environment variable a target names."""
    w = settings.flow.alerts.webhooks
    targets = []
    for t in w.targets:
        secret = settings.secrets.webhook_urls.get(t.name)
        url = secret.get_secret_value() if secret else t.url
        if not url:
            msg = f"alerts.webhooks target {t.name!r}: environment variable {t.url_env} is not set"
            raise ConfigError(msg)
        targets.append(
            WebhookTarget(t.name, t.format, url, t.min_level, frozenset(t.rules), frozenset(t.tenants))
        )
    if not targets:
        return None
    delivery = Delivery(
        timeout_s=w.timeout_s,
        max_attempts=w.max_attempts,
        backoff_s=w.backoff_s,
        budget_s=w.budget_s,
        max_in_flight=w.max_in_flight,
        max_age_s=w.max_age_s,
        firing_ttl_s=w.firing_ttl_s,
    )
    return WebhookSink(targets, delivery)


def build_sampler(settings: Settings) -> Sampler:
    s = settings.flow.sampling
    return Sampler(
        base_rate=s.base_rate,
        version=s.version,
        rules=tuple(StratumRule(**r.model_dump()) for r in s.rules),
        strata=s.strata,
        length_buckets=s.length_buckets,
        always_over_tokens=s.always_over_tokens,
        always_on_flags=s.always_on_flags,
        min_per_stratum=s.min_per_stratum,
        max_per_tenant=s.max_per_tenant_per_window,
        max_judged_share=s.max_judged_share,
        judged_share_by_tenant=tuple(sorted(s.judged_share_by_tenant.items())),
        window_s=s.window_s,
        allowed_lateness_s=s.allowed_lateness_s,
        idle_s=s.idle_s,
    )


def build_baseline(settings: Settings) -> Baseline:
    j = settings.flow.judges
    return Baseline(list(j.metrics) if j.enabled else [], reference_judge_of(settings))


def reference_judge_of(settings: Settings) -> ReferenceJudge:
    """The most expensive configured LLM judge: the savings ledger's "judge everything"."""
    tiers = [t for _, t in settings.flow.judges if isinstance(t, JudgeTierConfig)]
    return reference_judge(tiers, now_ms())


def build_control(settings: Settings) -> ControlStore:
    """Overrides live in Redis when there is one (shared by all processes), else in-process."""
    url = settings.flow.cache.redis_url
    return RedisControlStore(url) if url else MemoryControlStore()


def build_local(settings: Settings) -> LocalJudge | None:
    """The local model tier of `[judges.local]`: None when it is off, when no metric it covers
    lists tier 1, or when its package is missing (logged with the `pip install` that fixes it)."""
    j = settings.flow.judges
    cfg = j.local
    models = {m: name for m, name in cfg.models.items() if 1 in j.metrics.get(m, ())}
    if not (j.enabled and cfg.enabled and models):
        if cfg.score_every_event:
            log.warning("judges.local.score_every_event is on, but the local tier is off: no local flags")
        return None
    local = load_local_models(models, flag_at=cfg.flag_at)
    if local is None:
        log.warning("local model tier is off: none of its models could be loaded")
    return local


def judge_version(settings: Settings, rules: RuleJudge, local: LocalJudge | None = None) -> str:
    """What a cached verdict depends on: rubrics, rules, judge models, the local models (their
    package versions) and the cascade, the local tier's unsure band included."""
    j = settings.flow.judges
    tiers = "|".join(f"{t.provider}/{t.model}" for t in judge_tiers(settings).values())
    cascade = f"{j.cascade.unsure_band}|{j.cascade.escalate_flagged}"
    if local is not None:
        cascade += f"|{local.version}|{j.local.unsure_low}|{j.local.unsure_high}"
    text = f"{RUBRIC_VERSION}|{rules.version}|{tiers}|{cascade}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def judge_tiers(settings: Settings) -> dict[int, JudgeTierConfig]:
    """The LLM tiers that judge: configured, and with an API key or a base URL to call."""
    off = keyless_tiers(settings)
    return {tier: t for tier, t in _configured_tiers(settings).items() if tier not in off}


def keyless_tiers(settings: Settings) -> dict[int, str]:
    """Configured LLM tiers with neither an API key nor a base URL (a self-hosted endpoint may
    need no key), each with the variable to set. They are left out: their metrics keep what the
    tier-0 rules find, and the rest of the job (prices, windows, alerts) runs as usual."""
    secrets = settings.secrets
    keys = {"openai": secrets.openai_api_key, "anthropic": secrets.anthropic_api_key}
    return {
        tier: f"{t.provider.upper()}_API_KEY"
        for tier, t in _configured_tiers(settings).items()
        if keys[t.provider] is None and not t.base_url
    }


def _configured_tiers(settings: Settings) -> dict[int, JudgeTierConfig]:
    j = settings.flow.judges
    return {1: j.tier1} if j.tier2 is None else {1: j.tier1, 2: j.tier2}


def build_plan(settings: Settings, rules: Tier0Rules, local: LocalJudge | None = None) -> JudgePlan:
    """Tiers per metric, the cascade's thresholds (the local tier's too), budgets, redaction and prices."""
    j = settings.flow.judges
    tiers = judge_tiers(settings)
    return JudgePlan(
        dict(j.metrics) if j.enabled else {},
        llm_tiers=frozenset(tiers),
        unsure_band=j.cascade.unsure_band,
        escalate_flagged=j.cascade.escalate_flagged,
        tier0_settles=frozenset(j.cascade.tier0_settles),
        budget=BudgetPolicy(
            daily_pusd=usd_to_pico(j.budget.daily_usd),
            tenants={t: usd_to_pico(usd) for t, usd in j.budget.tenants.items()},
            tier2_share=j.budget.tier2_share,
        ),
        redactor=Redactor(rules.find_pii) if j.redact_pii else None,
        costs={tier: judge_cost_fn(t) for tier, t in tiers.items()},
        local_metrics=local.metrics if local is not None else frozenset(),
        local_unsure=(j.local.unsure_low, j.local.unsure_high),
    )


def judge_configs(settings: Settings) -> dict[str, str]:
    """Judge name -> a fingerprint of its configuration (provider, model, endpoint, key)."""
    out = {}
    secrets = settings.secrets
    for tier, t in judge_tiers(settings).items():
        secret = secrets.anthropic_api_key if t.provider == "anthropic" else secrets.openai_api_key
        key = hashlib.sha256(secret.get_secret_value().encode()).hexdigest() if secret else ""
        fingerprint = "|".join((str(tier), t.provider, t.model, t.base_url or "", key))
        out[f"{t.provider}/{t.model}"] = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return out


def build_runtime(settings: Settings, control: ControlStore | None = None) -> JudgeRuntime:
    """The process's judge runtime; its clients are made on its own loop, on first use. A judge the
    control store remembers as disabled (a fatal error, same configuration) stays disabled."""
    if judge_tiers(settings):
        # The SDKs are imported here, on the main thread before any worker runs, not on first use in
        # the runtime's loop: importing them builds an AST (anyio's lazy importer compiles a module's
        # source), and CPython 3.11 keeps the AST conversion's recursion depth in state the threads
        # share — done while a worker's collection ran Python callbacks, it failed a CI run with
        # "SystemError: AST constructor recursion depth mismatch".
        import judges.anthropic_judge
        import judges.openai_judge  # noqa: F401

    configs = judge_configs(settings)
    disabled: dict[str, str] = {}
    if control is not None:
        try:
            remembered = control.disabled_judges()
        except Unavailable as exc:
            log.warning("could not read disabled judges from the control store: %s", exc)
            remembered = {}
        for name, r in remembered.items():
            if configs.get(name) == r.config:
                disabled[name] = f"{r.reason} (disabled since {r.at_ms}; `judgeflow judges enable {name}`)"
                log.error("judge %s stays disabled: %s", name, r.reason)

    def remember(name: str, reason: str) -> None:
        if control is not None and name in configs:
            try:
                control.disable_judge(DisabledJudge(name, configs[name], reason, time.time_ns() // 1_000_000))
            except Unavailable as exc:  # it is disabled in this process all the same
                log.warning("judge %s: could not remember it as disabled: %s", name, exc)

    return JudgeRuntime(
        lambda: build_llm_judges(settings),
        disabled=disabled,
        on_disabled=remember,
        max_in_flight=settings.flow.judges.max_in_flight,
        policies={
            tier: EndpointPolicy(
                retry=RetryPolicy(
                    max_attempts=t.max_attempts, give_up_after_s=settings.flow.judges.give_up_after_s
                ),
                requests_per_minute=t.requests_per_minute,
                tokens_per_minute=t.tokens_per_minute,
                max_in_flight=t.max_in_flight,
                breaker_failures=t.breaker_failures,
                breaker_cooldown_s=t.breaker_cooldown_s,
            )
            for tier, t in judge_tiers(settings).items()
        },
    )


def build_llm_judges(settings: Settings) -> dict[int, LLMJudge]:
    """Called inside the judge runtime's event loop."""
    from judges.anthropic_judge import AnthropicJudge
    from judges.openai_judge import OpenAIJudge

    judges: dict[int, LLMJudge] = {}
    for tier, t in judge_tiers(settings).items():
        anthropic = t.provider == "anthropic"
        key = settings.secrets.anthropic_api_key if anthropic else settings.secrets.openai_api_key
        cls = AnthropicJudge if anthropic else OpenAIJudge
        judges[tier] = cls(
            model=t.model,
            api_key=key.get_secret_value() if key else "missing-key",
            base_url=t.base_url or None,
            tier=tier,
            timeout_s=t.timeout_s,
            cost=judge_cost_fn(t),
            max_connections=t.max_in_flight,
        )
    return judges


def judge_cost_fn(t: JudgeTierConfig) -> Callable[[int, int], int]:
    """Judge call cost: config prices when given, else the catalog at call time."""
    if t.input_per_mtok is not None and t.output_per_mtok is not None:
        rates = override_rates(t.input_per_mtok, t.output_per_mtok)
        return lambda i, o: rates.cost_pico(i, o)
    catalog = Catalog()

    def cost(i: int, o: int) -> int:
        pico = catalog.cost_pico(t.model, t.provider, now_ms(), i, o)
        return pico or 0

    return cost
