"""Health logic: the pure functions behind /healthz and /readyz, the monitor on an injected
clock, the HTTP server on loopback, and the dependency probes against a real Kafka (the mock
cluster) and an HTTP /ping."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from flows.config import ConfigError, KafkaConfig, load_settings
from flows.health import (
    HealthMonitor,
    HealthServer,
    Vitals,
    answer,
    counter_total,
    liveness,
    main,
    new_input,
    open_breakers,
    partition_lags,
)
from flows.health_probes import Check, ClickHouseProbe, ClusterShape, KafkaProbe, assigned_partitions
from simulators.kafka_mock import produce_all
from tests.conftest import free_port

# --- pure functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partitions", "processes", "workers", "expected"),
    [
        (4, 1, 1, [4]),
        (16, 2, 1, [8, 8]),
        (3, 2, 1, [2, 1]),
        (2, 3, 1, [1, 1, 0]),  # more workers than partitions: the last process reads nothing
        (5, 2, 2, [3, 2]),  # workers 0..3 get 2, 1, 1, 1
        (0, 2, 1, [0, 0]),
    ],
)
def test_partitions_go_round_robin_over_the_clusters_workers(partitions, processes, workers, expected):
    got = [assigned_partitions(partitions, ClusterShape(i, processes, workers)) for i in range(processes)]
    assert got == expected


def test_every_partition_is_assigned_exactly_once_whatever_the_shape():
    for partitions in range(0, 20):
        for processes in range(1, 6):
            for workers in range(1, 4):
                shapes = [ClusterShape(i, processes, workers) for i in range(processes)]
                assert sum(assigned_partitions(partitions, s) for s in shapes) == partitions


def test_vitals_come_from_the_counters_the_lag_gauge_and_the_breaker_gauge():
    reg = CollectorRegistry()
    events = Counter("judgeflow_events_total", "e", registry=reg)
    dead = Counter("judgeflow_dead_letters_total", "d", ["stage", "reason"], registry=reg)
    lag = Gauge("bytewax_kafka_consumer_lag", "l", ["step_id", "topic", "partition"], registry=reg)
    breaker = Gauge("judgeflow_judge_breaker_open", "b", ["judge"], registry=reg)
    events.inc(7)
    dead.labels("decode", "malformed_json").inc(2)
    dead.labels("price", "internal").inc()
    lag.labels("kafka_in", "llm-events", 0).set(5)
    lag.labels("kafka_in", "llm-events", 3).set(0)
    breaker.labels("openai/gpt-4o-mini").set(1)
    breaker.labels("anthropic/claude").set(0)

    assert counter_total([*events.collect(), *dead.collect()]) == 10  # the *_created samples left out
    assert partition_lags(lag.collect()) == {("llm-events", 0): 5, ("llm-events", 3): 0}
    assert open_breakers(breaker.collect()) == ("openai/gpt-4o-mini",)


def test_liveness_fails_only_when_input_waits_and_nothing_moved_for_the_stall_time():
    lag = {("t", 0): 12.0}
    idle = liveness(stalled_s=3600, stall_s=300, lags={("t", 0): 0.0}, arrived=False, breakers=())
    assert idle.ok and idle.detail.startswith("idle")
    assert liveness(stalled_s=299, stall_s=300, lags=lag, arrived=False, breakers=()).ok
    stuck = liveness(stalled_s=301, stall_s=300, lags=lag, arrived=False, breakers=())
    assert not stuck.ok
    assert stuck.detail == "no message taken in for 301 s (> 300 s) while 12 messages wait"
    arrived = liveness(stalled_s=301, stall_s=300, lags={}, arrived=True, breakers=())
    assert not arrived.ok and "new messages wait" in arrived.detail
    # the judge stage holds work while an endpoint's breaker is open: a restart would not help
    waiting = liveness(stalled_s=3600, stall_s=300, lags=lag, arrived=True, breakers=("openai/x",))
    assert waiting.ok and "openai/x" in waiting.detail


def test_new_input_is_an_end_offset_past_its_baseline():
    assert not new_input({("t", 0): 10}, {("t", 0): 10})
    assert new_input({("t", 0): 11}, {("t", 0): 10})
    assert not new_input({("t", 1): 50}, {("t", 0): 10})  # no baseline yet for partition 1


def test_stall_time_comes_from_the_config_or_the_environment():
    assert load_settings(env={}).flow.metrics.stall_s == 300
    assert load_settings(env={"JUDGEFLOW_HEALTH_STALL_S": "90"}).flow.metrics.stall_s == 90
    for bad in ("0", "-5", "soon", "nan"):
        with pytest.raises(ConfigError, match=r"metrics\.stall_s"):
            load_settings(env={"JUDGEFLOW_HEALTH_STALL_S": bad})


def test_answer_is_200_only_when_every_check_passes():
    status, body = answer([Check("a", True, "fine"), Check("b", False, "down")])
    assert status == 503
    assert json.loads(body) == {
        "status": "unavailable",
        "checks": [{"name": "a", "ok": True, "detail": "fine"}, {"name": "b", "ok": False, "detail": "down"}],
    }
    assert answer([Check("a", True, "fine")])[0] == 200


# --- the monitor, on an injected clock ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeKafka:
    """End offsets that a test moves; an optional hook runs while they are fetched."""

    def __init__(self) -> None:
        self.ends: dict[tuple[str, int], int] = {}
        self.during_fetch = None
        self.ok = True

    def check(self) -> Check:
        return Check("kafka", self.ok, "fake")

    def end_offsets(self, partitions):
        if self.during_fetch is not None:
            self.during_fetch()
        return {p: self.ends[p] for p in partitions if p in self.ends}

    def close(self) -> None:
        pass


class FakeProbe:
    def __init__(self, name: str) -> None:
        self.result = Check(name, True, "up")

    def check(self) -> Check:
        return self.result

    def close(self) -> None:
        pass


def monitor_over(vitals: dict, clock: Clock, kafka: FakeKafka, *, local_count: bool = True, probes=()):
    def read() -> Vitals:
        return Vitals(vitals["taken_in"], dict(vitals["lags"]), tuple(vitals["breakers"]))

    return HealthMonitor(
        stall_s=300, probes=probes, kafka=kafka, local_count=local_count, read=read, clock=clock
    )


def test_a_caught_up_process_that_stops_taking_in_new_messages_turns_unhealthy_after_the_stall_time():
    clock, kafka = Clock(), FakeKafka()
    v = {"taken_in": 10.0, "lags": {("t", 0): 0.0}, "breakers": ()}
    m = monitor_over(v, clock, kafka)
    kafka.ends = {("t", 0): 10}
    m.sample()
    m.refresh()  # baseline: the end offsets after the last progress
    clock.now += 3600
    assert [c.ok for c in m.healthz()] == [True]  # an idle topic is not a stuck flow
    kafka.ends = {("t", 0): 15}  # five messages arrive; the lag gauge stays frozen at 0
    m.refresh()
    assert not m.healthz()[0].ok
    v["taken_in"] = 15.0  # the flow takes them in
    assert m.healthz()[0].ok
    m.refresh()
    clock.now += 3600
    assert m.healthz()[0].ok  # and the topic is quiet again


def test_new_messages_count_for_less_than_the_stall_time():
    clock, kafka = Clock(), FakeKafka()
    v = {"taken_in": 1.0, "lags": {("t", 0): 0.0}, "breakers": ()}
    m = monitor_over(v, clock, kafka)
    kafka.ends = {("t", 0): 1}
    m.sample()
    m.refresh()
    kafka.ends = {("t", 0): 2}
    clock.now += 200
    m.refresh()
    assert m.healthz()[0].ok  # waiting, but not for long
    clock.now += 101
    assert not m.healthz()[0].ok


def test_on_several_processes_only_the_lag_counts_as_waiting_input():
    # an event read here may be counted in another process (re-delivery step): new messages at the
    # end of this process's partitions do not prove that it took nothing in
    clock, kafka = Clock(), FakeKafka()
    v = {"taken_in": 1.0, "lags": {("t", 0): 0.0}, "breakers": ()}
    m = monitor_over(v, clock, kafka, local_count=False)
    kafka.ends = {("t", 0): 1}
    m.sample()
    m.refresh()
    kafka.ends = {("t", 0): 9}
    m.refresh()
    clock.now += 3600
    assert m.healthz()[0].ok
    v["lags"] = {("t", 0): 8.0}  # a lag that stays above zero does
    assert not m.healthz()[0].ok


def test_end_offsets_fetched_while_progress_happens_are_no_baseline():
    clock, kafka = Clock(), FakeKafka()
    v = {"taken_in": 1.0, "lags": {("t", 0): 0.0}, "breakers": ()}
    m = monitor_over(v, clock, kafka)
    m.sample()

    def progress_meanwhile() -> None:
        v["taken_in"] += 4  # the flow takes in messages that these end offsets already hold
        m.sample()

    kafka.ends = {("t", 0): 5}
    kafka.during_fetch = progress_meanwhile
    m.refresh()
    kafka.during_fetch = None
    kafka.ends = {("t", 0): 5}
    m.refresh()  # the next refresh takes the baseline
    clock.now += 3600
    assert m.healthz()[0].ok


def test_readiness_needs_every_dependency_checked_and_no_breaker_open():
    clock, kafka = Clock(), FakeKafka()
    clickhouse = FakeProbe("clickhouse")
    v = {"taken_in": 0.0, "lags": {}, "breakers": ()}
    m = monitor_over(v, clock, kafka, probes=[clickhouse])
    assert [c.detail for c in m.readyz() if not c.ok] == ["not checked yet"]
    m.refresh()
    assert all(c.ok for c in m.readyz())
    assert [c.name for c in m.readyz()] == ["clickhouse", "kafka", "judges"]
    clickhouse.result = Check("clickhouse", False, "down")
    m.refresh()
    assert [c.name for c in m.readyz() if not c.ok] == ["clickhouse"]
    clickhouse.result = Check("clickhouse", True, "up")
    m.refresh()
    v["breakers"] = ("openai/gpt-4o-mini",)
    failing = [c for c in m.readyz() if not c.ok]
    assert [(c.name, c.detail) for c in failing] == [("judges", "circuit breaker open: openai/gpt-4o-mini")]


# --- the HTTP server ------------------------------------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_server_serves_metrics_and_both_probes_on_one_port(capsys):
    clock, kafka = Clock(), FakeKafka()
    v = {"taken_in": 0.0, "lags": {}, "breakers": ()}
    registry = CollectorRegistry()
    Counter("judgeflow_events_total", "Events decoded successfully", registry=registry).inc(3)
    monitor = monitor_over(v, clock, kafka)
    server = HealthServer("127.0.0.1", 0, monitor, registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()  # the monitor's own threads are not started: the test drives it
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = get(f"{base}/metrics")
        assert status == 200 and b"judgeflow_events_total 3.0" in body
        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["checks"][0]["detail"] == "not checked yet"
        assert main([f"{base}/readyz"]) == 1
        monitor.refresh()
        assert get(f"{base}/readyz")[0] == 200
        assert main([f"{base}/readyz"]) == 0
        assert '"status": "ok"' in capsys.readouterr().out
        assert get(f"{base}/other")[0] == 404
        assert main([f"{base}/healthz", f"{base}/readyz"]) == 0
        v["breakers"] = ("openai/x",)
        assert main([f"{base}/healthz", f"{base}/readyz"]) == 1  # ready no more: one failing URL is enough
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert main([f"{base}/healthz", "--timeout", "2"]) == 1  # nothing listens any more


# --- the probes -----------------------------------------------------------------------------------


class _Ping(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"Ok.\n" if self.path == "/ping" else b"?"
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_clickhouse_probe_pings_the_server_of_an_http_dsn():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        up = ClickHouseProbe(f"http://judgeflow:secret@127.0.0.1:{port}").check()
        assert up.ok and up.detail == f"http://127.0.0.1:{port}/ping answers"  # no password in it
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    down = ClickHouseProbe(f"http://127.0.0.1:{port}", timeout_s=2).check()
    assert not down.ok and "does not answer" in down.detail
    assert ClickHouseProbe("chdb:///tmp/x").check().ok  # embedded: in this process


def test_kafka_probe_reads_partitions_and_end_offsets_from_the_brokers(kafka):
    kafka.create_topic("llm-events", 4)
    cfg = KafkaConfig(brokers=kafka.bootstrap, topics=("llm-events",))
    probes = [KafkaProbe(cfg, [kafka.bootstrap], ClusterShape(i, 5, 1)) for i in (0, 4)]
    try:
        first, last = (p.check() for p in probes)
        assert first.ok and first.detail.startswith("1 of 4 partitions assigned (process 0 of 5")
        assert not last.ok and "no partition for this process" in last.detail
        produce_all(kafka.bootstrap, "llm-events", [(b"k", b"v", 0)] * 3, partition=2)
        assert probes[0].end_offsets([("llm-events", 2), ("llm-events", 0)]) == {
            ("llm-events", 2): 3,
            ("llm-events", 0): 0,
        }
    finally:
        for p in probes:
            p.close()
    missing = KafkaProbe(KafkaConfig(topics=("nope",)), [kafka.bootstrap], ClusterShape())
    try:
        result = missing.check()
        assert not result.ok and "nope not found" in result.detail
    finally:
        missing.close()
    nobody = KafkaProbe(KafkaConfig(), [f"127.0.0.1:{free_port()}"], ClusterShape(), timeout_s=0.5)
    try:
        result = nobody.check()
        assert not result.ok and "do not answer" in result.detail
    finally:
        nobody.close()


def test_the_compose_healthcheck_asks_both_endpoints_on_the_jobs_metrics_port():
    import yaml

    from flows.config import load_settings

    docker = Path(__file__).resolve().parents[1] / "docker"
    compose = yaml.safe_load((docker / "compose.yaml").read_text())
    metrics = load_settings(docker / "judgeflow.toml", env={}).flow.metrics
    jobs = [s for name, s in compose["services"].items() if name.startswith("judgeflow-")]
    assert jobs
    for service in jobs:
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "flows.health"]
        assert test[4:] == [
            f"http://127.0.0.1:{metrics.port}/healthz",
            f"http://127.0.0.1:{metrics.port}/readyz",
        ]
