"""Backfills: replaying a topic from a point in time processes exactly the
messages from that time on (the mock broker cannot look offsets up by time,
so this also exercises the timestamp binary search)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flows.kafka_mock import produce_all
from flows.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import flow_settings, run_flow


@pytest.mark.parametrize("workers", [1, 2])
def test_replay_from_a_time_reads_exactly_the_later_events(kafka, chdb_dsn, database, judge_endpoint, workers):
    kafka.create_topic("llm-events", 3)
    messages = list(generate(limit=900, bad=False))
    produce_all(kafka.bootstrap, "llm-events", messages)  # message timestamp = event time
    cut_ms = sorted(ts for _, _, ts in messages)[600]
    settings = flow_settings(
        **{
            "kafka.brokers": kafka.bootstrap,
            "kafka.tail": False,
            "kafka.start": datetime.fromtimestamp(cut_ms / 1000, tz=UTC).isoformat(),
            "clickhouse.dsn": chdb_dsn,
            "clickhouse.database": database,
            "judges.tier1.base_url": judge_endpoint.openai_base_url,
        }
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings, workers=workers)
    got = {r[0] for r in client.query("SELECT event_id FROM llm_events FINAL").result_rows}
    want = {k.decode() for k, _, ts in messages if ts >= cut_ms}
    assert got == want and len(want) >= 300
