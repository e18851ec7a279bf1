"""The shared verdict cache on a real redis-server saves judge calls in a whole flow."""

from __future__ import annotations

from core import metrics
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings


def hits() -> float:
    return metrics.CACHE.labels("hit")._value.get() + metrics.CACHE.labels("hit_at_judge")._value.get()


def test_a_second_run_is_served_from_redis(kafka, chdb_dsn, database, judge_endpoint, redis_server):
    kafka.create_topic("llm-events", 2)
    produce_all(kafka.bootstrap, "llm-events", list(generate(limit=1500)))
    settings = topic_flow_settings(
        kafka, chdb_dsn, database, judge_endpoint, topic="llm-events", **{"cache.redis_url": redis_server.url}
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings)
    calls_first = judge_endpoint.stats()["total"]
    before = hits()
    run_flow(settings)  # the same topic again: every verdict is in Redis now
    assert hits() - before > 0
    assert judge_endpoint.stats()["total"] == calls_first  # not one call more
    cached = rows(client, "SELECT countIf(cache_hit), count() FROM evaluations FINAL WHERE tier > 0")[0]
    assert cached[1] > 0
