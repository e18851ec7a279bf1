"""Judge calls and judge dollars per 1M events: the default sampler vs judging everything.

The same traffic (simulators/traffic.py: Azure production arrivals with labelled
prompts and responses) runs through the whole flow (mock Kafka, the real
openai/anthropic clients against the local endpoint, whose verdicts are
simulated but deterministic per text, chdb) under two judge setups — the
default (tier 1 = gpt-4o-mini) and a cascade with an expensive tier 2
(claude-sonnet-4-5 for hallucination, escalating unsure or flagged tier-1
verdicts) — each twice:

- everything: `sampling.base_rate = 1`: every event judged by judgeflow's judges
  (tier-0 rules, cache and cascade still on);
- default: the default `[sampling]` (10%, K = 2 per stratum and minute, forced on
  pii./jailbreak./toxicity. flags and > 8,000 tokens, cap 600 per tenant and minute).

"reference" is what the savings ledger compares against: every event judged on
every metric by the most expensive configured judge (estimated from the prompt
sizes). Counts are scaled to 1M events. Judge dollars use each judge model's
catalog price on the token counts the endpoint reports.

The last table compares the default run's Horvitz-Thompson estimates (95%
interval) with the rates of the judge-everything run — the census under the
same deterministic judge.

    .venv/bin/python bench/judge_savings.py [--events 10000] [--workers 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import table

from flows.config import DEFAULT_CONFIG, load_settings
from flows.deps import build_deps
from flows.judgeflow import build_flow
from flows.report_quality import query_estimates
from simulators.kafka_mock import MockCluster, produce_all
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema

TOPIC = "llm-events"
SAVINGS_SQL = """
SELECT sum(events), sum(baseline_calls), sum(baseline_usd), sum(sampling_calls), sum(sampling_usd),
       sum(cache_calls), sum(cache_usd), sum(cascade_calls), sum(cascade_usd),
       sum(judge_calls), sum(judge_usd), any(reference_judge)
