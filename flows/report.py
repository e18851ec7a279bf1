"""`judgeflow report ...`: the cost runbook's questions, answered from ClickHouse.

    judgeflow report cost      spend and requests       [--by tenant,agent,model,variant]
    judgeflow report variants  variants side by side    [--by agent] [--baseline NAME]
                               (cost per request, tokens per request, judged quality)
    judgeflow report top       most expensive requests  [--limit 20] [--min-cost 0.01]
    judgeflow report hourly    cost per hour            [--by tenant]
    judgeflow report budget    month to date vs budget  [--budget USD]
    judgeflow report tokens    tokens per request       [--by agent,model]
    judgeflow report quality   flagged rates with 95% intervals (Horvitz-Thompson)
    judgeflow report savings   what sampling, the cache and the cascade saved
    judgeflow report abuse     repeated prompts and single users per tenant  [--limit 20]
    judgeflow report alerts    alert transitions
    judgeflow report pricing   models without a price (requests counted with cost unknown)
    judgeflow report all       all of the above

Every command takes a time range — `--last 1h|24h|7d` (default 24h), or
`--since T [--until T]` — where times are RFC 3339 / ISO 8601 (UTC when no
offset is given) or epoch milliseconds. `--last` counts back from the NEWEST
EVENT TIME IN THE DATA (the end of the newest 1-minute window), not the wall
clock, so a replayed or demo data set (2023-11-16) reads naturally; pass
`--now T` to count back from another time. Filters: --tenant, --agent,
--model, --variant (repeat or comma-separate). Output: text tables, `--json`
(money as exact decimal strings), `--html FILE` (one self-contained page with
charts: cost over time per tenant, alerts timeline, variant comparison).
Where: `--dsn` (chdb:///dir or http://host:8123), else JUDGEFLOW_CLICKHOUSE_DSN,
else the flow config's [clickhouse] section (`--config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from flows import report_quality
from flows import report_queries as rq
from flows import report_signals as signals
from flows import report_spend as spend
from flows.config import ConfigError, Settings, load_settings
from flows.report_format import TEXT_CUT, Report, iso
from flows.report_html import render_html
from flows.report_queries import MINUTE_MS, ReportError, Scope, Table

COMMANDS = (
    "cost",
    "variants",
    "top",
    "hourly",
    "budget",
    "tokens",
    "quality",
    "savings",
    "abuse",
    "alerts",
    "pricing",
    "all",
)
_DEFAULT_BY = {
    "cost": "tenant",
    "variants": "tenant,agent",
    "hourly": "tenant",
    "budget": "tenant",
    "tokens": "agent,model",
}
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_MS = {"s": 1000, "m": MINUTE_MS, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def add_report_parser(sub: Any) -> None:
    """Register `judgeflow report <command>` on the `judgeflow` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the data is")
    where.add_argument("--config", "-c", type=Path, default=None, help="flow config TOML (DSN, budgets)")
    where.add_argument(
        "--dsn", default=None, help="ClickHouse: chdb:///abs/dir or http://user:pass@host:8123"
    )
    where.add_argument("--database", default=None, help="database (default: the config's, judgeflow)")
    when = common.add_argument_group("time range (event time)")
    when.add_argument("--last", default=None, help="duration back from now, e.g. 1h, 24h, 7d (default 24h)")
    when.add_argument("--since", default=None, help="start, e.g. 2023-11-16T18:00Z or epoch ms")
    when.add_argument("--until", default=None, help="end (default: now)")
    when.add_argument(
        "--now",
        default=None,
        help="what --last counts back from (default: the newest event time in the data)",
    )
    what = common.add_argument_group("filters and output")
    for name in ("tenant", "agent", "model", "variant"):
        what.add_argument(f"--{name}", action="append", default=[], help=f"only this {name} (repeatable)")
    what.add_argument("--by", default=None, help="group by any of tenant,agent,model,variant ('' = total)")
    what.add_argument(
        "--json", action="store_true", help="machine-readable output (money as decimal strings)"
    )
    what.add_argument("--html", type=Path, default=None, help="also write the full report as one HTML file")
    what.add_argument(
        "--full",
        action="store_true",
        help="print long texts (alert messages, model lists) whole instead of cut at 60 characters",
    )

    report = sub.add_parser(
        "report",
        help="cost, variants, top requests, hourly series, budget, tokens, quality, savings, abuse, alerts,"
        " pricing from ClickHouse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = report.add_subparsers(required=True, metavar="REPORT", dest="report")
    helps = {
        "cost": "requests, tokens, LLM and judge spend per group",
        "variants": "variants side by side: cost and tokens per request, judged quality",
        "top": "the most expensive single requests",
        "hourly": "cost per hour",
        "budget": "month-to-date spend vs the monthly budget, projected",
        "tokens": "tokens per request: mean, p50, p95, max",
        "quality": "flagged rates per tenant, agent and metric: unbiased estimates with 95%% intervals",
        "savings": "judge calls and dollars avoided by sampling, the cache and the cascade",
        "abuse": "bots and abuse: the share of repeated prompts and of the top user per tenant and window",
        "alerts": "alert transitions",
        "pricing": "models without a price (requests counted with cost unknown)",
        "all": "every report above",
    }
    for name in COMMANDS:
        p = commands.add_parser(
            name, parents=[common], help=helps[name], description=helps[name].replace("%%", "%")
        )
        if name in ("variants", "all"):
            p.add_argument("--baseline", default=None, help="the variant others are compared with")
        if name in ("top", "all"):
            p.add_argument("--limit", type=int, default=20, help="how many requests (default 20)")
            p.add_argument(
                "--min-cost", type=Decimal, default=None, help="USD, default 0.01 (or the config's)"
            )
        if name in ("budget", "all"):
            p.add_argument("--budget", type=Decimal, default=None, help="monthly budget in USD per group")
        if name == "abuse":
            p.add_argument("--limit", type=int, default=20, help="how many windows (default 20)")
        if name in ("abuse", "all"):
            p.add_argument(
                "--min-requests",
                type=int,
                default=None,
                help="windows with fewer requests have no peak share (default: the abuse rules')",
            )
        p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        client = _connect(args, settings)
        scope = resolve_scope(args, client)
        report = build_report(args, client, scope, settings)
    except ReportError as exc:
        print(f"judgeflow report: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        if not isinstance(exc, ClickHouseError | OSError):
            raise
        print(f"judgeflow report: reading ClickHouse failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_text(cut=None if args.full else TEXT_CUT))
    if args.html is not None:
        full = report if args.report == "all" else build_report(args, client, scope, settings, full=True)
        args.html.write_text(render_html(full), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


# --- where and when -------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        raise ReportError(str(exc)) from None


def _connect(args: argparse.Namespace, settings: Settings) -> Any:
    from sinks.clickhouse import connect

    dsn = args.dsn or settings.flow.clickhouse.dsn
    database = args.database or settings.flow.clickhouse.database
    if dsn.startswith("chdb:"):
        path = Path(dsn[len("chdb:") :].removeprefix("//")).expanduser()
        if not (path / "metadata").exists() and not (path / "data").exists():
            msg = f"no ClickHouse data in {path} (run the flow first, e.g. `judgeflow demo`, or pass --dsn)"
            raise ReportError(msg)
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        client = connect(dsn, database)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    except ClickHouseError as exc:
        if not dsn.startswith("chdb:"):
            raise
        msg = (
            f"cannot open {dsn}: {exc}\nAnother process is using {path} (one process at a time can open a"
            " chdb directory: a running `judgeflow run` or `judgeflow demo`?). Read it once that process"
            " has stopped. To read while a job runs, serve the directory before starting the job and point"
            " both at the server:\n"
            f"  python -m simulators.chdb_http --path {path} --port 8123 &\n"
            "  JUDGEFLOW_CLICKHOUSE_DSN=http://127.0.0.1:8123 judgeflow run ...\n"
            f"  judgeflow report {getattr(args, 'report', 'cost')} --dsn http://127.0.0.1:8123"
        )
        raise ReportError(msg) from None
    if "cost_windows" not in _tables(client, database):
        msg = f"database {database!r} has no judgeflow tables (run the flow, or `judgeflow init-db`)"
        raise ReportError(msg)
    return client


def _tables(client: Any, database: str) -> set[str]:
    rows = client.query(
        "SELECT name FROM system.tables WHERE database = {d:String}", parameters={"d": database}
    ).result_rows
    return {r[0] for r in rows}


def parse_time(text: str) -> int:
    """Epoch milliseconds from epoch ms or an ISO 8601 time (UTC without an offset)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        msg = f"cannot read the time {text!r}: use e.g. 2023-11-16T18:00:00Z, 2023-11-16 18:00 or epoch ms"
        raise ReportError(msg) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def parse_duration(text: str) -> int:
    """Milliseconds from e.g. 90m, 1h, 24h, 7d, 1h30m."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        msg = f"cannot read the duration {text!r}: use e.g. 30m, 1h, 24h, 7d, 1h30m"
        raise ReportError(msg)
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def resolve_scope(args: argparse.Namespace, client: Any) -> Scope:
    if args.now:
        now, now_from = parse_time(args.now), "flag"
    else:
        newest = rq.newest_event_ms(client)
        now, now_from = (newest, "data") if newest is not None else (int(time.time() * 1000), "clock")
    if args.since and args.last:
        msg = "give either --last or --since, not both"
        raise ReportError(msg)
    until = parse_time(args.until) if args.until else now
    since = parse_time(args.since) if args.since else until - parse_duration(args.last or "24h")
    if since >= until:
        msg = f"empty time range: --since {iso(since)} is not before --until {iso(until)}"
        raise ReportError(msg)
    return Scope(
        since,
        until,
        now,
        now_from,
        tenants=_values(args.tenant),
        agents=_values(args.agent),
        models=_values(args.model),
        variants=_values(args.variant),
    )


def _values(given: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for g in given for v in g.split(",") if v.strip())


# --- building reports -------------------------------------------------------------


def build_report(
    args: argparse.Namespace, client: Any, scope: Scope, settings: Settings, *, full: bool = False
) -> Report:
    """The tables of one command (or of `all` when `full`), plus chart data for HTML."""
    name = "all" if full else args.report
    grains = rq.available_grains(client)
    by_arg = getattr(args, "by", None)

    def by(command: str) -> list[str]:
        text = by_arg if by_arg is not None and not full and name != "all" else _DEFAULT_BY[command]
        return [b.strip() for b in text.split(",") if b.strip()]

    alerts_cfg = settings.flow.alerts
    baseline = getattr(args, "baseline", None) or _config(alerts_cfg, "variant_cost", "baseline", "baseline")
    min_cost = getattr(args, "min_cost", None)
    if min_cost is None:
        min_cost = _config(alerts_cfg, "expensive_requests", "threshold_usd", Decimal("0.01"))
    limit = getattr(args, "limit", 20)

    database = getattr(args, "database", None) or settings.flow.clickhouse.database
    tables: list[Table] = []
    charts: dict[str, Any] = {}
    wanted = COMMANDS[:-1] if name == "all" else (name,)
    for command in wanted:
        if command == "cost":
            tables.append(spend.cost(client, scope, by("cost"), grains))
            if name == "all":
                detail = spend.cost(client, scope, ["tenant", "agent", "model", "variant"], grains)
                detail.title = "cost_detail"
                tables.append(detail)
        elif command == "variants":
            tables.extend(spend.variants(client, scope, by("variants"), grains, baseline))
        elif command == "top":
            tables.append(spend.top(client, scope, limit, min_cost))
        elif command == "hourly":
            hour = 3_600_000
            snapped = dataclasses.replace(
                scope, since_ms=scope.since_ms // hour * hour, until_ms=-(-scope.until_ms // hour) * hour
            )
            t = spend.series(client, snapped, by("hourly"), grains, hour)
            t.title = "hourly"
            tables.append(t)
        elif command == "budget":
            budgets = _budget_lookup(args, settings, by("budget"))
            tables.append(spend.budget(client, scope, by("budget"), grains, budgets))
        elif command == "tokens":
            tables.append(spend.tokens(client, scope, by("tokens")))
        elif command == "quality":
            tables.append(report_quality.quality(client, scope, database))
        elif command == "savings":
            tables.append(
                report_quality.savings(client, scope, database, settings.flow.sampling.judged_share)
            )
        elif command == "abuse":
            tables.extend(signals.abuse(client, scope, limit, _abuse_min_requests(args, alerts_cfg)))
        elif command == "alerts":
            tables.append(signals.alerts(client, scope))
        elif command == "pricing":
            tables.append(signals.pricing(client, scope))
    if name == "all":
        bucket = chart_bucket_ms(scope.until_ms - scope.since_ms)
        charts["bucket_ms"] = bucket
        charts["series"] = spend.series(client, scope, ["tenant"], grains, bucket)
    return Report(name, scope, tables, charts)


def chart_bucket_ms(span_ms: int) -> int:
    """A bucket that gives the cost-over-time chart at most ~180 points."""
    for bucket_s in (60, 300, 900, 3600, 4 * 3600, 86_400):
        if span_ms / (bucket_s * 1000) <= 180:
            return bucket_s * 1000
    return 7 * 86_400_000


def _config(alerts: Any, rule: str, key: str, default: Any) -> Any:
    """A value from the flow config's alert rules, if that rule exists there."""
    section = getattr(alerts, rule, None)
    return getattr(section, key, default) if section is not None else default


def _abuse_min_requests(args: argparse.Namespace, alerts: Any) -> int:
    """--min-requests, else the smaller minimum of the two abuse rules."""
    given = getattr(args, "min_requests", None)
    if given is not None:
        return given
    return min(_config(alerts, r, "min_requests", 30) for r in ("repeated_prompts", "single_user_share"))


def _budget_lookup(
    args: argparse.Namespace, settings: Settings, by: Sequence[str]
) -> Callable[[tuple[str, ...]], Decimal | None]:
    """--budget for every group; else, per tenant, the monthly budget of the alert rules."""
    given = getattr(args, "budget", None)
    if given is not None:
        return lambda _key: given
    alerts = settings.flow.alerts
    if list(by) != ["tenant"] or getattr(alerts, "monthly_projection", None) is None:
        return lambda _key: None

    def per_tenant(key: tuple[str, ...]) -> Decimal | None:
        rule_of = getattr(alerts, "rule", None)
        rule = rule_of("monthly_projection", key[0]) if rule_of else alerts.monthly_projection
        return getattr(rule, "budget_usd", None)

    return per_tenant
