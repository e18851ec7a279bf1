"""The quality side read back for the reports: the quality estimates rolled up from their 1-window
rows (each with its stratified interval and the prediction-powered one, computed by
`operators.estimates` from the design the sampler kept) and the judge savings ledger per tenant."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flows.report_queries import Column, Scope, Table
from operators.estimates import DesignSums, EstimateSums, design_of, ppi_estimate, stratified_estimate
from sinks.clickhouse import check_identifier

# --- quality estimates ------------------------------------------------------------


@dataclass(frozen=True)
class EstimateRow:
    """One rolled-up estimate; `window_start` is None when rolled over the whole period.
    `ppi_*` is the prediction-powered estimate (NaN where no tier-0 rule covers the metric)."""

    tenant_id: str
    agent: str
    metric: str
    window_start: datetime | None
    judged: int
    flagged: int
    population: float
    rate: float
    ci_low: float
    ci_high: float
    ppi_rate: float = math.nan
    ppi_low: float = math.nan
    ppi_high: float = math.nan
    cheap_flagged: float = 0.0  # events the tier-0 rules flagged (all events, not only the judged)


_DESIGN_COLUMNS = tuple(DesignSums.__slots__)

ESTIMATES_SQL = """
SELECT tenant_id, agent, metric, {bucket} AS bucket,
       sum(judged), sum(flagged), sum(sum_w), sum(sum_wy), sum(sum_ww1), sum(sum_ww1y),
       {design}
FROM {database}.quality_estimates FINAL
WHERE window_start >= {{since:DateTime64(3)}} AND window_start < {{until:DateTime64(3)}}
  AND ({{tenant:String}} = '' OR tenant_id = {{tenant:String}})
GROUP BY tenant_id, agent, metric, bucket
ORDER BY tenant_id, agent, metric, bucket
"""


def query_estimates(
    client: Any,
    database: str,
    *,
    since: datetime,
    until: datetime,
    tenant: str = "",
    bucket_s: int | None = None,
) -> list[EstimateRow]:
    """Estimates per (tenant, agent, metric) over [since, until), rolled up from the
    1-window rows: over the whole period, or per `bucket_s` seconds (e.g. 3600).

    `client` is a clickhouse-connect client (e.g. `sinks.clickhouse.connect(dsn)`).
    """
    bucket = (
        "toDateTime64(0, 3, 'UTC')"
        if bucket_s is None
        else (f"toStartOfInterval(window_start, INTERVAL {int(bucket_s)} SECOND)")
    )
    sql = ESTIMATES_SQL.format(
        bucket=bucket,
        database=check_identifier(database),
        design=", ".join(f"sum({c})" for c in _DESIGN_COLUMNS),
    )
    params = {"since": _utc(since), "until": _utc(until), "tenant": tenant}
    out = []
    for row in client.query(sql, parameters=params).result_rows:
        tenant_id, agent, metric, start, judged, flagged, sw, swy, sww1, sww1y = row[:10]
        s = EstimateSums(int(judged), int(flagged), sw, swy, sww1, sww1y)
        d = DesignSums(*(float(x) for x in row[10:]))
        if d.exact_events + d.sampled_events <= 0:
            d = design_of(s)  # rows written before the design was kept
        rate, low, high = stratified_estimate(d)
        ppi, ppi_low, ppi_high = ppi_estimate(d)
        out.append(
            EstimateRow(
                tenant_id,
                agent,
                metric,
                None if bucket_s is None else _aware(start),
                s.judged,
                s.flagged,
                sw,
                rate,
                low,
                high,
                ppi,
                ppi_low,
                ppi_high,
                d.cheap_flagged,
            )
        )
    return out


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t  # the engine returns UTC, naive


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        msg = f"query_estimates: {t!r} needs a time zone (UTC)"
        raise ValueError(msg)
    return t.astimezone(UTC)


# --- the savings ledger ---------------------------------------------------------


@dataclass(frozen=True)
class SavingsRow:
    tenant_id: str
    events: int
    baseline_calls: int
    baseline_usd: Decimal
    judge_calls: int
    judge_usd: Decimal
    avoided_calls: dict[str, int]  # sampling | cache | cascade
    avoided_usd: dict[str, Decimal]  # exact, as stored
    judged_events: int = 0  # events the sampler chose
    allowed_events: int = 0  # the most its cap or judged-share ceiling allowed
    forced_events: int = 0  # events the rules would judge all of (tier-0 flags, long conversations)

    def shares(self) -> tuple[float | None, float | None, float | None]:
        """(judged, ceiling, forced) as shares of the events the sampler counted; None for rows
        written before these were kept."""
        if not self.events or not self.allowed_events:
            return None, None, None
        n = self.events
        return self.judged_events / n, self.allowed_events / n, self.forced_events / n


SAVINGS_SQL = """
SELECT tenant_id, sum(events), sum(baseline_calls), sum(baseline_usd), sum(judge_calls), sum(judge_usd),
       sum(sampling_calls), sum(sampling_usd), sum(cache_calls), sum(cache_usd),
       sum(cascade_calls), sum(cascade_usd), sum(judged_events), sum(allowed_events), sum(forced_events)
FROM {database}.judge_savings FINAL
WHERE window_start >= {{since:DateTime64(3)}} AND window_start < {{until:DateTime64(3)}}
  AND ({{tenant:String}} = '' OR tenant_id = {{tenant:String}})
