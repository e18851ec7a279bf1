"""A bug in a stage after decode degrades to dead letters: the record that makes pricing raise is a
dead letter (stage `price`), every other event of its batch is priced and counted, and the flow ends."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

from bytewax._bytewax import cli_main

from flows.deps import build_deps
from flows.judgeflow import build_flow
from flows.kafka_mock import produce_all
from flows.traffic import generate
from operators.validate import guarded
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, topic_flow_settings


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
