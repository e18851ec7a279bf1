"""Validation shared by every input format: a wire event -> a trusted `Event`.

Raises `InvalidEvent` with a message that says what is wrong and what is
accepted; callers turn it into a dead letter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

import msgspec
import xxhash

from core import metrics
from core.records import ChatMessage, DeadLetter, Event, Source, WireEvent, usd_to_pico

X = TypeVar("X")
Y = TypeVar("Y")
log = logging.getLogger(__name__)

MAX_ID_LEN = 256


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    earliest_ts_ms: int
    max_future_ms: int
    max_tokens: int
    max_cost_pico: int
    max_record_bytes: int = 1 << 20


class InvalidEvent(ValueError):
    """An event that parsed but makes no sense."""


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


# `judgeflow_dead_letters_total{reason}`: a small fixed set of classes, never the free text
REASON_CLASSES = (
    ("record too large", "too_large"),
    ("invalid UTF-8", "invalid_utf8"),
    ("malformed OTLP protobuf", "otlp"),
    ("malformed", "malformed_json"),
    ("empty message", "empty"),
    ("kafka error", "kafka_error"),
    ("invalid OTLP", "otlp"),
    ("OTLP", "otlp"),
    ("re-delivered", "changed_redelivery"),
    ("internal error", "internal"),
    ("invalid event", "invalid_event"),
)


def reason_class(reason: str) -> str:
    for prefix, label in REASON_CLASSES:
        if reason.startswith(prefix):
            return label
    return "other"


def dead_letter(stage: str, reason: str, raw: bytes, source: Source | None, now_ms: int) -> DeadLetter:
    metrics.DEAD_LETTERS.labels(stage, reason_class(reason)).inc()
    if source is not None:
        key = f"{source.topic}:{source.partition}:{source.offset}"
    else:
        key = f"{stage}:{xxhash.xxh3_128_hexdigest(raw)}"
    return DeadLetter(key=key, stage=stage, reason=reason, raw=raw, source=source, ts_ms=now_ms)


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
        earliest = _iso(limits.earliest_ts_ms)
        msg = f"ts {_iso(ts_ms)} is before the earliest accepted time {earliest} (epoch seconds sent as ms?)"
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


def guarded(
    stage: str, fn: Callable[[list[X]], list[Y]], items: list[X], *, failed: list[X] | None = None
) -> tuple[list[Y], list[DeadLetter]]:
    """`fn` over a batch; if it raises, over each item alone, and the items that raise become dead
    letters (`internal error: <type>: ...`, the event as JSON, its Kafka coordinates): a bug in a stage
    degrades to dead letters instead of stopping the flow on the same record at every restart.
    The items that raised are appended to `failed` when given."""
    try:
        return fn(items), []
    except Exception as exc:
        log.debug("%s: the batch raised %s; trying each record alone", stage, type(exc).__name__)
    oks: list[Y] = []
    dead: list[DeadLetter] = []
    for x in items:
        try:
            oks.extend(fn([x]))
        except Exception as exc:
            if failed is not None:
                failed.append(x)
            dead.append(item_error(stage, exc, x))
    return oks, dead


def item_error(stage: str, exc: Exception, item: object) -> DeadLetter:
    """`internal_error` for a record in hand — or a stage's wrapper of one (a candidate stands for
    its event): the record as JSON, its Kafka coordinates and time when it has them."""
    record = getattr(item, "event", item)
    source, ts_ms = getattr(record, "source", None), getattr(record, "ts_ms", 0)
    return internal_error(stage, exc, as_bytes(record), source, ts_ms)


def as_bytes(record: object) -> bytes:
    """A record as it goes into a dead letter: JSON when it is a struct, its repr otherwise."""
    try:
        if isinstance(record, msgspec.Struct):
            return msgspec.json.encode(record)
    except Exception:  # the record may be what is broken
        log.debug("dead letter of an unencodable %s", type(record).__name__)
    return repr(record).encode("utf-8", "backslashreplace")


def internal_error(stage: str, exc: Exception, raw: bytes, source: Source | None, ts_ms: int) -> DeadLetter:
    """The dead letter of a record that made `stage` raise (a bug), logged once per stage and type."""
    name = type(exc).__name__
    if (stage, name) not in _logged:
        _logged.add((stage, name))
        log.warning("%s: %s made a record a dead letter (logged once per type)", stage, name, exc_info=exc)
    return dead_letter(stage, f"internal error: {name}: {exc}", raw, source, ts_ms)


_logged: set[tuple[str, str]] = set()
