"""Alerts through the whole flow on real components: events spread over two
hours produced to Kafka (mock cluster), the job on 1 and 2 workers, alerts in
ClickHouse (chdb), on the Kafka alerts topic and at a webhook, the sampling
override in Redis; then the override pausing the tenant's later events in the
sampler, and lifting when its TTL has passed."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import Consumer, TopicPartition

from flows.deps import build_deps
from flows.judgeflow import build_flow
from simulators.kafka_mock import produce_all
from sinks.clickhouse import connect, ensure_schema
from sinks.memory_store import MemoryControlStore
from sinks.redis_store import RedisControlStore
from tests.conftest import run_flow, topic_flow_settings

MIN = 60_000
HOUR = 60 * MIN
PER_MIN = 4  # the ramping tenant's requests per minute
# the ramping tenant's $ per minute: ok, warn, critical, emergency, then next to nothing
SCHEDULE = (
    [Decimal("0.05")] * 20
    + [Decimal("0.3")] * 20
    + [Decimal("1.5")] * 15
    + [Decimal(10)] * 8
    + [Decimal("0.01")] * 67
)
TTL_S = 4 * 3600


LEVELS = ["ok", "warn", "critical", "emergency"]


def now_minute() -> int:
    t = time.time_ns() // 1_000_000
    return t - t % MIN


def events(start: int, schedule: list[Decimal], prefix: str) -> list[tuple[bytes, bytes, int]]:
    """The ramping tenant spending `schedule` ($ per minute from `start`) and a
    steady one at $1.20/h, in time order."""
    out = []
    for m, usd in enumerate(schedule):
        per_event = usd / PER_MIN
        for i in range(PER_MIN):
            out.append(("ramp", f"{prefix}-ramp-{m}-{i}", start + m * MIN + i * 7_000, per_event))
        for i in range(2):
            out.append(
                ("steady", f"{prefix}-steady-{m}-{i}", start + m * MIN + 3_000 + i * 20_000, Decimal("0.01"))
            )
    out.sort(key=lambda x: x[2])
    msgs = []
    for tenant, eid, ts, cost in out:
        body = {
            "event_id": eid,
            "ts": ts,
            "tenant_id": tenant,
            "agent": "chat",
            "model": "gpt-4o-mini",
            "provider": "openai",
            "input": f"question {eid}: how do I reset my password?",
            "output": "Open Settings, then Security, then Reset password.",
            "usage": {"input_tokens": 20, "output_tokens": 12},
            "cost_usd": str(cost),
        }
        msgs.append((eid.encode(), json.dumps(body).encode(), ts))
    return msgs


def expected_changes(start: int) -> list[tuple[str, int]]:
    """(level, window end) of each burn-rate change, from SCHEDULE directly."""

    def burn(end_minute: int) -> Decimal:
        return sum(SCHEDULE[max(0, end_minute - 60) : end_minute], Decimal(0))

    out, level = [], "ok"
    for e in range(1, len(SCHEDULE) + 1):
        b = burn(e)
        new = "emergency" if b >= 100 else "critical" if b >= 20 else "warn" if b >= 5 else "ok"
        if LEVELS.index(new) > LEVELS.index(level):
            out.append((new, start + e * MIN))
            level = new
        elif level != "ok" and b < Decimal("4.5"):
            out.append(("ok", start + e * MIN))
            level = "ok"
    return out


class Hook:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/slack"


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    try:
        yield h
    finally:
        h.server.shutdown()
        h.server.server_close()


def consume_all(bootstrap: str, topic: str) -> list[dict]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "alerts-test", "enable.partition.eof": True})
    try:
        meta = c.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
        c.assign(parts)
        out, done = [], set()
        while len(done) < len(parts):
            msg = c.poll(5)
            if msg is None:
                break
            if msg.error():
                done.add(msg.partition())
                continue
            out.append(json.loads(msg.value()))
        return out
    finally:
        c.close()


def settings_for(kafka, chdb_dsn, database, judge_endpoint, topic, **more):
    return topic_flow_settings(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        topic=topic,
        **{
            "alerts.actions.critical": {"sampling_rate": 0.01, "ttl_s": TTL_S},
            "alerts.actions.emergency": {"sampling_rate": 0.0, "ttl_s": TTL_S},
            "alerts.actions.clear_on_resolve": False,
            **more,
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_ramping_tenant_walks_up_once_then_resolves(
    kafka, chdb_dsn, database, judge_endpoint, redis_server, hook, workers
):
    start = now_minute() - len(SCHEDULE) * MIN  # two hours ending now
    kafka.create_topic("llm-events", 4)
    produce_all(kafka.bootstrap, "llm-events", events(start, SCHEDULE, "p1"))
    settings = settings_for(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        "llm-events",
        **{
            "cache.redis_url": redis_server.url,
            "alerts.webhooks.max_age_s": 4 * 3600,
            "alerts.webhooks.targets": [
                {"name": "ops", "format": "slack", "url": hook.url, "rules": ["burn_rate"]}
            ],
        },
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    want = expected_changes(start)
    assert [lv for lv, _ in want] == ["warn", "critical", "emergency", "ok"]

    for run in (1, 2) if workers == 2 else (1,):  # a replay writes the same alerts again
        run_flow(settings, workers=workers)
        rows = client.query(
            "SELECT level, toUnixTimestamp64Milli(ts), alert_id, runbook, details FROM alerts FINAL"
            " WHERE tenant_id = 'ramp' AND rule = 'burn_rate' ORDER BY ts"
        ).result_rows
        assert [(lv, ts) for lv, ts, *_ in rows] == want, f"run {run}"
        assert client.query("SELECT count() FROM alerts FINAL WHERE tenant_id = 'steady'").result_rows == [
            (0,)
        ]
    emergency = rows[2]
    assert json.loads(emergency[4])["usd_last_hour"] == str(
        sum(SCHEDULE[(want[2][1] - start) // MIN - 60 : (want[2][1] - start) // MIN], Decimal(0))
    )
    assert emergency[3].startswith("judgeflow report cost --tenant ramp --last 1h")

    # the closed loop: paused at emergency until E + TTL, in the Redis the sampler reads
    store = RedisControlStore(redis_server.url)
    try:
        (override,) = store.active().values()
    finally:
        store.close()
    assert (override.tenant_id, override.rate, override.set_by) == ("ramp", 0.0, f"alert:{emergency[2]}")
    assert override.expires_ms == want[2][1] + TTL_S * 1000
    ttl_ms = redis.Redis.from_url(redis_server.url).pttl("jf:ovr:ramp")
    # Redis keeps it at least its lifetime in wall time (cleanup only: event time decides what it covers)
    assert (
        override.starts_ms == want[2][1]
        and override.covers(want[2][1])
        and not override.covers(override.expires_ms)
    )
    assert 0 < ttl_ms <= max(override.expires_ms - (now_minute() - MIN), TTL_S * 1000)

    # the same changes on the alerts topic (details as an object) and at the webhook
    on_topic = [a for a in consume_all(kafka.bootstrap, "judgeflow-alerts") if a["rule"] == "burn_rate"]
    assert {a["alert_id"] for a in on_topic} == {r[2] for r in rows}
    assert all(isinstance(a["details"], dict) for a in on_topic)
    states = [b["text"].split(" ")[1] for b in hook.bodies]  # e.g. ":fire: [EMERGENCY] ramp: judgeflow ..."
    runs = 2 if workers == 2 else 1  # the replay posts again: delivery is at least once
    assert states == ["[WARN]", "[CRITICAL]", "[EMERGENCY]", "[RESOLVED]"] * runs
    assert all("] ramp: judgeflow burn_rate: " in b["text"] for b in hook.bodies)


def evaluated(client, prefix: str) -> dict[str, int]:
    rows = client.query(
        "SELECT tenant_id, uniqExact(event_id) FROM evaluations FINAL"
        " WHERE startsWith(event_id, {p:String}) GROUP BY tenant_id",
        parameters={"p": prefix},
    ).result_rows
    return dict(rows)


def run_with_store(settings, store) -> None:
    deps = dataclasses.replace(build_deps(settings), control=store)
    try:
        cli_main(build_flow(settings, deps=deps), workers_per_process=1, epoch_interval=timedelta(seconds=1))
    finally:
        deps.close()


@pytest.mark.slow
def test_the_override_pauses_later_events_until_its_ttl(kafka, chdb_dsn, database, judge_endpoint):
    start = now_minute() - len(SCHEDULE) * MIN
    clock = [now_minute()]
    store = MemoryControlStore(clock_ms=lambda: clock[0])
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    for topic in ("ramp", "later", "after-ttl"):
        kafka.create_topic(topic, 2)

    produce_all(kafka.bootstrap, "ramp", events(start, SCHEDULE, "p1"))
    run_with_store(settings_for(kafka, chdb_dsn, database, judge_endpoint, "ramp"), store)
    (override,) = store.active().values()
    assert (override.tenant_id, override.rate) == ("ramp", 0.0)
    assert evaluated(client, "p1-").keys() == {"ramp", "steady"}

    # later traffic: the paused tenant gets no judgement at all, the other one does
    later = now_minute() - 10 * MIN
    quiet = [Decimal("0.01")] * 10
    produce_all(kafka.bootstrap, "later", events(later, quiet, "p2"))
    run_with_store(settings_for(kafka, chdb_dsn, database, judge_endpoint, "later"), store)
    assert evaluated(client, "p2-").keys() == {"steady"}

    # the override lives in event time: traffic from its expiry on is judged again, whatever the wall clock
    # says (the store still holds it), and the store forgets it once its lifetime has passed in wall time too
    produce_all(kafka.bootstrap, "after-ttl", events(override.expires_ms, quiet, "p3"))
    run_with_store(settings_for(kafka, chdb_dsn, database, judge_endpoint, "after-ttl"), store)
    assert store.active().keys() == {"ramp"}
    assert evaluated(client, "p3-").keys() == {"ramp", "steady"}
    clock[0] += override.expires_ms - override.starts_ms + 1  # its lifetime, in wall time
    assert store.active() == {}


@pytest.mark.slow
def test_alert_state_resumes_from_a_recovery_snapshot(kafka, chdb_dsn, database, judge_endpoint, tmp_path):
    start = now_minute() - len(SCHEDULE) * MIN
    want = expected_changes(start)
    # stop between the critical and the emergency change, on a minute boundary
    cut = start + ((want[1][1] + want[2][1]) // 2 - start) // MIN * MIN
    messages = events(start, SCHEDULE, "p1")
    kafka.create_topic("llm-events", 2)
    settings = settings_for(kafka, chdb_dsn, database, judge_endpoint, "llm-events")
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    for part in ([m for m in messages if m[2] < cut], [m for m in messages if m[2] >= cut]):
        produce_all(kafka.bootstrap, "llm-events", part)
        deps = build_deps(settings)
        try:
            cli_main(
                build_flow(settings, deps=deps),
                workers_per_process=1,
                epoch_interval=timedelta(seconds=1),
                recovery_config=RecoveryConfig(str(recovery)),
            )
        finally:
            deps.close()
        levels = client.query(
            "SELECT level, toUnixTimestamp64Milli(ts) FROM alerts FINAL"
            " WHERE tenant_id = 'ramp' AND rule = 'burn_rate' ORDER BY ts"
        ).result_rows
        assert [tuple(r) for r in levels] == [c for c in want if c[1] < cut or part[0][2] >= cut]
        assert client.query("SELECT count() FROM llm_events").result_rows == [(len(part),)]
        client.command("TRUNCATE TABLE llm_events")  # the resumed run must not read part one again
    # each level once across the restart: the emergency needs the spend from before it
    assert [lv for lv, _ in levels] == ["warn", "critical", "emergency", "ok"]
