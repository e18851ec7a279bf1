"""Kafka outputs: alerts and dead letters as JSON on their topics.

Keys are the record's deterministic id, so a compacted topic keeps one copy
per alert / dead letter even across replays.

Every message is delivered or the job stops: `write_batch` returns once the
broker acknowledged each message of the batch, and raises when one could not
be delivered (the broker unreachable for `message.timeout.ms`, 5 min by
default; a topic that does not exist) — the epoch does not commit, and a
restart writes them again (at least once). bytewax's own `KafkaSink` drops a
failed delivery without a word.

A dead letter's raw bytes can be as large as the biggest record the input
takes (`decode.max_record_bytes`, 1 MiB), and base64 makes them a third
larger: past the producer's `message.max.bytes` (1 MB), a message that would
stop the job again at every restart. So the topic gets the first
`RAW_KEPT` bytes of them (`raw_bytes` says how many there were);
ClickHouse's `dead_letters` keeps them all.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Stream, operator
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

from core.kafka_log import LIBRDKAFKA_LOG
from core.records import Alert, DeadLetter

RAW_KEPT = 65_536  # of a dead letter's raw bytes, in its Kafka message
_json = msgspec.json.Encoder()


class KafkaDeliveryError(RuntimeError):
    """Messages the broker did not acknowledge: the job stops, and a restart writes them again."""


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def alert_message(a: Alert) -> KafkaSinkMessage[bytes, bytes]:
    body = {f: getattr(a, f) for f in a.__struct_fields__}
    for f in ("window_start_ms", "window_end_ms", "ts_ms"):
        body[f.removesuffix("_ms")] = _iso(body.pop(f))
    body["details"] = msgspec.json.decode(a.details) if a.details else {}  # an object, not a string
    return KafkaSinkMessage(key=a.alert_id.encode(), value=_json.encode(body))


def dead_letter_message(d: DeadLetter) -> KafkaSinkMessage[bytes, bytes]:
    body = {
        "key": d.key,
        "stage": d.stage,
        "reason": d.reason,
        "ts": _iso(d.ts_ms),
        "source": None
        if d.source is None
        else {"topic": d.source.topic, "partition": d.source.partition, "offset": d.source.offset},
        # raw bytes may not be UTF-8: base64 keeps them exact
        "raw_b64": base64.b64encode(d.raw[:RAW_KEPT]).decode(),
        "raw_bytes": len(d.raw),  # more than RAW_KEPT: the rest is in ClickHouse's dead_letters
    }
    return KafkaSinkMessage(key=d.key.encode(), value=_json.encode(body))


@operator
def kafka_out(
    step_id: str,
    up: Stream[Alert] | Stream[DeadLetter] | Stream[Alert | DeadLetter],
    *,
    brokers: list[str],
    topic: str,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Serialize alerts or dead letters and write them to `topic`."""

    def to_message(x: Alert | DeadLetter) -> KafkaSinkMessage[bytes, bytes]:
        return alert_message(x) if isinstance(x, Alert) else dead_letter_message(x)

    msgs = op.map("serialize", up, to_message)
    op.output("write", msgs, DeliveredKafkaSink(brokers, topic, dict(extra or {})))


class DeliveredKafkaSink(DynamicSink[KafkaSinkMessage[bytes, bytes]]):
    """Messages to `topic`, each acknowledged before `write_batch` returns (module docstring)."""

    def __init__(self, brokers: list[str], topic: str, config: dict[str, str]) -> None:
        # librdkafka's log through the job's, a line per kind and half minute (`core.kafka_log`)
        self._config: dict[str, object] = {
            "bootstrap.servers": ",".join(brokers),
            "logger": LIBRDKAFKA_LOG,
            **config,
        }
        self._topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeliveredPartition:
        return _DeliveredPartition(Producer(self._config), self._topic)


class _DeliveredPartition(StatelessSinkPartition[KafkaSinkMessage[bytes, bytes]]):
    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def write_batch(self, items: list[KafkaSinkMessage[bytes, bytes]]) -> None:
        failed: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append(err)

        for m in items:
            while True:
                try:
                    self._producer.produce(self._topic, value=m.value, key=m.key, on_delivery=delivered)
                    break
                except BufferError:  # the producer's queue is full: let deliveries drain it
                    self._producer.poll(0.1)
        left = self._producer.flush()  # every delivery report, or `message.timeout.ms`
        if failed or left:
            first = failed[0].str() if failed else "still queued"
            msg = (
                f"{len(failed) + left} of {len(items)} messages to Kafka topic {self._topic!r} not delivered"
                f" ({first}); stopping so that a restart writes them again"
            )
            raise KafkaDeliveryError(msg)

    def close(self) -> None:
        self._producer.flush(10)  # never raises: bytewax closes partitions while it unwinds
