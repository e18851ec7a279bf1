"""decode: Kafka bytes -> validated `Event`, or a `DeadLetter` saying why not.

Each message is read by its own encoding, so one topic may mix them: a
protobuf OTLP export request (first byte 0x0a and a valid export envelope on
the wire), OTLP/JSON (an object starting with `resourceSpans` /
`resourceLogs`), or a native JSON event (everything else). A native event that
happens to start with a newline is not taken for protobuf: its bytes do not
form an export envelope, and a byte string that starts like one but breaks it
further on is a dead letter "malformed OTLP protobuf: ..." unless it reads as
JSON.

Nothing raised here stops the flow: records over the size limit, invalid
UTF-8, malformed JSON, wrong types, missing fields and absurd values
(negative tokens, timestamps years away) all become dead letters carrying the
raw bytes and the Kafka coordinates; any other exception a record raises is
caught per record too and becomes an `internal error` dead letter (logged
once per exception type with its traceback), so a bug cannot turn one record
into a poison pill that stops the job on every restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeGuard, cast

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Stream, operator

from core.dead_letters import dead_letter, internal_error
from core.records import DeadLetter, Event, Source, WireEvent
from operators.event_time import after_ms_of, first_read_ms
from operators.otlp import (
    Decoded,
    OtlpCall,
    OtlpContent,
    OtlpMapping,
    decode_otlp,
    decode_otlp_proto,
    first_read,
    looks_like_otlp,
    looks_like_otlp_proto,
)
from operators.otlp_wire import OtlpWireError, proto_signal
from operators.validate import DecodeLimits, InvalidEvent, to_event

__all__ = [
    "DecodeLimits",
    "DecodeOut",
    "InvalidEvent",
    "dead_letter",
    "decode",
    "decode_message",
    "decode_record",
]

_decoder = msgspec.json.Decoder(WireEvent)


@dataclass(frozen=True)
class DecodeOut:
    """`oks`: events; `errs`: dead letters; `otel`: OTLP spans and log records that
    `operators.otlp_join` pairs up (empty without OTLP input)."""

    oks: Stream[Event]
    errs: Stream[DeadLetter]
    otel: Stream[OtlpCall | OtlpContent]


@operator
def decode(
    step_id: str,
    up: Stream[KafkaSourceMessage | KafkaError],
    *,
    limits: DecodeLimits,
    now_ms: Callable[[], int],
    otlp: OtlpMapping | None = None,
) -> DecodeOut:
    """Decode whole source batches; split into events and dead letters.

    With `otlp`, messages that are OTLP export requests (protobuf or JSON) are
    read as GenAI spans / log records (see `operators.otlp`); others as native events.
    """

    def decode_batch(msgs: list[KafkaSourceMessage | KafkaError]) -> Iterable[Decoded]:
        now = now_ms()
        if otlp is None:
            return [decode_message(m, limits, now) for m in msgs]
        out: list[Decoded] = []
        for m in msgs:
            out.extend(decode_record(m, limits, now, otlp))
        return out

    both = op.flat_map_batch("batch", up, decode_batch)
    split = op.branch("split", both, _is_event)
    rest = op.branch("otel", split.falses, _is_dead)
    return DecodeOut(oks=split.trues, errs=rest.trues, otel=cast(Stream[OtlpCall | OtlpContent], rest.falses))


def _is_event(x: Decoded) -> TypeGuard[Event]:
    return type(x) is Event


def _is_dead(x: Decoded) -> TypeGuard[DeadLetter]:
    return type(x) is DeadLetter


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
    if len(raw) > limits.max_record_bytes:
        reason = (
            f"record too large: {len(raw)} bytes > {limits.max_record_bytes} (first {_KEEP_BYTES} bytes kept)"
        )
        return dead_letter("decode", reason, raw[:_KEEP_BYTES], source, now_ms)
    try:
        return to_event(_decoder.decode(raw), limits, now_ms, source)
    except msgspec.ValidationError as exc:
        return dead_letter("decode", f"invalid event: {exc}", raw, source, now_ms)
    except msgspec.DecodeError as exc:
        # 0xff at byte 0 is "malformed JSON" to msgspec; name the real fault
        bad_at = _first_invalid_utf8(raw)
        if bad_at is not None:
            return dead_letter("decode", f"invalid UTF-8 at byte {bad_at}", raw, source, now_ms)
        return dead_letter("decode", f"malformed JSON: {exc}", raw, source, now_ms)
    except InvalidEvent as exc:
        return dead_letter("decode", f"invalid event: {exc}", raw, source, now_ms)
    except UnicodeDecodeError as exc:
        return dead_letter("decode", f"invalid UTF-8 at byte {_utf8_error_at(raw, exc)}", raw, source, now_ms)
    except RecursionError:
        return dead_letter("decode", _TOO_DEEP, raw, source, now_ms)
    except Exception as exc:  # a bug must not make this record a poison pill
        return internal_error("decode", exc, raw, source, now_ms)


_KEEP_BYTES = 65_536  # of an oversized record, in its dead letter
# the producer's fault, not a bug: an internal error would fire the critical bug alert
_TOO_DEEP = "malformed JSON: nested too deeply to decode"


def decode_record(
    m: KafkaSourceMessage | KafkaError, limits: DecodeLimits, now_ms: int, otlp: OtlpMapping
) -> list[Decoded]:
    """One message, native, OTLP protobuf or OTLP/JSON: its events and OTLP records, or dead
    letters saying why not. Never raises."""
    raw = None if isinstance(m, KafkaError) else m.value
    if raw is None or len(raw) > limits.max_record_bytes:
        return [decode_message(m, limits, now_ms)]
    assert isinstance(m, KafkaSourceMessage)
    encoding = _otlp_encoding(raw)
    if encoding is None:
        return [decode_message(m, limits, now_ms)]
    try:
        source = _source(m)
        read = decode_otlp_proto if encoding == "proto" else decode_otlp
        items = read(raw, limits, now_ms, source, otlp)
        first_ms = first_read_ms(m)
        return items if first_ms is None else first_read(items, first_ms)
    except UnicodeDecodeError as exc:
        reason = f"invalid UTF-8 at byte {_utf8_error_at(raw, exc)}"
        return [dead_letter("decode", reason, raw, _source(m), now_ms)]
    except RecursionError:
        return [dead_letter("decode", _TOO_DEEP, raw, _source(m), now_ms)]
    except Exception as exc:
        return [internal_error("decode", exc, raw, _source(m), now_ms)]


def _otlp_encoding(raw: bytes) -> str | None:
    """How one message is encoded: "proto", "json" (OTLP) or None (a native event)."""
    if looks_like_otlp_proto(raw):
        if raw.lstrip()[:1] not in (b"{", b"["):
            return "proto"  # a broken one is a dead letter saying so
        try:  # JSON after a newline, unless the whole envelope reads as protobuf
            proto_signal(raw, strict=True)
        except OtlpWireError:
            return "json" if looks_like_otlp(raw) else None
        return "proto"
    return "json" if looks_like_otlp(raw) else None


def _first_invalid_utf8(raw: bytes) -> int | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return None


def _utf8_error_at(raw: bytes, exc: UnicodeDecodeError) -> int:
    """The offset of the first invalid byte in the whole record (msgspec reports it per string)."""
    at = _first_invalid_utf8(raw)
    return exc.start if at is None else at


def _source(m: KafkaSourceMessage) -> Source | None:
    if m.topic is None or m.partition is None or m.offset is None:
        return None
    return Source(m.topic, m.partition, m.offset, after_ms_of(m))
