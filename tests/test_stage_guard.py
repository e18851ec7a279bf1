"""A bug in a stage after decode degrades to dead letters: the record that makes pricing raise is a
dead letter (stage `price`), every other event of its batch is priced and counted, and the flow ends."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import msgspec
import pytest
from bytewax.run import cli_main

from core.dead_letters import guarded
from flows.deps import build_deps
from flows.judgeflow import build_flow
from judges.cascade import JudgePlan
from operators.dedup import ContentKeyer
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import InsertRejectedError, connect, ensure_schema
from sinks.clickhouse_sink import ClickHouseSink
from tests.conftest import rows, topic_flow_settings
from tests.test_redeliveries import _event


def test_guarded_isolates_the_records_that_raise():
    def halve(xs: list[int]) -> list[float]:
        return [100 / x for x in xs]

    oks, dead = guarded("test", halve, [1, 2, 0, 4])
    assert oks == [100.0, 50.0, 25.0]
    assert len(dead) == 1 and dead[0].stage == "test" and "ZeroDivisionError" in dead[0].reason


class _Boom:
    """The configured pricer, except that one model makes it raise (a stand-in for a bug)."""

    def __init__(self, pricer):
        self._pricer = pricer

    def price(self, e):
        if e.model == "boom":
            msg = "unexpected price table shape"
            raise KeyError(msg)
        return self._pricer.price(e)

    def __getattr__(self, name):
        return getattr(self._pricer, name)


def test_a_record_that_breaks_pricing_is_a_dead_letter_and_the_flow_goes_on(kafka, chdb_dsn, database):
    good = [m for m in generate(limit=200) if not m[0].startswith(b"bad-")]
    _, v, ts = good[5]
    boom = json.loads(v) | {"event_id": "boom-1", "model": "boom"}
    kafka.create_topic("llm-events", 2)
    produce_all(kafka.bootstrap, "llm-events", [*good, (b"boom", json.dumps(boom).encode(), ts)])
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    settings = topic_flow_settings(kafka, chdb_dsn, database, topic="llm-events")
    deps = build_deps(settings)
    deps = dataclasses.replace(deps, pricer=_Boom(deps.pricer))
    try:
        cli_main(build_flow(settings, deps=deps), workers_per_process=1, epoch_interval=timedelta(seconds=1))
    finally:
        deps.close()
    assert rows(client, "SELECT count() FROM llm_events FINAL")[0][0] == len(good)
    ((stage, reason),) = rows(client, "SELECT stage, reason FROM dead_letters FINAL")
    assert stage == "price" and reason.startswith("internal error: KeyError")
    windows = rows(
        client, "SELECT sum(requests) FROM cost_windows FINAL WHERE window_s = 60 AND category = 'llm'"
    )
    assert windows[0][0] == len(good)


class _BoomKeyer(ContentKeyer):
    """The configured keyer, except that one text makes hashing raise (the dedup stage)."""

    def content_hash(self, e):
        if "BOOM-DEDUP" in e.input_text:
            msg = "unexpected normalization"
            raise RuntimeError(msg)
        return super().content_hash(e)


class _BoomRules:
    """The configured rules, except that one text makes flagging raise (the sample stage)."""

    def __init__(self, rules):
        self._rules = rules

    def flags(self, item):
        if "BOOM-SAMPLE" in item.input_text:
            msg = "broken pattern table"
            raise IndexError(msg)
        return self._rules.flags(item)

    def __getattr__(self, name):
        return getattr(self._rules, name)


@dataclasses.dataclass(frozen=True)
class _BoomPlan(JudgePlan):
    """The configured plan, except that one text makes the judge's estimate raise (the judge stage)."""

    def estimate_pusd(self, tier, metric, item):
        if "BOOM-JUDGE" in item.input_text:
            msg = "no price for this tier"
            raise LookupError(msg)
        return super().estimate_pusd(tier, metric, item)


def test_a_bug_in_dedup_sample_or_judge_stores_the_event_unjudged_and_dead_letters_it(
    kafka, chdb_dsn, database, judge_endpoint
):
    good = [m for m in generate(limit=300) if not m[0].startswith(b"bad-")]
    booms = []
    for i, stage in enumerate(("DEDUP", "SAMPLE", "JUDGE")):
        _, v, ts = good[10 + i]
        d = json.loads(v) | {"event_id": f"boom-{stage.lower()}", "input": f"BOOM-{stage} please"}
        booms.append((d["event_id"].encode(), json.dumps(d).encode(), ts))
    kafka.create_topic("llm-events", 2)
    produce_all(kafka.bootstrap, "llm-events", [*good, *booms])
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    # judge everything, so the judge stage sees the event its plan cannot price
    settings = topic_flow_settings(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        topic="llm-events",
        **{"sampling.base_rate": 1.0, "sampling.max_judged_share": 0.0},
    )
    deps = build_deps(settings)
    k = deps.keyer
    keyer = _BoomKeyer(lowercase=k._lower, volatile_patterns=(), judge_version=k._version)
    plan = _BoomPlan(**{f.name: getattr(deps.plan, f.name) for f in dataclasses.fields(deps.plan)})
    deps = dataclasses.replace(deps, keyer=keyer, rules=_BoomRules(deps.rules), plan=plan)
    try:
        cli_main(build_flow(settings, deps=deps), workers_per_process=1, epoch_interval=timedelta(seconds=1))
    finally:
        deps.close()

    # every event is stored and costed, the three included
    n = len(good) + len(booms)
    assert rows(client, "SELECT count() FROM llm_events FINAL")[0][0] == n
    llm = "SELECT sum(requests) FROM cost_windows FINAL WHERE window_s = 60 AND category = 'llm'"
    assert rows(client, llm)[0][0] == n
    dead = rows(client, "SELECT stage, reason, source_topic FROM dead_letters FINAL ORDER BY stage")
    assert [(s, r.split(":")[1].strip()) for s, r, _ in dead] == [
        ("dedup", "RuntimeError"),
        ("judge", "LookupError"),
        ("sample", "IndexError"),
    ]
    assert all(topic == "llm-events" for *_, topic in dead)  # with their Kafka coordinates
    # the three are not judged by an LLM; the other events are
    judged = rows(
        client,
        "SELECT event_id, countIf(tier > 0 AND error = '') FROM evaluations FINAL GROUP BY event_id",
    )
    by_id = dict(judged)
    assert all(by_id.get(b[0].decode(), 0) == 0 for b in booms)
    assert sum(1 for c in by_id.values() if c > 0) >= len(good) * 0.9


def test_a_row_clickhouse_cannot_encode_is_a_dead_letter_and_the_rest_is_written(chdb_dsn, database):
    good = [_event(f"e{i}", 1_795_000_000_000 + i, offset=i) for i in range(50)]
    bad = msgspec.structs.replace(good[7], event_id="bad-row", tenant_id="t\udc80")  # no UTF-8 form
    sink = ClickHouseSink(chdb_dsn, database, "llm_events", max_retry_s=1)
    part = sink.build("llm_events_out", 0, 1)
    part.write_batch([*good[:7], bad, *good[7:]])
    client = connect(chdb_dsn, database)
    assert rows(client, "SELECT count() FROM llm_events FINAL")[0][0] == len(good)
    ((stage, reason, raw),) = rows(client, "SELECT stage, reason, raw FROM dead_letters FINAL")
    assert stage == "sink_llm_events" and "UnicodeEncodeError" in reason and "bad-row" in raw
    # a rejection by the server is a setup problem: it still stops the flow
    client.command(f"DROP TABLE {database}.llm_events")
    with pytest.raises(InsertRejectedError):
        part.write_batch(good[:3])
