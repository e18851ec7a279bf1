"""decode: Kafka bytes -> validated `Event`, or a `DeadLetter` saying why not.

Nothing raised here stops the flow: malformed JSON, wrong types, missing
fields and absurd values (negative tokens, timestamps years away) all become
dead letters carrying the raw bytes and the Kafka coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Stream

from operators.otlp import OtlpMapping, decode_otlp, looks_like_otlp
from operators.records import DeadLetter, Event, Source, WireEvent
from operators.validate import DecodeLimits, InvalidEvent, dead_letter, to_event

__all__ = [
    "DecodeLimits",
    "DecodeOut",
    "InvalidEvent",
    "dead_letter",
    "decode",
    "decode_message",
]

_decoder = msgspec.json.Decoder(WireEvent)


@dataclass(frozen=True)
class DecodeOut:
    oks: Stream[Event]
    errs: Stream[DeadLetter]


def decode(
    step_id: str,
    up: Stream[KafkaSourceMessage | KafkaError],
    *,
    limits: DecodeLimits,
    now_ms: Callable[[], int],
    otlp: OtlpMapping | None = None,
) -> DecodeOut:
    """Decode whole source batches; split into events and dead letters.

    With `otlp`, messages that are OTLP/JSON export requests are read as
    GenAI spans / events (see `operators.otlp`); others as native events.
    """

    def decode_batch(msgs: list[KafkaSourceMessage | KafkaError]) -> Iterable[Event | DeadLetter]:
        now = now_ms()
        if otlp is None:
            return [decode_message(m, limits, now) for m in msgs]
        out: list[Event | DeadLetter] = []
        for m in msgs:
            raw = None if isinstance(m, KafkaError) else m.value
            if raw is not None and looks_like_otlp(raw):
                out.extend(decode_otlp(raw, limits, now, _source(m), otlp))
            else:
                out.append(decode_message(m, limits, now))
        return out

    both = op.flat_map_batch(f"{step_id}_batch", up, decode_batch)
    split = op.branch(f"{step_id}_split", both, lambda x: type(x) is Event)
    return DecodeOut(oks=split.trues, errs=split.falses)


def decode_message(
    msg: KafkaSourceMessage | KafkaError, limits: DecodeLimits, now_ms: int
) -> Event | DeadLetter:
    if isinstance(msg, KafkaError):
        m = msg.msg
        return dead_letter("kafka", f"kafka error: {msg.err.str()}", m.value or b"", _source(m), now_ms)
    source = _source(msg)
    raw = msg.value
    if raw is None:
        return dead_letter("decode", "empty message (null value)", b"", source, now_ms)
    try:
        return to_event(_decoder.decode(raw), limits, now_ms, source)
    except msgspec.ValidationError as exc:
        return dead_letter("decode", f"invalid event: {exc}", raw, source, now_ms)
    except msgspec.DecodeError as exc:
        return dead_letter("decode", f"malformed JSON: {exc}", raw, source, now_ms)
    except InvalidEvent as exc:
        return dead_letter("decode", f"invalid event: {exc}", raw, source, now_ms)


def _source(m: KafkaSourceMessage) -> Source | None:
    if m.topic is None or m.partition is None or m.offset is None:
        return None
    return Source(m.topic, m.partition, m.offset)
