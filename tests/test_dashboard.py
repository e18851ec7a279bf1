"""The Grafana dashboard (docker/grafana/dashboards/judgeflow.json) queries only what the job exports:
every panel's and template variable's PromQL is valid (`promtool check rules` on the expressions as
recording rules), names metrics registered in this process's Prometheus registry, and filters or groups
only by labels those metrics have. The budget panels' colours follow the flow config's alert levels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from prometheus_client import REGISTRY

from core import metrics
from sinks import clickhouse, webhooks
from tests.conftest import flow_settings

REGISTERED_BY = (metrics, clickhouse, webhooks, BYTEWAX_CONSUMER_LAG_GAUGE)  # importing them registers

DASHBOARD = Path(__file__).resolve().parents[1] / "docker" / "grafana" / "dashboards" / "judgeflow.json"

AGGREGATIONS = {
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "limitk", "limit_ratio",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      |(?P<matchers>\{[^}]*\})
      |(?P<range>\[[^\]]*\])
      |(?P<duration>\d+(?:ms|[smhdwy])\b)
      |(?P<number>\d+(?:\.\d*)?(?:e[+-]?\d+)?)
      |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<open>\()
      |(?P<other>\S)""",
    re.VERBOSE,
)
MATCHER = re.compile(
    r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,?"""
)


def references(expr: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """(metric names selected, label names grouped by, (metric, label) pairs matched on) in a PromQL
    expression; functions, aggregations, keywords and the contents of strings are not names."""
    metrics: set[str] = set()
    grouped: set[str] = set()
    matched: set[tuple[str, str]] = set()
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr)]
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "name" and text in GROUPING:
            if nxt[0] != "open":  # group_left / group_right without labels
                i += 1
                continue
            close = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")")
            grouped |= {t for k, t in tokens[i + 2 : close] if k == "name"}
            i = close + 1
            continue
        if kind == "name" and (nxt[0] == "open" or text in AGGREGATIONS):
            i += 1  # a function or an aggregation
            continue
        if kind == "name" and text.lower() not in KEYWORDS:
            metrics.add(text)
            if nxt[0] == "matchers":
                body = nxt[1][1:-1]
                found = MATCHER.findall(body)
                if MATCHER.sub("", body).strip():
                    pytest.fail(f"cannot read the label matchers {nxt[1]!r} in {expr!r}")
                matched |= {(text, label) for label, _ in found}
                i += 1
        i += 1
    return metrics, grouped, matched


SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported() -> dict[str, tuple[str, ...]]:
    """Series name -> label names, for everything registered in this process (the job's metrics, the
    ClickHouse and webhook sinks', bytewax's Kafka lag gauge, the process collector's), named as
    Prometheus stores them (a counter `x` is the series `x_total`, never `x`)."""
    out: dict[str, tuple[str, ...]] = {}
    for collector in set(REGISTRY._names_to_collectors.values()):
        labels = tuple(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            for suffix in SUFFIXES.get(family.type, ("",)):
                out[family.name + suffix] = labels + (("le",) if suffix == "_bucket" else ())
            for sample in family.samples:
                out.setdefault(sample.name, tuple(k for k in sample.labels if k not in labels) + labels)
    return out


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable, with Grafana's variables filled in."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            call = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert call, f"variable {var['name']}: not a label_values(metric, label) query: {query!r}"
            found.append((f"variable {var['name']!r}", f"group by ({call[2]}) ({call[1]})"))
    variables = {"$tenant": ".*", "$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    return [(where, re.sub(r"\$\w+", lambda m: variables[m.group()], e)) for where, e in found]


def problems(queries: list[tuple[str, str]]) -> list[str]:
    """Every metric a query selects must be exported, and every label it matches on or groups by
    must be a label of a metric it selects."""
    known = exported()
    out = []
    for where, expr in queries:
        names, grouped, matched = references(expr)
        if not names:
            out.append(f"{where}: selects no metric: {expr}")
        for name in sorted(names - known.keys()):
            out.append(f"{where}: {name} is not a metric the job exports")
        labels = {label for n in names & known.keys() for label in known[n]}
        for metric, label in sorted(matched):
            if metric in known and label not in known[metric]:
                out.append(f"{where}: {metric} has no label {label!r} (it has {list(known[metric])})")
        for label in sorted(grouped - labels):
            out.append(f"{where}: groups by {label!r}, a label none of {sorted(names)} has")
    return out


def test_every_dashboard_query_reads_metrics_and_labels_the_job_exports():
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 20
    assert not problems(queries)
    selected = set().union(*(references(e)[0] for _, e in queries))
    # the spend panels are there
    assert {
        "judgeflow_llm_cost_usd_total",
        "judgeflow_llm_requests_total",
        "judgeflow_llm_tokens_total",
        "judgeflow_llm_request_latency_seconds_bucket",
        "judgeflow_cost_usd_total",
    } <= selected


def test_the_check_fails_on_a_metric_or_label_the_job_does_not_export():
    bad = [
        ("typo", 'sum(rate(judgeflow_llm_cost_usd{tenant=~".*"}[5m]))'),
        ("label", 'sum(rate(judgeflow_llm_cost_usd_total{tenat="acme"}[5m]))'),
        ("grouping", "sum by (region) (rate(judgeflow_llm_requests_total[5m]))"),
        (
            "histogram",
            "histogram_quantile(0.5, sum by (le) (rate(judgeflow_llm_request_latency_bucket[5m])))",
        ),
    ]
    for where, expr in bad:
        assert problems([(where, expr)]), f"the check let {expr!r} through"
    found = problems(bad)
    assert "typo: judgeflow_llm_cost_usd is not a metric the job exports" in found
    assert any("has no label 'tenat'" in f for f in found)
    assert any("groups by 'region'" in f for f in found)
    assert "histogram: judgeflow_llm_request_latency_bucket is not a metric the job exports" in found
    # words that are not metric names are not taken for one
    names, grouped, _ = references(
        'sum by (tenant) (increase(judgeflow_cost_usd_total{category="judge", tenant=~"sum|rate"}[1h]'
        " offset 5m)) / on (tenant) group_left sum by (tenant) (increase(judgeflow_cost_usd_total[1h]))"
        " > bool 0.5"
    )
    assert names == {"judgeflow_cost_usd_total"} and grouped == {"tenant"}


def test_every_dashboard_query_is_valid_promql(tmp_path):
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: `apt-get install -y --no-install-recommends prometheus`")
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(queries)]
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_the_tenant_selector_filters_every_panel_on_a_metric_with_a_tenant_label():
    dashboard = json.loads(DASHBOARD.read_text())
    [tenant] = [v for v in dashboard["templating"]["list"] if v["name"] == "tenant"]
    assert tenant["multi"] and tenant["includeAll"] and tenant["allValue"] == ".*"
    known = exported()
    filtered = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name in references(expr.replace("$tenant", ".*"))[0]:
                if "tenant" not in known.get(name, ()):
                    continue
                for selector in re.finditer(rf"(?<![\w:]){name}(\{{[^}}]*\}})?", expr):
                    assert 'tenant=~"$tenant"' in (selector[1] or ""), (
                        f"panel {panel['title']!r} ignores the tenant selector: {expr}"
                    )
                    filtered += 1
    assert filtered >= 12


def test_the_budget_panels_colour_at_the_flow_configs_alert_levels():
    alerts = flow_settings().flow.alerts
    dashboard = json.loads(DASHBOARD.read_text())

    def steps(title_start: str) -> list[Decimal]:
        [panel] = [p for p in dashboard["panels"] if p["title"].startswith(title_start)]
        found = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [Decimal(str(s["value"])) for s in found if s["value"] is not None]

    burn = alerts.burn_rate
    assert steps("Burn rate per tenant") == [burn.warn, burn.critical, burn.emergency]
    assert steps("Spend per tenant, last 24 h") == [alerts.daily_spend.critical]


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
