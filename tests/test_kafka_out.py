"""The Kafka outputs (`sinks/kafka.py`): dead letters and alerts reach their topics; a dead letter of
a record near the input's size limit does not stop the job (its raw bytes, base64-encoded, are
larger than the producer takes); and a message the broker does not acknowledge stops the job with
the reason instead of being dropped."""

from __future__ import annotations

import base64
import json
import time

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from sinks.kafka import RAW_KEPT, DeliveredKafkaSink, KafkaDeliveryError
from tests.conftest import run_flow, topic_flow_settings


def consume(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a one-partition topic, from the beginning to its end."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test", "enable.partition.eof": True, "log_level": 0}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[tuple[bytes, bytes]] = []
    give_up = time.monotonic() + 30
    try:
        while time.monotonic() < give_up:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return out
            out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    raise AssertionError(f"{topic} not read to its end in 30 s")


def test_a_record_near_the_size_limit_becomes_a_dead_letter_on_the_topic_without_stopping_the_job(
    kafka, chdb_dsn
):
    # 900 KB of not-JSON: under decode.max_record_bytes (1 MiB), so a dead letter with all its bytes,
    # whose message (base64: 1.2 MB) the producer refused — the job stopped at it, at every restart
    kafka.create_topic("llm-events", 1)
    kafka.create_topic("judgeflow-dead-letters", 1)
    events = list(generate(limit=200, bad=False))
    big = b"\xff" + b"x" * 900_000
    produce_all(kafka.bootstrap, "llm-events", [*events[:100], (b"big", big, events[100][2]), *events[100:]])
    client = connect(chdb_dsn, "big_dead")
    ensure_schema(client, "big_dead")

    run_flow(topic_flow_settings(kafka, chdb_dsn, "big_dead"))

    assert client.command("SELECT count() FROM llm_events FINAL") == 200
    assert client.query("SELECT length(raw) FROM dead_letters FINAL").result_rows == [(len(big),)]
    ((key, value),) = consume(kafka.bootstrap, "judgeflow-dead-letters")
    body = json.loads(value)
    assert key == b"llm-events:0:100" and body["stage"] == "decode" and "invalid UTF-8" in body["reason"]
    assert base64.b64decode(body["raw_b64"]) == big[:RAW_KEPT] and body["raw_bytes"] == len(big)


def test_messages_are_acknowledged_before_the_batch_returns(kafka):
    kafka.create_topic("out", 1)
    part = DeliveredKafkaSink([kafka.bootstrap], "out", {}).build("write", 0, 1)
    part.write_batch([KafkaSinkMessage(key=f"k{i}".encode(), value=b"v") for i in range(50)])
    assert [k for k, _ in consume(kafka.bootstrap, "out")] == [f"k{i}".encode() for i in range(50)]
    part.close()


def test_a_message_the_broker_does_not_take_stops_the_job_with_the_reason(kafka):
    kafka.create_topic("out", 1)
    sink = DeliveredKafkaSink([kafka.bootstrap], "out", {"message.timeout.ms": "1500", "log_level": "0"})
    part = sink.build("write", 0, 1)
    kafka.broker_down(1)
    try:
        with pytest.raises(KafkaDeliveryError, match="2 of 2 messages to Kafka topic 'out' not delivered"):
            part.write_batch([KafkaSinkMessage(key=b"a", value=b"1"), KafkaSinkMessage(key=b"b", value=b"2")])
    finally:
        kafka.broker_up(1)
    part.close()  # never raises
