"""Exactly once per event_id: Kafka re-deliveries (same payload, on any partition, or a
changed payload) are counted once in every table at every window size."""

from __future__ import annotations

import json
import random
from collections import defaultdict

from core import metrics
from core.records import DeadLetter, Event, Source
from operators.redeliveries import _SeenLogic, fingerprint
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

TOPIC = "llm-events"


def _event(event_id: str, ts_ms: int, output: str = "ok", offset: int = 0) -> Event:
    return Event(
        event_id, ts_ms, "acme", "bot", "gpt-4o-mini", "openai", "baseline", "hi", output, None,
        10, 5, 0, 0, 0, None, None, None, None, {}, Source("t", offset % 4, offset),
    )  # fmt: skip


def test_same_payload_is_dropped_changed_payload_is_a_dead_letter() -> None:
    logic = _SeenLogic(horizon_ms=3_600_000, resume=None)
    first = _event("a", 1_000)
    (out,), _ = logic.on_batch([[first, _event("b", 2_000)], [_event("a", 1_000, offset=7)]])
    assert [type(x) for x in out] == [Event, Event]  # the copy from another partition is dropped
    (out,), _ = logic.on_batch([[_event("a", 1_000, output="changed", offset=9)]])
    assert len(out) == 1 and isinstance(out[0], DeadLetter)
    assert out[0].stage == "redelivery" and "different payload" in out[0].reason
    assert out[0].key == "t:1:9"
    # the Kafka coordinates are not part of what an event says
    assert fingerprint(first) == fingerprint(_event("a", 1_000, offset=123))


def test_seen_set_survives_a_restore_and_forgets_past_the_horizon() -> None:
    logic = _SeenLogic(horizon_ms=3_600_000, resume=None)
    logic.on_batch([[_event("a", 0)]])
    restored = _SeenLogic(horizon_ms=3_600_000, resume=logic.snapshot())
    assert restored.on_batch([[_event("a", 0)]])[0] == []
    # two hours of event time later the id is forgotten: memory stays bounded
    restored.on_batch([[_event("z", 3 * 3_600_000)]])
    assert len(restored.snapshot().seen) == 1
    assert [e.event_id for e in restored.on_batch([[_event("a", 0)]])[0][0]] == ["a"]


def test_redelivered_events_count_once_in_every_table(kafka, chdb_dsn, database) -> None:
    kafka.create_topic(TOPIC, 4)
    messages = [m for m in generate(limit=2000) if not m[0].startswith(b"bad-")]
    rng = random.Random(7)
    again = rng.sample(messages, 60)  # 3%: the same payload, keyed differently (another partition)
    changed = rng.sample(messages, 20)  # 1%: the same id with another payload
    redelivered = [(b"again-" + k, v, ts) for k, v, ts in again]
    for k, v, ts in changed:
        d = json.loads(v)
        d["usage"]["output_tokens"] += 1000
        redelivered.append((b"changed-" + k, json.dumps(d).encode(), ts))
    produce_all(kafka.bootstrap, TOPIC, messages + redelivered)

    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    before = metrics.REDELIVERIES.labels("same")._value.get()
    settings = topic_flow_settings(kafka, chdb_dsn, database, topic=TOPIC)
    run_flow(settings)

    want: dict[str, int] = defaultdict(int)
    for _, v, _ in messages:
        want[json.loads(v)["tenant_id"]] += 1
    n_events, events_cost = rows(client, "SELECT count(), sum(cost_usd) FROM llm_events FINAL")[0]
    assert n_events == len(messages)
    for window_s, requests, cost in rows(
        client,
        "SELECT window_s, sum(requests), sum(cost_usd) FROM cost_windows FINAL"
        " WHERE category = 'llm' GROUP BY window_s",
    ):
        assert (window_s, requests, cost) == (window_s, len(messages), events_cost)
    by_tenant = dict(
        rows(
            client,
            "SELECT tenant_id, sum(requests) FROM cost_windows FINAL WHERE window_s = 86400"
            " AND category = 'llm' GROUP BY tenant_id",
        )
    )
    assert by_tenant == dict(want)
    dead = rows(client, "SELECT stage, count() FROM dead_letters FINAL GROUP BY stage")
    assert dead == [("redelivery", len(changed))]
    assert metrics.REDELIVERIES.labels("same")._value.get() - before == len(again)
