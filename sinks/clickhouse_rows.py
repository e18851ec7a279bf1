"""How each record judgeflow writes becomes a ClickHouse row (the tables: `sinks.clickhouse_tables`).

Money leaves the flow as integer picodollars and lands as exact `Decimal(38, 12)` dollars
(`pico_to_usd`); times are UTC milliseconds.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

from core import metrics
from core.records import (
    AbuseWindow,
    Alert,
    CostWindow,
    DeadLetter,
    Evaluation,
    Event,
    JudgeSavings,
    PricingIssue,
    QualityEstimate,
    pico_to_usd,
)


def _ms_to_s(window_ms: int) -> int:
    if window_ms <= 0 or window_ms % 1000:
        msg = f"cost_windows: window_ms={window_ms} is not a positive whole number of seconds"
        raise ValueError(msg)
    return window_ms // 1000


def event_row(e: Event, *, store_text: bool = False) -> tuple[Any, ...]:
    """An `llm_events` row; prompt and response text only with `store_text`."""
    src = e.source
    return (
        e.event_id,
        e.ts_ms,
        e.tenant_id,
        e.agent,
        e.model,
        e.provider,
        e.variant,
        e.input_tokens,
        e.output_tokens,
        e.cache_read_tokens,
        e.cache_write_tokens,
        e.reasoning_tokens,
        pico_to_usd(e.cost_pusd),
        e.cost_source,
        e.latency_ms,
        e.conversation_id,
        e.user_id,
        len(e.input_text),
        len(e.output_text),
        e.input_text if store_text else "",
        e.output_text if store_text else "",
        list(e.flags),
        src.topic if src else None,
        src.partition if src else None,
        src.offset if src else None,
    )


def evaluation_row(v: Evaluation) -> tuple[Any, ...]:
    """An `evaluations` row."""
    return (
        v.eval_id,
        v.event_id,
        v.ts_ms,
        v.tenant_id,
        v.agent,
        v.model,
        v.variant,
        v.metric,
        v.score,
        v.label,
        v.explanation,
        v.judge,
        v.tier,
        pico_to_usd(v.judge_cost_pusd),
        v.judge_latency_ms,
        v.cache_hit,
        v.inclusion_prob,
        v.content_hash,
        v.error,
    )


def cost_window_row(w: CostWindow) -> tuple[Any, ...]:
    """A `cost_windows` row; `window_s` tells 1 min, 1 h and 1 day windows apart."""
    return (
        w.tenant_id,
        w.agent,
        w.model,
        w.variant,
        _ms_to_s(w.window_ms),
        w.window_start_ms,
        w.category,
        w.kind,
        w.correction_id,
        w.requests,
        w.input_tokens,
        w.output_tokens,
        pico_to_usd(w.cost_pusd),
        w.unknown_cost_requests,
        w.judge_calls,
        pico_to_usd(w.judge_cost_pusd),
        pico_to_usd(w.max_request_cost_pusd),
        w.version,
        w.provisional,
    )


def alert_row(a: Alert) -> tuple[Any, ...]:
    """An `alerts` row."""
    return (
        a.alert_id,
        a.rule,
        a.tenant_id,
        a.scope,
        a.level,
        a.previous_level,
        a.value,
        a.threshold,
        a.window_start_ms,
        a.window_end_ms,
        a.ts_ms,
        a.message,
        a.runbook,
        a.details,
    )


def pricing_issue_row(p: PricingIssue) -> tuple[Any, ...]:
    """A `pricing_issues` row: one per unpriced (model, provider, UTC day)."""
    day = datetime.fromtimestamp(p.day_ms // 1000, tz=UTC).date()
    return (p.key, day, p.model, p.provider, p.issue, p.message)


def quality_estimate_row(q: QualityEstimate) -> tuple[Any, ...]:
    """A `quality_estimates` row."""
    return (
        q.tenant_id,
        q.agent,
        q.metric,
        _ms_to_s(q.window_ms),
        q.window_start_ms,
        q.judged,
        q.flagged,
        q.rate,
        q.ci_low,
        q.ci_high,
        q.population,
        q.sum_w,
        q.sum_wy,
        q.sum_ww1,
        q.sum_ww1y,
        q.version,
        q.exact_events,
        q.exact_flagged,
        q.sampled_events,
        q.sampled_flagged,
        q.sampled_var,
        q.sampled_var_unit,
        q.cheap_events,
        q.cheap_flagged,
        q.ppi_sampled_flagged,
        q.ppi_sampled_var,
        q.ppi_rate,
        q.ppi_low,
        q.ppi_high,
    )


def judge_savings_row(s: JudgeSavings) -> tuple[Any, ...]:
    """A `judge_savings` row."""
    return (
        s.tenant_id,
        _ms_to_s(s.window_ms),
        s.window_start_ms,
        s.events,
        s.baseline_calls,
        pico_to_usd(s.baseline_pusd),
        s.sampling_calls,
        pico_to_usd(s.sampling_pusd),
        s.cache_calls,
        pico_to_usd(s.cache_pusd),
        s.cascade_calls,
        pico_to_usd(s.cascade_pusd),
        s.judge_calls,
        pico_to_usd(s.judge_pusd),
        s.reference_judge,
        s.version,
        s.judged_events,
        s.allowed_events,
        s.forced_events,
    )


def abuse_window_row(w: AbuseWindow) -> tuple[Any, ...]:
    """An `abuse_windows` row."""
    return (
        w.tenant_id,
        _ms_to_s(w.window_ms),
        w.window_start_ms,
        w.window_start_ms + w.window_ms,
        w.requests,
        w.repeated_requests,
        w.repeated_share,
        w.distinct_prompts,
        w.top_prompt_requests,
        w.distinct_users,
        w.top_user,
        w.top_user_requests,
        w.top_user_share,
        w.version,
    )


def dead_letter_row(d: DeadLetter) -> tuple[Any, ...]:
    """A `dead_letters` row; `raw` is stored byte for byte."""
    src = d.source
    return (
        d.key,
        d.ts_ms,
        d.stage,
        d.reason,
        d.raw,
        src.topic if src else None,
        src.partition if src else None,
        src.offset if src else None,
    )


def observe_evaluation_latency(evaluations: list[Evaluation], *, now_ms: int | None = None) -> None:
    """judgeflow_evaluation_latency_seconds: each verdict's time from its event's time (when the
    producer sent it) to its row written, which is when reports and estimates can see it."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    for v in evaluations:
        _latency(v.tier).observe(max(0, now_ms - v.ts_ms) / 1000)


@functools.cache
def _latency(tier: int) -> Any:
    return metrics.EVALUATION_LATENCY.labels(str(tier))