FROM judge_savings FINAL
"""


def tier2(endpoint: LocalEndpoint) -> dict:
    return {
        "judges.tier2": {
            "provider": "anthropic",
            "model": "claude-sonnet-4-5",
            "base_url": endpoint.anthropic_base_url,
            "max_in_flight": 128,
        },
        "judges.metrics.hallucination": [1, 2],
    }


def run(bootstrap: str, endpoint: LocalEndpoint, dsn: str, database: str, workers: int, **overrides) -> dict:
    from bytewax.run import cli_main

    settings = load_settings(
        DEFAULT_CONFIG,
        env={"OPENAI_API_KEY": "bench", "ANTHROPIC_API_KEY": "bench"},
        **{
            "kafka.brokers": bootstrap,
            "kafka.tail": False,
            "kafka.topics": [TOPIC],
            "clickhouse.dsn": dsn,
            "clickhouse.database": database,
            "judges.tier1.base_url": endpoint.openai_base_url,
            **overrides,
        },
    )
    client = connect(dsn, database)
    ensure_schema(client, database)
    deps = build_deps(settings)
    started = time.perf_counter()
    try:
        flow = build_flow(settings, deps=deps)
        cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=5))
    finally:
        deps.close()
    elapsed = time.perf_counter() - started
    r = client.query(SAVINGS_SQL).result_rows[0]
    keys = ("events", "base_calls", "base_usd", "samp_calls", "samp_usd", "cache_calls", "cache_usd")
    keys += ("casc_calls", "casc_usd", "calls", "usd", "reference")
    out = dict(zip(keys, r, strict=True))
    out["ledger_calls"] = client.query(
        "SELECT sum(judge_calls) FROM cost_windows FINAL WHERE window_s = 60 AND category = 'judge'"
    ).result_rows[0][0]
    judged = client.query("SELECT count(DISTINCT event_id) FROM evaluations FINAL").result_rows[0][0]
    out["judged_events"] = judged
    out["seconds"] = elapsed
    out["client"], out["database"] = client, database
    return out


def estimates_vs_census(census: dict, sampled: dict) -> tuple[list[list[str]], int]:
    since, until = datetime(2020, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    truth = {
        (e.tenant_id, e.agent, e.metric): e.rate
        for e in query_estimates(census["client"], census["database"], since=since, until=until)
    }
    rows, covered = [], 0
    for e in query_estimates(sampled["client"], sampled["database"], since=since, until=until):
        t = truth.get((e.tenant_id, e.agent, e.metric))
        if t is None or e.metric not in ("refusal", "hallucination", "pii"):
            continue
        covered += e.ci_low <= t <= e.ci_high
        rows.append(
            [
                f"{e.tenant_id}/{e.agent}/{e.metric}",
                f"{t:.4f}",
                f"{e.rate:.4f}",
                f"[{e.ci_low:.4f}, {e.ci_high:.4f}]",
                f"{e.judged:,}",
                f"{e.population:,.0f}",
            ]
        )
    return rows, covered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        MockCluster() as kafka,
        LocalEndpoint(EndpointConfig(latency=2.0, backlog=8192)) as endpoint,
    ):
        kafka.create_topic(TOPIC, 8)
        n = produce_all(kafka.bootstrap, TOPIC, generate(limit=args.events, bad=False))
        dsn = f"chdb://{tmp}/chdb"
        results = {}
        for setup, extra in (("tier 1 only (default)", {}), ("tier 1 + tier 2 cascade", tier2(endpoint))):
            for policy, rate in (("everything", {"sampling.base_rate": 1.0}), ("default sampler", {})):
                db = f"b_{len(results)}"
                results[(setup, policy)] = run(
                    kafka.bootstrap, endpoint, dsn, db, args.workers, **extra, **rate
                )
                r = results[(setup, policy)]
                assert r["events"] == n and r["calls"] == r["ledger_calls"], r
                print(f"  ran {setup} / {policy}: {r['seconds']:.1f} s", flush=True)
        est_rows, covered = estimates_vs_census(
            results[("tier 1 only (default)", "everything")],
            results[("tier 1 only (default)", "default sampler")],
        )

    per_m = 1_000_000 / n
    rows = []
    for (setup, policy), r in results.items():
        if policy == "everything":
            rows.append(
                [
                    f"{setup}: reference ({r['reference']}, every metric)",
                    f"{r['base_calls'] * per_m:,.0f}",
                    f"{float(r['base_usd']) * per_m:,.2f}",
                    "100.0%",
                    "",
                ]
            )
        rows.append(
            [
                f"{setup}: {policy}",
                f"{r['calls'] * per_m:,.0f}",
                f"{float(r['usd']) * per_m:,.2f}",
                f"{100 * r['judged_events'] / n:.1f}%",
                f"{100 * (1 - float(r['usd']) / float(r['base_usd'])):.1f}%",
            ]
        )
    print()
    print(
        table(
            f"judge calls and $ per 1M events ({n:,} events of simulators/traffic.py, scaled)",
            ["policy", "judge calls", "judge $", "events judged", "$ saved vs reference"],
            rows,
        )
    )
    rows = []
    for (setup, policy), r in results.items():
        rows.append(
            [
                f"{setup}: {policy}",
                *(f"{r[k] * per_m:,.0f}" for k in ("samp_calls", "cache_calls", "casc_calls", "calls")),
                *(f"{float(r[k]) * per_m:,.2f}" for k in ("samp_usd", "cache_usd", "casc_usd", "usd")),
            ]
        )
    print()
    print(
        table(
            "savings ledger per 1M events: calls / $ avoided by sampling, cache, cascade; and spent",
            ["run", "sampling", "cache", "cascade", "made", "sampling $", "cache $", "cascade $", "spent $"],
            rows,
        )
    )

    print()
    print(
        table(
            f"default-sampler estimates vs the census (judge everything): {covered}/{len(est_rows)} covered",
            ["tenant/agent/metric", "census rate", "HT estimate", "95% interval", "judged", "N^"],
            est_rows,
        )
    )


if __name__ == "__main__":
    main()
