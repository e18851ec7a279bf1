"""The job's Prometheus metrics, defined once per process.

Label cardinality is bounded: tenant labels go through `tenant_label`, which
keeps the first `MAX_TENANT_LABELS` tenants seen and folds the rest into
`__other__`, so a tenant explosion cannot take Prometheus down.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

MAX_TENANT_LABELS = 500
OTHER = "__other__"

_tenants: set[str] = set()
_tenants_lock = threading.Lock()


def tenant_label(tenant: str) -> str:
    if tenant in _tenants:
        return tenant
    with _tenants_lock:
        if len(_tenants) < MAX_TENANT_LABELS:
            _tenants.add(tenant)
            return tenant
    return OTHER


MAX_MODEL_LABELS = 200
_models: set[str] = set()


def model_label(model: str) -> str:
    """Like `tenant_label`, for model names (producers can send anything)."""
    model = model[:64]
    if model in _models:
        return model
    with _tenants_lock:
        if len(_models) < MAX_MODEL_LABELS:
            _models.add(model)
            return model
    return OTHER


EVENTS_IN = Counter("judgeflow_events_total", "Events decoded successfully")
DEAD_LETTERS = Counter(
    "judgeflow_dead_letters_total",
    "Records sent to dead letters, by stage and class of reason",
    ["stage", "reason"],
)
UNKNOWN_MODEL = Counter(
    "judgeflow_unknown_model_events_total", "Events whose model has no known price", ["model"]
)
COST = Counter("judgeflow_cost_usd_total", "Priced LLM spend in USD", ["tenant", "category"])
REQUESTS = Counter("judgeflow_requests_total", "LLM requests seen", ["tenant"])
CACHE = Counter("judgeflow_verdict_cache_total", "Verdict cache lookups", ["result"])
CACHE_ERRORS = Counter("judgeflow_verdict_cache_errors_total", "Verdict cache backend failures")
CACHE_OUTAGES = Counter(
    "judgeflow_verdict_cache_outages_total",
    "Times the verdict cache became unavailable (the flow went on without it)",
)
CACHE_BATCH_DUPLICATES = Counter(
    "judgeflow_verdict_cache_batch_duplicates_total",
    "Lookups saved because the same content key occurred earlier in the batch",
)
SAMPLED = Counter(
    "judgeflow_sampler_decisions_total",
    "Sampler decisions per event: decision sampled|skipped; reason flagged|long|rate|minimum|override"
    "|late (sampled), rate|cap|override|paused (skipped)",
    ["decision", "reason"],
)
SAVINGS_CALLS = Counter(
    "judgeflow_judge_savings_calls_total",
    "Judge calls per tenant: what: baseline (judge everything with the reference judge), judged (made),"
    " and avoided by sampling | cache | cascade",
    ["tenant", "what"],
)
SAVINGS_USD = Counter(
    "judgeflow_judge_savings_usd_total", "Judge USD per tenant, same `what` as the calls", ["tenant", "what"]
)
LATE_DROPPED = Counter(
    "judgeflow_late_records_dropped_total",
    "Records that arrived after their estimate / savings window was final",
    ["step"],
)
JUDGE_CALLS = Counter("judgeflow_judge_calls_total", "Judge calls by judge and outcome", ["judge", "outcome"])
JUDGE_COST = Counter("judgeflow_judge_cost_usd_total", "Judge spend in USD", ["judge"])
JUDGE_LATENCY = Histogram(
    "judgeflow_judge_latency_seconds",
    "Judge call latency",
    ["judge"],
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
JUDGE_IN_FLIGHT = Gauge("judgeflow_judge_in_flight", "Judge calls in flight in this process")
JUDGE_TOKENS = Counter("judgeflow_judge_tokens_total", "Judge tokens billed", ["judge", "direction"])
JUDGE_BREAKER_OPEN = Gauge(
    "judgeflow_judge_breaker_open", "1 while a judge endpoint's circuit breaker is open or probing", ["judge"]
)
JUDGE_DISABLED = Gauge(
    "judgeflow_judge_disabled",
    "1 while a judge is disabled by a fatal error (bad key, unknown model) until fixed and restarted",
    ["judge"],
)
JUDGE_WAITING = Gauge(
    "judgeflow_judge_waiting", "Judge work waiting for an open circuit breaker to let it through", ["judge"]
)
JUDGE_BACKPRESSURE = Counter(
    "judgeflow_judge_backpressure_total",
    "Times the judge stage's queue (judges.max_queued) was full and the worker waited for judge slots",
)
JUDGE_RATE_LIMIT_WAIT = Counter(
    "judgeflow_judge_rate_limit_wait_seconds_total",
    "Time judge calls waited for client-side rate limits",
    ["judge"],
)
JUDGE_ESCALATIONS = Counter(
    "judgeflow_judge_escalations_total", "Tier-1 verdicts sent on to tier 2", ["metric", "reason"]
)
JUDGE_DEGRADED = Counter(
    "judgeflow_judge_budget_degraded_total",
    "Judgements held below their configured tier because the tenant's daily judge budget is spent",
    ["tenant", "ceiling"],
)
ALERTS = Counter("judgeflow_alerts_total", "Alert transitions", ["rule", "level"])
ALERT_LEVEL = Gauge(
    "judgeflow_alert_level",
    "Tenant-wide alert level per rule: 0 ok, 1 warn, 2 critical, 3 emergency",
    ["rule", "tenant"],
)
REDELIVERIES = Counter(
    "judgeflow_redeliveries_total",
    "Records whose event_id was already seen: same payload (dropped) or changed (dead letter)",
    ["kind"],
)
LATE = Counter("judgeflow_late_ledger_entries_total", "Ledger entries after the allowed lateness")
WINDOW_ENTRIES = Counter(
    "judgeflow_window_entries_total",
    "Ledger entries reaching a window step (stage=in) and the partial sums left after the per-batch "
    "combine (stage=keyed): only the latter cross workers",
    ["step", "stage"],
)
OTLP_SKIPPED = Counter(
    "judgeflow_otlp_skipped_records_total", "OTLP spans/log records that are not LLM calls"
)
OTLP_EMPTY = Counter(
    "judgeflow_otlp_messages_without_llm_calls_total", "OTLP messages with no LLM call in them"
)
OTLP_JOIN = Counter(
    "judgeflow_otlp_join_total",
    "OTLP spans and log records through the content join, by outcome: joined (a span got its content"
    " from log records), no_content (a span sent on without it after the bound), details_alone (a"
    " details event without its span, its own event), unmatched_logs (message log records whose span"
    " never came: dropped), late_logs (log records after their span was sent on: dropped)",
    ["outcome"],
)
OVERRIDES_ACTIVE = Gauge("judgeflow_sampler_overrides_active", "Tenant sampling overrides in force")
EVALUATION_LATENCY = Histogram(
    "judgeflow_evaluation_latency_seconds",
    "From an event's time (when its producer sent it to Kafka) to its evaluation row written to"
    " ClickHouse, by judge tier; includes consumer lag and the sampler's window",
    ["tier"],
    buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600),
)
