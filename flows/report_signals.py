"""Signals for the reports: the alerts raised, the models nobody could price, and the abuse signals
(repeated prompts, a single user driving a tenant)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flows.report_queries import (
    Column,
    Scope,
    Sql,
    Table,
    ratio,
    run_query,
    to_ms,
)

# --- alerts and pricing issues -------------------------------------------------


def alerts(client: Any, scope: Scope) -> Table:
    """Alert transitions in the range, oldest first."""
    q = Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    if scope.tenants:
        q.conditions.append(f"tenant_id IN {q.param(list(scope.tenants), 'Array(String)')}")
    rows = run_query(
        client,
        # the exact decimals the alert was decided on (its details), where the row has them
        "SELECT ts, tenant_id, rule, scope, previous_level, level,"  # noqa: S608
        " if(JSONHas(details, 'value'), JSONExtractString(details, 'value'), toString(value)),"
        " if(JSONHas(details, 'threshold'), JSONExtractString(details, 'threshold'), toString(threshold)),"
        f" message FROM alerts FINAL WHERE {q.where()} ORDER BY ts, tenant_id, rule",
        q.params,
    )
    return Table(
        "alerts",
        [
            Column("ts", "time"),
            Column("tenant", "text"),
            Column("rule", "text"),
            Column("scope", "text"),
            Column("from", "text"),
            Column("to", "text"),
            Column("value", "float"),
            Column("threshold", "float"),
            Column("message", "text"),
        ],
        [(to_ms(r[0]), *r[1:6], Decimal(r[6]), Decimal(r[7]), r[8]) for r in rows],
    )


def pricing(client: Any, scope: Scope) -> Table:
    """Models without a price, per day, with the requests they carried."""
    q = Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    q.filters(scope)
    q.conditions.append("cost_source = 'unknown'")
    rows = run_query(
        client,
        "SELECT day, model, provider, tenants, n, s_input, s_output, message FROM"  # noqa: S608
        " (SELECT toDate(ts) AS day, model, provider, groupUniqArray(tenant_id) AS tenants, count() AS n,"
        " sum(input_tokens) AS s_input, sum(output_tokens) AS s_output"
        f" FROM llm_events FINAL WHERE {q.where()} GROUP BY day, model, provider) AS e"
        " LEFT JOIN (SELECT day, model, provider, any(message) AS message FROM pricing_issues FINAL"
        " GROUP BY day, model, provider) AS i USING (day, model, provider)"
        " ORDER BY day, n DESC, model",
        q.params,
    )
    return Table(
        "pricing",
        [
            Column("day", "text"),
            Column("model", "text"),
            Column("provider", "text"),
            Column("tenants", "text"),
            Column("requests", "int"),
            Column("input_tokens", "int"),
            Column("output_tokens", "int"),
            Column("issue", "text"),
        ],
        [(str(r[0]), r[1], r[2], ",".join(sorted(r[3])), *r[4:]) for r in rows],
        note="requests counted with cost unknown: add the model to [pricing.overrides]",
    )


# --- abuse signals ---------------------------------------------------------------


def abuse(client: Any, scope: Scope, limit: int, min_requests: int) -> tuple[Table, Table]:
    """Repeated prompts and single users (`abuse_windows`): per tenant over the range, and the
    windows with the highest repeated or top-user share. Peaks count only windows with at least
    `min_requests` requests (a window of three identical requests is not a bot)."""
    q = Sql()
    q.time_range("window_start", scope.since_ms, scope.until_ms)
    if scope.tenants:
        q.conditions.append(f"tenant_id IN {q.param(list(scope.tenants), 'Array(String)')}")
    n = q.param(min_requests, "UInt64")
    where = q.where()
    ignored_filters = bool(scope.agents or scope.models or scope.variants)
    tenants = run_query(
        client,
        "SELECT tenant_id, count(), sum(requests), sum(repeated_requests),"  # noqa: S608
        f" maxIf(repeated_share, requests >= {n}), maxIf(top_user_share, requests >= {n}),"
        f" countIf(requests >= {n}) FROM abuse_windows FINAL WHERE {where} GROUP BY tenant_id",
        q.params,
    )
    # per tenant: the user who was a window's top user for the most requests
    users = run_query(
        client,
        "SELECT tenant_id, top_user, sum(top_user_requests) AS r FROM abuse_windows FINAL"  # noqa: S608
        f" WHERE {where} AND top_user != '' GROUP BY tenant_id, top_user"
        " ORDER BY tenant_id, r DESC, top_user",
        q.params,
    )
    top_user: dict[str, tuple[str, int]] = {}
    for tenant, user, r in users:
        top_user.setdefault(tenant, (user, r))
    per_tenant = []
    for tenant, windows, req, rep, peak_rep, peak_user, busy in tenants:
        user, user_req = top_user.get(tenant, ("", 0))
        peaks = (peak_rep, peak_user) if busy else (None, None)
        per_tenant.append((tenant, windows, req, rep, ratio(rep, req), peaks[0], user, user_req, peaks[1]))
    per_tenant.sort(key=lambda r: (-max(r[5] or 0, r[8] or 0), r[0]))
    tenant_table = Table(
        "abuse",
        [
            Column("tenant", "text"),
            Column("windows", "int"),
            Column("requests", "int"),
            Column("repeated_requests", "int"),
            Column("repeated_share", "pct"),
            Column("peak_repeated_share", "pct"),
            Column("top_user", "text"),
            Column("top_user_requests", "int"),
            Column("peak_user_share", "pct"),
        ],
        per_tenant,
        note=(
            f"repeated: the prompt was already sent in the same window; peaks over windows of"
            f" >= {min_requests} requests; top_user: the user with the most requests as a window's top user"
            + ("; per tenant: --agent, --model and --variant do not apply" if ignored_filters else "")
        ),
    )
    windows_rows = run_query(
        client,
        "SELECT window_start, tenant_id, requests, repeated_share, distinct_prompts,"  # noqa: S608
        " top_prompt_requests, top_user, top_user_requests, top_user_share FROM abuse_windows FINAL"
        f" WHERE {where} AND requests >= {n}"
        " ORDER BY greatest(repeated_share, top_user_share) DESC, window_start, tenant_id"
        f" LIMIT {q.param(limit, 'UInt64')}",
        q.params,
    )
    window_table = Table(
        "abuse_windows",
        [
            Column("window_start", "time"),
            Column("tenant", "text"),
            Column("requests", "int"),
            Column("repeated_share", "pct"),
            Column("distinct_prompts", "int"),
            Column("top_prompt_requests", "int"),
            Column("top_user", "text"),
            Column("top_user_requests", "int"),
            Column("top_user_share", "pct"),
        ],
        [(to_ms(r[0]), *r[1:]) for r in windows_rows],
        note=f"the {limit} windows of >= {min_requests} requests with the highest repeated or top-user share",
    )
    return tenant_table, window_table
