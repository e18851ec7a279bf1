"""The ClickHouse tables judgeflow writes: their columns and how a record becomes a row.

`TABLES` names every table the flow writes with its record type, its columns
(name and ClickHouse type, in the order of `schema.sql`) and its row builder.
Money leaves the flow as integer picodollars and lands as exact
`Decimal(38, 12)` dollars (`pico_to_usd`); times are UTC milliseconds.

Retention is a TTL per table, counted from when a row was written
(`inserted_at`, filled by the server), so a backfill of old traffic is kept for
the whole period instead of expiring at the next merge: `ttl_clauses` turns
days per table into TTL clauses and `apply_ttls` sets them on an existing
database, altering only the tables whose TTL differs (an ALTER rewrites the
TTL information of every existing part).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
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

# --- records -> rows ---------------------------------------------------------


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


@dataclass(frozen=True)
class TableSpec:
    """How one record type maps onto one table: columns in row order, types for
    the insert (so no DESCRIBE round trip per batch), the row builder, and what
    to do with the records of each insert once it succeeded (metrics)."""

    name: str
    record_type: type
    columns: tuple[tuple[str, str], ...]
    build_row: Callable[[Any], tuple[Any, ...]]
    on_written: Callable[[list[Any]], None] | None = None

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    @property
    def column_types(self) -> list[str]:
        return [ch_type for _, ch_type in self.columns]


_LC = "LowCardinality(String)"
_TS = "DateTime64(3, 'UTC')"
_USD = "Decimal(38, 12)"
_SOURCE_COLUMNS = (
    ("source_topic", "LowCardinality(Nullable(String))"),
    ("source_partition", "Nullable(Int32)"),
    ("source_offset", "Nullable(Int64)"),
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "llm_events",
            Event,
            (
                ("event_id", "String"),
                ("ts", _TS),
                ("tenant_id", _LC),
                ("agent", _LC),
                ("model", _LC),
                ("provider", _LC),
                ("variant", _LC),
                ("input_tokens", "UInt32"),
                ("output_tokens", "UInt32"),
                ("cache_read_tokens", "UInt32"),
                ("cache_write_tokens", "UInt32"),
                ("reasoning_tokens", "UInt32"),
                ("cost_usd", _USD),
                ("cost_source", _LC),
                ("latency_ms", "Nullable(Float64)"),
                ("conversation_id", "Nullable(String)"),
                ("user_id", "Nullable(String)"),
                ("input_chars", "UInt32"),
                ("output_chars", "UInt32"),
                ("input_text", "String"),
                ("output_text", "String"),
                ("flags", "Array(LowCardinality(String))"),
                *_SOURCE_COLUMNS,
            ),
            event_row,
        ),
        TableSpec(
            "evaluations",
            Evaluation,
            (
                ("eval_id", "String"),
                ("event_id", "String"),
                ("ts", _TS),
                ("tenant_id", _LC),
                ("agent", _LC),
                ("model", _LC),
                ("variant", _LC),
                ("metric", _LC),
                ("score", "Float64"),
                ("label", _LC),
                ("explanation", "String"),
                ("judge", _LC),
                ("tier", "UInt8"),
                ("judge_cost_usd", _USD),
                ("judge_latency_ms", "Float64"),
                ("cache_hit", "Bool"),
                ("inclusion_prob", "Float64"),
                ("content_hash", "String"),
                ("error", "String"),
            ),
            evaluation_row,
            observe_evaluation_latency,
        ),
        TableSpec(
            "cost_windows",
            CostWindow,
            (
                ("tenant_id", _LC),
                ("agent", _LC),
                ("model", _LC),
                ("variant", _LC),
                ("window_s", "UInt32"),
                ("window_start", _TS),
                ("category", _LC),
                ("kind", _LC),
                ("correction_id", "String"),
                ("requests", "UInt64"),
                ("input_tokens", "UInt64"),
                ("output_tokens", "UInt64"),
                ("cost_usd", _USD),
                ("unknown_cost_requests", "UInt64"),
                ("judge_calls", "UInt64"),
                ("judge_cost_usd", _USD),
                ("max_request_cost_usd", _USD),
                ("version", "UInt64"),
                ("provisional", "Bool"),
            ),
            cost_window_row,
        ),
        TableSpec(
            "alerts",
            Alert,
            (
                ("alert_id", "String"),
                ("rule", _LC),
                ("tenant_id", _LC),
                ("scope", "String"),
                ("level", _LC),
                ("previous_level", _LC),
                ("value", "Float64"),
                ("threshold", "Float64"),
                ("window_start", _TS),
                ("window_end", _TS),
                ("ts", _TS),
                ("message", "String"),
                ("runbook", "String"),
                ("details", "String"),
            ),
            alert_row,
        ),
        TableSpec(
            "dead_letters",
            DeadLetter,
            (
                ("key", "String"),
                ("ts", _TS),
                ("stage", _LC),
                ("reason", "String"),
                ("raw", "String"),
                *_SOURCE_COLUMNS,
            ),
            dead_letter_row,
        ),
        TableSpec(
            "quality_estimates",
            QualityEstimate,
            (
                ("tenant_id", _LC),
                ("agent", _LC),
                ("metric", _LC),
                ("window_s", "UInt32"),
                ("window_start", _TS),
                ("judged", "UInt64"),
                ("flagged", "UInt64"),
                ("rate", "Float64"),
                ("ci_low", "Float64"),
                ("ci_high", "Float64"),
                ("population", "Float64"),
                ("sum_w", "Float64"),
                ("sum_wy", "Float64"),
                ("sum_ww1", "Float64"),
                ("sum_ww1y", "Float64"),
                ("version", "UInt64"),
                ("exact_events", "Float64"),
                ("exact_flagged", "Float64"),
                ("sampled_events", "Float64"),
                ("sampled_flagged", "Float64"),
                ("sampled_var", "Float64"),
                ("sampled_var_unit", "Float64"),
                ("cheap_events", "Float64"),
                ("cheap_flagged", "Float64"),
                ("ppi_sampled_flagged", "Float64"),
                ("ppi_sampled_var", "Float64"),
                ("ppi_rate", "Float64"),
                ("ppi_low", "Float64"),
                ("ppi_high", "Float64"),
            ),
            quality_estimate_row,
        ),
        TableSpec(
            "judge_savings",
            JudgeSavings,
            (
                ("tenant_id", _LC),
                ("window_s", "UInt32"),
                ("window_start", _TS),
                ("events", "UInt64"),
                ("baseline_calls", "UInt64"),
                ("baseline_usd", _USD),
                ("sampling_calls", "UInt64"),
                ("sampling_usd", _USD),
                ("cache_calls", "UInt64"),
                ("cache_usd", _USD),
                ("cascade_calls", "Int64"),
                ("cascade_usd", _USD),
                ("judge_calls", "UInt64"),
                ("judge_usd", _USD),
                ("reference_judge", _LC),
                ("version", "UInt64"),
                ("judged_events", "UInt64"),
                ("allowed_events", "UInt64"),
                ("forced_events", "UInt64"),
            ),
            judge_savings_row,
        ),
        TableSpec(
            "abuse_windows",
            AbuseWindow,
            (
                ("tenant_id", _LC),
                ("window_s", "UInt32"),
                ("window_start", _TS),
                ("window_end", _TS),
                ("requests", "UInt64"),
                ("repeated_requests", "UInt64"),
                ("repeated_share", "Float64"),
                ("distinct_prompts", "UInt64"),
                ("top_prompt_requests", "UInt64"),
                ("distinct_users", "UInt64"),
                ("top_user", "String"),
                ("top_user_requests", "UInt64"),
                ("top_user_share", "Float64"),
                ("version", "UInt64"),
            ),
            abuse_window_row,
        ),
        TableSpec(
            "pricing_issues",
            PricingIssue,
            (
                ("key", "String"),
                ("day", "Date"),
                ("model", "String"),
                ("provider", _LC),
                ("issue", _LC),
                ("message", "String"),
            ),
            pricing_issue_row,
        ),
    )
}

ROW_BUILDERS: dict[str, Callable[[Any], tuple[Any, ...]]] = {
    name: spec.build_row for name, spec in TABLES.items()
}


def table_spec(table: str) -> TableSpec:
    """The spec of `table`, or ValueError naming the tables that exist."""
    try:
        return TABLES[table]
    except KeyError:
        msg = f"unknown judgeflow table {table!r}; expected one of {sorted(TABLES)}"
        raise ValueError(msg) from None
