"""No record stops the flow: hostile bytes through the real decode (native JSON,
OTLP/JSON and OTLP protobuf), and a poison pill (invalid UTF-8) through a whole flow on the mock cluster."""

from __future__ import annotations

import json
import random

import pytest
from bytewax.connectors.kafka import KafkaSourceMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from core import metrics
from core.records import DeadLetter, Event
from operators.decode import decode_record
from operators.otlp import OtlpCall, OtlpContent, OtlpMapping
from operators.validate import DecodeLimits
from simulators.kafka_mock import produce_all
from simulators.otlp_encode import json_to_proto
from simulators.traffic import generate, shared_data_dir
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

LIMITS = DecodeLimits(0, 10**15, 10_000_000, 10**18, max_record_bytes=1 << 20)
NOW = 1_700_000_000_000
VALID = {
    "event_id": "e-1",
    "ts": "2023-11-16T18:00:00Z",
    "tenant_id": "acme",
    "agent": "bot",
    "model": "gpt-4o-mini",
    "provider": "openai",
    "input": [{"role": "user", "content": "hi"}],
    "output": "hello",
    "usage": {"input_tokens": 10, "output_tokens": 5},
}
OTLP = {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "chat gpt-4o-mini", "attributes": []}]}]}]}
OTLP_PROTO = json_to_proto((shared_data_dir() / "otel" / "otlp_json_llm_chat_span.json").read_bytes())
WRONG = [None, 1, -1, 1.5, "x", [], {}, True, 10**400, "\x00", [1, [2]], {"a": {"b": 1}}]


def decode_any(raw: bytes, offset: int = 0) -> list[Event | DeadLetter | OtlpCall | OtlpContent]:
    """What the flow's decode step does with one message (native JSON, OTLP/JSON or protobuf)."""
    msg = KafkaSourceMessage(key=None, value=raw, topic="t", partition=0, offset=offset)
    return decode_record(msg, LIMITS, NOW, OtlpMapping())


