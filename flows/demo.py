"""`judgeflow demo`: the whole job on one machine with nothing installed.

An in-process Kafka (librdkafka's mock cluster) is filled with an hour of
real production arrivals from two services (the sample traffic shipped in the
package, `flows/sample_data/`); the flow runs to the end of the topic on the
embedded ClickHouse engine (chdb) in a local folder, the in-process verdict
cache, and — without an OPENAI_API_KEY — a local judge endpoint whose
verdicts are simulated; then it prints what a platform team would ask first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from flows.config import Settings, load_settings
from judges.local import LocalJudge
from simulators.traffic import generate, shared_data

TOPIC = "llm-events"
# the mock cluster keeps ~5 MB per partition: 16 partitions hold the whole sample
PARTITIONS = 16


def run_demo(
    *,
    config: Path | None = None,
    workers: int = 1,
    limit: int | None = None,
    dsn: str | None = None,
    database: str | None = None,
    judge_latency_ms: float = 150.0,
    data: Path | None = None,
) -> int:
    """Run the demo; `data` is a folder with the full third-party sets instead of the packaged sample."""
    from bytewax.run import cli_main

    from flows.deps import build_deps
    from flows.judgeflow import build_flow
    from simulators.kafka_mock import MockCluster, produce_all
    from sinks.clickhouse import connect, ensure_schema

    base = load_settings(config)
    # read before anything starts: a missing data file stops here, with its name
    traffic = list(generate(limit=limit, data=shared_data(data) if data else None))
    with MockCluster() as kafka, _judge_endpoint(base, judge_latency_ms) as judge_urls:
        kafka.create_topic(TOPIC, PARTITIONS)
        started = time.perf_counter()
        n = produce_all(kafka.bootstrap, TOPIC, traffic)
        took = time.perf_counter() - started
        print(f"produced {n} events to {TOPIC} ({PARTITIONS} partitions) in {took:.1f} s")
        _check_retained(kafka.bootstrap, n)
        overrides: dict[str, Any] = {
            "kafka.brokers": kafka.bootstrap,
            "kafka.tail": False,
            "kafka.topics": [TOPIC],
            # the config's own ClickHouse by default, so `judgeflow report` finds the results
            "clickhouse.dsn": dsn or base.flow.clickhouse.dsn,
            "clickhouse.database": database or base.flow.clickhouse.database,
            # real verdicts with no API key: the local model answers toxicity where it is sure
            "judges.local.enabled": True,
        }
        if judge_urls:
            for tier in ("tier1", "tier2"):
                section = getattr(base.flow.judges, tier)
                if section is not None:  # each tier speaks its provider's API to the local endpoint
                    overrides[f"judges.{tier}.base_url"] = judge_urls[section.provider]
        settings = load_settings(config, **overrides)
        ch = settings.flow.clickhouse
        ensure_schema(connect(ch.dsn), ch.database)
        started = time.perf_counter()
        deps = build_deps(settings)
        _say_what_is_real(settings, deps.local, simulated=bool(judge_urls))
        try:
            flow = build_flow(settings, deps=deps, workers=workers)
            cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=5))
        finally:
            deps.close()
        elapsed = time.perf_counter() - started
        print(f"flow finished in {elapsed:.1f} s ({n / elapsed:,.0f} events/s, {workers} worker(s))")
        print_summary(settings, simulated=bool(judge_urls))
        print("\nnext: judgeflow report all --last 2h --html report.html   (the cost runbook, with charts)")
    return 0


def _check_retained(bootstrap: str, produced: int) -> None:
    """Fail loudly if the mock broker trimmed messages (it keeps ~5 MB per partition)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "judgeflow-demo-check"})
    try:
        kept = 0
        for p in range(PARTITIONS):
            low, high = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
            kept += high - low
    finally:
        c.close()
    if kept != produced:
        msg = f"the embedded Kafka kept {kept} of {produced} messages: use --limit or more partitions"
        raise RuntimeError(msg)


@contextlib.contextmanager
def _judge_endpoint(settings: Settings, latency_ms: float) -> Iterator[dict[str, str] | None]:
    """A local simulated judge (base URL per provider) when no API key is configured, else nothing."""
    if settings.secrets.openai_api_key is not None or not settings.flow.judges.simulate_without_key:
        yield None
        return
    from simulators.local_endpoint import EndpointConfig, Latency, LocalEndpoint

    print("no OPENAI_API_KEY: the LLM tiers judge with the local endpoint — their verdicts are SIMULATED")
    cfg = EndpointConfig(latency=Latency.lognormal(median_ms=latency_ms, sigma=0.5), seed=7)
    with LocalEndpoint(cfg) as ep:
        yield {"openai": ep.openai_base_url, "anthropic": ep.anthropic_base_url}


def _say_what_is_real(settings: Settings, local: LocalJudge | None, *, simulated: bool) -> None:
    if local is None:
        print("local model tier off (pip install 'judgeflow[local]' for real toxicity verdicts)")
        return
    names = ", ".join(f"{m} by {model.name}" for m, model in sorted(local.models.items()))
    band = f"[{settings.flow.judges.local.unsure_low}, {settings.flow.judges.local.unsure_high})"
    llm = "the SIMULATED tier-1 judge" if simulated else "the tier-1 LLM"
    print(f"local model tier: REAL verdicts for {names}; scores in {band} go on to {llm}")