GROUP BY tenant_id ORDER BY tenant_id
"""


def query_savings(
    client: Any, database: str, *, since: datetime, until: datetime, tenant: str = ""
) -> list[SavingsRow]:
    """The savings ledger per tenant over [since, until)."""
    sql = SAVINGS_SQL.format(database=check_identifier(database))
    params = {"since": since.astimezone(UTC), "until": until.astimezone(UTC), "tenant": tenant}
    out = []
    for r in client.query(sql, parameters=params).result_rows:
        t, ev, bc, bu, jc, ju, sc, su, cc, cu, kc, ku, je, ae, fe = r
        out.append(
            SavingsRow(
                t,
                int(ev),
                int(bc),
                Decimal(bu),
                int(jc),
                Decimal(ju),
                {"sampling": int(sc), "cache": int(cc), "cascade": int(kc)},
                {"sampling": Decimal(su), "cache": Decimal(cu), "cascade": Decimal(ku)},
                int(je),
                int(ae),
                int(fe),
            )
        )
    return out


# --- the report tables -----------------------------------------------------------


def quality(client: Any, scope: Scope, database: str) -> Table:
    """Flagged rates per (tenant, agent, metric): stratified Horvitz-Thompson estimates from
    the sampled verdicts, with 95% intervals, and beside them the prediction-powered ones
    (the tier-0 rules on every event corrected by the judged residuals; `operators.estimates`)."""
    tenant = scope.tenants[0] if len(scope.tenants) == 1 else ""
    rows = query_estimates(
        client, database, since=_dt(scope.since_ms), until=_dt(scope.until_ms), tenant=tenant
    )
    keep = [
        r
        for r in rows
        if (not scope.tenants or r.tenant_id in scope.tenants)
        and (not scope.agents or r.agent in scope.agents)
    ]
    return Table(
        "quality_estimates",
        [
            Column("tenant", "text"),
            Column("agent", "text"),
            Column("metric", "text"),
            Column("judged", "int"),
            Column("flagged", "int"),
            Column("population_est", "float"),
            Column("flagged_rate", "pct"),
            Column("ci95_low", "pct"),
            Column("ci95_high", "pct"),
            Column("ppi_rate", "pct"),
            Column("ppi_ci95_low", "pct"),
            Column("ppi_ci95_high", "pct"),
        ],
        [
            (
                r.tenant_id,
                r.agent,
                r.metric,
                r.judged,
                r.flagged,
                r.population,
                r.rate,
                r.ci_low,
                r.ci_high,
                *(None if math.isnan(x) else x for x in (r.ppi_rate, r.ppi_low, r.ppi_high)),
            )
            for r in keep
        ],
        note="rates estimated from sampled verdicts, stratum by stratum (weights 1 / inclusion"
        " probability); ppi: the tier-0 rules' flags on every event plus the judged events'"
        " residuals (judge - rules), '-' where no tier-0 rule covers the metric",
    )


def savings(client: Any, scope: Scope, database: str, ceiling: Callable[[str], float] | None = None) -> Table:
    """The judge savings ledger per tenant: against judging every event on every metric
    with the most expensive configured judge; and the share of events judged against the
    tenant's judged-share `ceiling` (from `[sampling]`; 0: none)."""
    tenant = scope.tenants[0] if len(scope.tenants) == 1 else ""
    since, until = _dt(scope.since_ms), _dt(scope.until_ms)
    rows = query_savings(client, database, since=since, until=until, tenant=tenant)
    keep = [r for r in rows if not scope.tenants or r.tenant_id in scope.tenants]
    return Table(
        "savings",
        [
            Column("tenant", "text"),
            Column("events", "int"),
            Column("judge_everything_calls", "int"),
            Column("judge_everything_usd", "usd"),
            Column("judge_calls", "int"),
            Column("judge_usd", "usd"),
            Column("avoided_by_sampling_usd", "usd"),
            Column("avoided_by_cache_usd", "usd"),
            Column("avoided_by_cascade_usd", "usd"),
            Column("judged_events", "int"),
            Column("judged_share", "pct"),
            Column("share_ceiling", "pct"),
            Column("allowed_share", "pct"),
            Column("forced_share", "pct"),
        ],
        [
            (
                r.tenant_id,
                r.events,
                r.baseline_calls,
                r.baseline_usd,
                r.judge_calls,
                r.judge_usd,
                r.avoided_usd.get("sampling", Decimal(0)),
                r.avoided_usd.get("cache", Decimal(0)),
                r.avoided_usd.get("cascade", Decimal(0)),
                r.judged_events,
                *_judged_shares(r, ceiling),
            )
            for r in keep
        ],
        note="judged_share: events the sampler chose; share_ceiling: sampling.max_judged_share (or the"
        " tenant's); allowed_share: what its windows allowed (that ceiling, at least min_per_stratum per"
        " window, and max_per_tenant_per_window; 100% where nothing binds); forced_share: events tier-0"
        " flags or length would have judged in full",
    )


def _judged_shares(r: Any, ceiling: Callable[[str], float] | None) -> tuple[float | None, ...]:
    judged, allowed, forced = r.shares()
    configured = ceiling(r.tenant_id) if ceiling is not None else 0.0
    return judged, configured if 0 < configured < 1 else None, allowed, forced


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
