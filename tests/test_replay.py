"""Backfills: replaying a topic from a point in time processes the messages
from the start of that time's UTC day on (so every window it rewrites is
whole), and none before — the mock broker cannot look offsets up by time, so
this also exercises the timestamp binary search."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from simulators.kafka_mock import produce_all
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import run_flow, topic_flow_settings

DAY1 = int(datetime(2026, 11, 19, tzinfo=UTC).timestamp() * 1000)
DAY2 = DAY1 + 86_400_000


def messages() -> list[tuple[bytes, bytes, int]]:
    out = []
    for i in range(400):  # 200 requests on each day, every 7 minutes apart
        ts = (DAY1 if i < 200 else DAY2) + (i % 200) * 7 * 60_000
        e = {
            "event_id": f"e{i}",
            "ts": ts,
            "tenant_id": "acme",
            "agent": "bot",
            "model": "gpt-4o-mini",
            "input": "q",
            "output": "a",
            "usage": {"input_tokens": 1000, "output_tokens": 100},
        }
        out.append((e["event_id"].encode(), json.dumps(e).encode(), ts))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_replay_from_a_time_rewrites_whole_days_only(kafka, chdb_dsn, database, judge_endpoint, workers):
    kafka.create_topic("llm-events", 3)
    msgs = messages()
    produce_all(kafka.bootstrap, "llm-events", msgs)  # message timestamp = event time
    noon_day2 = datetime.fromtimestamp((DAY2 + 12 * 3_600_000) / 1000, tz=UTC)
    settings = topic_flow_settings(
        kafka, chdb_dsn, database, judge_endpoint, **{"kafka.start": noon_day2.isoformat()}
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings, workers=workers)
    got = {r[0] for r in client.query("SELECT event_id FROM llm_events FINAL").result_rows}
    assert got == {f"e{i}" for i in range(200, 400)}
    day_rows = client.query(
        "SELECT toDate(window_start), sum(requests) FROM cost_windows FINAL"
        " WHERE window_s = 86400 AND category = 'llm' GROUP BY 1"
    ).result_rows
    assert [n for _, n in day_rows] == [200]  # the whole of day 2, not its afternoon
