"""decode: Kafka bytes -> validated `Event`, or a `DeadLetter` saying why not.

Nothing raised here stops the flow: malformed JSON, wrong types, missing
fields and absurd values (negative tokens, timestamps years away) all become
dead letters carrying the raw bytes and the Kafka coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import bytewax.operators as op
import msgspec
import xxhash
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Stream

from operators.records import ChatMessage, DeadLetter, Event, Source, WireEvent, usd_to_pico

_decoder = msgspec.json.Decoder(WireEvent)

MAX_ID_LEN = 256


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    earliest_ts_ms: int
    max_future_ms: int
    max_tokens: int
    max_cost_pico: int


@dataclass(frozen=True)
class DecodeOut:
    oks: Stream[Event]
    errs: Stream[DeadLetter]


class InvalidEvent(ValueError):
    """An event that parsed but makes no sense."""


def decode(
    step_id: str,
    up: Stream[KafkaSourceMessage | KafkaError],
    *,
    limits: DecodeLimits,
    now_ms: Callable[[], int],
) -> DecodeOut:
    """Decode whole source batches; split into events and dead letters."""

    def decode_batch(msgs: list[KafkaSourceMessage | KafkaError]) -> Iterable[Event | DeadLetter]:
        now = now_ms()
        return [decode_message(m, limits, now) for m in msgs]

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


def decode_bytes(raw: bytes, limits: DecodeLimits, now_ms: int, source: Source | None = None) -> Event:
    """Decode one payload or raise `msgspec.DecodeError` / `InvalidEvent` (tests, benches)."""
    return to_event(_decoder.decode(raw), limits, now_ms, source)


def to_event(w: WireEvent, limits: DecodeLimits, now_ms: int, source: Source | None) -> Event:
    _check_id("event_id", w.event_id)
    _check_id("tenant_id", w.tenant_id)
    _check_id("agent", w.agent)
    _check_id("model", w.model)
    ts_ms = _event_time_ms(w.ts, limits, now_ms)
    u = w.usage
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ):
        n = getattr(u, name)
        if n < 0 or n > limits.max_tokens:
            msg = f"usage.{name} = {n} outside [0, {limits.max_tokens}]"
            raise InvalidEvent(msg)
    if u.cache_read_tokens + u.cache_write_tokens > u.input_tokens:
        msg = (
            f"usage.cache_read_tokens + cache_write_tokens ({u.cache_read_tokens} + "
            f"{u.cache_write_tokens}) exceed input_tokens ({u.input_tokens}); input_tokens must "
            "include cached input"
        )
        raise InvalidEvent(msg)
    if u.reasoning_tokens > u.output_tokens:
        msg = f"usage.reasoning_tokens ({u.reasoning_tokens}) exceed output_tokens ({u.output_tokens})"
        raise InvalidEvent(msg)
    provided = None
    if w.cost_usd is not None:
        provided = _provided_cost(w.cost_usd, limits)
    if w.latency_ms is not None and not 0 <= w.latency_ms < 86_400_000:
        msg = f"latency_ms = {w.latency_ms} outside [0, 1 day)"
        raise InvalidEvent(msg)
    return Event(
        event_id=w.event_id,
        ts_ms=ts_ms,
        tenant_id=w.tenant_id,
        agent=w.agent,
        model=w.model,
        provider=w.provider or "",
        variant=w.variant or "baseline",
        input_text=_text(w.input),
        output_text=w.output,
        context=w.context,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        reasoning_tokens=u.reasoning_tokens,
        provided_cost_pusd=provided,
        latency_ms=w.latency_ms,
        conversation_id=w.conversation_id,
        user_id=w.user_id,
        metadata=w.metadata,
        source=source,
    )


def dead_letter(stage: str, reason: str, raw: bytes, source: Source | None, now_ms: int) -> DeadLetter:
    if source is not None:
        key = f"{source.topic}:{source.partition}:{source.offset}"
    else:
        key = f"{stage}:{xxhash.xxh3_128_hexdigest(raw)}"
    return DeadLetter(key=key, stage=stage, reason=reason, raw=raw, source=source, ts_ms=now_ms)


def _source(m: KafkaSourceMessage) -> Source | None:
    if m.topic is None or m.partition is None or m.offset is None:
        return None
    return Source(m.topic, m.partition, m.offset)


def _check_id(name: str, value: str) -> None:
    if not value or not value.strip():
        msg = f"{name} is empty"
        raise InvalidEvent(msg)
    if len(value) > MAX_ID_LEN:
        msg = f"{name} is {len(value)} characters long (at most {MAX_ID_LEN})"
        raise InvalidEvent(msg)


def _event_time_ms(ts: datetime | int, limits: DecodeLimits, now_ms: int) -> int:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            msg = f"ts {ts.isoformat()!r} has no UTC offset; send RFC 3339 with 'Z' or '+hh:mm'"
            raise InvalidEvent(msg)
        ts_ms = int(ts.timestamp() * 1000)
    else:
        ts_ms = ts
    if ts_ms < limits.earliest_ts_ms:
        msg = f"ts {_iso(ts_ms)} is before the earliest accepted time {_iso(limits.earliest_ts_ms)} (epoch seconds sent as milliseconds?)"
        raise InvalidEvent(msg)
    if ts_ms > now_ms + limits.max_future_ms:
        msg = f"ts {_iso(ts_ms)} is more than {limits.max_future_ms // 1000} s in the future"
        raise InvalidEvent(msg)
    return ts_ms


def _provided_cost(cost: Decimal, limits: DecodeLimits) -> int:
    if not cost.is_finite():
        msg = f"cost_usd {cost} is not a finite number"
        raise InvalidEvent(msg)
    pico = usd_to_pico(cost)
    if pico < 0 or pico > limits.max_cost_pico:
        msg = f"cost_usd {cost} outside [0, {limits.max_cost_pico / 10**12:g}]"
        raise InvalidEvent(msg)
    return pico


def _text(value: str | list[ChatMessage]) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(f"{m.role}: {m.content}" for m in value)


def _iso(ts_ms: int) -> str:
    try:
        return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{ts_ms} ms"
