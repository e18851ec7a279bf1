"""The whole flow with two LLM tiers: Kafka (mock cluster) -> flow -> ClickHouse (chdb),
tier 1 through the real `openai` client and tier 2 through the real `anthropic`
client, both against the local endpoint, on 1 and 2 workers.

What a user would check: tier 2 saw only what the cascade should send it, every
judge call the endpoint answered is in the cost ledger once, and the judge
spend by judge model and tier in `cost_windows` equals the evaluations' cost.
"""

from __future__ import annotations

import pytest

from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

TOPIC = "llm-events"
TIER1, TIER2 = "gpt-4o-mini", "claude-sonnet-4-6"
BAND = 0.455  # wide: the simulated sentiment scores (0.05) escalate, toxicity (0.02) does not


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_two_tier_cascade_in_the_whole_flow(kafka, chdb_dsn, database, judge_endpoint, workers):
    kafka.create_topic(TOPIC, 4)
    produce_all(kafka.bootstrap, TOPIC, list(generate(limit=1500)))
    settings = topic_flow_settings(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        topic=TOPIC,
        **{
            "judges.tier2": {
                "provider": "anthropic",
                "model": TIER2,
                "base_url": judge_endpoint.anthropic_base_url,
                "input_per_mtok": "3",
                "output_per_mtok": "15",
            },
            "judges.metrics.toxicity": [0, 1, 2],
            "judges.metrics.sentiment": [1, 2],
            "judges.metrics.hallucination": [2],
            "judges.cascade.unsure_band": BAND,
        },
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings, workers=workers)

    by_tier = dict(rows(client, "SELECT tier, count() FROM evaluations FINAL WHERE error = '' GROUP BY tier"))
    assert by_tier.get(0, 0) > 0 and by_tier.get(1, 0) > 0 and by_tier.get(2, 0) > 0
    assert rows(client, "SELECT count() FROM evaluations FINAL WHERE error != ''") == [(0,)]
    assert {j for (j,) in rows(client, "SELECT DISTINCT judge FROM evaluations FINAL WHERE tier = 2")} == {
        f"anthropic/{TIER2}"
    }

    # tier 2 judged hallucination always, and toxicity/sentiment exactly when tier 1 was unsure or flagged
    pairs = rows(
        client,
        """
        SELECT t1.metric, t1.score, t1.label, t2.event_id != '' AS escalated
        FROM (SELECT * FROM evaluations FINAL WHERE tier = 1) AS t1
        LEFT JOIN (SELECT * FROM evaluations FINAL WHERE tier = 2) AS t2
          ON t1.event_id = t2.event_id AND t1.metric = t2.metric
        SETTINGS join_use_nulls = 0
        """,
    )
    assert pairs and {m for m, *_ in pairs} == {"toxicity", "sentiment"}
    for metric, score, label, escalated in pairs:
        assert bool(escalated) == (abs(score - 0.5) < BAND or label == "flagged"), (metric, score, label)
    assert any(e for *_, e in pairs) and not all(e for *_, e in pairs)
    only_t2 = rows(
        client,
        "SELECT DISTINCT metric FROM evaluations FINAL WHERE tier = 2 AND NOT cache_hit"
        " AND (event_id, metric) NOT IN (SELECT event_id, metric FROM evaluations FINAL WHERE tier = 1)",
    )
    assert only_t2 == [("hallucination",)]

    # judge spend: the ledger (minute windows, by judge model and tier) = the evaluations' cost
    ledger = {
        (model, variant): (int(calls), cost)
        for model, variant, calls, cost in rows(
            client,
            "SELECT model, variant, sum(judge_calls), sum(judge_cost_usd) FROM cost_windows FINAL"
            " WHERE window_s = 60 AND category = 'judge' GROUP BY model, variant",
        )
    }
    evaluated = {
        (judge, f"tier{tier}"): cost
        for judge, tier, cost in rows(
            client,
            "SELECT judge, tier, sum(judge_cost_usd) FROM evaluations FINAL"
            " WHERE tier > 0 GROUP BY judge, tier",
        )
    }
    assert set(ledger) == {(f"openai/{TIER1}", "tier1"), (f"anthropic/{TIER2}", "tier2")}
    assert {k: cost for k, (_, cost) in ledger.items()} == evaluated
    assert all(cost > 0 for cost in evaluated.values())
    escalated = sum(bool(e) for *_, e in pairs)
    print(f"\n{workers} worker(s): evaluations by tier {by_tier}; {escalated} of {len(pairs)} tier-1"
          f" verdicts escalated; judge ledger {ledger}")  # fmt: skip
    seen = judge_endpoint.stats()["by_model"]
    assert {m: sum(c.values()) for m, c in seen.items()} == {
        TIER1: ledger[(f"openai/{TIER1}", "tier1")][0],
        TIER2: ledger[(f"anthropic/{TIER2}", "tier2")][0],
    }
