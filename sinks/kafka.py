"""Kafka outputs: alerts and dead letters as JSON on their topics.

Keys are the record's deterministic id, so a compacted topic keeps one copy
per alert / dead letter even across replays.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.dataflow import Stream, operator

from core.records import Alert, DeadLetter

_json = msgspec.json.Encoder()


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
        "raw_b64": base64.b64encode(d.raw).decode(),
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
    op.output("write", msgs, KafkaSink(brokers, topic, add_config=dict(extra or {})))
