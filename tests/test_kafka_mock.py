"""The Kafka mock cluster and its helpers: what integration tests, the demo and benchmarks rely on."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from flows.kafka_offsets import offsets_for_time
from simulators.kafka_mock import (
    DeliveryError,
    MockCluster,
    MockClusterError,
    produce_all,
    running_mock_process,
    start_mock_process,
    stop_mock_process,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BASE_MS = 1_700_000_000_000
# a bound so that a broken cluster fails the test instead of hanging it, not a speed check
GIVE_UP_S = 60.0

Record = tuple[int, int, bytes | None, bytes, int]  # partition, offset, key, value, ts


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(num_brokers=3) as mock:
        yield mock


def _partition_counts(bootstrap: str) -> dict[str, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-metadata"})
    try:
        metadata = consumer.list_topics(timeout=GIVE_UP_S)
    finally:
        consumer.close()
    return {name: len(md.partitions) for name, md in metadata.topics.items()}


def _consume_all(bootstrap: str, topic: str, start: dict[int, int] | None = None) -> list[Record]:
    """Every message from `start` (default: the beginning) to the end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=GIVE_UP_S).topics[topic].partitions
        start = start or dict.fromkeys(partitions, OFFSET_BEGINNING)
        consumer.assign([TopicPartition(topic, p, start[p]) for p in partitions])
        at_end: set[int] = set()
        records: list[Record] = []
        give_up = time.monotonic() + GIVE_UP_S
        while len(at_end) < len(partitions) and time.monotonic() < give_up:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            error, partition, offset = msg.error(), msg.partition(), msg.offset()
            assert partition is not None
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                at_end.add(partition)
                continue
            key, value = msg.key(), msg.value()
            assert offset is not None and value is not None and not isinstance(key, str)
            records.append((partition, offset, key, value, msg.timestamp()[1]))
    finally:
        consumer.close()
    assert len(at_end) == len(partitions), "did not reach the end of every partition"
    return records


def _partition_and_value(msg: object) -> tuple[int | None, bytes]:
    assert isinstance(msg, KafkaSourceMessage), msg
    return msg.partition, msg.value


def _os_thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def test_topics_get_the_partition_counts_asked_for(cluster: MockCluster) -> None:
    cluster.create_topic("one", 1)
    cluster.create_topic("three", 3, replication=3)
    cluster.create_topic("eight", 8)

    counts = _partition_counts(cluster.bootstrap)

    assert {name: counts.get(name) for name in ("one", "three", "eight")} == {
        "one": 1,
        "three": 3,
        "eight": 8,
    }


def test_create_topic_rejects_bad_counts_and_duplicates(cluster: MockCluster) -> None:
    cluster.create_topic("taken", 2)
    with pytest.raises(MockClusterError, match="already exists"):
        cluster.create_topic("taken", 2)
    with pytest.raises(ValueError, match="replication"):
        cluster.create_topic("too-many-replicas", 1, replication=4)
    with pytest.raises(ValueError, match="partitions"):
        cluster.create_topic("no-partitions", 0)


def test_everything_produced_is_consumed_back_exactly(cluster: MockCluster) -> None:
    cluster.create_topic("events", 4)
    sent = [(f"user-{i % 17}".encode(), f"event-{i}".encode(), BASE_MS + i) for i in range(2000)]

    delivered = produce_all(cluster.bootstrap, "events", sent)
    records = _consume_all(cluster.bootstrap, "events")

    assert delivered == len(sent)
    assert sorted((key, value, ts) for _, _, key, value, ts in records) == sorted(sent)
    assert {partition for partition, *_ in records} == {0, 1, 2, 3}
    partitions_per_key: dict[bytes | None, set[int]] = {}
    for partition, _, key, _, _ in records:
        partitions_per_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in partitions_per_key.values())


def test_plain_values_and_a_fixed_partition(cluster: MockCluster) -> None:
    cluster.create_topic("plain", 3)

    produce_all(cluster.bootstrap, "plain", [b"a", b"b", b"c"], partition=2)

    records = _consume_all(cluster.bootstrap, "plain")
    assert [(p, off, key, value) for p, off, key, value, _ in records] == [
        (2, 0, None, b"a"),
        (2, 1, None, b"b"),
        (2, 2, None, b"c"),
    ]


def test_host_process_serves_other_processes_and_exits_cleanly() -> None:
    with running_mock_process({"llm-events": 4, "other": 1}) as (proc, bootstrap):
        counts = _partition_counts(bootstrap)
        produce_all(bootstrap, "llm-events", [(b"k", b"hello", None), (b"k", b"world", None)])
        values = [value for *_, value, _ in _consume_all(bootstrap, "llm-events")]

        assert (counts["llm-events"], counts["other"]) == (4, 1)
        assert values == [b"hello", b"world"]
        assert proc.poll() is None
    assert proc.returncode == 0


def test_host_process_writes_its_ready_file_and_stops_on_sigint(tmp_path: Path) -> None:
    ready = tmp_path / "kafka.ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.kafka_mock", "--topic", "t:2", "--ready-file", str(ready)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        bootstrap = proc.stdout.readline().decode().strip()
        assert ready.read_text().strip() == bootstrap
        assert _partition_counts(bootstrap)["t"] == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(GIVE_UP_S) == 0
        assert not ready.exists()
    finally:
        stop_mock_process(proc)


