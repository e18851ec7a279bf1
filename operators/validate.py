"""Validation shared by every input format: a wire event -> a trusted `Event`.

Raises `InvalidEvent` with a message that says what is wrong and what is
accepted; callers turn it into a dead letter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from core.errors import InvalidInput
from core.records import ChatMessage, Event, Source, WireEvent, usd_to_pico

MAX_ID_LEN = 256
# C0 and C1 control characters: never part of an id, and the keyed steps join ids with U+001F (a
# tenant "a\x1fb" with agent "c" and tenant "a" with agent "b\x1fc" would share one key's windows)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    earliest_ts_ms: int
    max_future_ms: int
    max_tokens: int
    max_cost_pico: int
    max_record_bytes: int = 1 << 20


class InvalidEvent(InvalidInput):
    """An event that parsed but makes no sense."""


def to_event(w: WireEvent, limits: DecodeLimits, now_ms: int, source: Source | None) -> Event:
    _check_id("event_id", w.event_id)
    _check_id("tenant_id", w.tenant_id)
    _check_id("agent", w.agent)
    _check_id("model", w.model)
    if w.variant:
        _check_id("variant", w.variant)
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


def _check_id(name: str, value: str) -> None:
    if not value or not value.strip():
        msg = f"{name} is empty"
        raise InvalidEvent(msg)
    if len(value) > MAX_ID_LEN:
        msg = f"{name} is {len(value)} characters long (at most {MAX_ID_LEN})"
        raise InvalidEvent(msg)
    control = _CONTROL.search(value)
    if control is not None:
        msg = f"{name} contains a control character (U+{ord(control.group()):04X} at {control.start()})"
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
