"""The verdict cache on a real redis-server: hits, TTL expiry, an outage that
only costs cache hits (counted, logged once, recovered after a back-off), and
whole flows in which identical pairs of one batch are judged once and Redis
is killed and restarted mid-run without losing an event."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta

import msgspec
import pytest
import redis
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.testing import TestingSource
from prometheus_client import REGISTRY

from core.ports import CachedVerdict, PaidTier
from core.records import JudgeCall, Verdict
from flows.deps import build_deps
from flows.judgeflow import build_flow
from sinks.clickhouse import connect, ensure_schema
from sinks.memory_store import MemoryVerdictCache
from sinks.redis_store import RedisVerdictCache
from tests.conftest import flow_settings

T0 = 1_763_300_000_000 - 1_763_300_000_000 % 60_000


def verdict(metric: str = "toxicity", label: str = "ok") -> CachedVerdict:
    return CachedVerdict(Verdict(metric, 0.1, label, "fine", "openai/gpt-4o-mini", 1), stored_ms=T0)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_redis_cache_hits_misses_and_expires(redis_server):
    cache = RedisVerdictCache(redis_server.url, ttl_s=0.5)
    try:
        cache.put_many({"a": verdict(), "b": verdict("pii", "flagged")})
        assert cache.get_many(["a", "x", "b"]) == [verdict(), None, verdict("pii", "flagged")]
        raw = redis.Redis.from_url(redis_server.url)
        assert 0 < raw.pttl("jf:v:a") <= 500  # the TTL is Redis's own
        raw.set("jf:v:junk", b"not msgpack")
        assert cache.get_many(["junk"]) == [None]  # an unreadable value is a miss, not a crash
        time.sleep(0.6)
        assert cache.get_many(["a", "b"]) == [None, None]
        raw.close()
    finally:
        cache.close()


def test_a_verdict_keeps_who_paid_for_it_and_entries_written_before_that_still_read(redis_server):
    call = JudgeCall("openai/gpt-4o-mini", 1, 120, 30, 5_000_000, 812.5, True)
    paid = CachedVerdict(
        verdict().verdict,
        T0,
        paid_by="evt-1",
        paid=(PaidTier(verdict().verdict, 1, "openai/gpt-4o-mini", (call,)),),
    )
    cache = RedisVerdictCache(redis_server.url, ttl_s=60)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        cache.put_many({"paid": paid})
        raw.set("jf:v:old", msgspec.msgpack.encode([verdict().verdict, T0]))  # the format without payer
        assert cache.get_many(["paid", "old"]) == [paid, verdict()]
    finally:
        raw.close()
        cache.close()


def test_memory_cache_expires_and_evicts_least_recent():
    now = [0.0]
    cache = MemoryVerdictCache(max_entries=2, ttl_s=10, clock=lambda: now[0])
    cache.put_many({"a": verdict(), "b": verdict()})
    assert cache.get_many(["a"]) == [verdict()]  # "a" is now the most recent
    cache.put_many({"c": verdict()})
    assert cache.get_many(["a", "b", "c"]) == [verdict(), None, verdict()]
    now[0] = 10.0
    assert cache.get_many(["a", "c"]) == [None, None]


def test_redis_outage_is_counted_logged_once_and_recovers(redis_server, caplog):
    cache = RedisVerdictCache(redis_server.url, ttl_s=60, retry_after_s=0.05)
    try:
        cache.put_many({"a": verdict()})
        outages, errors = (
            counter("judgeflow_verdict_cache_outages_total"),
            counter("judgeflow_verdict_cache_errors_total"),
        )
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="sinks.redis_store"):
            for _ in range(3):
                assert cache.get_many(["a", "b"]) == [None, None]
                cache.put_many({"c": verdict()})  # skipped, not raised
                time.sleep(0.06)  # past the back-off: every round tries Redis again
            redis_server.start()
            time.sleep(0.06)
            assert cache.get_many(["a"]) == [None]  # a restarted Redis is empty, but answers
            cache.put_many({"a": verdict()})
            assert cache.get_many(["a"]) == [verdict()]
        messages = [r.getMessage() for r in caplog.records]
        assert sum("verdict cache unavailable" in m for m in messages) == 1
        assert sum("verdict cache is back" in m for m in messages) == 1
        assert counter("judgeflow_verdict_cache_outages_total") == outages + 1
        assert counter("judgeflow_verdict_cache_errors_total") >= errors + 3
    finally:
        cache.close()


# --- whole flows -------------------------------------------------------------------

CONTENTS = [
    (f"Question {i}: what does clause {i} of the contract say?", f"Clause {i} covers termination notice.")
    for i in range(24)
]


def message(i: int, content: int, ts_ms: int, tenant: str | None = None) -> KafkaSourceMessage:
    question, answer = CONTENTS[content]
    d = {
        "event_id": f"ev-{i:05d}",
        "ts": ts_ms,
        "tenant_id": tenant or ("acme", "globex")[i % 2],
        "agent": "support-bot",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "input": question,
        "output": answer,
        "context": "The contract's clauses cover payment, termination and liability.",
        "usage": {"input_tokens": 200, "output_tokens": 30},
    }
    return KafkaSourceMessage(
        key=d["event_id"].encode(), value=json.dumps(d).encode(), topic="llm-events", partition=0, offset=i
    )


def run(settings, source, *, workers: int):
    from bytewax.run import cli_main

    deps = build_deps(settings)
    try:
        flow = build_flow(settings, source=source, deps=deps)
        cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=1))
    finally:
        deps.close()
    return deps


def rows(client, sql: str) -> list[tuple]:
    return client.query(sql).result_rows


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_identical_pairs_in_a_batch_are_judged_once(chdb_dsn, database, judge_endpoint, workers):
    settings = flow_settings(
        **{
            "clickhouse.dsn": chdb_dsn,
            "clickhouse.database": database,
            "judges.tier1.base_url": judge_endpoint.openai_base_url,
            "cache.backend": "memory",
            "sampling.base_rate": 1.0,
            "sampling.max_judged_share": 0.0,  # every event, however many
        }
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    dupes = counter("judgeflow_verdict_cache_batch_duplicates_total")
    same = TestingSource([message(i, 3, T0 + i, "acme") for i in range(40)], batch_size=100)
    deps = run(settings, same, workers=workers)

    llm_metrics = len(deps.plan.llm_metrics)
    # one batch per worker reaches the cache lookup (the re-delivery step shards events over the workers):
    # each looks every distinct key up once
    assert counter("judgeflow_verdict_cache_batch_duplicates_total") - dupes == (40 - workers) * llm_metrics
    calls = judge_endpoint.stats()["total"]
    ((made, shared, events),) = rows(
        client,
        "SELECT countIf(NOT cache_hit), countIf(cache_hit), count(DISTINCT event_id) FROM evaluations FINAL"
        " WHERE tier > 0 AND error = ''",
    )
    assert events == 40
    assert calls == made and 0 < made <= 2 * llm_metrics  # one call per (metric, tier), not 40
    assert shared == 39 * made


def outage_source(redis_server, n: int) -> Iterator[KafkaSourceMessage]:
    for i in range(n):
        if i == n // 3:
            redis_server.stop()  # killed mid-run ...
        if i == 2 * n // 3:
            redis_server.start()  # ... and back (empty: it keeps nothing on disk)
        yield message(i, i % len(CONTENTS), T0 + 500 * i)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_redis_killed_and_restarted_mid_run(
    redis_server, chdb_dsn, database, judge_endpoint, caplog, workers
):
    n = 1200
    settings = flow_settings(
        **{
            "clickhouse.dsn": chdb_dsn,
            "clickhouse.database": database,
            "judges.tier1.base_url": judge_endpoint.openai_base_url,
            "cache.backend": "redis",
            "cache.redis_url": redis_server.url,
            "cache.retry_after_s": 0.01,
            "sampling.base_rate": 0.3,
            "sampling.max_judged_share": 0.0,  # the rate alone decides
            # windows close as event time passes: verdicts are judged (and stored) during the run
            "sampling.allowed_lateness_s": 0,
            "sampling.idle_s": 0,
        }
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    outages = counter("judgeflow_verdict_cache_outages_total")
    with caplog.at_level(logging.WARNING, logger="sinks.redis_store"):
        run(settings, TestingSource(outage_source(redis_server, n), batch_size=50), workers=workers)

    # the flow never stopped and lost nothing: every event stored, every chosen one fully judged
    assert rows(client, "SELECT count() FROM llm_events FINAL")[0][0] == n
    chosen = "SELECT event_id FROM evaluations FINAL WHERE tier = 0"  # only chosen events meet the rules
    ((judged, verdicts, errors),) = rows(
        client,
        "SELECT count(DISTINCT event_id), count(DISTINCT event_id, metric), countIf(error != '')"
        f" FROM evaluations FINAL WHERE event_id IN ({chosen})",
    )
    assert judged > 0.3 * n * 0.8 and verdicts == 5 * judged and errors == 0
    # a cached verdict saves a call and adds nothing: events the sampler skipped have no evaluations,
    # and chosen events whose verdicts Redis had keep their sampler probabilities
    assert rows(client, f"SELECT count() FROM evaluations FINAL WHERE event_id NOT IN ({chosen})") == [(0,)]
    ((hits, lowest),) = rows(
        client, "SELECT countIf(cache_hit), min(inclusion_prob) FROM evaluations FINAL WHERE tier > 0"
    )
    assert hits > 0 and lowest < 1
    # the outage was noticed once, and the cache came back: verdicts were stored after the restart
    assert counter("judgeflow_verdict_cache_outages_total") == outages + 1
    messages = [r.getMessage() for r in caplog.records if r.name == "sinks.redis_store"]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("is back" in m for m in messages) == 1
    stored = redis.Redis.from_url(redis_server.url)
    assert stored.dbsize() > 0
    stored.close()

    # a replay of the same traffic judges nothing again: every LLM verdict comes from Redis
    calls = judge_endpoint.stats()["total"]
    replay = TestingSource([message(i, i % len(CONTENTS), T0 + 500 * i) for i in range(n)], batch_size=50)
    run(settings, replay, workers=1)
    assert judge_endpoint.stats()["total"] == calls