def test_start_mock_process_reports_a_host_that_fails_to_start() -> None:
    with pytest.raises(MockClusterError, match="exited"):
        start_mock_process({"bad": 1}, num_brokers=0)


def test_offsets_for_time_matches_hand_computed_offsets(cluster: MockCluster) -> None:
    cluster.create_topic("times", 3)
    # partition 0: 1000 messages, three per 10 ms step; 1: empty; 2: a short run with a tie
    produce_all(
        cluster.bootstrap,
        "times",
        [(None, f"p0-{i}".encode(), BASE_MS + (i // 3) * 10) for i in range(1000)],
        partition=0,
    )
    p2_times = [100, 200, 200, 300, 400]
    produce_all(
        cluster.bootstrap,
        "times",
        [(None, f"p2-{i}".encode(), BASE_MS + t) for i, t in enumerate(p2_times)],
        partition=2,
    )

    def lookup(delta_ms: int) -> dict[int, int]:
        return offsets_for_time(cluster.bootstrap, "times", BASE_MS + delta_ms)

    assert lookup(-1) == {0: 0, 1: 0, 2: 0}  # before everything: the start
    assert lookup(200) == {0: 60, 1: 0, 2: 1}  # ties: the first of them
    assert lookup(500) == {0: 150, 1: 0, 2: 5}
    assert lookup(505) == {0: 153, 1: 0, 2: 5}  # between two timestamps: the later one
    assert lookup(3_321) == {0: 999, 1: 0, 2: 5}  # only the last message (at 3 330) is later
    assert lookup(10_000) == {0: 1000, 1: 0, 2: 5}  # after everything: the end


def test_replaying_from_offsets_for_time_yields_exactly_the_later_messages(
    cluster: MockCluster,
) -> None:
    cluster.create_topic("replay", 4)
    sent = [(f"k{i % 5}".encode(), f"v{i}".encode(), BASE_MS + i * 7) for i in range(400)]
    produce_all(cluster.bootstrap, "replay", sent)
    since = BASE_MS + 1_400

    offsets = offsets_for_time(cluster.bootstrap, "replay", since)
    replayed = _consume_all(cluster.bootstrap, "replay", start=offsets)

    assert sorted(value for *_, value, _ in replayed) == sorted(v for _, v, ts in sent if ts >= since)


def test_broker_down_stalls_delivery_and_up_recovers() -> None:
    with MockCluster(num_brokers=1) as mock:
        mock.create_topic("flaky", 1)
        producer = Producer(
            {
                "bootstrap.servers": mock.bootstrap,
                "reconnect.backoff.ms": 10,
                "reconnect.backoff.max.ms": 100,
                "log_level": 0,
            }
        )
        producer.produce("flaky", b"before")
        assert producer.flush(GIVE_UP_S) == 0

        mock.broker_down(1)
        producer.produce("flaky", b"while-down")
        stalled = producer.flush(0.5)
        with pytest.raises(DeliveryError, match="failed"):
            produce_all(mock.bootstrap, "flaky", [b"given-up"], timeout_s=0.5, config={"log_level": 0})
        mock.broker_up(1)
        recovered = producer.flush(GIVE_UP_S)

        assert (stalled, recovered) == (1, 0)
        values = [value for *_, value, _ in _consume_all(mock.bootstrap, "flaky")]
        assert values == [b"before", b"while-down"]


def test_bytewax_kafka_source_reads_every_message(cluster: MockCluster) -> None:
    cluster.create_topic("flow-in", 3)
    sent = [(f"k{i % 11}".encode(), f"v{i}".encode(), None) for i in range(300)]
    produce_all(cluster.bootstrap, "flow-in", sent)
    out: list[tuple[int | None, bytes]] = []

    flow = Dataflow("kafka_mock_read")
    msgs = op.input("in", flow, KafkaSource([cluster.bootstrap], ["flow-in"], tail=False))
    op.output("out", op.map("fields", msgs, _partition_and_value), TestingSink(out))
    run_main(flow)

    assert sorted(value for _, value in out) == sorted(v for _, v, _ in sent)
    assert {partition for partition, _ in out} == {0, 1, 2}


def test_clusters_close_cleanly_and_leave_no_threads() -> None:
    gc.collect()
    before = _os_thread_count()
    clusters = [MockCluster(num_brokers=n) for n in (1, 2, 3)]
    for mock in clusters:
        mock.create_topic("t", 2)
    during = _os_thread_count()
    for mock in clusters:
        mock.close()
        mock.close()  # idempotent
    after = _os_thread_count()

    assert during > before
    assert after <= before
    with pytest.raises(MockClusterError, match="closed"):
        clusters[0].create_topic("late", 1)


def test_an_unclosed_cluster_does_not_crash_interpreter_exit() -> None:
    code = (
        "from confluent_kafka import Producer\n"
        "from simulators.kafka_mock import MockCluster\n"
        "mock = MockCluster(3)\n"
        "mock.create_topic('t', 2)\n"
        "producer = Producer({'bootstrap.servers': mock.bootstrap})\n"
        "producer.produce('t', b'x')\n"
        "assert producer.flush(30) == 0\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        timeout=GIVE_UP_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr
