"""Every metric the shipped Grafana dashboard and Prometheus rules query is emitted by a whole flow
with bad records, judge faults and alerts (a panel that queries a silent metric stays empty forever),
and the spend metrics add up to what the same run wrote to ClickHouse, per tenant."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from core import metrics
from simulators.kafka_mock import produce_all
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

DOCKER = Path(__file__).resolve().parents[1] / "docker"
NAME = re.compile(r"(?<![:\w])(judgeflow_[a-z0-9_]+)")
# what the rules query from bytewax (the Kafka consumer lag) and from the Prometheus client (process start)
OTHER_NAME = re.compile(r"(?<![:\w])((?:bytewax|process)_[a-z0-9_]+)")


def queried_metrics() -> set[str]:
    """judgeflow_* names in the rules' expressions and the dashboard's (recorded `a:b:c` names excluded)."""
    texts = []
    for rules in (DOCKER / "prometheus" / "rules").glob("*.yml"):
        texts += [line for line in rules.read_text().splitlines() if not line.strip().startswith("#")]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            texts.extend(v for k, v in node.items() if k == "expr" and isinstance(v, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for dashboard in (DOCKER / "grafana" / "dashboards").glob("*.json"):
        walk(json.loads(dashboard.read_text()))
    return {re.sub(r"_(bucket|sum|count)$", "", m) for t in texts for m in NAME.findall(t)}


def per_tenant(name: str, **match: str) -> dict[str, float]:
    """A counter's samples summed per tenant label (over agents, models, kinds), `match` filtering."""
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                out[s.labels["tenant"]] = out.get(s.labels["tenant"], 0.0) + s.value
    return out


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {t: v - before.get(t, 0.0) for t, v in after.items() if v - before.get(t, 0.0)}


def test_every_queried_metric_is_emitted(kafka, chdb_dsn, database):
    metrics.reset_labels()  # no tenant of this run folded into __other__ by earlier tests
    spend = {
        "llm": ("judgeflow_llm_cost_usd_total", {}),
        "requests": ("judgeflow_llm_requests_total", {}),
        "input": ("judgeflow_llm_tokens_total", {"kind": "input"}),
        "judge": ("judgeflow_cost_usd_total", {"category": "judge"}),
    }
    before = {k: per_tenant(name, **match) for k, (name, match) in spend.items()}
    wanted = queried_metrics()
    assert {"judgeflow_dead_letters_total", "judgeflow_judge_calls_total"} <= wanted
    kafka.create_topic("llm-events", 2)
    produce_all(kafka.bootstrap, "llm-events", list(generate(limit=1500)))  # with malformed records
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    with LocalEndpoint(
        EndpointConfig(latency=2.0, seed=1, rate_500=0.1, rate_429=0.05, retry_after_s=0.05)
    ) as ep:
        settings = topic_flow_settings(
            kafka, chdb_dsn, database, ep, topic="llm-events", **{"alerts.burn_rate.warn": "0.01"}
        )
        run_flow(settings)
    # the spend metrics agree with the rows, tenant by tenant
    got = {k: grown(before[k], per_tenant(name, **match)) for k, (name, match) in spend.items()}
    wrote = {
        "llm": "SELECT tenant_id, sum(cost_usd) FROM llm_events FINAL GROUP BY tenant_id",
        "requests": "SELECT tenant_id, count() FROM llm_events FINAL GROUP BY tenant_id",
        "input": "SELECT tenant_id, sum(input_tokens) FROM llm_events FINAL GROUP BY tenant_id",
        "judge": "SELECT tenant_id, sum(judge_cost_usd) FROM cost_windows FINAL"
        " WHERE category = 'judge' AND window_s = 60 GROUP BY tenant_id HAVING sum(judge_cost_usd) > 0",
    }
    for what, sql in wrote.items():
        want = {t: float(v) for t, v in rows(client, sql) if v}
        assert got[what] == pytest.approx(want, rel=1e-9), (what, got[what], want)
    assert len(got["judge"]) >= 2  # judged tenants have judge spend
    exposed = generate_latest(REGISTRY).decode()
    samples = {line.split("{")[0].split(" ")[0] for line in exposed.splitlines() if not line.startswith("#")}
    missing = {m for m in wanted if not ({m, f"{m}_total", f"{m}_bucket"} & samples)}
    assert not missing, f"queried by docker/ but never emitted: {sorted(missing)}"
    rules = "\n".join(p.read_text() for p in (DOCKER / "prometheus" / "rules").glob("*.yml"))
    others = set(OTHER_NAME.findall(rules))
    assert {"bytewax_kafka_consumer_lag", "process_start_time_seconds"} <= others
    assert not others - samples, f"queried by the rules but never emitted: {sorted(others - samples)}"
