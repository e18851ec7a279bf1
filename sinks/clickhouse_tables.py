"""The ClickHouse tables judgeflow writes: their columns and how a record becomes a row.

`TABLES` names every table the flow writes with its record type, its columns
(name and ClickHouse type, in the order of `schema.sql`) and its row builder
(`sinks.clickhouse_rows`). Retention per table: `sinks.clickhouse_retention`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
)
from sinks.clickhouse_rows import (
    abuse_window_row,
    alert_row,
    cost_window_row,
    dead_letter_row,
    evaluation_row,
    event_row,
    judge_savings_row,
    observe_evaluation_latency,
    pricing_issue_row,
    quality_estimate_row,
)


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
