"""The runbook's questions as ClickHouse queries over judgeflow's tables.

Every function takes a client (`sinks.clickhouse.connect`) and a `Scope`
(time range and filters) and returns a `Table`: named, typed columns and
rows of plain values. Money stays `Decimal` from the `Decimal(38, 12)`
columns to the output (never a float); rates and token averages are floats.

Spend comes from `cost_windows`: the newest version of every window plus its
correction rows. A range is read at the coarsest grain that tiles it — whole
UTC days from the 1-day rollups, whole hours from the 1-hour ones, the rest
from the minutes — so a 30-day report reads ~30 rows per key, not 43,200.
A range is taken at minute resolution: a minute window counts when it
starts inside the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from core.errors import FatalError

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
PICO = Decimal("1e-12")

# --by dimension -> column
DIMENSIONS = {"tenant": "tenant_id", "agent": "agent", "model": "model", "variant": "variant"}


@dataclass(frozen=True)
class Scope:
    """What a report covers: [since, until) in event time, and optional filters."""

    since_ms: int
    until_ms: int
    now_ms: int
    now_from: str = "data"  # data (newest event time) | flag (--now) | clock (no data)
    tenants: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()

    def filters(self) -> dict[str, tuple[str, ...]]:
        return {
            "tenant_id": self.tenants,
            "agent": self.agents,
            "model": self.models,
            "variant": self.variants,
        }


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text | int | usd | usd_unit (per request) | float | pct | time | ratio


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    total: tuple[Any, ...] | None = None
    note: str = ""

    def dicts(self) -> list[dict[str, Any]]:
        names = [c.name for c in self.columns]
        return [dict(zip(names, r, strict=True)) for r in self.rows]


class ReportError(FatalError):
    """A report cannot be produced (bad arguments, nothing to read); the message says why."""


def by_columns(by: Sequence[str]) -> list[str]:
    bad = [b for b in by if b not in DIMENSIONS]
    if bad:
        msg = f"--by: unknown {', '.join(bad)}; use any of {', '.join(DIMENSIONS)} (comma-separated)"
        raise ReportError(msg)
    return [DIMENSIONS[b] for b in dict.fromkeys(by)]


# --- time ---------------------------------------------------------------------


def newest_event_ms(client: Any) -> int | None:
    """End of the newest 1-minute LLM window: the data's "now"."""
    rows = client.query(
        "SELECT max(window_start), count() FROM cost_windows WHERE window_s = 60 AND category = 'llm'"
    ).result_rows
    newest, n = rows[0]
    if not n:
        return None
    return _ms(newest) + MINUTE_MS


def available_grains(client: Any) -> tuple[int, ...]:
    """Window sizes (ms) present in `cost_windows`, coarsest first."""
    rows = client.query("SELECT DISTINCT window_s FROM cost_windows").result_rows
    grains = sorted((r[0] * 1000 for r in rows), reverse=True)
    return tuple(grains) or (MINUTE_MS,)