def print_summary(settings: Settings, *, simulated: bool) -> None:
    from sinks.clickhouse import connect

    ch = settings.flow.clickhouse
    client = connect(ch.dsn, ch.database)

    def table(title: str, sql: str, headers: list[str]) -> None:
        rows = client.query(sql).result_rows
        print(f"\n{title}")
        widths = [
            max(len(h), *(len(_fmt(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
        ]
        print("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for r in rows:
            print("  " + "  ".join(_fmt(v).ljust(w) for v, w in zip(r, widths, strict=True)))

    table(
        "events and LLM cost per tenant",
        "SELECT tenant_id, count(), sum(input_tokens + output_tokens), sum(cost_usd),"
        " countIf(cost_source = 'unknown') FROM llm_events FINAL GROUP BY tenant_id ORDER BY tenant_id",
        ["tenant", "events", "tokens", "cost $", "unpriced"],
    )
    table(
        "LLM cost per tenant / agent / model / variant (from the 1-minute windows)",
        "SELECT tenant_id, agent, model, variant, sum(requests), sum(cost_usd), max(max_request_cost_usd)"
        " FROM cost_windows FINAL WHERE window_s = 60 AND category = 'llm'"
        " GROUP BY ALL ORDER BY tenant_id, agent, model, variant",
        ["tenant", "agent", "model", "variant", "requests", "cost $", "max request $"],
    )
    table(
        "judge spend per tenant / judge / tier (the same ledger, category judge)",
        "SELECT tenant_id, model, variant, sum(judge_calls), sum(judge_cost_usd)"
        " FROM cost_windows FINAL WHERE window_s = 60 AND category = 'judge'"
        " GROUP BY ALL ORDER BY tenant_id, model, variant",
        ["tenant", "judge", "tier", "calls", "judge $"],
    )
    label = (
        "evaluations (judges rules/* and local/* are real; the LLM tiers' verdicts are SIMULATED)"
        if simulated
        else "evaluations"
    )
    table(
        label,
        "SELECT metric, tier, judge, count(), countIf(cache_hit), countIf(label = 'flagged'),"
        " countIf(error != ''), sum(judge_cost_usd) FROM evaluations FINAL"
        " GROUP BY metric, tier, judge ORDER BY metric, tier, judge",
        ["metric", "tier", "judge", "evaluations", "cache hits", "flagged", "errors", "judge $"],
    )
    table(
        "alerts fired (one per level change)",
        "SELECT tenant_id, rule, scope, previous_level, level, round(value, 2), toString(ts)"
        " FROM alerts FINAL ORDER BY tenant_id, ts",
        ["tenant", "rule", "agent", "from", "to", "value", "at (event time)"],
    )
    table(
        "the closed loop: share of each throttled tenant's events judged by an LLM, the hour before and"
        " the hour from its override (event time: the sampler decides each window under the override"
        " the alerts set for it, however fast the replay)",
        CLOSED_LOOP_SQL,
        ["tenant", "override from", "events before", "judged %", "events after", "judged %"],
    )
    table(
        "dead letters",
        "SELECT stage, reason, count() FROM dead_letters FINAL GROUP BY stage, reason ORDER BY count() DESC",
        ["stage", "reason", "count"],
    )


# per throttled tenant: (tenant, override start, events and % judged — an LLM judge called for them,
# not a verdict the cache already had — the hour before, and the hour from it)
CLOSED_LOOP_SQL = (
    "WITH acts AS (SELECT tenant_id, min(ts) AS at FROM alerts FINAL"
    "   WHERE position(message, 'judge sampling set to') > 0 OR position(message, 'judging paused') > 0"
    "   GROUP BY tenant_id),"
    " judged AS (SELECT DISTINCT event_id FROM evaluations FINAL WHERE tier > 0 AND NOT cache_hit"
    "   AND NOT startsWith(judge, 'local/'))"
    " SELECT e.tenant_id, toString(a.at),"
    "  countIf(e.ts >= a.at - INTERVAL 1 HOUR AND e.ts < a.at),"
    "  round(100 * countIf(e.ts >= a.at - INTERVAL 1 HOUR AND e.ts < a.at AND j.event_id != '')"
    "   / greatest(countIf(e.ts >= a.at - INTERVAL 1 HOUR AND e.ts < a.at), 1), 1),"
    "  countIf(e.ts >= a.at AND e.ts < a.at + INTERVAL 1 HOUR),"
    "  round(100 * countIf(e.ts >= a.at AND e.ts < a.at + INTERVAL 1 HOUR AND j.event_id != '')"
    "   / greatest(countIf(e.ts >= a.at AND e.ts < a.at + INTERVAL 1 HOUR), 1), 1)"
    " FROM llm_events AS e FINAL INNER JOIN acts AS a ON e.tenant_id = a.tenant_id"
    " LEFT JOIN judged AS j ON e.event_id = j.event_id"
    " GROUP BY e.tenant_id, a.at ORDER BY e.tenant_id"
)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}"
    s = str(v)
    return s if len(s) <= 70 else s[:67] + "..."
