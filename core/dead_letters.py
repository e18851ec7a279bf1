"""Dead letters: the one home for turning a record that cannot be processed into a `DeadLetter`
with a reason — a record that is invalid (`dead_letter`), or one that made a stage raise, a bug
(`internal_error`, `guarded` for a whole batch). The reason's prefix names its class in
`judgeflow_dead_letters_total{stage,reason}` (`reason_class`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import msgspec
import xxhash

from core import metrics
from core.records import DeadLetter, Source

X = TypeVar("X")
Y = TypeVar("Y")
log = logging.getLogger(__name__)

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
