"""Same events in, same tables out: the same topic (with re-deliveries) run clean, with source batches
of 1 instead of 1000, and a second time into the same database gives the same tables, row for row
(wall-clock columns left out; a window's `window` and `correction` rows summed) — the judged set and
the estimates included: partitions are aligned in event time and wall time never stands in for event
time while the topic is read (operators/event_time.py), so a 30x slower run decides the same windows."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from operators import event_time
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import run_flow, topic_flow_settings
from tests.test_recovery import TABLES, tables


def topic_with_redeliveries(n: int) -> list[tuple[bytes, bytes, int]]:
    messages = list(generate(limit=n))
    rng = random.Random(11)
    good = [m for m in messages if not m[0].startswith(b"bad-")]
    again = [(b"again-" + k, v, ts) for k, v, ts in rng.sample(good, len(good) * 3 // 100)]
    changed = []
    for k, v, ts in rng.sample(good, len(good) // 100):
        d = json.loads(v)
        d["output"] += " (edited)"
        changed.append((k, json.dumps(d).encode(), ts))  # same key: the same partition, after the first
    return messages + again + changed


@pytest.mark.slow
def test_batch_size_and_a_second_run_do_not_change_any_table(kafka, chdb_dsn, judge_endpoint):
    kafka.create_topic("llm-events", 4)
    produce_all(kafka.bootstrap, "llm-events", topic_with_redeliveries(3000))
    results = {}
    for name, db, batch in (
        ("clean", "det_clean", 1000),
        ("batch 1", "det_batch1", 1),
        ("again", "det_clean", 1000),
    ):
        client = connect(chdb_dsn, db)
        ensure_schema(client, db)
        settings = topic_flow_settings(kafka, chdb_dsn, db, judge_endpoint, **{"kafka.batch_size": batch})
        run_flow(settings)
        results[name] = tables(connect(chdb_dsn, db))
    want = results["clean"]
    assert len(want["llm_events"]) > 2500 and any(r[1] == "redelivery" for r in want["dead_letters"])
    differ = {
        name: {t: (len(results[name][t] - want[t]), len(want[t] - results[name][t])) for t in TABLES}
        for name in ("batch 1", "again")
    }
    equal = dict.fromkeys(TABLES, (0, 0))
    assert differ == {"batch 1": equal, "again": equal}, differ


@pytest.mark.slow
def test_events_late_by_position_for_the_judge_side_windows_stay_out_of_estimates_and_savings(
    kafka, chdb_dsn, judge_endpoint
):
    """Thirty events whose payload time is 45 minutes older than where their partition stood when
    they were read: late by position for their estimate and savings windows (60 s + 30 min of
    lateness). Some are judged, but no estimate or savings row counts them — in every run, not only
    when their windows happened to be final already (those windows hold nothing else, so they have
    no rows at all); their requests are corrections in the cost windows."""
    kafka.create_topic("llm-events", 1)
    messages = list(generate(limit=1500, bad=False))
    stale = []
    for i, (_, v, ts) in enumerate(messages[100:130]):
        d = json.loads(v)
        d["event_id"] = f"stale-{i}"
        d["ts"] = datetime.fromtimestamp(ts / 1000 - 45 * 60, tz=UTC).isoformat()
        stale.append((d["event_id"].encode(), json.dumps(d).encode(), ts))
    produce_all(kafka.bootstrap, "llm-events", sorted(messages + stale, key=lambda m: m[2]))
    client = connect(chdb_dsn, "late_judged")
    ensure_schema(client, "late_judged")
    overrides = {"sampling.base_rate": 1.0, "sampling.max_judged_share": 0.0}
    run_flow(topic_flow_settings(kafka, chdb_dsn, "late_judged", judge_endpoint, **overrides))
    old = min(m[2] for m in messages) - 40 * 60_000  # every stale event is older than this
    judged_stale = client.query("SELECT count() FROM evaluations FINAL WHERE event_id LIKE 'stale-%'")
    assert judged_stale.result_rows[0][0] > 0
    for table in ("quality_estimates", "judge_savings"):
        rows_ = client.query(
            f"SELECT count() FROM {table} FINAL WHERE toUnixTimestamp64Milli(window_start) < {old}"
        )
        assert rows_.result_rows == [(0,)], table
    corrections = client.query(
        "SELECT sum(requests) FROM cost_windows FINAL WHERE category = 'llm' AND kind = 'correction'"
        " AND window_s = 60"
    )
    assert corrections.result_rows == [(30,)]


@pytest.mark.slow
def test_one_message_stamped_in_2100_changes_no_table(kafka, chdb_dsn, judge_endpoint):
    """The same topic twice, once with one message's Kafka timestamp set to 2100 (its event's own
    time unchanged): every table is the same. Before, that message moved its partition to 2100, and
    every event after it in the partition was late — corrections in the cost windows, left out of the
    estimates — for good."""
    messages = list(generate(limit=1500, bad=False))
    far = [*messages[:700], (messages[700][0], messages[700][1], 4_102_444_800_000), *messages[701:]]
    results = {}
    for name, topic in (("clean", messages), ("far", far)):
        kafka.create_topic(name, 2)
        produce_all(kafka.bootstrap, name, topic)
        client = connect(chdb_dsn, name)
        ensure_schema(client, name)
        run_flow(topic_flow_settings(kafka, chdb_dsn, name, judge_endpoint, topic=name))
        results[name] = tables(connect(chdb_dsn, name))
    want = results["clean"]
    assert len(want["llm_events"]) == 1500 and len(want["evaluations"]) > 100
    assert {t: len(results["far"][t] ^ want[t]) for t in TABLES} == dict.fromkeys(TABLES, 0)


@pytest.mark.slow
def test_a_wall_clock_that_keeps_stepping_back_changes_no_table(kafka, chdb_dsn, judge_endpoint, monkeypatch):
    """The same topic twice, with open windows written as they fill (`windows.provisional_s`), the
    second time with the wall clock stepped back an hour every 50 reads (an NTP correction, a VM
    resumed, a restart on a host whose clock is behind — many times over): every table is the same.
    Before, a window's final row written after a step was older than its provisional row, and
    ClickHouse's FINAL kept the provisional one (`operators/versions.py`)."""
    real = time.time_ns
    reads, stepping = [0], [False]

    def wall_ns() -> int:
        reads[0] += 1
        return real() - (reads[0] // 50 * 3600 * 1_000_000_000 if stepping[0] else 0)

    monkeypatch.setattr(time, "time_ns", wall_ns)
    kafka.create_topic("wall", 2)
    produce_all(kafka.bootstrap, "wall", list(generate(limit=1500, bad=False)))
    results = {}
    for name in ("wall_clean", "wall_back"):
        client = connect(chdb_dsn, name)
        ensure_schema(client, name)
        settings = topic_flow_settings(
            kafka, chdb_dsn, name, judge_endpoint, topic="wall", **{"windows.provisional_s": 0.001}
        )
        run_flow(settings)
        stepping[0] = True
        results[name] = tables(connect(chdb_dsn, name))
    want = results["wall_clean"]
    assert len(want["llm_events"]) == 1500 and len(want["evaluations"]) > 100
    assert {t: len(results["wall_back"][t] ^ want[t]) for t in TABLES} == dict.fromkeys(TABLES, 0)


def topic_with_keys_that_come_and_go(n: int) -> list[tuple[bytes, bytes, int]]:
    """The sample traffic stretched to 700x its event time (~90 h for 3,000 events) from the start of
    a UTC day, each agent replaced by a new one every 6 hours of it: keys that come and go, done long
    before the end (their first day's levels too)."""
    out: list[tuple[bytes, bytes, int]] = []
    t0 = day = 0
    for key, value, ts in generate(limit=n, bad=False):
        d = json.loads(value)
        if not out:
            t0, day = ts, ts - ts % 86_400_000 + 86_400_000
        stretched = day + (ts - t0) * 700
        d["ts"] += stretched - ts
        d["agent"] = f"{d['agent']}-{(stretched - day) // 21_600_000}"
        out.append((key, json.dumps(d).encode(), stretched))
    return out


def savings(client, *, judged: bool) -> set[tuple]:
    """The savings ledger's rows (all but the version and the insert time). With judges on, which of
    several identical events pays for their call and which gets it as a cache hit depends on timing
    (README, "Status and known limits"): the calls made, the cache hits and the cascade's rest are left
    out then."""
    calls = "" if judged else " cache_calls, cache_usd, cascade_calls, cascade_usd, judge_calls, judge_usd,"
    return set(
        client.query(
            "SELECT tenant_id, window_s, window_start, events, baseline_calls, baseline_usd, sampling_calls,"
            f" sampling_usd,{calls} judged_events, allowed_events, forced_events FROM judge_savings FINAL"
        ).result_rows
    )


@pytest.mark.slow
@pytest.mark.parametrize("judged", [False, True], ids=["judges off", "judges on"])
def test_keys_that_come_and_go_are_dropped_and_change_no_table(kafka, chdb_dsn, monkeypatch, request, judged):
    """Agents that come and go over 90 h of event time, read with finished keys dropped and with every
    key kept, judges off and on (then the judge-side windows wait for the sampler and the judges): every
    table is the same, the savings ledger too, and minute-window keys, their levels' keys and the keys
    of the abuse, estimates and savings windows were dropped. Epochs of 50 ms, and a quiet key woken
    within 0.1 s (its rows due) and every 0.05-0.2 s until it is dropped — instead of after its window's
    end's distance in event time, as wall seconds, and every 30 s-5 min — so that keys are dropped
    within the run."""
    monkeypatch.setattr(event_time, "FORGET_MIN_S", 0.05)
    monkeypatch.setattr(event_time, "FORGET_MAX_S", 0.2)
    wake_at = event_time.wake_at
    monkeypatch.setattr(event_time, "wake_at", lambda due_s, now: min(wake_at(due_s, now), now + 0.1))
    judge = request.getfixturevalue("judge_endpoint") if judged else None
    kafka.create_topic("churn", 2)
    produce_all(kafka.bootstrap, "churn", topic_with_keys_that_come_and_go(3000))

    def dropped() -> dict[str, float]:
        return {
            step: REGISTRY.get_sample_value("judgeflow_window_keys_dropped_total", {"step": step}) or 0
            for step in ("cost_window", "rollup", "abuse", "estimates", "savings")
        }

    results, drops = {}, {}
    for name, drop in (("kept", False), ("dropped", True)):
        client = connect(chdb_dsn, name)
        ensure_schema(client, name)
        before = dropped()
        settings = topic_flow_settings(
            kafka, chdb_dsn, name, judge, topic="churn", **{"windows.drop_finished_keys": drop}
        )
        run_flow(settings, epoch_s=0.05)  # the flow's progress moves on at every epoch
        drops[name] = {step: n - before[step] for step, n in dropped().items()}
        client = connect(chdb_dsn, name)
        results[name] = tables(client) | {"judge_savings": savings(client, judged=judged)}
    want = results["kept"]
    assert len(want["llm_events"]) == 3000 and len(want["cost_windows"]) > 2000
    assert len(want["abuse_windows"]) > 1000 and len(want["judge_savings"]) > 1000
    if judged:
        assert len(want["evaluations"]) > 500 and len(want["quality_estimates"]) > 500, {
            t: len(want[t]) for t in want
        }
    compared = [*TABLES, "judge_savings"]
    assert {t: len(results["dropped"][t] ^ want[t]) for t in compared} == dict.fromkeys(compared, 0)
    assert set(drops["kept"].values()) == {0}
    assert all(drops["dropped"].values()), drops  # minute and level keys, and every tumbling step's
