"""The metrics behind the operational alert rules (docker/prometheus/rules/operations.yml) move
as the runbook says: a judge disabled by a 401 (or remembered as disabled at a restart) shows 1,
every evaluation row written is timed from its event's time, per tier, and the ClickHouse
failure counters exist at 0 before the first failure (increase() misses a series' first value)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from judges.runtime import JudgeRuntime
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from sinks.clickhouse_rows import observe_evaluation_latency
from sinks.clickhouse_sink import ClickHouseSink
from tests.test_clickhouse_sink import make_evaluation
from tests.test_judge_runtime import BAD_KEY, judge_one, make_judge, runtime

LATENCY = "judgeflow_evaluation_latency_seconds"


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_fatal_error_sets_the_judge_disabled_gauge_and_a_restart_keeps_it():
    with LocalEndpoint(EndpointConfig(latency=0.01, bad_keys=frozenset({BAD_KEY}))) as ep:
        with runtime(lambda: {1: make_judge("openai", ep, model="gpt-4o-disabled", api_key=BAD_KEY)}) as rt:
            name = rt.judge_names()[1]
            assert sample("judgeflow_judge_disabled", judge=name) == 0
            assert "disabled" in judge_one(rt).error
            assert sample("judgeflow_judge_disabled", judge=name) == 1
        # restarted with the judge remembered as disabled (control store): 1 before any call
        remembered = JudgeRuntime(
            lambda: {1: make_judge("openai", ep, model="gpt-4o-disabled")},
            max_in_flight=4,
            disabled={name: "401 (remembered)"},
        )
        try:
            remembered.judge_names()
            assert sample("judgeflow_judge_disabled", judge=name) == 1
        finally:
            remembered.close()
        # fixed (a new key, enabled again): 0
        with runtime(lambda: {1: make_judge("openai", ep, model="gpt-4o-disabled")}) as rt:
            rt.judge_names()
            assert sample("judgeflow_judge_disabled", judge=name) == 0


def test_evaluation_latency_is_the_time_from_the_event_to_the_row_per_tier():
    before = {
        t: (sample(f"{LATENCY}_count", tier=t) or 0, sample(f"{LATENCY}_sum", tier=t) or 0) for t in "02"
    }
    now_ms = 1_800_000_000_000
    observe_evaluation_latency(
        [
            make_evaluation(1, ts_ms=now_ms - 45_000, tier=0),
            make_evaluation(2, ts_ms=now_ms - 15_000, tier=0),
            make_evaluation(3, ts_ms=now_ms - 120_000, tier=2),
        ],
        now_ms=now_ms,
    )
    after = {t: (sample(f"{LATENCY}_count", tier=t), sample(f"{LATENCY}_sum", tier=t)) for t in "02"}
    assert after["0"] == (before["0"][0] + 2, before["0"][1] + 60)
    assert after["2"] == (before["2"][0] + 1, before["2"][1] + 120)


def test_the_evaluations_sink_times_every_row_it_writes(chdb_dsn, database):
    written = sample(f"{LATENCY}_count", tier="1") or 0
    sink = ClickHouseSink(chdb_dsn, database, "evaluations").build("out", 0, 1)
    sink.write_batch([make_evaluation(i, tier=1) for i in range(7)])
    assert sample(f"{LATENCY}_count", tier="1") == written + 7


def test_clickhouse_failure_counters_are_exported_at_zero_before_any_failure(chdb_dsn, database):
    ClickHouseSink(chdb_dsn, database, "pricing_issues").build("out", 0, 1)
    assert sample("judgeflow_clickhouse_insert_failures_total", table="pricing_issues") is not None
    assert sample("judgeflow_clickhouse_insert_retries_total", table="pricing_issues") is not None