def segments(since_ms: int, until_ms: int, grains: Sequence[int]) -> list[tuple[int, int, int]]:
    """Tile [since, until) with (grain, start, end) pieces, coarsest grain first.

    A piece of grain g covers whole g-windows; what is left at either edge
    goes to the next finer grain; the finest grain takes the rest as is."""
    grains = sorted(grains, reverse=True)
    if since_ms >= until_ms:
        return []
    g, finer = grains[0], grains[1:]
    if not finer:
        return [(g, since_ms, until_ms)]
    lo = -(-since_ms // g) * g
    hi = until_ms // g * g
    if lo >= hi:
        return segments(since_ms, until_ms, finer)
    return [*segments(since_ms, lo, finer), (g, lo, hi), *segments(hi, until_ms, finer)]


# --- SQL helpers --------------------------------------------------------------


class _Sql:
    """Collects WHERE conditions and their bound parameters."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.params: dict[str, Any] = {}

    def param(self, value: Any, type_: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{type_}}}"

    def filters(self, scope: Scope) -> None:
        for column, values in scope.filters().items():
            if values:
                self.conditions.append(f"{column} IN {self.param(list(values), 'Array(String)')}")

    def time_range(self, column: str, since_ms: int, until_ms: int) -> None:
        self.conditions.append(
            f"{column} >= fromUnixTimestamp64Milli({self.param(since_ms, 'Int64')}, 'UTC')"
            f" AND {column} < fromUnixTimestamp64Milli({self.param(until_ms, 'Int64')}, 'UTC')"
        )

    def windows(self, scope: Scope, grains: Sequence[int], max_grain_ms: int | None = None) -> None:
        usable = [g for g in grains if max_grain_ms is None or g <= max_grain_ms] or [MINUTE_MS]
        parts = []
        for g, lo, hi in segments(scope.since_ms, scope.until_ms, usable):
            inner = _Sql()
            inner.params = self.params
            inner.time_range("window_start", lo, hi)
            parts.append(f"(window_s = {g // 1000} AND {inner.conditions[0]})")
        self.conditions.append("(" + (" OR ".join(parts) or "0") + ")")

    def where(self) -> str:
        return " AND ".join(self.conditions) or "1"


def _query(client: Any, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return client.query(sql, parameters=params).result_rows


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def per_request(amount: Decimal, requests: int) -> Decimal | None:
    return (amount / requests).quantize(PICO) if requests else None


def _ratio(a: int | float | Decimal, b: int | float | Decimal) -> float | None:
    return float(a) / float(b) if b else None


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
    q = _Sql()
    q.windows(scope, grains)
    q.filters(scope)
    select_keys = "".join(f"{k}, " for k in keys)
    group = f"GROUP BY {', '.join(keys)}" if keys else ""
    rows = _query(
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
    out = []
    totals: list[Any] = [0, 0, 0, Decimal(0), 0, 0, Decimal(0)]
    for r in rows:
        k, (req, inp, outp, usd, unknown, jcalls, jusd) = r[: len(keys)], r[len(keys) :]
        for i, v in enumerate((req, inp, outp, usd, unknown, jcalls, jusd)):
            totals[i] += v
        out.append(
            (
                *k,
                req,
                inp,
                outp,
                usd,
                per_request(usd, req),
                unknown,
                jcalls,
                jusd,
                usd + jusd,
                _ratio(usd + jusd, grand),
            )
        )
    req, inp, outp, usd, unknown, jcalls, jusd = totals
    total = (
        *(["total"] + [""] * (len(keys) - 1) if keys else []),
        req,
        inp,
        outp,
        usd,
        per_request(usd, req),
        unknown,
        jcalls,
        jusd,
        usd + jusd,
        1.0 if grand else None,
    )
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
    q = _Sql()
    q.windows(scope, grains)
    q.filters(scope)
    q.conditions.append("category = 'llm'")
    rows = _query(
        client,
        f"SELECT {cols}, {_SPEND} FROM cost_windows FINAL WHERE {q.where()}"  # noqa: S608
        f" GROUP BY {cols} HAVING s_requests > 0 ORDER BY {cols}",
        q.params,
    )
    e = _Sql()
    e.time_range("ts", scope.since_ms, scope.until_ms)
    e.filters(scope)
    judge_usd = {
        tuple(r[:-1]): r[-1]
        for r in _query(
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
                _ratio(cpr, base) if cpr is not None and base else None,
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
    qrows = _query(
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
    q = _Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    q.filters(scope)
    q.conditions.append(f"cost_usd >= {q.param(str(min_cost_usd), 'Decimal(38, 12)')}")
    rows = _query(
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
        [(_ms(r[0]), *r[1:]) for r in rows],
        note=f"requests costing at least ${min_cost_usd}",
    )


# --- cost over time -----------------------------------------------------------


def series(client: Any, scope: Scope, by: Sequence[str], grains: Sequence[int], bucket_ms: int) -> Table:
    """Spend per time bucket and group (buckets aligned to the epoch, UTC)."""
    keys = by_columns(by)
    q = _Sql()
    q.windows(scope, [g for g in grains if bucket_ms % g == 0], max_grain_ms=bucket_ms)
    q.filters(scope)
    bucket = f"toStartOfInterval(window_start, INTERVAL {bucket_ms // 1000} SECOND, 'UTC')"
    select_keys = "".join(f", {k}" for k in keys)
    rows = _query(
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
            (_ms(r[0]), *r[1 : n + 1], r[n + 1], r[n + 4], r[n + 7])
            for r in rows
            if r[n + 1] or r[n + 4] or r[n + 7]
        ],
    )


# --- budget -------------------------------------------------------------------


def month_bounds(ts_ms: int) -> tuple[int, int]:
    d = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    end = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return _ms(start), _ms(end)


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
                _ratio(usd, limit) if limit else None,
                _ratio(projected, limit) if limit else None,
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
        note=f"month {month} to {_iso(scope.now_ms)}: {elapsed / DAY_MS:.2f} of"
        f" {(end - start) // DAY_MS} days; LLM spend projected linearly to the month's end",
    )


def _filter_args(scope: Scope) -> tuple[tuple[str, ...], ...]:
    return (scope.tenants, scope.agents, scope.models, scope.variants)


# --- tokens -------------------------------------------------------------------


def tokens(client: Any, scope: Scope, by: Sequence[str]) -> Table:
    """Tokens per request: mean, median, p95 and max of input and output, and the cached share."""
    keys = by_columns(by)
    q = _Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    q.filters(scope)
    select_keys = "".join(f"{k}, " for k in keys)
    group = f"GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""
    rows = _query(
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


# --- alerts and pricing issues -------------------------------------------------


def alerts(client: Any, scope: Scope) -> Table:
    """Alert transitions in the range, oldest first."""
    q = _Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    if scope.tenants:
        q.conditions.append(f"tenant_id IN {q.param(list(scope.tenants), 'Array(String)')}")
    rows = _query(
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
        [(_ms(r[0]), *r[1:6], Decimal(r[6]), Decimal(r[7]), r[8]) for r in rows],
    )


def pricing(client: Any, scope: Scope) -> Table:
    """Models without a price, per day, with the requests they carried."""
    q = _Sql()
    q.time_range("ts", scope.since_ms, scope.until_ms)
    q.filters(scope)
    q.conditions.append("cost_source = 'unknown'")
    rows = _query(
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


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- abuse signals ---------------------------------------------------------------


def abuse(client: Any, scope: Scope, limit: int, min_requests: int) -> tuple[Table, Table]:
    """Repeated prompts and single users (`abuse_windows`): per tenant over the range, and the
    windows with the highest repeated or top-user share. Peaks count only windows with at least
    `min_requests` requests (a window of three identical requests is not a bot)."""
    q = _Sql()
    q.time_range("window_start", scope.since_ms, scope.until_ms)
    if scope.tenants:
        q.conditions.append(f"tenant_id IN {q.param(list(scope.tenants), 'Array(String)')}")
    n = q.param(min_requests, "UInt64")
    where = q.where()
    ignored_filters = bool(scope.agents or scope.models or scope.variants)
    tenants = _query(
        client,
        "SELECT tenant_id, count(), sum(requests), sum(repeated_requests),"  # noqa: S608
        f" maxIf(repeated_share, requests >= {n}), maxIf(top_user_share, requests >= {n}),"
        f" countIf(requests >= {n}) FROM abuse_windows FINAL WHERE {where} GROUP BY tenant_id",
        q.params,
    )
    # per tenant: the user who was a window's top user for the most requests
    users = _query(
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
        per_tenant.append((tenant, windows, req, rep, _ratio(rep, req), peaks[0], user, user_req, peaks[1]))
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
    windows_rows = _query(
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
        [(_ms(r[0]), *r[1:]) for r in windows_rows],
        note=f"the {limit} windows of >= {min_requests} requests with the highest repeated or top-user share",
    )
    return tenant_table, window_table
