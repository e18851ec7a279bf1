"""The whole dataflow on real components: events produced to Kafka (mock
cluster), judged through the real openai client against the local endpoint,
written to ClickHouse (chdb). Every event is accounted for, costs reconcile
to the picodollar with an independent genai-prices computation, and a re-run
over the same topic does not double count — on 1 and 2 workers."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, TopicPartition
from genai_prices import Usage, calc_price

from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

TOPIC = "llm-events"
FT_RATES = (Decimal("0.30"), Decimal("1.20"))  # the example config's override for the fine-tuned model


def expected_costs(messages: list[tuple[bytes, bytes, int]]) -> tuple[dict[str, Decimal], Counter, int]:
    """Per-tenant cost computed straight from genai-prices, independent of the flow."""
    cost: dict[str, Decimal] = defaultdict(Decimal)
    requests: Counter = Counter()
    bad = 0
    for key, value, _ in messages:
        if key.startswith(b"bad-"):
            bad += 1
            continue
        d = json.loads(value)
        u = d["usage"]
        requests[d["tenant_id"]] += 1
        if d["model"].startswith("ft:"):
            price = (u["input_tokens"] * FT_RATES[0] + u["output_tokens"] * FT_RATES[1]) / 1_000_000
        else:
            try:
                price = calc_price(
                    Usage(input_tokens=u["input_tokens"], output_tokens=u["output_tokens"]),
                    d["model"],
                    provider_id=d["provider"],
                    genai_request_timestamp=datetime.fromtimestamp(d["ts"] / 1000, tz=UTC),
                ).total_price
            except LookupError:
                price = Decimal(0)  # the self-hosted model: counted, cost unknown
        cost[d["tenant_id"]] += price
    return dict(cost), requests, bad


def count_topic(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.partition.eof": True})
    try:
        meta = c.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
        total = 0
        for tp in parts:
            low, high = c.get_watermark_offsets(tp, timeout=10)
            total += high - low
        return total
    finally:
        c.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_whole_flow_reconciles_and_reruns_idempotently(kafka, chdb_dsn, database, judge_endpoint, workers):
    kafka.create_topic(TOPIC, 4)
    messages = list(generate(limit=2500))
    produce_all(kafka.bootstrap, TOPIC, messages)
    settings = topic_flow_settings(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        topic=TOPIC,
        # five minutes of traffic: scale the $/h levels so alerts fire
        **{
            "alerts.burn_rate.warn": "0.5",
            "alerts.burn_rate.critical": "2",
            "alerts.burn_rate.emergency": "10",
        },
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    want_cost, want_requests, want_bad = expected_costs(messages)

    for run in (1, 2):  # the second run replays the same topic into the same tables
        run_flow(settings, workers=workers)

        n_events = rows(client, "SELECT count() FROM llm_events FINAL")[0][0]
        n_dead = rows(client, "SELECT count() FROM dead_letters FINAL")[0][0]
        assert (n_events, n_dead) == (len(messages) - want_bad, want_bad), f"run {run}"

        by_tenant = dict(
            rows(client, "SELECT tenant_id, sum(cost_usd) FROM llm_events FINAL GROUP BY tenant_id")
        )
        assert by_tenant == want_cost

        windows = {
            t: (int(r), c, j)
            for t, r, c, j in rows(
                client,
                "SELECT tenant_id, sum(requests), sum(cost_usd), sum(judge_cost_usd) FROM cost_windows FINAL"
                " WHERE window_s = 60 GROUP BY tenant_id",
            )
        }
        assert {t: w[0] for t, w in windows.items()} == dict(want_requests)
        assert {t: w[1] for t, w in windows.items()} == want_cost
        # the 1 h and 1 day rollups hold the same totals
        levels: dict[int, dict] = defaultdict(dict)
        for window_s, t, r, c, j in rows(
            client,
            "SELECT window_s, tenant_id, sum(requests), sum(cost_usd), sum(judge_cost_usd)"
            " FROM cost_windows FINAL GROUP BY window_s, tenant_id",
        ):
            levels[window_s][t] = (int(r), c, j)
        assert levels == {60: windows, 3600: windows, 86400: windows}

        # judge spend: the same dollars in the ledger as on the evaluations
        judge_by_tenant = dict(
            rows(client, "SELECT tenant_id, sum(judge_cost_usd) FROM evaluations FINAL GROUP BY tenant_id")
        )
        assert {t: w[2] for t, w in windows.items() if w[2]} == {
            t: v for t, v in judge_by_tenant.items() if v
        }

        evals = dict(
            rows(client, "SELECT tier, count() FROM evaluations FINAL WHERE error = '' GROUP BY tier")
        )
        assert evals.get(0, 0) > 0 and evals.get(1, 0) > 0
        assert rows(client, "SELECT count() FROM evaluations FINAL WHERE error != ''")[0][0] == 0

        alerts = rows(client, "SELECT tenant_id, level FROM alerts FINAL WHERE rule = 'burn_rate'")
        # the coding service's burst takes globex from ok straight to critical within a minute
        assert ("globex", "critical") in alerts and ("acme", "warn") in alerts

    # judge calls reached the endpoint through the real client; each call is in the ledger once
    seen = judge_endpoint.stats()["total"]
    ledger_calls = rows(client, "SELECT sum(judge_calls) FROM cost_windows FINAL WHERE window_s = 60")[0][0]
    assert 0 < ledger_calls <= seen
    assert count_topic(kafka.bootstrap, settings.flow.kafka.dead_letters_topic) == 2 * want_bad
