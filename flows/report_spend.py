"""Spend for the reports: cost per group, variants against their baseline, the most expensive
requests, cost over time, budget burn and tokens — read from `cost_windows` at the coarsest grain that
tiles the range (`flows.report_queries`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flows.report_queries import (
    DAY_MS,
    PICO,
    Column,
    Scope,
    Sql,
    Table,
    by_columns,
    per_request,
    ratio,
    run_query,
    to_ms,
    utc_minute,
)

# --- cost ---------------------------------------------------------------------

# spend columns, in this order, after the group keys (aliases never shadow a column)
_SPEND = (
    "sumIf(requests, category = 'llm') AS s_requests,"
    " sumIf(input_tokens, category = 'llm') AS s_input,"
    " sumIf(output_tokens, category = 'llm') AS s_output,"
    " sumIf(cost_usd, category = 'llm') AS s_usd,"
    " sumIf(unknown_cost_requests, category = 'llm') AS s_unknown,"
    " sumIf(judge_calls, category = 'judge') AS s_judge_calls,"
    " sumIf(judge_cost_usd, category = 'judge') AS s_judge_usd"
)


def cost(client: Any, scope: Scope, by: Sequence[str], grains: Sequence[int]) -> Table:
    """Requests, tokens, LLM and judge spend per group, most expensive first."""
    keys = by_columns(by)
    q = Sql()
    q.windows(scope, grains)
    q.filters(scope)
    select_keys = "".join(f"{k}, " for k in keys)
    group = f"GROUP BY {', '.join(keys)}" if keys else ""
    rows = run_query(
        client,
        f"SELECT {select_keys}{_SPEND} FROM cost_windows FINAL WHERE {q.where()} {group}"  # noqa: S608 - identifiers from DIMENSIONS
        " ORDER BY s_usd + s_judge_usd DESC",
        q.params,
    )
    columns = [Column(b, "text") for b in dict.fromkeys(by)] + [
        Column("requests", "int"),
        Column("input_tokens", "int"),
        Column("output_tokens", "int"),
        Column("cost_usd", "usd"),
        Column("cost_per_request_usd", "usd_unit"),
        Column("unpriced_requests", "int"),
        Column("judge_calls", "int"),
        Column("judge_cost_usd", "usd"),
        Column("total_usd", "usd"),
        Column("share", "pct"),
    ]
    rows = [r for r in rows if any(r[len(keys) :])]  # groups with only zeros (e.g. filtered out)
    grand = sum((r[len(keys) + 3] + r[len(keys) + 6] for r in rows), Decimal(0))

    def cells(sums: Sequence[Any], share: float | None) -> tuple[Any, ...]:
        req, inp, outp, usd, unknown, jcalls, jusd = sums
        return (req, inp, outp, usd, per_request(usd, req), unknown, jcalls, jusd, usd + jusd, share)

    out = []
    totals: list[Any] = [0, 0, 0, Decimal(0), 0, 0, Decimal(0)]
    for r in rows:
        k, sums = r[: len(keys)], r[len(keys) :]
        for i, v in enumerate(sums):
            totals[i] += v
        out.append((*k, *cells(sums, ratio(sums[3] + sums[6], grand))))
    label = ["total"] + [""] * (len(keys) - 1) if keys else []
    total = (*label, *cells(totals, 1.0 if grand else None))
    return Table("cost", columns, out, total)


# --- variants -----------------------------------------------------------------


def variants(
    client: Any, scope: Scope, by: Sequence[str], grains: Sequence[int], baseline: str
) -> tuple[Table, Table]:
    """Variants side by side per group (always within a tenant: default per tenant and
    agent), with the judges' spend on each variant's events, and their judged quality.

    Judge spend comes from the evaluations (each judged event keeps its tenant,
    agent, model and variant there; the `judge` rows of `cost_windows` are per
    judge tier instead). Quality: per metric, the share of judged requests
    flagged, weighted by 1 / inclusion probability (a Hajek estimate, so
    stratified sampling does not bias it); one verdict per (event, metric),
    from the highest tier."""
    groups = ["tenant", *(b for b in dict.fromkeys(by) if b not in ("tenant", "variant"))]
    keys = [*by_columns(groups), "variant"]
    cols = ", ".join(keys)
    q = Sql()
    q.windows(scope, grains)
    q.filters(scope)
    q.conditions.append("category = 'llm'")
    rows = run_query(
        client,
        f"SELECT {cols}, {_SPEND} FROM cost_windows FINAL WHERE {q.where()}"  # noqa: S608
        f" GROUP BY {cols} HAVING s_requests > 0 ORDER BY {cols}",
        q.params,
    )
    e = Sql()
    e.time_range("ts", scope.since_ms, scope.until_ms)
    e.filters(scope)
    judge_usd = {
        tuple(r[:-1]): r[-1]
        for r in run_query(
            client,
            f"SELECT {cols}, sum(judge_cost_usd) FROM evaluations FINAL"  # noqa: S608
            f" WHERE {e.where()} GROUP BY {cols}",
            e.params,
        )
    }
    n = len(groups)
    base_cpr: dict[tuple, Decimal | None] = {}
    for r in rows:
        if r[n] == baseline:
            base_cpr[tuple(r[:n])] = per_request(r[n + 4], r[n + 1])
    out = []
    for r in rows:
        g, variant = tuple(r[:n]), r[n]
        req, inp, outp, usd, _unknown, _judge_calls, _judge_windows_usd = r[n + 1 :]
        cpr = per_request(usd, req)
        base = base_cpr.get(g)
        out.append(
            (
                *g,
                variant,
                req,
                usd,
                cpr,
                ratio(cpr, base) if cpr is not None and base else None,
                inp / req,
                outp / req,
                (inp + outp) / req,
                judge_usd.get((*g, variant), Decimal(0)),
            )
        )
    spend = Table(
        "variants",
        [Column(b, "text") for b in groups]
        + [
            Column("variant", "text"),
            Column("requests", "int"),
            Column("cost_usd", "usd"),
            Column("cost_per_request_usd", "usd_unit"),
            Column(f"vs_{baseline}", "ratio"),
            Column("input_tokens_per_request", "float"),
            Column("output_tokens_per_request", "float"),
            Column("tokens_per_request", "float"),
            Column("judge_cost_usd", "usd"),
        ],
        out,
        note=f"cost per request compared with the {baseline!r} variant of the same group",
    )

    e.conditions.append("error = ''")
    qrows = run_query(
        client,
        f"SELECT {cols}, metric, count() AS judged,"  # noqa: S608
        " sumIf(1 / prob, verdict = 'flagged') / sum(1 / prob) AS rate,"
        " countIf(verdict = 'flagged') AS flagged"
        f" FROM (SELECT event_id, metric, {cols},"
        " argMax(label, tier) AS verdict, argMax(inclusion_prob, tier) AS prob"
        f" FROM evaluations FINAL WHERE {e.where()} GROUP BY event_id, metric, {cols})"
        f" WHERE prob > 0 GROUP BY {cols}, metric ORDER BY {cols}, metric",
        e.params,
    )
    quality = Table(
        "quality",
        [Column(b, "text") for b in groups]
        + [
            Column("variant", "text"),
            Column("metric", "text"),
            Column("judged", "int"),
            Column("flagged", "int"),
            Column("flagged_rate", "pct"),
        ],
        [(*r[: n + 2], r[n + 2], r[n + 4], r[n + 3]) for r in qrows],
        note="flagged rate weighted by 1 / inclusion probability (unbiased under the sampler)",
    )
    return spend, quality


# --- top requests -------------------------------------------------------------


def top(client: Any, scope: Scope, limit: int, min_cost_usd: Decimal) -> Table:
    """The most expensive single requests in the range."""
    q = Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    q.filters(scope)
    q.conditions.append(f"cost_usd >= {q.param(str(min_cost_usd), 'Decimal(38, 12)')}")
    rows = run_query(
        client,
        "SELECT ts, event_id, tenant_id, agent, model, variant, input_tokens, output_tokens,"  # noqa: S608
        " cache_read_tokens, reasoning_tokens, cost_usd, cost_source"
        f" FROM llm_events FINAL WHERE {q.where()} ORDER BY cost_usd DESC, ts LIMIT {int(limit)}",
        q.params,
    )
    return Table(
        "top",
        [
            Column("ts", "time"),
            Column("event_id", "text"),
            Column("tenant", "text"),
            Column("agent", "text"),
            Column("model", "text"),
            Column("variant", "text"),
            Column("input_tokens", "int"),
            Column("output_tokens", "int"),
            Column("cache_read_tokens", "int"),
            Column("reasoning_tokens", "int"),
            Column("cost_usd", "usd_unit"),
            Column("cost_source", "text"),
        ],
        [(to_ms(r[0]), *r[1:]) for r in rows],
        note=f"requests costing at least ${min_cost_usd}",
    )


# --- cost over time -----------------------------------------------------------


def series(client: Any, scope: Scope, by: Sequence[str], grains: Sequence[int], bucket_ms: int) -> Table:
    """Spend per time bucket and group (buckets aligned to the epoch, UTC)."""
    keys = by_columns(by)
    q = Sql()
    q.windows(scope, [g for g in grains if bucket_ms % g == 0], max_grain_ms=bucket_ms)
    q.filters(scope)
    bucket = f"toStartOfInterval(window_start, INTERVAL {bucket_ms // 1000} SECOND, 'UTC')"
    select_keys = "".join(f", {k}" for k in keys)
    rows = run_query(
        client,
        f"SELECT {bucket} AS bucket{select_keys}, {_SPEND} FROM cost_windows FINAL"  # noqa: S608
        f" WHERE {q.where()} GROUP BY bucket{select_keys} ORDER BY bucket{select_keys}",
        q.params,
    )
    n = len(keys)
    return Table(
        "series",
        [Column("start", "time")]
        + [Column(b, "text") for b in dict.fromkeys(by)]
        + [Column("requests", "int"), Column("cost_usd", "usd"), Column("judge_cost_usd", "usd")],
        [
            (to_ms(r[0]), *r[1 : n + 1], r[n + 1], r[n + 4], r[n + 7])
            for r in rows
            if r[n + 1] or r[n + 4] or r[n + 7]
        ],
    )


# --- budget -------------------------------------------------------------------


def month_bounds(ts_ms: int) -> tuple[int, int]:
    d = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    end = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return to_ms(start), to_ms(end)


def budget(
    client: Any,
    scope: Scope,
    by: Sequence[str],
    grains: Sequence[int],
    budget_of: Any,  # Callable[[tuple[str, ...]], Decimal | None]
) -> Table:
    """Month-to-date LLM spend per group against its monthly budget, projected linearly."""
    start, end = month_bounds(scope.now_ms - 1)
    mtd_scope = Scope(start, scope.now_ms, scope.now_ms, scope.now_from, *_filter_args(scope))
    spend = cost(client, mtd_scope, by, grains)
    n = len(by_columns(by))
    elapsed = scope.now_ms - start
    out = []
    for r in spend.rows:
        key, usd, jusd = tuple(r[:n]), r[n + 3], r[n + 7]
        projected = (usd * (end - start) / elapsed).quantize(PICO) if elapsed > 0 else usd
        limit = budget_of(key)
        out.append(
            (
                *key,
                usd,
                jusd,
                projected,
                limit,
                ratio(usd, limit) if limit else None,
                ratio(projected, limit) if limit else None,
            )
        )
    month = datetime.fromtimestamp(start / 1000, tz=UTC).strftime("%Y-%m")
    return Table(
        "budget",
        [Column(b, "text") for b in dict.fromkeys(by)]
        + [
            Column("mtd_cost_usd", "usd"),
            Column("mtd_judge_cost_usd", "usd"),
            Column("projected_usd", "usd"),
            Column("budget_usd", "usd"),
            Column("used", "pct"),
            Column("projected_share", "pct"),
        ],
        out,
        note=f"month {month} to {utc_minute(scope.now_ms)}: {elapsed / DAY_MS:.2f} of"
        f" {(end - start) // DAY_MS} days; LLM spend projected linearly to the month's end",
    )


def _filter_args(scope: Scope) -> tuple[tuple[str, ...], ...]:
    return (scope.tenants, scope.agents, scope.models, scope.variants)


# --- tokens -------------------------------------------------------------------


def tokens(client: Any, scope: Scope, by: Sequence[str]) -> Table:
    """Tokens per request: mean, median, p95 and max of input and output, and the cached share."""
    keys = by_columns(by)
    q = Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    q.filters(scope)
    select_keys = "".join(f"{k}, " for k in keys)
    group = f"GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""
    rows = run_query(
        client,
        f"SELECT {select_keys}count(), avg(input_tokens), quantileExact(0.5)(input_tokens),"  # noqa: S608
        " quantileExact(0.95)(input_tokens), max(input_tokens), avg(output_tokens),"
        " quantileExact(0.5)(output_tokens), quantileExact(0.95)(output_tokens), max(output_tokens),"
        " sum(cache_read_tokens) / nullIf(sum(input_tokens), 0), avg(reasoning_tokens), sum(cost_usd)"
        f" FROM llm_events FINAL WHERE {q.where()} {group}",
        q.params,
    )
    n = len(keys)
    return Table(
        "tokens",
        [Column(b, "text") for b in dict.fromkeys(by)]
        + [
            Column("requests", "int"),
            Column("input_mean", "float"),
            Column("input_p50", "int"),
            Column("input_p95", "int"),
            Column("input_max", "int"),
            Column("output_mean", "float"),
            Column("output_p50", "int"),
            Column("output_p95", "int"),
            Column("output_max", "int"),
            Column("cached_input_share", "pct"),
            Column("reasoning_mean", "float"),
            Column("cost_per_request_usd", "usd_unit"),
        ],
        [(*r[: n + 11], per_request(r[n + 11], r[n])) for r in rows if r[n]],
    )