def hostile(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    base = json.dumps(VALID).encode()
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:  # one byte flipped, inserted or removed
        b = bytearray(base)
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
        return bytes(b)
    if kind == 2:  # invalid, overlong and surrogate UTF-8 inside a string
        bad = rng.choice([b"\xe9", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return base.replace(b"hello", b"hel" + bad + b"lo")
    if kind == 3:  # lone surrogates and NUL in escapes
        return base.replace(b"hello", rng.choice([b"\\ud800", b"\\udfff x", b"\\u0000", b"\\ud83d"]))
    if kind == 4:  # deep nesting
        depth = rng.choice([100, 1000, 10_000])
        return b"[" * depth + b"]" * depth
    if kind == 5:  # huge numbers
        d = dict(VALID, usage={"input_tokens": int("9" * 400), "output_tokens": 1})
        return json.dumps(d).encode()
    if kind == 6:  # a wrong type in one field
        d = dict(VALID)
        d[rng.choice(list(VALID))] = rng.choice(WRONG)
        return json.dumps(d).encode()
    if kind == 7:  # OTLP envelopes of the wrong shape
        d = json.loads(json.dumps(OTLP))
        target = rng.choice(["resourceSpans", "scopeSpans", "spans", "attributes"])
        if target == "resourceSpans":
            d["resourceSpans"] = rng.choice(WRONG)
        elif target == "scopeSpans":
            d["resourceSpans"][0]["scopeSpans"] = rng.choice(WRONG)
        elif target == "spans":
            d["resourceSpans"][0]["scopeSpans"][0]["spans"] = rng.choice(WRONG)
        else:
            d["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = [
                {"key": "gen_ai.request.model", "value": rng.choice(WRONG)}
            ]
        return json.dumps(d).encode()
    if kind == 8:  # a real OTLP protobuf export request, bytes flipped or cut short
        b = bytearray(OTLP_PROTO)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b[: rng.randrange(len(b) // 2, len(b) + 1)])
    return base[: rng.randrange(len(base))]  # truncated


@pytest.mark.parametrize("envelope", ["native", "otlp"])
def test_nesting_too_deep_to_decode_is_the_producers_fault_not_an_internal_error(envelope: str) -> None:
    # an "internal error" dead letter fires the critical bug alert: a producer must not be able to
    deep = b"[" * 100_000 + b"]" * 100_000
    base = json.dumps(VALID if envelope == "native" else OTLP).encode()
    (out,) = decode_any(base[:-1] + b', "extra": ' + deep + b"}")
    assert isinstance(out, DeadLetter) and out.reason == "malformed JSON: nested too deeply to decode"


def test_ten_thousand_hostile_records_decode_to_events_or_dead_letters() -> None:
    rng = random.Random(20261205)
    n_in, ok, dead, answered = 10_000, 0, 0, 0
    empty_before = metrics.OTLP_EMPTY._value.get()
    for i in range(n_in):
        out = decode_any(hostile(rng), i)
        answered += bool(out)
        for x in out:
            if isinstance(x, Event | OtlpCall | OtlpContent):
                ok += 1
            else:
                assert isinstance(x, DeadLetter) and x.reason and x.stage == "decode"
                dead += 1
    # in = messages with events or dead letters + OTLP envelopes without an LLM call (a counted skip)
    assert answered + (metrics.OTLP_EMPTY._value.get() - empty_before) == n_in
    assert dead > 5000 and ok > 100


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_without_raising(raw: bytes) -> None:
    for x in decode_any(raw):
        assert isinstance(x, Event | DeadLetter | OtlpCall | OtlpContent)


def test_invalid_utf8_and_oversized_records_get_named_reasons() -> None:
    before = metrics.DEAD_LETTERS.labels("decode", "invalid_utf8")._value.get()
    before_large = metrics.DEAD_LETTERS.labels("decode", "too_large")._value.get()
    (latin1,) = decode_any(json.dumps(VALID).encode().replace(b"hello", b"caf\xe9"))
    assert isinstance(latin1, DeadLetter) and latin1.reason.startswith("invalid UTF-8 at byte ")
    (ff,) = decode_any(b"\xff" + json.dumps(VALID).encode())
    assert isinstance(ff, DeadLetter) and ff.reason == "invalid UTF-8 at byte 0"
    assert metrics.DEAD_LETTERS.labels("decode", "invalid_utf8")._value.get() - before == 2
    big = json.dumps(dict(VALID, output="x" * (3 << 20))).encode()
    (too_large,) = decode_any(big)
    assert isinstance(too_large, DeadLetter) and too_large.reason.startswith("record too large")
    assert len(too_large.raw) <= 65_536
    (ten_mb,) = decode_any(b"[" * (10 << 20))
    assert isinstance(ten_mb, DeadLetter) and ten_mb.reason.startswith("record too large: 10485760 bytes")
    assert metrics.DEAD_LETTERS.labels("decode", "too_large")._value.get() - before_large == 2


def test_a_poison_pill_does_not_stop_the_flow(kafka, chdb_dsn, database) -> None:
    kafka.create_topic("llm-events", 2)
    good = [m for m in generate(limit=300) if not m[0].startswith(b"bad-")]
    _, v, ts = good[10]
    poison = [
        (b"poison-1", v.replace(b'"output": "', b'"output": "caf\xe9 '), ts),
        (b"poison-2", b"\xff" + v, ts),
    ]
    produce_all(kafka.bootstrap, "llm-events", good[:150] + poison + good[150:])
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    settings_ = topic_flow_settings(kafka, chdb_dsn, database, topic="llm-events")
    for _ in range(2):  # and a restart over the same topic does not crash on it either
        run_flow(settings_)
        assert rows(client, "SELECT count() FROM llm_events FINAL")[0][0] == len(good)
        dead = rows(client, "SELECT reason FROM dead_letters FINAL")
        assert sorted(r.split(" at byte")[0] for (r,) in dead) == ["invalid UTF-8"] * 2, dead


def test_thousands_of_hostile_records_through_a_whole_flow_reconcile(kafka, chdb_dsn, database) -> None:
    rng = random.Random(7)
    good = [m for m in generate(limit=500) if not m[0].startswith(b"bad-")]
    hostile_msgs = [(f"h-{i}".encode(), hostile(rng), good[0][2]) for i in range(3000)]
    hostile_msgs = [m for m in hostile_msgs if len(m[1]) < 900_000]  # the mock broker's message size
    mixed = good + hostile_msgs
    rng.shuffle(mixed)
    kafka.create_topic("llm-events", 16)
    produce_all(kafka.bootstrap, "llm-events", mixed)
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    empty_before = metrics.OTLP_EMPTY._value.get()
    same_before = metrics.REDELIVERIES.labels("same")._value.get()
    run_flow(topic_flow_settings(kafka, chdb_dsn, database, topic="llm-events"))
    events = rows(client, "SELECT count() FROM llm_events FINAL")[0][0]
    dead_sql = "SELECT count(DISTINCT (source_partition, source_offset)) FROM dead_letters FINAL"
    dead = rows(client, dead_sql)[0][0]
    skipped = metrics.OTLP_EMPTY._value.get() - empty_before
    redelivered = metrics.REDELIVERIES.labels("same")._value.get() - same_before
    # every message is an event, a dead letter, a counted OTLP skip or a counted re-delivery
    assert events + dead + skipped + redelivered == len(mixed)
    assert events >= len(good)
