"""The job's Prometheus metrics, defined once per process.

Label cardinality is bounded per process: a tenant, agent or model label keeps
the first `metrics.max_label_values` values seen and folds later ones into
`__other__`, and the (tenant, agent, model) series of the LLM spend metrics
keep the first `metrics.max_label_sets` combinations, later ones counting as
(tenant, `__other__`, `__other__`) — so a tenant or model explosion cannot
take Prometheus down, and the per-tenant sums stay whole.
`configure_labels` sets both caps at the composition root.
"""

from __future__ import annotations

import threading
from bisect import bisect_right

from prometheus_client import Counter, Gauge, Histogram

MAX_LABEL_VALUES = 500
MAX_LABEL_SETS = 5000
OTHER = "__other__"
_MAX_LABEL_LEN = 64


class LabelCap:
    """The first `limit` distinct values of one label keep their name; later ones are `__other__`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        value = value[:_MAX_LABEL_LEN]
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


class LabelSetCap:
    """Caps (tenant, agent, model) label sets: each value through its `LabelCap`, then the first
    `limit` combinations; a later combination keeps its tenant and folds agent and model."""

    def __init__(self, limit: int, tenant: LabelCap, agent: LabelCap, model: LabelCap) -> None:
        self.limit = limit
        self._caps = (tenant, agent, model)
        self._seen: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, tenant: str, agent: str, model: str) -> tuple[str, str, str]:
        key = (tenant, agent, model)
        found = self._seen.get(key)
        if found is not None:
            return found
        t, a, m = (cap(v) for cap, v in zip(self._caps, key, strict=True))
        with self._lock:
            if len(self._seen) < self.limit:
                found = self._seen[key] = (t, a, m)
                return found
        return (t, OTHER, OTHER)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


_TENANTS = LabelCap(MAX_LABEL_VALUES)
_AGENTS = LabelCap(MAX_LABEL_VALUES)
_MODELS = LabelCap(MAX_LABEL_VALUES)
_LABEL_SETS = LabelSetCap(MAX_LABEL_SETS, _TENANTS, _AGENTS, _MODELS)


def configure_labels(max_label_values: int, max_label_sets: int) -> None:
    """Set the caps (the flow config's `metrics.max_label_values` / `max_label_sets`); values
    already seen keep their labels."""
    for cap in (_TENANTS, _AGENTS, _MODELS):
        cap.limit = max_label_values
    _LABEL_SETS.limit = max_label_sets


def reset_labels() -> None:
    """Forget the values seen (tests)."""
    for cap in (_TENANTS, _AGENTS, _MODELS, _LABEL_SETS):
        cap.clear()


def tenant_label(tenant: str) -> str:
    return _TENANTS(tenant)


def model_label(model: str) -> str:
    """Like `tenant_label`, for model names (producers can send anything)."""
    return _MODELS(model)


def llm_labels(tenant: str, agent: str, model: str) -> tuple[str, str, str]:
    """The capped (tenant, agent, model) labels of the LLM spend metrics."""
    return _LABEL_SETS(tenant, agent, model)


def observe_many(child: Histogram, values: list[float]) -> None:
    """Add many observations to one histogram series at once: the same result as one `observe`
    per value, with one update per bucket (the values are sorted, then cut at each bound)."""
    if not values:
        return
    values = sorted(values)
    buckets = child._buckets  # prometheus_client keeps per-bucket (not cumulative) counts
    below = 0
    for i, bound in enumerate(child._upper_bounds):
        upto = bisect_right(values, bound)  # observe puts a value in the first bucket with value <= bound
        if upto > below:
            buckets[i].inc(upto - below)
            below = upto
        if below == len(values):
            break
    child._sum.inc(sum(values))


EVENTS_IN = Counter("judgeflow_events_total", "Events decoded successfully")
DEAD_LETTERS = Counter(
    "judgeflow_dead_letters_total",
    "Records sent to dead letters, by stage and class of reason",
    ["stage", "reason"],
)
UNKNOWN_MODEL = Counter(
    "judgeflow_unknown_model_events_total", "Events whose model has no known price", ["model"]
)
COST = Counter(
    "judgeflow_cost_usd_total",
    "Priced spend in USD by tenant: category llm (the product's requests) or judge (judgeflow's judge calls)",
    ["tenant", "category"],
)
REQUESTS = Counter("judgeflow_requests_total", "LLM requests seen", ["tenant"])
LLM_COST = Counter(
    "judgeflow_llm_cost_usd_total",
    "Priced spend of the product's LLM requests in USD, by tenant, agent and model (labels capped)",
    ["tenant", "agent", "model"],
)
LLM_REQUESTS = Counter(
    "judgeflow_llm_requests_total",
    "The product's LLM requests, by tenant, agent and model (labels capped)",
    ["tenant", "agent", "model"],
)
LLM_TOKENS = Counter(
    "judgeflow_llm_tokens_total",
    "Tokens of the product's LLM requests by tenant and model: kind input (all input, cached included),"
    " output (reasoning included), cached (input read from the provider's prompt cache)",
    ["tenant", "model", "kind"],
)
LLM_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, float("inf"))
LLM_LATENCY = Histogram(
    "judgeflow_llm_request_latency_seconds",
    "Latency of the product's LLM requests as their events report it (latency_ms), by model;"
    " events without one are not counted",
    ["model"],
    buckets=LLM_LATENCY_BUCKETS,
)
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
    "|late (sampled), rate|cap|share|override|paused (skipped)",
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
    "Records left out of a window: arrived after their estimate / savings window was final, or an abuse"
    " window's event late by its partition's position",
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
JUDGE_FRONTIER_BEHIND = Gauge(
    "judgeflow_judge_frontier_behind_seconds",
    "Event time by which the judge-side windows (judge spend, estimates, savings) trail what the flow has"
    " processed: work the sampler and the judges still owe them (0: nothing owed)",
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
JUDGE_REPLAYED = Counter(
    "judgeflow_judge_paid_verdicts_replayed_total",
    "Cached verdicts found by the very event that paid for them (read again after a crash, a replay):"
    " its rows and judge spend are emitted again, no call is made",
    ["metric"],
)
JUDGE_ESCALATIONS = Counter(
    "judgeflow_judge_escalations_total", "Tier-1 verdicts sent on to tier 2", ["metric", "reason"]
)
JUDGE_LOCAL = Counter(
    "judgeflow_judge_local_total",
    "Local-model verdicts: final, or unsure and handed to the tier-1 LLM (asked_llm)",
    ["metric", "outcome"],
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
KEYS_DROPPED = Counter(
    "judgeflow_window_keys_dropped_total",
    "Window keys whose state was dropped once their windows were done (windows.drop_finished_keys): minute "
    "windows (step=cost_window, judge_window), their levels (step=rollup), abuse, estimates and savings",
    ["step"],
)
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
    " never came: dropped), late_logs (log records after their span was sent on: dropped), late_span (a"
    " span after its details event went on alone with the same call: dropped)",
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
