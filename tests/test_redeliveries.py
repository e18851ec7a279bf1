"""Exactly once per event_id: Kafka re-deliveries (same payload, on any partition, or a
changed payload) are counted once in every table at every window size."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest

from core import metrics
from core.records import DeadLetter, Event, Source
from operators import redeliveries
from operators.redeliveries import _SeenLogic, fingerprint
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

TOPIC = "llm-events"
HOUR = 3_600_000


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


def test_small_shards_stay_a_dict() -> None:
    logic = _SeenLogic(horizon_ms=24 * HOUR, resume=None)
    logic.on_batch([[_event(f"old-{i}", i * 1_000) for i in range(100)]])
    logic.on_batch([[_event("now", 5 * HOUR)]])
    assert len(logic.snapshot().sealed_ids) == 0 and logic.snapshot().remembered() == 101


def test_seen_set_survives_a_restore_and_forgets_past_the_horizon() -> None:
    logic = _SeenLogic(horizon_ms=3_600_000, resume=None)
    logic.on_batch([[_event("a", 0)]])
    restored = _SeenLogic(horizon_ms=3_600_000, resume=logic.snapshot())
    assert restored.on_batch([[_event("a", 0)]])[0] == []
    # two hours of event time later the id is forgotten: memory stays bounded
    restored.on_batch([[_event("z", 3 * 3_600_000)]])
    assert restored.snapshot().remembered() == 1
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


def test_sealed_hours_still_catch_same_and_changed_redeliveries(monkeypatch) -> None:
    monkeypatch.setattr(redeliveries, "_SEAL_ABOVE", 0)  # seal whatever the size
    logic = _SeenLogic(horizon_ms=24 * HOUR, resume=None)
    logic.on_batch([[_event(f"old-{i}", i * 1_000) for i in range(100)]])
    logic.on_batch([[_event("now", 5 * HOUR)]])  # hour 0 is now sealed
    state = logic.snapshot()
    assert len(state.sealed_ids) == 100 and state.remembered() == 101
    (out,), _ = logic.on_batch([[_event("old-3", 3_000, offset=5), _event("old-4", 4_000, output="changed")]])
    assert [type(x) for x in out] == [DeadLetter]  # the same payload dropped, the changed one a dead letter
    # a first delivery late for a sealed hour counts, waits in the dict, and is caught next time
    (out,), _ = logic.on_batch([[_event("late", 10)]])
    assert [e.event_id for e in out] == ["late"]
    assert logic.on_batch([[_event("late", 10)]])[0] == []
    # the snapshot taken before is not changed by what came after
    assert state.remembered() == 101 and len(state.sealed_ids) == 100


def _reference(horizon_ms: int, batches: list[list[Event]]) -> list[list[str]]:
    """What the seen-set decides, as a plain dict with hour buckets (the form before sealing)."""
    seen: dict[str, tuple[int, str]] = {}  # what the payload says: here its time and output
    buckets: dict[int, list[str]] = {}
    newest = -1
    out = []
    for batch in batches:
        passed = []
        for e in batch:
            if e.event_id in seen:
                if seen[e.event_id] != (e.ts_ms, e.output_text):
                    passed.append("!" + e.event_id)
                continue
            seen[e.event_id] = (e.ts_ms, e.output_text)
            buckets.setdefault(e.ts_ms - e.ts_ms % HOUR, []).append(e.event_id)
            newest = max(newest, e.ts_ms)
            passed.append(e.event_id)
        for b in [b for b in buckets if b + HOUR <= newest - horizon_ms]:
            for i in buckets.pop(b):
                del seen[i]
        out.append(passed)
    return out


@pytest.mark.parametrize("late_min", [4096, 1])  # late ids kept in the dict, or merged at once
def test_sealing_decides_like_a_plain_dict_on_random_traffic(monkeypatch, late_min: int) -> None:
    monkeypatch.setattr(redeliveries, "_SEAL_LATE", late_min)
    monkeypatch.setattr(redeliveries, "_SEAL_ABOVE", 0)
    rng = random.Random(11)
    horizon = 6 * HOUR
    for trial in range(20):
        batches, t = [], 0
        for _ in range(rng.randint(20, 60)):
            batch = []
            for _ in range(rng.randint(1, 200)):
                t += rng.randint(0, 120_000)
                ts = max(0, t - rng.choice([0, 0, 0, HOUR, 3 * HOUR, 8 * HOUR]) - rng.randint(0, HOUR))
                i = rng.randint(0, 3_000)
                output = "ok" if rng.random() < 0.9 else "other"
                batch.append(_event(f"{trial}-{i}", ts, output=output))
            batches.append(batch)
        logic = _SeenLogic(horizon_ms=horizon, resume=None)
        got = []
        for n, batch in enumerate(batches):
            if n % 7 == 3:  # a restore now and then
                logic = _SeenLogic(horizon_ms=horizon, resume=logic.snapshot())
            out, _ = logic.on_batch([batch])
            passed = []
            for xs in out:
                for x in xs:
                    passed.append(x.event_id if isinstance(x, Event) else "!" + x.key)
            got.append(passed)
        assert len(logic.snapshot().sealed_ids) > 0  # the sealed arrays took part
        expected = _reference(horizon, batches)
        # dead letters carry the Kafka key; compare the passed ids, and the number of changed ones
        assert [[p for p in b if not p.startswith("!")] for b in got] == [
            [p for p in b if not p.startswith("!")] for b in expected
        ]
        assert [sum(p.startswith("!") for p in b) for b in got] == [
            sum(p.startswith("!") for p in b) for b in expected
        ]
